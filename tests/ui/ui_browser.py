"""Support for the browser tests of `vault ui`: a real uvicorn server, a real headless Chromium.

The server runs in a thread of the test process on a free loopback port; the browser is
Debian's ``chromium`` driven by Selenium through Debian's ``chromedriver`` (no driver or browser
is downloaded). Where neither can be found the tests are skipped with the command that
installs them. Every page a test visits can be saved with ``shot(name)`` under
``test-artifacts/ui/`` (or ``$CAS_VAULT_UI_ARTIFACTS``), and every test fails if the page logged
a JavaScript error or a Content-Security-Policy violation.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(os.environ.get("CAS_VAULT_UI_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"))
INSTALL = "apt-get install chromium chromium-driver"

# Flags for a headless Chromium on a machine with no display, no GPU and no internet:
# without the background-networking ones it keeps trying to reach Google's services.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-default-apps", "--window-size=1400,1000",
    # WebGL on the CPU (SwiftShader) for plotly's WebGL traces.
    "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
)


def find_chromium() -> tuple[str, str] | None:
    """The Chromium binary and its chromedriver, or None if either is missing."""
    browser = next((p for p in (shutil.which(n) for n in
                                ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver"
                                              if os.path.exists("/usr/bin/chromedriver") else None)
    return (browser, driver) if browser and driver else None


def new_browser(scratch: Path) -> Any:
    """A headless Chromium under Selenium; skips the calling test if there is none.

    Args:
        scratch: an empty directory for the browser's profile and temporary files (Chromium
            leaves its singleton directories in $TMPDIR); the caller removes it.
    """
    found = find_chromium()
    if found is None:
        pytest.skip(f"no Chromium and chromedriver on this machine: install them ({INSTALL}) "
                    "to run the browser tests")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={scratch / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    env = {**os.environ, "TMPDIR": str(scratch)}
    return webdriver.Chrome(service=Service(found[1], env=env), options=options)


@contextmanager
def running_server(repo: Any) -> Iterator[str]:
    """Serve ``repo`` with uvicorn on a free loopback port; yields the base URL."""
    import uvicorn

    from cas_vault.ui.app import create_app
    from cas_vault.ui.server import bind

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(repo), log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the UI server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_for(driver: Any, condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``condition`` until it returns something truthy (generous: never a speed test)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # an element not there yet
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s (last error: {last!r})")
