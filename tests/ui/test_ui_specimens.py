"""The specimens table (``GET /``): columns, sorting, filters, the WHERE clause, pages, final
metric values, labels, escaping, and the empty vault."""

from __future__ import annotations

import html
import math
import urllib.parse
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from cas_vault import SpecimenStorage
from cas_vault.retirement import retire
from cas_vault.ui.app import create_app

from ui_browser import wait_for

XSS_SCRIPT = "<script>window.pwned=1</script>"
XSS_IMG = '<img src=x onerror="window.pwned=1">'


class _Table(HTMLParser):
    """The rows of ``table#specimens``: each a dict of cell class -> text (tags and labels as
    lists), plus the page's ``#total`` and the error message, if any."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.headings: list[str] = []
        self.total: str | None = None
        self.error: str | None = None
        self._in_table = False
        self._cell: str | None = None
        self._chip: str | None = None
        self._grab: str | None = None
        self._th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "table" and a.get("id") == "specimens":
            self._in_table = True
        elif self._in_table and tag == "tr" and "data-id" in a:
            self.rows.append({"tags": [], "labels": [], "metrics": {}})
        elif self._in_table and tag == "th":
            self._th = True
            self.headings.append("")
        elif self._in_table and tag == "td" and self.rows:
            self._cell = a.get("data-metric") and "metric:" + str(a["data-metric"]) or cls[-1]
            if self._cell.startswith("metric:"):
                self.rows[-1]["metrics"][self._cell[7:]] = ""
            else:
                self.rows[-1].setdefault(self._cell, "")
        elif self._cell in ("tags", "labels") and ("tag" in cls or "label" in cls):
            self._chip = ""
        elif a.get("id") == "total":
            self._grab, self.total = "total", ""
        elif a.get("id") == "where-error":
            self._grab, self.error = "error", ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag == "th":
            self._th = False
        elif tag == "td":
            self._cell = None
        elif tag in ("a", "span") and self._chip is not None:
            self.rows[-1][self._cell].append(self._chip)  # type: ignore[index]
            self._chip = None
        if tag in ("span", "p"):
            self._grab = None

    def handle_data(self, data: str) -> None:
        if self._th:
            self.headings[-1] += data.strip()
        if self._chip is not None:
            self._chip += data
        elif self._cell is not None and self._cell.startswith("metric:"):
            self.rows[-1]["metrics"][self._cell[7:]] += data
        elif self._cell is not None and self._cell not in ("tags", "labels"):
            self.rows[-1][self._cell] += data
        if self._grab == "total":
            self.total = (self.total or "") + data
        elif self._grab == "error":
            self.error = (self.error or "") + data


def table(client: TestClient, query: str = "", status: int = 200) -> _Table:
    """GET ``/?query`` and parse its table."""
    r = client.get("/" + ("?" + query if query else ""))
    assert r.status_code == status, r.text[-2000:]
    parsed = _Table()
    parsed.feed(r.text)
    return parsed


def ids(t: _Table) -> list[str]:
    return [r["id"] for r in t.rows]


@pytest.fixture
def client(vault) -> TestClient:
    return TestClient(create_app(vault), base_url="http://127.0.0.1")


PAIRS = [("training", "fine_tuning"), ("interpretability", "sae_analysis"),
         ("benchmarking", "ablation_study")]


def populate(vault, n: int, *, steps: int = 6) -> None:
    """``n`` specimens s000.. with varied domain, method, model, tags, message and metrics.

    Specimen i: pair i % 3; model M{i % 4}; tags [even|odd, g{i % 5}]; message "run {i}
    {Alpha if i % 7 == 0}"; metrics loss = rng values (seed i), acc only for even i.
    """
    with vault.batch():
        for i in range(n):
            domain, method = PAIRS[i % 3]
            sid = f"s{i:03d}"
            path = vault.new(sid, domain=domain, method=method, model=f"M{i % 4}",
                             tags=["even" if i % 2 == 0 else "odd", f"g{i % 5}"])
            s = SpecimenStorage(path)
            rng = np.random.default_rng(i)
            cols: dict[str, Any] = {"step": np.arange(steps), "loss": rng.random(steps)}
            if i % 2 == 0:
                cols["acc"] = rng.random(steps)
            s.write_metrics(cols)
            vault.commit(sid, message=f"run {i}" + (" Alpha" if i % 7 == 0 else ""))


def expected_final(vault, sid: str, column: str) -> float | None:
    """The value of ``column`` at the highest step, read from the specimen's own file."""
    df = vault.specimen(sid).read_metrics("metrics")
    if column not in df.columns:
        return None
    df = df.drop_nulls(column).sort("step")
    return None if df.height == 0 else float(df[column][-1])


