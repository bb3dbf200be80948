"""The live page: a real logging process followed step by step until it is committed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from cas_vault import SpecimenStorage
from cas_vault.ui.app import create_app

from ui_browser import wait_for

XSS_IMG = '<img src=x onerror="window.pwned=1">'

# Logs steps 0-2 (flushing each), then waits for the file `go1` before steps 3-6, then for
# `go2` before it finishes (the `with` block commits). Files say how far it got; it never
# assumes the test is quick (a generous limit only keeps a failed test from leaving it behind).
LOGGER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from cas_vault import Vault

    root, signals = Path(sys.argv[1]), Path(sys.argv[2])

    def wait(name):
        deadline = time.monotonic() + 120
        while not (signals / name).exists():
            if time.monotonic() > deadline:
                sys.exit(f"no {name} signal")
            time.sleep(0.02)

    vault = Vault.open(root)
    with vault.start_specimen("live_run", domain="training", method="fine_tuning",
                              flush_rows=1, message="followed live") as s:
        for i in range(3):
            s.log({"loss": 1.0 / (i + 1), XSS: float(i)}, step=i)
            s.flush()
        (signals / "logged1").touch()
        wait("go1")
        for i in range(3, 7):
            s.log({"loss": 1.0 / (i + 1), XSS: float(i)}, step=i)
            s.flush()
        (signals / "logged2").touch()
        wait("go2")
    (signals / "committed").touch()
""")


def _item(browser, key: str) -> dict[str, Any] | None:
    return browser.execute_script("""
        const s = document.querySelector(`section.live-item[data-key="${arguments[0]}"]`);
        if (!s) return null;
        const plot = s.querySelector('.js-plotly-plot');
        return {rows: s.dataset.rows, badge: s.querySelector('.badge').textContent,
                points: plot && plot.data ? plot.data.map(t => t.x.length) : null,
                latest: Array.from(s.querySelectorAll('table.latest td'), e => e.textContent),
                heads: Array.from(s.querySelectorAll('table.latest th'), e => e.textContent),
                link: (s.querySelector('a.live-id') || {}).href || null,
                note: s.querySelector('.note').textContent};
    """, key)


