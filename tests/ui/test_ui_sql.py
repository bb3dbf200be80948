"""The SQL page (``GET /sql``) and its downloads: results, types, refusals, escaping."""

from __future__ import annotations

import html
import io
import urllib.parse

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from starlette.testclient import TestClient

from cas_vault import SpecimenStorage, VaultQuery
from cas_vault.ui.app import create_app
from cas_vault.ui.pages import sql as sql_page

from ui_browser import wait_for

XSS_QUERY = """SELECT '<img src=x onerror="window.pwned=1">' AS "<b>x</b>", '<script>window.pwned=1</script>' AS s"""


def populate(vault, n: int = 4) -> None:
    for i in range(n):
        path = vault.new(f"s{i}", domain="training", method="fine_tuning", tags=["a", f"t{i}"])
        SpecimenStorage(path).write_metrics({"step": np.arange(5), "loss": np.arange(5) * 0.5 + i})
        vault.commit(f"s{i}", message=f"message {i}")


@pytest.fixture
def client(vault) -> TestClient:
    return TestClient(create_app(vault), base_url="http://127.0.0.1")


def url(path: str, sql: str) -> str:
    return path + "?" + urllib.parse.urlencode({"q": sql})


def test_run_a_query_in_the_browser(vault, serve, browser, shot) -> None:
    populate(vault)
    base = serve(vault)
    browser.get(base + "/sql")
    editor = wait_for(browser, lambda: browser.find_element("id", "sql-editor"))
    shot("editor")
    assert editor.get_attribute("value") == sql_page.EXAMPLE
    tables = [e.text for e in browser.find_elements("css selector", "#tables code.table-name")]
    assert {"catalog", "metrics", "lineage", "labels", "runs", "objects"} <= set(tables)
    editor.clear()
    editor.send_keys("SELECT specimen_id, tags, {'n': 1, 'xs': [1, 2]} AS nested, NULL AS nothing, "
                     "arg_max(loss, step) AS final FROM catalog JOIN metrics USING (specimen_id) "
                     "GROUP BY ALL ORDER BY specimen_id")
    browser.find_element("id", "run").click()
    wait_for(browser, lambda: browser.find_elements("css selector", "#result tbody tr"))
    shot("result")
    heads = [(th.find_element("css selector", ".col-name").text,
              th.find_element("css selector", ".col-type").text)
             for th in browser.find_elements("css selector", "#result thead th")]
    assert heads[0] == ("specimen_id", "String")
    assert heads[1] == ("tags", "List(String)")
    assert heads[2][0] == "nested" and heads[2][1].startswith("Struct")
    assert heads[4] == ("final", "Float64")
    rows = [[td.text for td in tr.find_elements("css selector", "td")]
            for tr in browser.find_elements("css selector", "#result tbody tr")]
    assert rows == [[f"s{i}", f'["a", "t{i}"]', '{"n": 1, "xs": [1, 2]}', "NULL", str(2.0 + i)]
                    for i in range(4)]
    assert browser.find_element("id", "row-count").text == "4 rows."
    # The editor keeps the query, and the downloads carry it.
    csv_link = browser.find_element("id", "download-csv").get_attribute("href")
    q = urllib.parse.parse_qs(urllib.parse.urlparse(csv_link).query)["q"][0]
    assert q.startswith("SELECT specimen_id, tags")
    assert browser.find_element("id", "sql-editor").get_attribute("value") == q