# -- browser ----------------------------------------------------------------------------------

def test_table_in_the_browser_sorts_filters_and_shows_final_values(vault, serve, browser, shot) -> None:
    populate(vault, 12)
    vault.label("best", "s004")
    vault.label("paper", "s004")
    vault.label("baseline", "s001")
    url = serve(vault)
    browser.get(url + "/?metrics=loss,acc")
    wait_for(browser, lambda: len(browser.find_elements("css selector", "#specimens tbody tr")) == 12)
    shot("table")
    rows = browser.find_elements("css selector", "#specimens tbody tr")
    # Newest first by default.
    assert [r.get_attribute("data-id") for r in rows] == [f"s{i:03d}" for i in range(11, -1, -1)]
    headings = [th.text for th in browser.find_elements("css selector", "#specimens thead th:not(.pick)")]
    assert headings[:9] == ["id", "created ▼", "domain", "method", "model", "tags", "labels",
                            "runs", "message"]
    assert headings[9:] == ["loss", "acc"]
    by_id = {r.get_attribute("data-id"): r for r in rows}
    s4 = by_id["s004"]
    cell = lambda row, cls: row.find_element("css selector", f"td.{cls}").text  # noqa: E731
    assert cell(s4, "domain") == "interpretability"
    assert cell(s4, "method") == "sae_analysis"
    assert cell(s4, "model") == "M0"
    assert [t.text for t in s4.find_elements("css selector", "td.tags .tag")] == ["even", "g4"]
    assert [t.text for t in s4.find_elements("css selector", "td.labels .label")] == ["@best", "@paper"]
    assert [t.text for t in by_id["s001"].find_elements("css selector", "td.labels .label")] == ["@baseline"]
    assert cell(s4, "message") == "run 4"
    loss = float(s4.find_element("css selector", 'td[data-metric="loss"]').text)
    assert math.isclose(loss, expected_final(vault, "s004", "loss"), rel_tol=1e-5)
    assert by_id["s003"].find_element("css selector", 'td[data-metric="acc"]').text == ""
    link = s4.find_element("css selector", "td.id a")
    assert link.get_attribute("href") == url + "/specimen/s004"

    # Click the "loss" heading: ascending by final loss; again: descending.
    browser.find_element("link text", "loss").click()
    wait_for(browser, lambda: "sort=metric%3Aloss" in browser.current_url)
    finals = {f"s{i:03d}": expected_final(vault, f"s{i:03d}", "loss") for i in range(12)}
    shown = [r.get_attribute("data-id") for r in browser.find_elements("css selector", "#specimens tbody tr")]
    assert shown == sorted(finals, key=finals.__getitem__)
    browser.find_element("css selector", 'th[data-column="metric:loss"] a').click()
    wait_for(browser, lambda: "desc=1" in browser.current_url)
    shown = [r.get_attribute("data-id") for r in browser.find_elements("css selector", "#specimens tbody tr")]
    assert shown == sorted(finals, key=finals.__getitem__, reverse=True)
    shot("sorted-by-loss")

    # Choosing a domain applies it at once (the form is a GET: the URL holds the view).
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("css selector", 'select[name="domain"]')).select_by_value("training")
    wait_for(browser, lambda: "domain=training" in browser.current_url)
    shown = [r.get_attribute("data-id") for r in browser.find_elements("css selector", "#specimens tbody tr")]
    assert shown == sorted([f"s{i:03d}" for i in range(0, 12, 3)], key=finals.__getitem__, reverse=True)
    assert "sort=metric%3Aloss" in browser.current_url and "metrics=loss%2Cacc" in browser.current_url
    shot("filtered")


def test_pages_in_the_browser(vault, serve, browser, shot) -> None:
    populate(vault, 120, steps=2)
    url = serve(vault)
    browser.get(url + "/?sort=specimen_id&desc=0")
    wait_for(browser, lambda: browser.find_element("id", "total").text == "120")
    assert browser.find_element("id", "range").text == "1–50"
    assert not browser.find_elements("id", "prev")
    browser.find_element("id", "next").click()
    wait_for(browser, lambda: browser.find_element("id", "range").text == "51–100")
    browser.find_element("id", "next").click()
    wait_for(browser, lambda: browser.find_element("id", "range").text == "101–120")
    rows = browser.find_elements("css selector", "#specimens tbody tr")
    assert [r.get_attribute("data-id") for r in rows] == [f"s{i:03d}" for i in range(100, 120)]
    assert not browser.find_elements("id", "next")
    assert "page=3" in browser.current_url
    shot("page-3")
    browser.find_element("id", "prev").click()
    wait_for(browser, lambda: browser.find_element("id", "range").text == "51–100")


