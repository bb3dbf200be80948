"""VaultQuery and `vault query`: read-only SQL, typed results, bound parameters, per-specimen
views that follow the vault when it moves, the seed README's examples, and `vault log --graph`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import duckdb
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from cas_vault import SpecimenStorage, Vault, VaultQuery
from cas_vault.catalog import connect_read_only, release_writer
from cas_vault.cli import cli
from cas_vault.errors import InvalidInputError, QueryTimeoutError

DEMO = "example_synthetic_demo"


@pytest.fixture(scope="module")
def demo_vault(tmp_path_factory) -> Vault:
    """The shipped demo plus an interpretability specimen tagged gpt2 (for Examples 1, 2, 5)."""
    from cas_vault.demo import run_demo

    os.environ["CAS_VAULT_AUTHOR"] = "tester"
    vault = run_demo(tmp_path_factory.mktemp("demo") / "vault").vault
    sid = "2024_12_19_sae_gpt2"
    s = SpecimenStorage(vault.new(sid, domain="interpretability", method="sae_analysis",
                                  tags=["gpt2", "layer_12", "seed_readme"], parents=[DEMO]))
    step = np.arange(100)
    s.write_metrics({"step": step, "loss": 1.0 / (step + 1), "accuracy": step / 100})
    vault.commit(sid, message="SAE on gpt2 layer 12")
    return vault


def _invoke(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# -- the seed README's examples -------------------------------------------------------------------
def test_seed_readme_examples_run_against_the_demo(demo_vault, monkeypatch):
    monkeypatch.chdir(demo_vault.root / "specimens")  # VaultQuery() finds the vault above the cwd
    vault = VaultQuery()

    # Example 1: Find All Specimens by Domain
    ex1 = vault.search("""
        SELECT specimen_id, created, method, tags
        FROM catalog
        WHERE domain = 'interpretability'
        ORDER BY created DESC
    """)
    interp = {r[0] for r in demo_vault.query("SELECT specimen_id FROM catalog").rows()
              if demo_vault.get(r[0]).manifest.domain == "interpretability"}
    assert ex1["specimen_id"][0] == "2024_12_19_sae_gpt2" and set(ex1["specimen_id"]) == interp
    assert ex1.schema["created"] == pl.Datetime("us") and ex1.schema["tags"] == pl.List(pl.String)

    # Example 2: Search by Tag
    ex2 = vault.search("""
        SELECT specimen_id, domain, method
        FROM catalog
        WHERE array_contains(tags, 'gpt2')
    """)
    assert ("2024_12_19_sae_gpt2", "interpretability", "sae_analysis") in ex2.rows()
    assert all("gpt2" in demo_vault.get(sid).manifest.tags for sid in ex2["specimen_id"])

    # Example 3: Find Recent Experiments
    ex3 = vault.search("""
        SELECT specimen_id, created, domain, method
        FROM catalog
        WHERE created >= '2024-12-01'
        ORDER BY created DESC
        LIMIT 10
    """)
    assert DEMO in ex3["specimen_id"].to_list() and ex3["specimen_id"][0] == "2024_12_19_sae_gpt2"

    # Example 4: Query Specific Specimen Metrics (the view of the demo specimen)
    ex4 = vault.search(f"""
        SELECT step, loss, accuracy
        FROM exp_{DEMO}
        WHERE step >= 50
    """)
    assert ex4.height == 50 and ex4["step"].min() == 50

    # Example 5, as the seed wrote it, is not valid SQL (`step` is not a column of the CTE and
    # the seed says "in practice you'd UNION views"): it fails with a clear error...
    with pytest.raises(InvalidInputError, match="step"):
        vault.search("""
            WITH specimen_ids AS (SELECT specimen_id FROM catalog WHERE domain = 'interpretability')
            SELECT 'exp_' || specimen_id AS view_name, MAX(step) AS final_step
            FROM specimen_ids
            LIMIT 10
        """)
    # ...and what it meant is one query over `metrics`: interpretability specimens whose final
    # loss is below 0.2.
    ex5 = vault.search("""
        WITH specimen_ids AS (
            SELECT specimen_id
            FROM catalog
            WHERE domain = 'interpretability'
        )
        SELECT
            'exp_' || specimen_id AS view_name,
            MAX(step) AS final_step,
            arg_max(loss, step) AS final_loss
        FROM specimen_ids JOIN metrics USING (specimen_id)
        GROUP BY specimen_id
        HAVING final_loss < 0.2
        LIMIT 10
    """)
    assert ("exp_2024_12_19_sae_gpt2", 99, 0.01) in ex5.rows()
    assert (ex5["final_loss"] < 0.2).all()

    # Example 6: Compare Metrics Across Experiments
    ex6 = vault.search(f"""
        SELECT
            'example' AS experiment,
            AVG(loss) AS mean_loss,
            MIN(loss) AS min_loss
        FROM exp_{DEMO}
    """)
    demo_loss = demo_vault.specimen(DEMO).read_metrics()["loss"]
    assert ex6["mean_loss"][0] == pytest.approx(demo_loss.mean())
    assert ex6["min_loss"][0] == pytest.approx(demo_loss.min())


# -- results -------------------------------------------------------------------------------------
def test_results_are_typed_even_when_empty_and_params_are_bound(demo_vault):
    q = VaultQuery(demo_vault)
    empty = q.search("SELECT specimen_id, created, tags, logical_bytes FROM catalog WHERE false")
    assert empty.height == 0
    assert empty.schema == pl.Schema({"specimen_id": pl.String, "created": pl.Datetime("us"),
                                      "tags": pl.List(pl.String), "logical_bytes": pl.Int64})
    by_list = q.search("SELECT specimen_id FROM catalog WHERE domain = ? AND list_contains(tags, ?)",
                       ["interpretability", "seed_readme"])
    by_name = q.search("SELECT specimen_id FROM catalog WHERE list_contains(tags, $t)", {"t": "seed_readme"})
    assert by_list.rows() == by_name.rows() == [("2024_12_19_sae_gpt2",)]
    assert q.find_by_tag("seed_readme")["specimen_id"].to_list() == ["2024_12_19_sae_gpt2"]
    assert q.find_by_tag("gpt2') OR true --").height == 0  # a value, never SQL
    assert demo_vault.query("SELECT 1 AS one").rows() == [(1,)]


@pytest.mark.parametrize("sql", [
    "DELETE FROM catalog",
    "INSERT INTO lineage VALUES ('a', 'b', 'c', 'd')",
    "DROP TABLE metrics",
    "CREATE TABLE x AS SELECT 1",
    "COPY (SELECT 1) TO '{tmp}/out.csv'",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{tmp}/out.csv'",
    "ATTACH '{tmp}/other.duckdb'",
    "SELECT 1; DELETE FROM catalog",
    "SET threads = 1",
    "SET enable_external_access = true",
    "INSTALL httpfs",
    "LOAD httpfs",
])
def test_queries_cannot_write(demo_vault, tmp_path, sql):
    before = VaultQuery(demo_vault).search("SELECT count(*) AS n FROM catalog")["n"][0]
    with pytest.raises(InvalidInputError, match="read-only|one SQL statement"):
        VaultQuery(demo_vault).search(sql.format(tmp=tmp_path))
    assert not list(tmp_path.iterdir())
    assert VaultQuery(demo_vault).search("SELECT count(*) AS n FROM catalog")["n"][0] == before


# -- the sandbox: no file outside the vault, no network, no extensions ------------------------------
# Hours on any machine, and nothing DuckDB can shortcut.
ENDLESS = "SELECT sum(hash(i)) AS s FROM range(10000000000000) t(i)"


@pytest.fixture
def listener(monkeypatch):
    """A local TCP server that records every connection; HTTP(S) proxies point at it, so any
    network attempt (a file over http, an extension download) shows up here."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    hits: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    hits.append(conn.recv(200))
                except OSError:
                    hits.append(b"?")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")
    yield port, hits
    stop.set()
    thread.join(5)
    srv.close()


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_text('{outside}')",
    "SELECT * FROM read_csv('{outside}')",
    "SELECT * FROM read_csv('{objects}/{from_objects}')",  # ../../.. out of objects/
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_csv('http://127.0.0.1:{port}/x.csv')",
    "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
])
def test_queries_cannot_read_outside_the_vault_or_reach_the_network(demo_vault, tmp_path, listener, sql):
    port, hits = listener
    outside = tmp_path / "outside.csv"
    outside.write_text("secret,value\nkey,42\n")
    objects = demo_vault.root / "objects"
    sql = sql.format(outside=outside, objects=objects, from_objects=os.path.relpath(outside, objects),
                     port=port)
    with pytest.raises(InvalidInputError, match="refused"):
        VaultQuery(demo_vault).search(sql)
    assert hits == []  # refused before any connection, and no extension was fetched


