"""The DuckDB catalog: what a commit puts in it, incremental and full indexing, staleness,
recovery from a deleted or foreign file, and concurrency with other processes."""

from __future__ import annotations

import datetime as dt
import math
import shutil
import subprocess
import sys
import textwrap

from pathlib import Path

import duckdb
import polars as pl
import pytest

from cas_vault import SpecimenStorage, Vault, VaultQuery
from cas_vault import catalog as catalog_mod
from cas_vault.catalog import STALE_MARKER, release_writer
from cas_vault.errors import InvalidInputError
from cas_vault.query import CatalogStaleWarning

# The recursive CTE documented in docs/catalog.md, verbatim: every ancestor of a specimen.
ANCESTORS_CTE = """
WITH RECURSIVE ancestors(specimen_id, depth) AS (
    SELECT parent, 1 FROM lineage WHERE child = ?
    UNION
    SELECT l.parent, a.depth + 1 FROM lineage l JOIN ancestors a ON l.child = a.specimen_id
)
SELECT specimen_id, min(depth) AS depth FROM ancestors GROUP BY specimen_id ORDER BY depth, specimen_id
"""
DESCENDANTS_CTE = """
WITH RECURSIVE descendants(specimen_id, depth) AS (
    SELECT child, 1 FROM lineage WHERE parent = ?
    UNION
    SELECT l.child, d.depth + 1 FROM lineage l JOIN descendants d ON l.parent = d.specimen_id
)
SELECT specimen_id, min(depth) AS depth FROM descendants GROUP BY specimen_id ORDER BY depth, specimen_id
"""


def _rows(vault: Vault, sql: str, params: list | None = None) -> list[tuple]:
    """Read the catalog file directly (read-only), independently of VaultQuery."""
    release_writer(vault.root)
    conn = duckdb.connect(str(vault.catalog_path), read_only=True)
    try:
        return conn.execute(sql, params or []).fetchall()
    finally:
        conn.close()


def _metric_types(vault: Vault) -> dict[str, str]:
    return dict(_rows(vault, "SELECT column_name, data_type FROM duckdb_columns() "
                             "WHERE table_name = 'metrics'"))


def _snapshot(vault: Vault) -> dict[str, list[tuple]]:
    return {
        "catalog": _rows(vault, "SELECT * EXCLUDE (metadata, config), metadata::VARCHAR, config::VARCHAR "
                                "FROM catalog ORDER BY seq"),
        "lineage": _rows(vault, "SELECT * FROM lineage ORDER BY ALL"),
        "objects": _rows(vault, "SELECT * FROM objects ORDER BY ALL"),
        "metrics": _rows(vault, "SELECT * FROM metrics ORDER BY ALL"),
    }


@pytest.fixture
def diamond(vault, make_specimen):
    """a -> b, a -> c, (b, c) -> d: a derived specimen with two parents."""
    make_specimen("a", seed=1)
    vault.commit("a", message="root")
    make_specimen("b", seed=2, parents=["a"])
    vault.commit("b", message="left")
    make_specimen("c", seed=3, parents=["a"], tags=("gpt2", "layer_12"),
                  domain="interpretability", method="sae_analysis")
    vault.commit("c", message="right")
    make_specimen("d", seed=4, parents=["b", "c"])
    vault.commit("d", message="merge")
    return vault