def test_user_text_is_shown_as_text(vault, serve, browser, shot) -> None:
    path = vault.new("xss", domain="training", method="fine_tuning", model=XSS_IMG,
                     tags=[XSS_SCRIPT, XSS_IMG])
    SpecimenStorage(path).write_metrics({"step": np.arange(3), XSS_IMG: np.arange(3.0)})
    vault.commit("xss", message=XSS_SCRIPT + " & " + XSS_IMG)
    url = serve(vault)
    browser.get(url + "/?" + urllib.parse.urlencode({"metrics": XSS_IMG, "q": "<script>"}))
    wait_for(browser, lambda: browser.find_elements("css selector", "#specimens tbody tr"))
    shot("xss")
    row = browser.find_element("css selector", "#specimens tbody tr")
    assert row.find_element("css selector", "td.message").text == XSS_SCRIPT + " & " + XSS_IMG
    assert row.find_element("css selector", "td.model").text == XSS_IMG
    assert [t.text for t in row.find_elements("css selector", "td.tags .tag")] == [XSS_SCRIPT, XSS_IMG]
    assert browser.find_element("css selector", "th.metric").text == XSS_IMG
    assert row.find_element("css selector", "td.metric").text == "2"
    assert browser.find_element("css selector", 'input[name="q"]').get_attribute("value") == "<script>"
    assert browser.find_elements("css selector", "#specimens img, #specimens script") == []
    assert browser.execute_script("return window.pwned") is None


def test_empty_vault_says_how_to_commit_a_first_specimen(vault, serve, browser, shot) -> None:
    url = serve(vault)
    browser.get(url + "/")
    text = wait_for(browser, lambda: browser.find_element("id", "empty-state").text)
    shot("empty")
    assert "no committed specimens yet" in text
    assert "vault new" in text and "vault commit" in text
    assert browser.find_elements("id", "specimens") == []


