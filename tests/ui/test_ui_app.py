"""The UI server itself: `vault ui` as a process, assets from packages, security, errors."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from ui_browser import wait_for

from cas_vault.ui import create_app
from cas_vault.ui.assets import ASSETS, asset_path


def _client(vault) -> TestClient:
    return TestClient(create_app(vault), base_url="http://127.0.0.1", raise_server_exceptions=False)


def _start_cli(vault, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start `vault ui` in a subprocess; return it and the URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cas_vault", "--vault", str(vault.root), "ui", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server listens (or the process ends)
    match = re.search(r"http://\S+/", line)
    if match is None:
        proc.kill()
        raise AssertionError(f"no URL in {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}")
    return proc, match.group(0)


def test_every_asset_comes_from_an_installed_package() -> None:
    for name, asset in ASSETS.items():
        path = asset_path(name)
        assert path.is_file()
        # From site-packages (or wherever the package is installed), never from this repository.
        assert "cas_vault" not in path.parts, path


def test_vault_ui_serves_until_interrupted_and_exits_0(vault) -> None:
    proc, url = _start_cli(vault)
    try:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url) as r:
            assert r.status == 200
            assert b"Specimens" in r.read()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    assert "Traceback" not in err


def test_vault_ui_on_a_busy_port_exits_2_and_says_what_to_do(vault) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "cas_vault", "--vault", str(vault.root), "ui",
                              "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"port {port}" in out.stderr and "--port" in out.stderr
    assert "Traceback" not in out.stderr


def test_vault_ui_elsewhere_than_loopback_warns(vault) -> None:
    proc, _url = _start_cli(vault, "--host", "0.0.0.0")
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert "warning" in err and "read every specimen" in err


def test_vault_ui_outside_a_vault_exits_2(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "cas_vault", "--vault", str(tmp_path / "nope"), "ui"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not a vault" in out.stderr


def test_security_headers_on_every_response(vault) -> None:
    c = _client(vault)
    for path in ("/", "/no-such-page", "/static/ui.css", "/assets/plotly.min.js"):
        h = c.get(path).headers
        csp = h["content-security-policy"]
        # No inline script, nothing from another origin.
        assert "script-src 'self'" in csp and "unsafe-inline'; img" not in csp.split("script-src")[1][:30]
        assert "default-src 'self'" in csp
        assert h["x-content-type-options"] == "nosniff"


def test_a_foreign_host_header_is_refused(vault) -> None:
    # DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 must get nothing.
    c = TestClient(create_app(vault), base_url="http://evil.example")
    assert c.get("/").status_code == 400
    assert _client(vault).get("/").status_code == 200


@pytest.mark.parametrize("path", [
    "/assets/..%2F..%2Fpyproject.toml", "/assets/plotly.js", "/assets/%2Fetc%2Fpasswd",
    "/static/..%2Fapp.py", "/static/../app.py", "/static/%2Fetc%2Fpasswd",
])
def test_no_path_reaches_a_file_outside_the_served_ones(vault, path: str) -> None:
    r = _client(vault).get(path)
    assert r.status_code == 404
    assert "Traceback" not in r.text and "root:" not in r.text


def test_every_route_is_read_only(vault) -> None:
    c = _client(vault)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert c.request(method, "/").status_code == 405


def test_unknown_pages_render_an_escaped_error_page(vault) -> None:
    r = _client(vault).get("/<script>")
    assert r.status_code == 404
    assert "<script>" not in r.text.split("<main>")[1]


def test_page_loads_only_from_its_own_origin(vault, serve, browser, shot) -> None:
    url = serve(vault)
    browser.get(url + "/")
    wait_for(browser, lambda: browser.find_element("css selector", "h1").text == "Specimens")
    shot("empty")
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources, "the page loaded no stylesheet or script"
    assert all(r.startswith(url) for r in resources), resources
    with urllib.request.urlopen(url + "/assets/plotly.min.js") as r:
        assert r.headers["content-type"].startswith("text/javascript")
        assert b"plotly" in r.read(2000).lower()


def test_plotly_runs_under_the_content_security_policy(vault, serve, browser) -> None:
    # plotly.js must work with script-src 'self' (no eval, no inline script): load it on a page
    # of the app and draw a plot; the page-error check fails the test on any CSP violation.
    url = serve(vault)
    browser.get(url + "/")
    browser.execute_script(
        "const s = document.createElement('script'); s.src = '/assets/plotly.min.js';"
        "s.onload = () => { const d = document.createElement('div'); d.id = 'p';"
        "document.body.appendChild(d); Plotly.newPlot(d, [{y: [1, 3, 2]}]).then("
        "() => { window.plotted = true; }); }; document.head.appendChild(s);")
    wait_for(browser, lambda: browser.execute_script("return window.plotted === true"))


def test_pages_are_compressed_and_binary_curves_are_not(vault, make_specimen) -> None:
    make_specimen("gz", steps=2000)  # 16 KB of float64 losses: over gzip's minimum size
    vault.commit("gz", message="m")
    c = _client(vault)
    assert c.get("/sql", headers={"accept-encoding": "gzip"}).headers.get("content-encoding") == "gzip"
    r = c.get("/api/curves?ids=gz&metric=loss", headers={"accept-encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert "content-encoding" not in r.headers