def test_commit_writes_catalog_row_with_the_seed_columns(diamond):
    v = diamond
    release_writer(v.root)
    assert not (v.root / STALE_MARKER).exists()
    rows = _rows(v, "SELECT specimen_id, domain, method, model, tags, status, commit, parents, message, "
                    "author, logical_bytes, unique_bytes, seq, typeof(created), typeof(tags) "
                    "FROM catalog ORDER BY seq")
    assert [r[0] for r in rows] == ["a", "b", "c", "d"]
    assert [r[12] for r in rows] == [0, 1, 2, 3]  # journal order
    for sid, domain, method, model, tags, status, commit, parents, message, author, logical, unique, \
            _seq, created_type, tags_type in rows:
        info = v.show(sid)
        assert commit == info.digest
        assert parents == list(info.commit.parents)
        assert (domain, method, model) == (info.commit.manifest.domain, info.commit.manifest.method,
                                           info.commit.manifest.model)
        assert tags == list(info.commit.manifest.tags)
        assert (message, author, status) == (info.commit.message, "tester", "committed")
        assert (logical, unique) == (info.logical_bytes, info.unique_bytes)
        assert (created_type, tags_type) == ("TIMESTAMP", "VARCHAR[]")
    config = _rows(v, "SELECT config->>'seed' FROM catalog WHERE specimen_id = 'c'")
    assert config == [("3",)]


def test_lineage_edges_and_documented_recursive_ctes(diamond):
    v = diamond
    edges = _rows(v, "SELECT child, parent, child_commit, parent_commit FROM lineage ORDER BY child, parent")
    assert [(c, p) for c, p, _, _ in edges] == [("b", "a"), ("c", "a"), ("d", "b"), ("d", "c")]
    for child, parent, child_commit, parent_commit in edges:
        assert child_commit == v.resolve(child) and parent_commit == v.resolve(parent)
    assert _rows(v, ANCESTORS_CTE, ["d"]) == [("b", 1), ("c", 1), ("a", 2)]
    assert _rows(v, DESCENDANTS_CTE, ["a"]) == [("b", 1), ("c", 1), ("d", 2)]
    assert _rows(v, ANCESTORS_CTE, ["a"]) == []
    # The same through the table macros the catalog ships.
    assert _rows(v, "SELECT * FROM ancestors('d') ORDER BY 1") == [("a",), ("b",), ("c",)]
    assert _rows(v, "SELECT * FROM descendants('b') ORDER BY 1") == [("d",)]


def test_indexed_commits_is_what_verify_compares_with_the_refs(diamond, tmp_path):
    assert catalog_mod.indexed_commits(diamond) == diamond.refs.all()
    assert catalog_mod.indexed_commits(Vault.init(tmp_path / "empty")) == {}


def test_objects_table_lists_every_file_of_every_commit(diamond):
    v = diamond
    expected = sorted(
        (e.digest, e.size, e.kind, sid, path)
        for sid in "abcd" for path, e in v.get(sid).tree.items()
    )
    assert sorted(_rows(v, "SELECT digest, size, kind, specimen_id, path FROM objects")) == expected


def test_metrics_union_by_name_new_columns_widening_and_nan(vault):
    def commit(sid: str, metrics: dict) -> None:
        SpecimenStorage(vault.new(sid, domain="training", method="fine_tuning")).write_metrics(metrics)
        vault.commit(sid)

    commit("ints", {"step": [0, 1], "loss": [3, 2]})                      # loss BIGINT
    commit("floats", {"step": [0, 1], "loss": [0.5, math.nan], "acc": [math.inf, -math.inf]})
    commit("texts", {"step": [0], "note": ["hello"], "specimen_id": ["shadow"]})
    commit("mixed", {"step": [0], "acc": ["high"]})                      # acc: DOUBLE + text
    release_writer(vault.root)
    assert not (vault.root / STALE_MARKER).exists()
    types = _metric_types(vault)
    # Numbers never become text: acc stays DOUBLE and "mixed"'s text is a catalog problem.
    assert types["loss"] == "DOUBLE" and types["acc"] == "DOUBLE" and types["note"] == "VARCHAR"
    assert types["metric_specimen_id"] == "VARCHAR"
    rows = _rows(vault, "SELECT specimen_id, file, step, loss, acc, note, metric_specimen_id "
                        "FROM metrics ORDER BY specimen_id, step")
    by = {(r[0], r[2]): r for r in rows}
    assert by[("ints", 0)][3] == 3.0 and by[("ints", 0)][4] is None
    assert math.isnan(by[("floats", 1)][3])  # NaN is a value, not NULL
    assert by[("floats", 0)][4] == math.inf and by[("floats", 1)][4] == -math.inf
    assert by[("mixed", 0)][4] is None
    assert _rows(vault, "SELECT specimen_id, file, column_name, written_type, catalog_type "
                        "FROM catalog_problems") == [("mixed", "metrics", "acc", "VARCHAR", "DOUBLE")]
    assert by[("texts", 0)][5:] == ("hello", "shadow") and by[("texts", 0)][1] == "metrics"
    # The final value per specimen is one query.
    final = dict(_rows(vault, "SELECT specimen_id, arg_max(loss, step) FROM metrics "
                              "WHERE loss IS NOT NULL GROUP BY 1"))
    assert final["ints"] == 2.0 and math.isnan(final["floats"])
    # A rebuild (all files in one transaction) gives the same table as commit-by-commit updates.
    before = _rows(vault, "SELECT * FROM metrics ORDER BY ALL")
    vault.index(rebuild=True)
    after = _rows(vault, "SELECT * FROM metrics ORDER BY ALL")
    assert [tuple(map(repr, r)) for r in after] == [tuple(map(repr, r)) for r in before]