def test_a_bad_where_clause_shows_its_error_in_the_browser(vault, serve, browser, shot) -> None:
    populate(vault, 3)
    url = serve(vault)
    browser.get(url + "/?" + urllib.parse.urlencode({"where": "no_such_column = 1"}))
    error = wait_for(browser, lambda: browser.find_element("id", "where-error").text)
    shot("bad-where")
    assert "no_such_column" in error
    assert browser.find_elements("css selector", "#specimens tbody tr") == []
    assert browser.find_element("css selector", 'input[name="where"]').get_attribute("value") == "no_such_column = 1"
    # The page's own 400 status is logged as a failed load; nothing else may be.
    severe = [e["message"] for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert all("status of 400" in m for m in severe), severe


# -- sorting, filters, WHERE, pages (no browser) ----------------------------------------------

def test_sort_by_each_column(vault, client) -> None:
    populate(vault, 9)
    vault.label("zz", "s002")
    vault.label("aa", "s005")
    rows = {r["id"]: r for r in table(client, "sort=specimen_id&desc=0").rows}
    assert list(rows) == [f"s{i:03d}" for i in range(9)]
    assert ids(table(client, "sort=specimen_id&desc=1")) == [f"s{i:03d}" for i in range(8, -1, -1)]
    assert ids(table(client)) == [f"s{i:03d}" for i in range(8, -1, -1)]  # newest first
    assert ids(table(client, "sort=created&desc=0")) == [f"s{i:03d}" for i in range(9)]
    for column in ("domain", "method", "model", "message"):
        for desc in (False, True):
            got = table(client, f"sort={column}&desc={int(desc)}").rows
            keys = [r[column] for r in got]
            assert keys == sorted(keys, reverse=desc), column
            # Ties are broken by id, ascending, whichever the direction.
            for a, b in zip(got, got[1:]):
                if a[column] == b[column]:
                    assert a["id"] < b["id"]
    # Labels: specimens without one last (ascending: [] sorts first in DuckDB, so check both).
    by_labels = ids(table(client, "sort=labels&desc=1"))
    assert by_labels[:2] == ["s002", "s005"]
    by_tags = table(client, "sort=tags&desc=0").rows
    assert [r["tags"] for r in by_tags] == sorted(r["tags"] for r in by_tags)


def test_filters(vault, client) -> None:
    populate(vault, 15)
    every = [f"s{i:03d}" for i in range(15)]
    q = "sort=specimen_id&desc=0"
    assert ids(table(client, q + "&domain=interpretability")) == [s for i, s in enumerate(every) if i % 3 == 1]
    assert ids(table(client, q + "&method=ablation_study")) == [s for i, s in enumerate(every) if i % 3 == 2]
    assert ids(table(client, q + "&tag=g2")) == [s for i, s in enumerate(every) if i % 5 == 2]
    assert ids(table(client, q + "&tag=odd&domain=training")) == ["s003", "s009"]
    # Free text: id, message (any case), model, tags.
    assert ids(table(client, q + "&q=alpha")) == ["s000", "s007", "s014"]
    assert ids(table(client, q + "&q=S01")) == [f"s{i:03d}" for i in range(10, 15)]
    assert ids(table(client, q + "&q=m3")) == ["s003", "s007", "s011"]
    assert ids(table(client, q + "&q=g4")) == ["s004", "s009", "s014"]
    # Percent and underscore are plain characters, not LIKE patterns.
    assert ids(table(client, q + "&q=%25")) == []
    assert ids(table(client, q + "&q=_")) == []
    t = table(client, q + "&domain=nope")
    assert t.rows == [] and t.total == "0"
    # The choices come from the catalog.
    page = client.get("/").text
    for value in ("interpretability", "sae_analysis", "g3", "odd"):
        assert f'<option value="{value}"' in page
    assert '<input type="checkbox" name="metrics" value="loss"' in page
    assert 'value="step"' not in page


def test_where_clause(vault, client) -> None:
    populate(vault, 10)
    q = "sort=specimen_id&desc=0&where="
    good = urllib.parse.quote("domain = 'training' AND list_contains(tags, 'even')")
    assert ids(table(client, q + good)) == ["s000", "s006"]
    sub = urllib.parse.quote("specimen_id IN (SELECT specimen_id FROM metrics WHERE acc > 0.99)")
    table(client, q + sub)  # a subquery is a condition too
    comment = urllib.parse.quote("model = 'M1' -- a trailing comment")
    assert ids(table(client, q + comment)) == ["s001", "s005", "s009"]
    # Combined with the other filters.
    assert ids(table(client, q + urllib.parse.quote("model <> 'M1'") + "&tag=odd")) == ["s003", "s007"]


@pytest.mark.parametrize("clause, says", [
    ("no_such_column = 1", "no_such_column"),
    ("domain = ", "syntax error"),
    ("1=1) UNION SELECT name FROM labels WHERE (1=1", "closes a parenthesis it did not open"),
    ("1=1) OR (1=1", "closes a parenthesis it did not open"),
    ("(1=1", "leaves a parenthesis open"),
    ("1=1; DROP TABLE catalog", "the query does not parse"),
    ("1=1)); DROP TABLE catalog; --", "closes a parenthesis"),
    ("specimen_id IN (SELECT * FROM read_csv('/etc/passwd'))", "Permission Error"),
])
def test_a_bad_where_clause_is_a_400_with_an_empty_table(vault, client, clause, says) -> None:
    populate(vault, 4)
    t = table(client, "where=" + urllib.parse.quote(clause), status=400)
    assert t.rows == []
    assert t.error is not None and says in t.error, t.error
    # Nothing was changed: every specimen is still there.
    assert len(table(client).rows) == 4


def test_pagination(vault, client) -> None:
    populate(vault, 120, steps=2)
    q = "sort=specimen_id&desc=0"
    t1 = table(client, q)
    assert len(t1.rows) == 50 and t1.total == "120"
    t3 = table(client, q + "&page=3")
    assert ids(t3) == [f"s{i:03d}" for i in range(100, 120)]
    assert ids(table(client, q + "&page=2&per_page=7")) == [f"s{i:03d}" for i in range(7, 14)]
    assert len(table(client, q + "&per_page=500").rows) == 120
    past = client.get("/?" + q + "&page=9")
    assert past.status_code == 200 and "past the end" in past.text and "page=3" in past.text
    # Links keep the whole view.
    page2 = client.get("/?" + q + "&page=2&per_page=10&domain=training&metrics=loss").text
    keep = "?sort=specimen_id&amp;desc=0&amp;domain=training&amp;metrics=loss"
    assert f'id="next" href="{keep}&amp;page=3&amp;per_page=10"' in page2
    assert f'id="prev" href="{keep}&amp;per_page=10"' in page2


@pytest.mark.parametrize("query, says", [
    ("page=0", "page must be at least 1"),
    ("page=two", "page must be a whole number"),
    ("per_page=501", "at most 500"),
    ("sort=nope", "sort must be one of"),
    ("sort=metric:nope", "no metric column 'nope'"),
    ("metrics=loss,nope", "no metric column 'nope'"),
    ("desc=maybe", "desc must be 1 or 0"),
])
def test_bad_parameters_are_a_clear_400(vault, client, query, says) -> None:
    populate(vault, 2)
    r = client.get("/?" + query)
    assert r.status_code == 400
    assert says in html.unescape(r.text)


def test_final_metric_values(vault, client) -> None:
    populate(vault, 8, steps=7)
    # A specimen whose last rows have no loss: its final loss is the last one it logged.
    path = vault.new("gaps", domain="training", method="fine_tuning")
    SpecimenStorage(path).write_metrics({"step": [0, 1, 2, 3], "loss": [4.0, 3.0, None, None],
                                         "acc": [0.1, 0.2, 0.3, 0.4]})
    vault.commit("gaps", message="gaps")
    # A file without a step column: the last row written.
    path = vault.new("no_steps", domain="training", method="fine_tuning")
    SpecimenStorage(path).write_metrics({"loss": [9.0, 1.0, 5.0]})
    vault.commit("no_steps", message="no steps")
    special = {("gaps", "loss"): 3.0, ("gaps", "acc"): 0.4, ("no_steps", "loss"): 5.0,
               ("no_steps", "acc"): None}
    t = table(client, "metrics=loss,acc&per_page=100")
    assert len(t.rows) == 10
    for row in t.rows:
        for column in ("loss", "acc"):
            key = (row["id"], column)
            want = special[key] if key in special else expected_final(vault, row["id"], column)
            got = row["metrics"][column]
            if want is None:
                assert got == "", (row["id"], column)
            else:
                assert math.isclose(float(got), want, rel_tol=1e-5), (row["id"], column, got, want)
    # Sorted by a final value: the order of the values computed independently.
    finals = {r["id"]: special.get((r["id"], "loss")) or expected_final(vault, r["id"], "loss")
              for r in t.rows}
    assert ids(table(client, "sort=metric:loss&desc=0")) == sorted(finals, key=finals.__getitem__)
    # Sorting by a metric shows it even if it was not picked.
    assert "loss" in table(client, "sort=metric:loss").headings[-1]


def test_retired_specimens_are_not_listed_and_labels_are(vault, client) -> None:
    populate(vault, 4)
    vault.label("best", "s002")
    retire(vault, "s001", "a broken run")
    t = table(client, "sort=specimen_id&desc=0")
    assert ids(t) == ["s000", "s002", "s003"]
    assert t.total == "3"
    assert {r["id"]: r["labels"] for r in t.rows}["s002"] == ["@best"]


def test_empty_vault_page_is_ok(vault, client) -> None:
    r = client.get("/")
    assert r.status_code == 200 and 'id="empty-state"' in r.text


def test_runs_are_counted_in_their_specimens_row(vault, client) -> None:
    populate(vault, 1)
    wd = vault.new("sweep", domain="training", method="fine_tuning", layout="runs")
    for i, run_id in enumerate(("20250102_090000", "20250102_100000")):
        s = SpecimenStorage(wd, run_id=run_id)
        s.write_metrics({"step": list(range(3 + i)), "loss": [1.0, 0.5, 0.25 - i / 10, 0.1][:3 + i]})
    vault.commit("sweep", message="two runs")
    t = table(client, "sort=specimen_id&desc=0&metrics=loss")
    assert ids(t) == ["s000", "sweep"]  # the runs are not rows of their own
    sweep = t.rows[1]
    assert sweep["runs"] == "2"
    # A specimen whose results are runs shows its newest run's final value.
    assert float(sweep["metrics"]["loss"]) == 0.1
    assert t.rows[0]["runs"] == ""


def test_ticked_rows_open_the_compare_page(vault, serve, browser, shot) -> None:
    populate(vault, 5)
    url = serve(vault)
    browser.get(url + "/?sort=specimen_id&desc=0")
    wait_for(browser, lambda: len(browser.find_elements("css selector", "#specimens tbody tr")) == 5)
    button = browser.find_element("id", "compare-selected")
    assert not button.is_enabled()
    for sid in ("s001", "s003"):
        browser.find_element("css selector", f'tr[data-id="{sid}"] input.pick').click()
    assert button.is_enabled() and button.text == "Compare selected (2)"
    shot("ticked")
    button.click()
    wait_for(browser, lambda: "/compare?" in browser.current_url)
    assert "ids=s001%2Cs003" in browser.current_url
    wait_for(browser, lambda: browser.execute_script("return document.body.dataset.rendered") == "1")
    names = browser.execute_script(
        "return document.querySelector('.js-plotly-plot').data.map(t => t.name)")
    assert {"s001", "s003"} <= set(names)
