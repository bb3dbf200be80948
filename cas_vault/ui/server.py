"""Run the UI with uvicorn: on 127.0.0.1 unless another host is asked for explicitly."""

from __future__ import annotations

import errno
import socket
import threading
import webbrowser
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import InvalidInputError
from .app import LOCAL_HOSTS, create_app

if TYPE_CHECKING:
    from ..repository import Repository

__all__ = ["DEFAULT_PORT", "bind", "is_loopback", "serve"]

#: The port ``vault ui`` listens on unless ``--port`` says otherwise.
DEFAULT_PORT = 8600


def is_loopback(host: str) -> bool:
    """True if ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    return host in ("localhost", "::1") or host.startswith("127.")


def bind(host: str, port: int) -> socket.socket:
    """Open the listening socket, so a busy port is a clear error before anything starts.

    Raises:
        InvalidInputError: if the port is taken or the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InvalidInputError(
                f"port {port} on {host} is in use (another `vault ui`?): pass --port N, "
                "or --port 0 for any free port") from None
        raise InvalidInputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(repo: Repository, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          open_browser: bool = False, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``repo`` read-only until interrupted (Ctrl-C stops it cleanly).

    Args:
        repo: the vault to show.
        host: the interface to listen on; anything but loopback exposes the vault to the network.
        port: the TCP port (0: any free port).
        open_browser: open the page in the default web browser once the server listens.
        on_ready: called with the page's URL once the server listens.

    Raises:
        InvalidInputError: if the port is taken or the host cannot be bound.
    """
    import uvicorn

    sock = bind(host, port)
    actual = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{actual}/"
    allowed = LOCAL_HOSTS if is_loopback(host) else None
    app = create_app(repo, allowed_hosts=allowed)
    # Live pages hold a stream open: do not wait for them on Ctrl-C longer than a moment.
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2,
                            server_header=False)
    server = uvicorn.Server(config)

    def announce() -> None:
        while not server.started and not server.should_exit:
            threading.Event().wait(0.05)
        if server.started:
            if on_ready is not None:
                on_ready(url)
            if open_browser:
                webbrowser.open(url)

    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