def test_live_page_follows_a_logging_process_until_it_is_committed(vault, serve, browser, shot,
                                                                   tmp_path: Path) -> None:
    script = tmp_path / "logger.py"
    script.write_text(f"XSS = {XSS_IMG!r}\n" + LOGGER)
    signals = tmp_path / "signals"
    signals.mkdir()
    url = serve(vault)
    proc = subprocess.Popen([sys.executable, str(script), str(vault.root), str(signals)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    key = "live_run/metrics"
    try:
        wait_for(browser, lambda: (signals / "logged1").exists() or proc.poll() is not None, 120)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        browser.get(f"{url}/live")
        wait_for(browser, lambda: (_item(browser, key) or {}).get("points") == [3, 3])
        item = _item(browser, key)
        assert item["rows"] == "3" and item["badge"] == "logging"
        assert item["heads"] == ["step", "loss", XSS_IMG]  # a metric name shown as text
        assert item["latest"] == ["2", "0.333333", "2"]
        assert item["link"] is None
        assert browser.execute_script("return window.pwned") is None
        shot("logging")

        (signals / "go1").touch()
        wait_for(browser, lambda: (signals / "logged2").exists(), 120)
        wait_for(browser, lambda: (_item(browser, key) or {}).get("points") == [7, 7])
        item = _item(browser, key)
        assert item["rows"] == "7" and item["latest"] == ["6", "0.142857", "6"]
        # Every step logged is plotted, in order.
        xs = browser.execute_script(
            "return Array.from(document.querySelector('section.live-item .js-plotly-plot')"
            ".data[0].x)")
        assert xs == list(range(7))
        shot("more-steps")

        (signals / "go2").touch()
        assert proc.wait(120) == 0, proc.stdout.read().decode() if proc.stdout else ""
        wait_for(browser, lambda: (_item(browser, key) or {}).get("badge") == "committed")
        item = _item(browser, key)
        assert item["link"] == f"{url}/specimen/live_run"
        assert "committed as " + vault.resolve("live_run")[:12] in item["note"]
        assert item["points"] == [7, 7]  # what was shown stays
        assert browser.execute_script("return window.pwned") is None
        shot("committed")
    finally:
        browser.get("about:blank")  # stop polling before the server stops
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_live_page_says_when_nothing_is_in_progress(vault, make_specimen, serve, browser,
                                                    shot) -> None:
    make_specimen("done_one")
    vault.commit("done_one", message="finished long ago")
    url = serve(vault)
    try:
        browser.get(f"{url}/live")
        wait_for(browser, lambda: browser.execute_script("return document.body.dataset.polls"))
        assert browser.find_element("id", "live-empty").is_displayed()
        assert "Nothing in progress" in browser.find_element("id", "live-empty").text
        assert browser.find_elements("css selector", "section.live-item") == []
        shot("empty")
    finally:
        browser.get("about:blank")


def _client(vault) -> TestClient:
    return TestClient(create_app(vault), base_url="http://127.0.0.1")


def _one(body: dict[str, Any], key: str) -> dict[str, Any]:
    found = [i for i in body["items"] if i["key"] == key]
    assert len(found) == 1, body
    return found[0]


def test_api_sends_only_the_rows_after_the_cursor(vault) -> None:
    log = vault.start_specimen("crashy", domain="training", method="fine_tuning", flush_rows=1)
    log.start()
    for i in range(3):
        log.log({"loss": float(-i), "nan": float("nan")}, step=i)
        log.flush()
    c = _client(vault)
    first = _one(c.get("/api/live").json(), "crashy/metrics")
    assert first["kind"] == "logging" and first["reset"] is True
    assert first["rows"] == {"step": [0, 1, 2], "loss": [0.0, -1.0, -2.0], "nan": [None] * 3}
    token = first["token"]
    log.log({"loss": -3.0, "acc": 0.5}, step=3)
    log.flush()
    log.abort()  # as a crash leaves it: flushed parts, no process
    c = _client(vault)  # a fresh app: no scan shared with the request above
    later = _one(c.get("/api/live", params={"c": f"crashy/metrics:{token}"}).json(),
                 "crashy/metrics")
    assert later["kind"] == "unfinished_log"
    assert later["reset"] is False
    assert later["rows"] == {"step": [3], "loss": [-3.0], "acc": [0.5]}
    same = _one(c.get("/api/live", params={"c": f"crashy/metrics:{later['token']}"}).json(),
                "crashy/metrics")
    assert "rows" not in same


def test_api_reports_unsealed_runs_and_committed_items(vault) -> None:
    path = vault.new("runsy", domain="training", method="fine_tuning")
    SpecimenStorage(path, run_id="r1").write_metrics({"loss": [1.0, 0.5]})
    vault.commit("runsy", message="first run")
    SpecimenStorage(path, run_id="r2").write_metrics({"loss": [0.9, 0.4, 0.2]})
    body = _client(vault).get("/api/live", params={"c": "gone_one/metrics:3"}).json()
    run = _one(body, "runsy.run_r2/metrics")
    assert run["kind"] == "unsealed_run" and run["id"] == "runsy.run_r2"
    assert run["rows"]["loss"] == [0.9, 0.4, 0.2] and run["reset"] is True
    again = _one(_client(vault).get("/api/live", params={"c": f"runsy.run_r2/metrics:{run['token']}"})
                 .json(), "runsy.run_r2/metrics")
    assert "rows" not in again and again["reset"] is False  # unchanged: nothing to redraw
    assert body["ended"] == [{"key": "gone_one/metrics", "id": "gone_one", "committed": False,
                              "commit": None}]
    vault.commit("runsy", message="second run")
    body = _client(vault).get("/api/live", params={"c": f"runsy.run_r2/metrics:{run['token']}"}).json()
    assert body["items"] == []
    assert body["ended"][0]["committed"] is True
    assert body["ended"][0]["commit"] == vault.resolve("runsy.run_r2")


@pytest.mark.parametrize("cursor", ["nocolon", "../x/metrics:1", "a/../b:1", "a/metrics:!!",
                                    "a:1"])
def test_api_rejects_malformed_cursors(vault, cursor: str) -> None:
    r = _client(vault).get("/api/live", params={"c": cursor})
    assert r.status_code == 400
    assert r.json()["error"]
