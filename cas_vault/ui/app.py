"""The ASGI application: routes from :mod:`.pages`, security headers, errors as pages.

The app only ever reads. Every route is a GET (the SQL page runs its SELECT through the same
sandbox as ``vault query``); specimen files are found through their commits, never through a
path taken from the request; the only other files served are the package's own ``static/`` and
the front-end assets of :mod:`.assets`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import InvalidInputError, LockTimeoutError, NotFoundError, QueryTimeoutError, VaultError
from .assets import ASSETS, asset_path
from .pages import ROUTES
from .templating import render

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from ..repository import Repository

__all__ = ["LOCAL_HOSTS", "create_app"]

log = logging.getLogger("cas_vault.ui")

#: Host headers accepted when the server listens on loopback (DNS rebinding stays out).
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")

# No inline script, nothing from another origin: even if some text escaped escaping, the
# browser would not run it. Plotly sets inline styles, hence 'unsafe-inline' for styles only.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'")
_HEADERS = [
    (b"content-security-policy", _CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class _SecurityHeaders:
    """Adds the Content-Security-Policy and friends to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:  # type: ignore[type-arg]
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + _HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _asset(request: Request) -> Response:
    name = request.path_params["name"]
    try:
        path = asset_path(name)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    # Versioned by the installed package: let the browser keep it for a day.
    return FileResponse(path, media_type=ASSETS[name].media_type,
                        headers={"cache-control": "public, max-age=86400"})


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _error(request: Request, status: int, title: str, message: str) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": message}, status_code=status)
    return render(request, "error.html", status_code=status, title=title, message=message)


async def _vault_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, NotFoundError):
        return _error(request, 404, "Not found", str(exc))
    if isinstance(exc, (InvalidInputError, QueryTimeoutError)):
        return _error(request, 400, "Bad request", str(exc))
    if isinstance(exc, LockTimeoutError):
        return _error(request, 503, "Busy", str(exc))
    return _error(request, 500, "Vault error", str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(request, exc.status_code, "Not found" if exc.status_code == 404 else "Error",
                  str(exc.detail))


async def _internal_error(request: Request, exc: Exception) -> Response:
    # A bug in cas-vault: log the traceback on the server's terminal, never send it to a page.
    log.exception("internal error answering %s", request.url.path, exc_info=exc)
    return _error(request, 500, "Internal error",
                  "cas-vault hit an internal error (a bug: please report it with the "
                  "server's log)")


def create_app(repo: Repository, *, allowed_hosts: tuple[str, ...] | None = LOCAL_HOSTS) -> Starlette:
    """Build the read-only web application over ``repo``.

    Args:
        repo: the vault to show.
        allowed_hosts: the ``Host`` headers to answer (None: any, for a server bound to
            another interface on purpose).

    Returns:
        A Starlette application; run it with any ASGI server (:func:`cas_vault.ui.serve` runs
        uvicorn).
    """
    from pathlib import Path

    # Pages and JSON shrink several times under gzip; the curves' float64 arrays do not, and
    # compressing megabytes of them would only delay the plot.
    middleware = [Middleware(_SecurityHeaders),
                  Middleware(GZipMiddleware, minimum_size=2048, compresslevel=6,
                             exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES,
                                                    "application/octet-stream"))]
    if allowed_hosts is not None:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    routes = [
        *ROUTES,
        Route("/assets/{name}", _asset, name="asset"),
        Mount("/static", StaticFiles(directory=Path(__file__).with_name("static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={VaultError: _vault_error, HTTPException: _http_error,
                            Exception: _internal_error},
    )
    app.state.repo = repo
    return app