def test_a_refused_query_shows_the_message_in_the_browser(vault, serve, browser, shot) -> None:
    populate(vault, 1)
    base = serve(vault)
    browser.get(base + url("/sql", "SELECT * FROM read_csv('/etc/passwd')"))
    error = wait_for(browser, lambda: browser.find_element("id", "sql-error").text)
    shot("refused")
    assert "Permission Error" in error and "/etc/passwd" in error
    assert "Traceback" not in browser.page_source
    assert browser.find_elements("id", "result") == []
    severe = [e["message"] for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert all("status of 400" in m for m in severe), severe


def test_string_literals_and_column_names_are_shown_as_text(vault, serve, browser, shot) -> None:
    base = serve(vault)
    browser.get(base + url("/sql", XSS_QUERY))
    wait_for(browser, lambda: browser.find_elements("css selector", "#result tbody tr"))
    shot("xss")
    assert browser.find_element("css selector", "#result th .col-name").text == "<b>x</b>"
    cells = [td.text for td in browser.find_elements("css selector", "#result tbody td")]
    assert cells == ['<img src=x onerror="window.pwned=1">', "<script>window.pwned=1</script>"]
    assert browser.find_elements("css selector", "#result img, #result b, #result script") == []
    assert browser.execute_script("return window.pwned") is None


def test_results_table_and_row_cap(vault, client, monkeypatch) -> None:
    populate(vault)
    r = client.get(url("/sql", "SELECT specimen_id, message FROM catalog ORDER BY specimen_id"))
    assert r.status_code == 200
    for i in range(4):
        assert f"<td>s{i}</td><td>message {i}</td>" in r.text
    monkeypatch.setattr(sql_page, "MAX_ROWS_SHOWN", 7)
    r = client.get(url("/sql", "SELECT * FROM range(20)"))
    assert r.status_code == 200
    assert r.text.count("<tr><td") == 7
    assert "first 7 of <strong>20</strong> rows" in r.text
    # No query: the example in the editor, nothing run.
    r = client.get("/sql")
    assert r.status_code == 200 and html.escape(sql_page.EXAMPLE, quote=False) in r.text
    assert 'id="result"' not in r.text


def test_downloads_parse_back_to_the_same_data(vault, client) -> None:
    populate(vault)
    sql = ("SELECT c.specimen_id, c.tags, c.created, m.step, m.loss FROM catalog c "
           "JOIN metrics m USING (specimen_id) ORDER BY c.specimen_id, m.step")
    want = VaultQuery(vault).search(sql)
    parquet = client.get(url("/sql.parquet", sql))
    assert parquet.status_code == 200
    assert parquet.headers["content-disposition"] == 'attachment; filename="query.parquet"'
    assert_frame_equal(pl.read_parquet(io.BytesIO(parquet.content)), want)
    csv = client.get(url("/sql.csv", sql))
    assert csv.status_code == 200
    assert csv.headers["content-disposition"] == 'attachment; filename="query.csv"'
    assert csv.headers["content-type"].startswith("text/csv")
    got = pl.read_csv(io.BytesIO(csv.content), try_parse_dates=True)
    assert got.height == want.height == 20
    assert_frame_equal(got.drop("tags"), want.drop("tags"), check_dtypes=False)
    # Lists are written as JSON text.
    assert got["tags"].to_list() == [f'["a", "t{i}"]' for i in range(4) for _ in range(5)]


@pytest.mark.parametrize("sql, says", [
    ("CREATE TABLE x AS SELECT 1", "only SELECT statements run, not CREATE"),
    ("COPY catalog TO 'out.csv'", "not COPY"),
    ("ATTACH 'other.db' AS other", "not ATTACH"),
    ("INSERT INTO catalog (specimen_id) VALUES ('x')", "not INSERT"),
    ("SELECT 1; DROP TABLE catalog", "exactly one SQL statement"),
    ("SET enable_external_access = true", "not SET"),
    ("SELECT * FROM read_csv('/etc/passwd')", "Permission Error"),
    ("SELECT * FROM read_text('../../../etc/hostname')", "Permission Error"),
    ("SELECT * FROM glob('/*')", "Permission Error"),
    ("SELEC 1", "does not parse"),
    ("SELECT no_such_column FROM catalog", "no_such_column"),
    ("   ", None),
])
def test_write_attempts_and_file_reads_are_refused(vault, client, sql, says) -> None:
    populate(vault, 1)
    for path in ("/sql", "/sql.csv", "/sql.parquet"):
        r = client.get(url(path, sql))
        if says is None:  # an empty query: the page shows the editor; a download refuses
            assert r.status_code == (200 if path == "/sql" else 400)
            continue
        assert r.status_code == 400, (path, r.text[-500:])
        assert r.headers["content-type"].startswith("text/html")
        text = html.unescape(r.text)
        assert says in text, (path, text[-1500:])
        assert "Traceback" not in text
    assert VaultQuery(vault).search("SELECT count(*) AS n FROM catalog")["n"][0] == 1


def test_a_runaway_query_times_out_with_a_400(vault, client, monkeypatch) -> None:
    monkeypatch.setattr(sql_page, "QUERY_TIMEOUT", 0.2)
    slow = "SELECT count(*) FROM range(1000000000000) a"
    r = client.get(url("/sql", slow))
    assert r.status_code == 400
    assert "ran longer than its timeout of 0.2 s" in html.unescape(r.text)
    assert client.get(url("/sql.csv", slow)).status_code == 400


def test_an_oversized_query_is_refused(vault, client) -> None:
    r = client.get(url("/sql", "SELECT 1" + " " * sql_page.MAX_SQL_CHARS))
    assert r.status_code == 400 and "at most" in r.text