# -- one specimen cannot change everyone's answers ------------------------------------------------
# The good specimen's loss is 1.9 at step 9 and 0.5 at its last step, 10: with `step` turned into
# text, arg_max(loss, step) picks step '9' (the largest string) and says '1.9'.
GOOD = {"step": list(range(11)), "loss": [3.0] * 9 + [1.9, 0.5]}
POISONERS = {
    "strings": {"step": ["a", "b"], "loss": ["x", "1.9"]},             # text where others wrote numbers
    "nulls": {"step": [0, 1], "loss": [None, None]},                   # an all-null column
    "empty": pl.DataFrame({"step": pl.Series([], dtype=pl.String),     # no rows at all
                           "loss": pl.Series([], dtype=pl.String)}),
}


def _commit_metrics(vault: Vault, sid: str, metrics) -> None:
    SpecimenStorage(vault.new(sid, domain="training", method="fine_tuning")).write_metrics(metrics)
    vault.commit(sid)


@pytest.mark.parametrize("poison_first", [True, False], ids=["poison-first", "poison-last"])
def test_a_poisoning_specimen_does_not_change_the_final_loss_of_others(vault, poison_first):
    order = [*POISONERS.items(), ("good", GOOD)] if poison_first else [("good", GOOD), *POISONERS.items()]
    for sid, metrics in order:
        _commit_metrics(vault, sid, metrics)
    q = VaultQuery(vault)
    final = q.search("SELECT specimen_id, arg_max(loss, step) AS final_loss FROM metrics GROUP BY 1")
    assert final.schema["final_loss"] == pl.Float64
    by = dict(final.rows())
    assert by["good"] == 0.5
    assert by["strings"] is None and by["nulls"] is None and "empty" not in by
    types = _metric_types(vault)
    assert (types["step"], types["loss"]) == ("BIGINT", "DOUBLE")

    # The conflict is recorded, naming the specimen and the columns...
    problems = q.search("SELECT specimen_id, file, column_name, written_type, catalog_type, detail "
                        "FROM catalog_problems ORDER BY column_name")
    assert problems.drop("detail").rows() == [("strings", "metrics", "loss", "VARCHAR", "DOUBLE"),
                                              ("strings", "metrics", "step", "VARCHAR", "BIGINT")]
    assert all("strings" in d and "read_metrics" in d for d in problems["detail"])
    assert [(p.specimen_id, p.column) for p in catalog_mod.catalog_problems(vault)] == \
        [("strings", "loss"), ("strings", "step")]
    # ...its rows stay (NULL where it conflicts), and its own values are still readable.
    assert q.search("SELECT count(*) AS n FROM metrics WHERE specimen_id = 'strings'")["n"][0] == 2
    assert q.search("SELECT loss FROM exp_strings")["loss"].to_list() == ["x", "1.9"]
    assert vault.specimen("strings").read_metrics()["step"].to_list() == ["a", "b"]

    # `vault index` reports the problems as information (exit 0).
    from click.testing import CliRunner

    from cas_vault.cli import cli

    result = CliRunner().invoke(cli, ["--vault", str(vault.root), "index"])
    assert result.exit_code == 0, result.output
    assert "2 catalog problem(s)" in result.output and "strings: metrics.loss is VARCHAR" in result.output