def test_queries_read_the_vault_objects_and_say_why_others_are_refused(demo_vault):
    # The vault's own objects stay readable: the exp_<id> views read them.
    digest = demo_vault.get(DEMO).tree["strata/metrics.parquet"].digest
    path = demo_vault.objects.path(digest)
    assert VaultQuery(demo_vault).search(f"SELECT count(*) AS n FROM read_parquet('{path}')")["n"][0] == \
        demo_vault.specimen(DEMO).read_metrics().height
    result = CliRunner().invoke(cli, ["--vault", str(demo_vault.root), "query",
                                      "SELECT * FROM read_text('/etc/passwd')"])
    assert result.exit_code == 2 and "root:" not in result.output
    assert "refused" in result.output and "vault's own objects only" in result.output


@pytest.mark.parametrize("sql", [
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "RESET enable_external_access",
    "SET allowed_directories = ['/']",
    "SET autoinstall_known_extensions = true",
    "SET lock_configuration = false",
    "COPY (SELECT 1) TO '{tmp}/out.csv'",
    "ATTACH '{tmp}/other.duckdb'",
])
def test_the_read_only_connection_cannot_be_reopened_by_sql(demo_vault, tmp_path, listener, sql):
    """Below the one-SELECT check: the connection itself refuses, so no SQL undoes the sandbox."""
    _port, hits = listener
    release_writer(demo_vault.root)
    conn = connect_read_only(demo_vault.catalog_path, 30)
    try:
        with pytest.raises(duckdb.Error):
            conn.execute(sql.format(tmp=tmp_path))
        with pytest.raises(duckdb.PermissionException):
            conn.execute("SELECT * FROM read_text('/etc/passwd')")
        assert conn.execute("SELECT current_setting('enable_external_access')").fetchone() == (False,)
    finally:
        conn.close()
    assert not list(tmp_path.iterdir()) and hits == []


