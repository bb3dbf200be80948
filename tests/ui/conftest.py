"""Fixtures of the browser tests: ``browser`` (session), ``serve(repo)``, ``shot(name)``.

See :mod:`ui_browser` for how the server and the browser are started; every test that uses the
browser fails if the page logged a JavaScript error or a Content-Security-Policy violation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_browser import ARTIFACTS, new_browser, running_server


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the whole session."""
    driver = new_browser(tmp_path_factory.mktemp("chromium"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def serve() -> Iterator[Callable[[Any], str]]:
    """``serve(repo)`` starts a UI server for ``repo`` and returns its base URL."""
    stack: list[Any] = []

    def start(repo: Any) -> str:
        cm = running_server(repo)
        url = cm.__enter__()
        stack.append(cm)
        return url

    yield start
    while stack:
        stack.pop().__exit__(None, None, None)


@pytest.fixture
def shot(browser: Any, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """``shot(name)`` saves a screenshot of the current page as a test artefact."""

    def save(name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{request.node.name}-{name}")
        path = ARTIFACTS / f"{safe}.png"
        browser.save_screenshot(str(path))
        return path

    return save


@pytest.fixture(autouse=True)
def _no_page_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a browser test if a page logged a JavaScript error or a CSP violation."""
    if "browser" not in request.fixturenames:
        yield
        return
    driver = request.getfixturevalue("browser")
    driver.get_log("browser")  # drop what earlier tests left
    yield
    severe = [e["message"] for e in driver.get_log("browser")
              if e.get("level") == "SEVERE" and not request.node.get_closest_marker("page_errors_ok")]
    assert severe == [], f"the page logged errors: {severe}"