# Every kind of column a specimen can write, and every kind of disagreement between them.
KINDS = {
    "ints": {"step": [0, 1], "loss": [3, 2], "flag": [True, False]},
    "floats": {"step": [0, 1], "loss": [0.5, math.nan], "acc": [0.25, 0.5]},
    "text_loss": {"step": [0], "loss": ["high"], "note": ["first a note in text"]},
    "null_loss": {"step": [0, 1], "loss": [None, None], "acc": [None, None]},
    "empty": pl.DataFrame({"step": pl.Series([], dtype=pl.String), "loss": pl.Series([], dtype=pl.String),
                           "never": pl.Series([], dtype=pl.String)}),
    "only_null": {"step": [5], "newcol": [None]},
    "text_acc": {"step": [7], "acc": ["a"]},
    "dates": {"step": [0], "when": [dt.date(2024, 1, 1)]},
    "stamps": {"step": [1], "when": [dt.datetime(2024, 1, 1, 12)]},
    "when_text": {"step": [2], "when": ["yesterday"]},
    "note_number": {"step": [3], "note": [1.5]},
    "twin_of_ints": {"step": [0, 1], "loss": [3, 2], "flag": [True, False]},
}


def _metrics_state(vault: Vault) -> tuple:
    """Column types, rows (by column name, in any order) and problems of the metrics catalog."""
    types = _metric_types(vault)
    release_writer(vault.root)
    conn = duckdb.connect(str(vault.catalog_path), read_only=True)
    try:
        cur = conn.execute("SELECT * FROM metrics")
        names = [d[0] for d in cur.description]
        rows = sorted(tuple(sorted((n, repr(v)) for n, v in zip(names, r))) for r in cur.fetchall())
    finally:
        conn.close()
    return types, rows, sorted(_rows(vault, "SELECT * FROM catalog_problems"))


def test_metric_types_do_not_depend_on_commit_order_or_rebuild(tmp_path):
    """Commit by commit in one order, in the reverse order, in a batch (one statement per schema),
    and a rebuild: the same column types, the same rows, the same problems."""
    ids = list(KINDS)
    orders = {"forward": ids, "reverse": ids[::-1], "batch": ids[1::2] + ids[0::2]}
    states = {}
    for name, order in orders.items():
        v = Vault.init(tmp_path / name)
        if name == "batch":
            with v.batch():
                for sid in order:
                    _commit_metrics(v, sid, KINDS[sid])
        else:
            for sid in order:
                _commit_metrics(v, sid, KINDS[sid])
        release_writer(v.root)
        assert not (v.root / STALE_MARKER).exists()
        states[name] = _metrics_state(v)
        if name == "forward":
            v.index(rebuild=True)
            states["rebuild"] = _metrics_state(v)
    first = states["forward"]
    for name, state in states.items():
        assert state == first, name
    types, rows, problems = first
    assert {c: types[c] for c in ("step", "loss", "flag", "acc", "note", "when", "newcol")} == {
        "step": "BIGINT", "loss": "DOUBLE", "flag": "BOOLEAN", "acc": "DOUBLE", "note": "DOUBLE",
        "when": "TIMESTAMP", "newcol": "INTEGER"}
    assert "never" not in types  # a file without rows adds nothing
    assert [p[:5] for p in problems] == [
        ("text_acc", "metrics", "acc", "VARCHAR", "DOUBLE"),
        ("text_loss", "metrics", "loss", "VARCHAR", "DOUBLE"),
        ("text_loss", "metrics", "note", "VARCHAR", "DOUBLE"),
        ("when_text", "metrics", "when", "VARCHAR", "TIMESTAMP"),
    ]
    by: dict[str, list[dict[str, str]]] = {}  # specimen id -> its rows, values as repr()
    for row in rows:
        r = dict(row)
        by.setdefault(r["specimen_id"].strip("'"), []).append(r)
    assert set(by) == set(KINDS) - {"empty"}
    assert [r["loss"] for r in by["ints"]] == ["2.0", "3.0"]  # integers widened, not text
    assert [r["note"] for r in by["text_loss"]] == ["None"] and by["note_number"][0]["note"] == "1.5"
    assert by["dates"][0]["when"] == repr(dt.datetime(2024, 1, 1))
    assert by["when_text"][0]["when"] == "None" and by["when_text"][0]["step"] == "2"