def test_timeout_cancels_a_long_query(demo_vault):
    q = VaultQuery(demo_vault)
    started = time.monotonic()
    with pytest.raises(QueryTimeoutError, match="timeout of 0.5 s") as info:
        q.search(ENDLESS, timeout=0.5)
    assert time.monotonic() - started < 60 and info.value.exit_code == 124
    assert q.search("SELECT count(*) AS n FROM catalog", timeout=60)["n"][0] >= 2  # still fine
    for bad in (0, -1, "1", True):
        with pytest.raises(InvalidInputError, match="timeout"):
            q.search("SELECT 1", timeout=bad)
    result = CliRunner().invoke(cli, ["--vault", str(demo_vault.root), "query", ENDLESS, "--timeout", "0.5"])
    assert result.exit_code == 124, result.output
    assert "timeout" in result.output and "Traceback" not in result.output
    assert CliRunner().invoke(cli, ["--vault", str(demo_vault.root), "query", "SELECT 1",
                                    "--timeout", "0"]).exit_code == 2


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _has_open(pid: int, path: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                return True
        except OSError:
            continue
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches the process through /proc")
def test_ctrl_c_cancels_a_running_query(vault, make_specimen):
    make_specimen("s")
    vault.commit("s")
    vault.index()  # current: the query process only reads the catalog
    release_writer(vault.root)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cas_vault", "--vault", str(vault.root), "query", ENDLESS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell without job control starts background commands with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # Running the query: the catalog is open, and the process keeps burning CPU (nothing
        # else it does after opening the catalog takes a second of CPU, on any machine).
        deadline = time.monotonic() + 120
        while not _has_open(proc.pid, str(vault.catalog_path)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the query never opened the catalog"
            time.sleep(0.05)
        base = _cpu_seconds(proc.pid)
        while _cpu_seconds(proc.pid) - base < 1.0:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the query never ran"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "cancelled" in err and "Traceback" not in err and out == ""
    # Nothing is left holding the catalog.
    assert VaultQuery(vault).search("SELECT specimen_id FROM catalog").rows() == [("s",)]


def test_bad_sql_is_a_clear_error_exit_2(demo_vault):
    for sql in ("SELEC 1", "SELECT * FROM no_such_table", "SELECT nope FROM catalog", ""):
        result = CliRunner().invoke(cli, ["--vault", str(demo_vault.root), "query", sql])
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and "Traceback" not in result.output


# -- CLI formats ---------------------------------------------------------------------------------
def test_cli_formats(demo_vault, tmp_path):
    root = str(demo_vault.root)
    sql = "SELECT specimen_id, tags, created FROM catalog ORDER BY seq"
    table = _invoke("--vault", root, "query", sql)
    assert table.exit_code == 0 and DEMO in table.output and "specimen_id" in table.output
    csv = _invoke("--vault", root, "query", sql, "--format", "csv")
    assert csv.exit_code == 0
    parsed = pl.read_csv(csv.output.encode())
    assert parsed.columns == ["specimen_id", "tags", "created"] and parsed["specimen_id"][0] == DEMO
    assert json.loads(parsed["tags"][0]) == ["synthetic", "demo"]
    js = _invoke("--vault", root, "query", sql, "--format", "json")
    data = json.loads(js.output)
    assert data[0]["specimen_id"] == DEMO and data[0]["tags"] == ["synthetic", "demo"]
    assert data[0]["created"].startswith("20") and "T" in data[0]["created"]

    no_output = _invoke("--vault", root, "query", sql, "--format", "parquet")
    assert no_output.exit_code == 2 and "--output" in no_output.output
    out = tmp_path / "metrics.parquet"
    pq = _invoke("--vault", root, "query", "SELECT * FROM metrics", "--format", "parquet", "-o", str(out))
    assert pq.exit_code == 0, pq.output
    written = pl.read_parquet(out)
    assert {"specimen_id", "file", "step", "loss"} <= set(written.columns) and written.height >= 200
    csv_file = tmp_path / "r.csv"
    assert _invoke("--vault", root, "query", sql, "--format", "csv", "-o", str(csv_file)).exit_code == 0
    assert csv_file.read_text().startswith("specimen_id,tags,created")


def test_cli_index(demo_vault):
    result = _invoke("--vault", str(demo_vault.root), "index")
    assert result.exit_code == 0 and "0 new commits" in result.output
    result = _invoke("--vault", str(demo_vault.root), "index", "--rebuild")
    assert result.exit_code == 0 and "Rebuilt" in result.output


# -- views and paths -----------------------------------------------------------------------------
def test_views_of_ids_that_need_quoting_and_moved_vaults(tmp_path, monkeypatch):
    vault = Vault.init(tmp_path / "a" / "vault")
    for sid, scale in (("2024-12-19.run.v2", 1.0), ("2024-12-19", 2.0)):
        s = SpecimenStorage(vault.new(sid, domain="training", method="fine_tuning"))
        s.write_metrics({"step": np.arange(4), "loss": scale * np.arange(4.0)})
        vault.commit(sid)
    release_writer(vault.root)
    got = VaultQuery(vault).search('SELECT sum(loss) AS s FROM "exp_2024-12-19.run.v2"')
    assert got["s"][0] == 6.0
    both = VaultQuery(vault).search(
        'SELECT (SELECT sum(loss) FROM "exp_2024-12-19") AS b, (SELECT sum(loss) FROM "exp_2024-12-19.run.v2") AS a')
    assert both.row(0) == (12.0, 6.0)

    moved = tmp_path / "elsewhere" / "renamed vault's copy"
    moved.parent.mkdir()
    os.rename(vault.root, moved)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    q = VaultQuery(moved)
    assert q.search('SELECT count(*) AS n FROM "exp_2024-12-19"')["n"][0] == 4
    assert q.search("SELECT count(*) AS n FROM metrics")["n"][0] == 8
    result = _invoke("--vault", str(moved), "query", 'SELECT max(loss) AS m FROM "exp_2024-12-19"',
                     "--format", "json")
    assert result.exit_code == 0 and json.loads(result.output) == [{"m": 6.0}]


def test_query_builds_a_missing_catalog(vault, make_specimen):
    make_specimen("s")
    vault.commit("s")
    release_writer(vault.root)
    vault.catalog_path.unlink()
    assert VaultQuery(vault).search("SELECT specimen_id FROM catalog").rows() == [("s",)]


# -- log --graph ---------------------------------------------------------------------------------
def test_log_graph_draws_branches_and_merges(vault, make_specimen):
    make_specimen("root")
    vault.commit("root", message="the root")
    make_specimen("left", parents=["root"])
    vault.commit("left")
    make_specimen("right", parents=["root"])
    vault.commit("right")
    make_specimen("merged", parents=["left", "right"])
    vault.commit("merged", message="two parents")
    make_specimen("lonely")
    vault.commit("lonely")
    result = _invoke("--vault", str(vault.root), "log", "--graph")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "\x1b[" not in result.output  # colour only on a terminal
    ids = [next(w for w in ("lonely", "merged", "left", "right", "root") if f" {w}  " in line + "  ")
           for line in lines if "*" in line]
    assert ids == ["lonely", "merged", "right", "left", "root"]  # children above parents
    assert lines[0].startswith("* lonely") and lines[1] == ""  # a root ends its line of descent
    merged = next(i for i, line in enumerate(lines) if " merged " in line)
    assert lines[merged].startswith("| *   ") or lines[merged].startswith("*   ")
    assert "\\" in lines[merged + 1]  # the merge opens two columns
    assert any("/" in line for line in lines[merged:])  # and they join again at the root
    assert "two parents" in lines[merged] and vault.resolve("merged")[:12] in lines[merged]
    lineage = _invoke("--vault", str(vault.root), "log", "merged", "--graph")
    assert "lonely" not in lineage.output and "root" in lineage.output
    both = CliRunner().invoke(cli, ["--vault", str(vault.root), "log", "--graph", "--json"])
    assert both.exit_code == 2


def test_binary_columns_render_as_duckdb_blob_text_in_csv_and_json(tmp_path) -> None:
    # polars cannot write binary to CSV; a query selecting a BLOB must not end as an internal
    # error, and the text must say exactly which bytes (as DuckDB itself prints a BLOB).
    import json

    from click.testing import CliRunner

    from cas_vault import Vault
    from cas_vault.cli import cli

    v = Vault.init(tmp_path / "v")
    sql = "SELECT '\\xAA\\x00'::BLOB AS b, [('\\x01')::BLOB] AS l, 7 AS n"
    r = CliRunner().invoke(cli, ["--vault", str(v.root), "query", sql, "--format", "csv"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[:2] == ["b,l,n", '\\xAA\\x00,"[""\\\\x01""]",7']
    r = CliRunner().invoke(cli, ["--vault", str(v.root), "query", sql, "--format", "json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == [{"b": "\\xAA\\x00", "l": ["\\x01"], "n": 7}]
