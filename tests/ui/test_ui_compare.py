"""The compare page: curves at full resolution, smoothing beside the raw lines, log scale, the
diff of two specimens, bad input and hostile text."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from cas_vault import SpecimenStorage
from cas_vault.ui.app import create_app
from cas_vault.ui.pages.compare import MAGIC, MAX_IDS

from ui_browser import wait_for

XSS_SCRIPT = "<script>window.pwned=1</script>"
XSS_IMG = '<img src=x onerror="window.pwned=1">'
#: Markup plotly's labels would render (bold) if the page passed names to them unescaped.
BOLD = "<b>bold</b>"


def decode(body: bytes) -> dict[str, Any]:
    """The /api/curves body as the page reads it: header, then float64 views at the offsets."""
    assert body[:8] == MAGIC
    (n,) = struct.unpack_from("<I", body, 8)
    header = json.loads(body[12:12 + n])
    base = -(-(12 + n) // 8) * 8
    for s in header["series"]:
        s["ys"] = np.frombuffer(body, "<f8", s["n"], base + s["y"]["offset"])
        if "offset" in s["x"]:
            s["xs"] = np.frombuffer(body, "<f8", s["n"], base + s["x"]["offset"])
        else:
            s["xs"] = s["x"]["start"] + s["x"]["stride"] * np.arange(s["n"], dtype="<f8")
    return header


def _specimen(vault, sid: str, metrics: dict[str, Any], config: dict[str, Any] | None = None,
              message: str = "", git: str = "0" * 40) -> None:
    path = vault.new(sid, domain="training", method="fine_tuning", tags=["t"])
    s = SpecimenStorage(path)
    s.write_metrics(metrics)
    s.write_config(config if config is not None else {"seed": 0})
    provenance = {"python": "3.11.9", "git": {"commit": git, "dirty": False}}
    vault.commit(sid, message=message, extra_metadata={"provenance": provenance})


def _client(vault) -> TestClient:
    return TestClient(create_app(vault), base_url="http://127.0.0.1")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def three(vault):
    """Three specimens of different lengths: NaN, negative values, irregular steps, no step."""
    loss_a = np.array([2.5, -1.25, float("nan"), 1e-300, -3.5e10, 0.1 + 0.2, 7.0])
    _specimen(vault, "cmp_a", {"step": np.arange(7), "loss": loss_a, "acc": np.linspace(0, 1, 7)},
              {"seed": 1, "lr": 0.001, "model": {"layers": 4}}, git="a" * 40)
    steps_b = np.array([0, 5, 7, 100, 101, 250, 1000, 1001, 1002, 5000, 5001, 9999])
    loss_b = np.sin(steps_b.astype(float)) - 0.5
    _specimen(vault, "cmp_b", {"step": steps_b, "loss": loss_b},
              {"seed": 2, "lr": 0.001, "model": {"layers": 4}}, git="b" * 40)
    # No step column: x is the row number. Integers, with a null (a gap) in the middle.
    _specimen(vault, "cmp_c", {"loss": [5, -4, None, 2, 1]},
              {"seed": 3, "lr": 0.001, "model": {"layers": 8}})
    return {"cmp_a": (np.arange(7.0), loss_a), "cmp_b": (steps_b.astype(float), loss_b),
            "cmp_c": (np.arange(5.0), np.array([5, -4, float("nan"), 2, 1.0]))}


def test_curves_endpoint_sends_every_value_exactly(vault, three) -> None:
    r = _client(vault).get("/api/curves", params={"ids": "cmp_a,cmp_b,cmp_c", "metric": "loss"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    header = decode(r.content)
    assert [s["id"] for s in header["series"]] == ["cmp_a", "cmp_b", "cmp_c"]
    for s in header["series"]:
        x, y = three[s["id"]]
        assert s["missing"] is None
        assert s["n"] == len(y)
        assert np.array_equal(s["xs"], x)
        # Bit for bit: NaN stays NaN, nothing is rounded.
        assert s["ys"].tobytes() == y.astype("<f8").tobytes()
    assert header["series"][2]["x_name"] == "row"
    assert "offset" in header["series"][1]["x"]  # irregular steps are sent, not described


def test_curves_endpoint_says_which_specimen_lacks_the_metric(vault, three) -> None:
    header = decode(_client(vault).get(
        "/api/curves", params={"ids": "cmp_a,cmp_b", "metric": "acc"}).content)
    assert header["series"][0]["n"] == 7
    assert header["series"][1]["n"] == 0
    assert "no column 'acc'" in header["series"][1]["missing"]


def test_curves_endpoint_rejects_bad_input(vault, three) -> None:
    c = _client(vault)
    r = c.get("/api/curves", params={"ids": "cmp_a,cmp_x", "metric": "loss"})
    assert r.status_code == 404 and "no specimen cmp_x" in r.json()["error"]
    assert "did you mean" in r.json()["error"]
    r = c.get("/api/curves", params={"ids": "cmp_a", "metric": "nope"})
    assert r.status_code == 404 and "numeric column 'nope'" in r.json()["error"]
    r = c.get("/api/curves", params={"ids": "cmp_a", "metric": "loss", "file": "../refs"})
    assert r.status_code == 400 and "invalid" in r.json()["error"]
    r = c.get("/api/curves", params={"ids": "../etc", "metric": "loss"})
    assert r.status_code == 400
    r = c.get("/api/curves", params={"ids": ",".join(f"x{i}" for i in range(MAX_IDS + 1)),
                                     "metric": "loss"})
    assert r.status_code == 400 and f"at most {MAX_IDS}" in r.json()["error"]
    r = c.get("/api/curves", params={"ids": "cmp_a"})
    assert r.status_code == 400 and "metric=" in r.json()["error"]


def _expect_status_logged(browser, status: int) -> None:
    """Take the browser's log of an error page: only its status, no script error, is there."""
    severe = [e["message"] for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe and all(f"status of {status}" in m for m in severe), severe


def _rendered(browser) -> bool:
    return browser.execute_script("return document.body.dataset.rendered") == "1"


def _data(browser) -> list[dict[str, Any]]:
    return browser.execute_script(
        "return document.getElementById('curves').data.map(t => ({name: t.name, n: t.x.length, "
        "ny: t.y.length, opacity: t.opacity === undefined ? 1 : t.opacity}))")


def test_page_overlays_every_point_of_every_specimen(vault, three, serve, browser, shot) -> None:
    url = serve(vault)
    browser.get(f"{url}/compare?ids=cmp_a,cmp_b,cmp_c&metric=loss")
    wait_for(browser, lambda: _rendered(browser))
    shot("curves")
    assert _data(browser) == [
        {"name": "cmp_a", "n": 7, "ny": 7, "opacity": 1},
        {"name": "cmp_b", "n": 12, "ny": 12, "opacity": 1},
        {"name": "cmp_c", "n": 5, "ny": 5, "opacity": 1},
    ]
    # The values plotted are the logged ones (the browser's decoding of the binary body).
    ys = browser.execute_script("return Array.from(document.getElementById('curves').data[0].y)"
                                ".map(v => Number.isNaN(v) ? 'NaN' : v)")
    assert ys == [v if v == v else "NaN" for v in three["cmp_a"][1].tolist()]
    assert browser.execute_script("return document.getElementById('curves').data[1].x[3]") == 100
    status = browser.find_element("id", "curves-status").text
    assert "3 curves of loss" in status and "24 points" in status
    chosen = [e.text for e in browser.find_elements("css selector", "#chosen .name")]
    assert chosen == ["cmp_a", "cmp_b", "cmp_c"]
    assert browser.find_element("css selector", "#metric-select option:checked").text == "loss"


def test_smoothing_adds_lines_and_keeps_the_raw_ones(vault, three, serve, browser, shot) -> None:
    url = serve(vault)
    browser.get(f"{url}/compare?ids=cmp_a,cmp_b,cmp_c&metric=loss")
    wait_for(browser, lambda: _rendered(browser))
    browser.find_element("id", "smooth-toggle").click()
    wait_for(browser, lambda: len(_data(browser)) == 6)
    data = _data(browser)
    assert [t["n"] for t in data] == [7, 12, 5, 7, 12, 5]
    assert [t["name"] for t in data[3:]] == ["cmp_a (smoothed)", "cmp_b (smoothed)",
                                             "cmp_c (smoothed)"]
    assert all(0 < t["opacity"] < 1 for t in data[:3])  # raw lines faded, still there
    assert "smooth=" in browser.current_url
    # TensorBoard's debiased EMA: the first smoothed value is the first raw value.
    first = browser.execute_script("return document.getElementById('curves').data[4].y[0]")
    assert first == pytest.approx(float(three["cmp_b"][1][0]))
    browser.find_element("id", "log-toggle").click()
    wait_for(browser, lambda: browser.execute_script(
        "return document.getElementById('curves').layout.yaxis.type") == "log")
    assert "log=1" in browser.current_url
    shot("smoothed-log")
    # Off again: back to the raw lines alone, at full opacity.
    browser.find_element("id", "smooth-toggle").click()
    wait_for(browser, lambda: len(_data(browser)) == 3)
    assert all(t["opacity"] == 1 for t in _data(browser))
    # The URL holds the view: opening it again shows it.
    browser.get(f"{url}/compare?ids=cmp_a,cmp_b&metric=loss&log=1&smooth=0.9")
    wait_for(browser, lambda: _rendered(browser))
    assert len(_data(browser)) == 4
    assert browser.execute_script(
        "return document.getElementById('curves').layout.yaxis.type") == "log"
    assert browser.find_element("id", "smooth-weight").get_attribute("value") == "0.9"


def test_diff_table_shows_changed_config_and_provenance(vault, three, serve, browser, shot) -> None:
    url = serve(vault)
    browser.get(f"{url}/compare?ids=cmp_a,cmp_b,cmp_c")
    wait_for(browser, lambda: _rendered(browser))
    rows = {tr.find_element("css selector", "td.key").text:
            [td.text for td in tr.find_elements("css selector", "td.val")]
            for tr in browser.find_elements("css selector", "#diff-config tbody tr")}
    assert rows == {"seed": ["1", "2"]}
    assert browser.find_element("css selector", "#diff-config th:nth-child(2)").text == "A: cmp_a"
    # Identical fields are there, folded away.
    same = browser.find_elements("css selector", "details.same")
    assert same and not same[0].get_attribute("open")
    rows = {tr.find_element("css selector", "td.key").text:
            [td.text for td in tr.find_elements("css selector", "td.val")]
            for tr in browser.find_elements("css selector", "#diff-provenance tbody tr")}
    assert rows == {"metadata.provenance.git.commit": ["a" * 40, "b" * 40]}
    same = browser.execute_script(
        "return Array.from(document.querySelectorAll('details.same td.key'), e => e.textContent)")
    assert "metadata.provenance.python" in same and "lr" in same and "domain" in same
    shot("diff")
    # Another pair, picked on the page.
    from selenium.webdriver.support.select import Select

    Select(browser.find_element("id", "diff-b")).select_by_value("cmp_c")
    browser.find_element("css selector", "#diff-form button").click()
    wait_for(browser, lambda: "b=cmp_c" in browser.current_url)
    rows = {tr.find_element("css selector", "td.key").text:
            [td.text for td in tr.find_elements("css selector", "td.val")]
            for tr in browser.find_elements("css selector", "#diff-config tbody tr")}
    assert rows == {"model.layers": ["4", "8"], "seed": ["1", "3"]}


def test_specimens_are_added_and_removed_in_the_url(vault, three, serve, browser, shot) -> None:
    url = serve(vault)
    browser.get(f"{url}/compare")
    assert "Choose specimens" in browser.find_element("id", "compare-empty").text
    options = [o.get_attribute("value") for o in
               browser.find_elements("css selector", "#committed-ids option")]
    assert options == ["cmp_a", "cmp_b", "cmp_c"]
    shot("empty")
    browser.find_element("id", "add-input").send_keys("cmp_b")
    browser.find_element("css selector", "#pick-form button").click()
    wait_for(browser, lambda: _rendered(browser))
    assert "ids=cmp_b" in browser.current_url
    browser.find_element("id", "add-input").send_keys("cmp_a")
    browser.find_element("css selector", "#pick-form button").click()
    wait_for(browser, lambda: len(browser.find_elements("css selector", "#chosen li")) == 2)
    wait_for(browser, lambda: _rendered(browser))
    assert [t["name"] for t in _data(browser)] == ["cmp_b", "cmp_a"]
    browser.find_elements("css selector", "#chosen a.remove")[0].click()
    wait_for(browser, lambda: [e.text for e in
                               browser.find_elements("css selector", "#chosen .name")] == ["cmp_a"])
    wait_for(browser, lambda: _rendered(browser))
    assert [t["name"] for t in _data(browser)] == ["cmp_a"]


def test_labels_and_digest_prefixes_are_accepted(vault, three, serve, browser) -> None:
    from cas_vault.labels import set_label

    set_label(vault, "best", "cmp_b")
    digest = vault.resolve("cmp_c")
    url = serve(vault)
    browser.get(f"{url}/compare?ids=@best,{digest[:10]}")
    wait_for(browser, lambda: _rendered(browser))
    assert [t["name"] for t in _data(browser)] == ["cmp_b", "cmp_c"]
    assert "= cmp_b" in browser.find_element("id", "chosen").text


def test_unknown_and_malformed_ids_are_answered_on_the_page(vault, three, serve, browser,
                                                             shot) -> None:
    url = serve(vault)
    status, _ = _get(f"{url}/compare?ids=cmp_a,cmp_bb")
    assert status == 404
    browser.get(f"{url}/compare?ids=cmp_a,cmp_bb")
    _expect_status_logged(browser, 404)
    message = browser.find_element("id", "compare-error").text
    assert "no specimen cmp_bb" in message and "did you mean cmp_b" in message
    # The bad name is listed with its remove link, so it can be taken out.
    assert [e.text for e in browser.find_elements("css selector", "#chosen .name")] == [
        "cmp_a", "cmp_bb"]
    shot("unknown-id")
    status, body = _get(f"{url}/compare?ids=..%2Fsecret")
    assert status == 400 and "contains &#39;/&#39;" in body
    status, body = _get(f"{url}/compare?ids=" + ",".join(f"x{i}" for i in range(MAX_IDS + 1)))
    assert status == 400 and f"at most {MAX_IDS}" in body
    status, body = _get(f"{url}/compare?ids=cmp_a&smooth=2")
    assert status == 400 and "smoothing weight" in body
    browser.get(f"{url}/compare?ids=cmp_a,cmp_b&metric=perplexity")
    _expect_status_logged(browser, 404)
    assert ("none of the chosen specimens has a numeric column 'perplexity'"
            in browser.find_element("id", "compare-error").text)
    assert _get(f"{url}/compare?ids=cmp_a,cmp_b&metric=perplexity")[0] == 404
    shot("unknown-metric")


def test_hostile_metric_names_and_config_values_stay_text(vault, serve, browser, shot) -> None:
    _specimen(vault, "xss_a", {"step": [0, 1, 2], XSS_IMG: [1.0, 2.0, 3.0],
                               XSS_SCRIPT: [3.0, 2.0, 1.0], BOLD: [1.0, 1.5, 1.0]},
              {"note": XSS_SCRIPT, XSS_IMG: 1}, message=XSS_SCRIPT)
    _specimen(vault, "xss_b", {"step": [0, 1], XSS_IMG: [2.0, 1.0], XSS_SCRIPT: [0.5, 0.25]},
              {"note": XSS_IMG, XSS_IMG: 2}, message=XSS_IMG)
    url = serve(vault)
    browser.get(f"{url}/compare?ids=xss_a,xss_b")
    wait_for(browser, lambda: _rendered(browser))
    options = [o.text for o in browser.find_elements("css selector", "#metric-select option")]
    assert options == [XSS_IMG, XSS_SCRIPT, BOLD]
    # The axis title shows the name as written.
    title = browser.execute_script(
        "return document.querySelector('#curves .ytitle').textContent")
    assert title == XSS_IMG
    assert "2 curves of " + XSS_IMG in browser.find_element("id", "curves-status").text
    cells = {tr.find_element("css selector", "td.key").text:
             [td.text for td in tr.find_elements("css selector", "td.val")]
             for tr in browser.find_elements("css selector", "#diff-config tbody tr")}
    assert cells == {"note": [XSS_SCRIPT, XSS_IMG], XSS_IMG: ["1", "2"]}
    metrics = [e.text for e in browser.find_elements("css selector", "#diff-metrics td:nth-child(2)")]
    assert sorted(metrics) == sorted([XSS_IMG, XSS_SCRIPT])  # the columns both have
    assert browser.execute_script("return window.pwned") is None
    shot("xss")
    # The other metric, chosen on the page: its name is plotted as text too.
    from selenium.webdriver.support.select import Select

    Select(browser.find_element("id", "metric-select")).select_by_visible_text(XSS_SCRIPT)
    wait_for(browser, lambda: "metric=" in browser.current_url and _rendered(browser))
    wait_for(browser, lambda: browser.execute_script(
        "return document.querySelector('#curves .ytitle').textContent") == XSS_SCRIPT)
    assert browser.execute_script("return window.pwned") is None
    Select(browser.find_element("id", "metric-select")).select_by_visible_text(BOLD)
    wait_for(browser, lambda: browser.execute_script(
        "return document.querySelector('#curves .ytitle')?.textContent") == BOLD)
    # xss_b has no such column: the page says so.
    assert "xss_b: no column '<b>bold</b>'" in browser.find_element("id", "curves-missing").text