def test_damaged_parquet_object_is_left_out_of_metrics_only(vault, make_specimen):
    make_specimen("good", seed=1)
    vault.commit("good")
    make_specimen("bad", seed=2)
    vault.commit("bad")
    obj = vault.objects.path(vault.get("bad").tree["strata/metrics.parquet"].digest)
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[8:200] = b"\xff" * 192  # pages destroyed, footer intact
    obj.write_bytes(bytes(data))
    result = vault.index(rebuild=True)
    assert result.total == 2
    assert _rows(vault, "SELECT DISTINCT specimen_id FROM metrics") == [("good",)]
    assert _rows(vault, "SELECT count(*) FROM objects WHERE specimen_id = 'bad'") == [(5,)]


def test_incremental_index_reads_only_new_commits(vault, make_specimen, monkeypatch):
    make_specimen("first")
    vault.commit("first")
    release_writer(vault.root)
    # A commit that leaves its update to `vault index` (as one with many pending lines does).
    monkeypatch.setattr(catalog_mod, "MAX_LINES_PER_COMMIT", 0)
    for sid in ("second", "third"):
        make_specimen(sid, parents=["first"])
        vault.commit(sid)
    release_writer(vault.root)
    assert "2 commits are not indexed" in (vault.root / STALE_MARKER).read_text()
    assert [r[0] for r in _rows(vault, "SELECT specimen_id FROM catalog")] == ["first"]

    read: list[str] = []
    real = Vault.read_commit
    monkeypatch.setattr(Vault, "read_commit", lambda self, d: read.append(d) or real(self, d))
    result = vault.index()
    assert (result.indexed, result.total, result.rebuilt) == (2, 3, False)
    first = vault.resolve("first")
    assert sorted(read) == sorted([vault.resolve("second"), vault.resolve("third"), first])
    assert not (vault.root / STALE_MARKER).exists()
    read.clear()
    assert vault.index().indexed == 0 and read == []


def test_delete_or_rebuild_loses_nothing(diamond):
    v = diamond
    before = _snapshot(v)
    assert v.index(rebuild=True).rebuilt
    assert _snapshot(v) == before
    release_writer(v.root)
    v.catalog_path.unlink()
    result = v.index()
    assert result.rebuilt and result.total == 4
    assert _snapshot(v) == before


def test_catalog_of_another_vault_or_journal_is_rebuilt(tmp_path, diamond, make_specimen):
    other = Vault.init(tmp_path / "other")
    SpecimenStorage(other.new("x", domain="training", method="fine_tuning")).write_metrics({"a": [1]})
    other.commit("x")
    release_writer(other.root)
    diamond.index()  # leaves a checkpointed file, without a log
    shutil.copyfile(diamond.catalog_path, other.catalog_path)
    wal = Path(f"{other.catalog_path}.wal")
    if wal.exists():  # other's log no longer matches its (replaced) database file
        assert "cannot be opened" in VaultQuery(other).stale_reason()
        wal.unlink()
    assert VaultQuery(other).stale_reason() == "the catalog was built for another vault"
    result = other.index()
    assert result.rebuilt and _rows(other, "SELECT specimen_id FROM catalog") == [("x",)]
    # A catalog whose last indexed journal line is not in the journal witnesses a rollback:
    # it is not rebuilt over unless that is accepted explicitly.
    from cas_vault.errors import JournalRolledBackError

    release_writer(diamond.root)
    conn = duckdb.connect(str(diamond.catalog_path))
    conn.execute("UPDATE _state SET tip = 'not-the-tip'")
    conn.close()
    with pytest.raises(JournalRolledBackError, match="rolled back"):
        diamond.index()
    assert diamond.index(rebuild=True, accept_rollback=True).rebuilt


def test_a_log_left_without_its_database_or_from_another_is_dropped(vault, make_specimen):
    make_specimen("one")
    vault.commit("one")
    release_writer(vault.root)  # closing writes nothing, so the log stays
    wal = Path(f"{vault.catalog_path}.wal")
    assert wal.exists()
    saved = wal.read_bytes()
    vault.catalog_path.unlink()  # "delete vault.duckdb": the log is left behind
    make_specimen("two")
    vault.commit("two")
    release_writer(vault.root)
    assert _rows(vault, "SELECT specimen_id FROM catalog ORDER BY seq") == [("one",), ("two",)]
    wal.write_bytes(saved)  # a log from another database file
    assert vault.index().total == 2 and not (vault.root / STALE_MARKER).exists()


def test_unopenable_catalog_file_never_fails_a_commit(vault, make_specimen):
    vault.catalog_path.write_bytes(b"this is not a DuckDB database" * 100)
    make_specimen("s")
    commit = vault.commit("s", message="still sealed")
    assert vault.resolve("s") == commit.digest
    release_writer(vault.root)
    assert "cannot be opened" in (vault.root / STALE_MARKER).read_text()
    with pytest.raises(InvalidInputError, match="vault index --rebuild"):
        vault.index()
    assert vault.index(rebuild=True).total == 1
    assert not (vault.root / STALE_MARKER).exists()


def _spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_commit_while_another_process_holds_the_catalog_marks_it_stale(vault, make_specimen):
    make_specimen("before")
    vault.commit("before")
    release_writer(vault.root)
    holder = _spawn(f"""
        import duckdb, sys
        c = duckdb.connect({str(vault.catalog_path)!r}, read_only=True)
        print("holding", flush=True)
        sys.stdin.read()
    """)
    try:
        assert holder.stdout.readline().strip() == "holding"
        make_specimen("during")
        vault.commit("during")  # must not fail, nor wait long
        assert vault.resolve("during")
        release_writer(vault.root)
        assert (vault.root / STALE_MARKER).exists()
    finally:
        holder.communicate("", timeout=30)
    q = VaultQuery(vault)
    assert q.stale_reason() is not None
    got = q.search("SELECT specimen_id FROM catalog ORDER BY seq")
    assert got["specimen_id"].to_list() == ["before", "during"]
    assert q.stale_reason() is None and not (vault.root / STALE_MARKER).exists()


def test_queries_work_while_other_processes_commit(vault):
    n, writers = 12, 2
    code = """
        import sys, numpy as np
        from cas_vault import Vault, SpecimenStorage
        v = Vault.open({root!r})
        for i in range({n}):
            sid = f"w{w}_{{i}}"
            SpecimenStorage(v.new(sid, domain="training", method="fine_tuning")).write_metrics(
                {{"step": np.arange(5), "loss": np.arange(5) / (i + 1)}})
            v.commit(sid)
        print("done", flush=True)
    """
    procs = [_spawn(code.format(root=str(vault.root), n=n, w=w)) for w in range(writers)]
    q = VaultQuery(vault, timeout=60)
    seen = 0
    try:
        while any(p.poll() is None for p in procs):
            df = q.search("SELECT count(*) AS n FROM catalog")
            assert df["n"][0] >= seen  # never goes backwards, never fails
            seen = df["n"][0]
    finally:
        outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == "done", err
    final = q.search("SELECT count(*) AS n, count(DISTINCT specimen_id) AS ids FROM catalog")
    assert final.row(0) == (n * writers, n * writers)
    assert q.search("SELECT count(*) AS n FROM metrics")["n"][0] == 5 * n * writers


def test_query_says_when_it_cannot_bring_the_catalog_up_to_date(vault, make_specimen):
    make_specimen("old")
    vault.commit("old")
    lock = vault.root / "locks" / "catalog.lock"
    holder = _spawn(f"""
        import fcntl, os, sys
        fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        sys.stdin.read()
    """)
    try:
        assert holder.stdout.readline().strip() == "locked"
        make_specimen("new")
        vault.commit("new")  # the catalog writer is busy: the commit stands, the catalog is stale
        q = VaultQuery(vault, timeout=0.3)
        with pytest.warns(CatalogStaleWarning, match="catalog not updated"):
            got = q.search("SELECT specimen_id FROM catalog")
        assert got["specimen_id"].to_list() == ["old"]
    finally:
        holder.communicate("", timeout=30)
    assert VaultQuery(vault).search("SELECT specimen_id FROM catalog ORDER BY seq")["specimen_id"].to_list() \
        == ["old", "new"]


def test_batch_defers_the_catalog_to_one_update_at_the_end(tmp_path) -> None:
    """Inside Vault.batch() commits are sealed as usual; the catalog catches up once at exit."""
    from cas_vault import SpecimenStorage, Vault
    from cas_vault.catalog import indexed_commits

    v = Vault.init(tmp_path / "v")
    with v.batch():
        for i in range(3):
            SpecimenStorage(v.new(f"b{i}", domain="training", method="fine_tuning")).write_metrics(
                {"step": [0, 1], "loss": [1.0, 0.5]})
            v.commit(f"b{i}")
            assert v.resolve(f"b{i}")  # sealed immediately
        assert set(indexed_commits(v)) == set()
    assert indexed_commits(v) == {f"b{i}": v.resolve(f"b{i}") for i in range(3)}
    df = v.query("SELECT specimen_id, max(loss) AS m FROM metrics GROUP BY 1 ORDER BY 1")
    assert df["specimen_id"].to_list() == ["b0", "b1", "b2"]


def test_bulk_indexing_keeps_row_order_and_shared_metrics_objects(vault) -> None:
    """A rebuild or batch reads many files per statement: rows stay in file order, and one
    Parquet object shared by several specimens (identical metrics) gives rows to each."""
    steps = list(range(50))[::-1]  # deliberately not sorted: order must come from the file
    with vault.batch():
        for sid, scale in (("a", 1.0), ("b", 2.0), ("twin_of_a", 1.0), ("c", 3.0)):
            SpecimenStorage(vault.new(sid, domain="training", method="fine_tuning")).write_metrics(
                {"step": steps, "loss": [scale * s for s in steps]})
            vault.commit(sid)
        SpecimenStorage(vault.new("other_schema", domain="training", method="fine_tuning")).write_metrics(
            {"epoch": [1, 2], "acc": [0.5, 0.75]})
        vault.commit("other_schema")
    assert vault.get("a").tree["strata/metrics.parquet"].digest == \
        vault.get("twin_of_a").tree["strata/metrics.parquet"].digest

    def table() -> list[tuple]:
        return _rows(vault, "SELECT specimen_id, step, loss, epoch, acc FROM metrics")  # insertion order

    for rows in (table(), (vault.index(rebuild=True), table())[1]):
        by: dict[str, list[tuple]] = {}
        for r in rows:
            by.setdefault(r[0], []).append(r[1:])
        assert set(by) == {"a", "b", "twin_of_a", "c", "other_schema"}
        for sid, scale in (("a", 1.0), ("b", 2.0), ("twin_of_a", 1.0), ("c", 3.0)):
            assert by[sid] == [(s, scale * s, None, None) for s in steps]
        assert by["other_schema"] == [(None, None, 1, 0.5), (None, None, 2, 0.75)]
