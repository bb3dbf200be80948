"""Step-wise logging: buffering, Parquet row groups, schema changes, crashes, partial commits."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cas_vault import Vault
from cas_vault.cli import cli
from cas_vault.errors import (
    AlreadyExistsError,
    ImmutableError,
    InvalidInputError,
    LockTimeoutError,
)
from cas_vault.logger import read_log, unfinished_logs


def test_log_commits_on_exit_with_row_group_per_flush(vault: Vault) -> None:
    with vault.start_specimen("l1", domain="training", method="fine_tuning", tags=["x"],
                              flush_rows=100, message="mlp") as s:
        for i in range(250):
            s.log({"loss": 1.0 / (i + 1), "acc": i}, step=i)
    commit = vault.get("l1")
    assert commit.message == "mlp" and commit.manifest.tags == ("x",)
    path = vault.specimen("l1").object_path("strata/metrics.parquet")
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 250 and meta.num_row_groups == 3  # 100 + 100 + 50: never downsampled
    df = pl.read_parquet(path)
    assert df.columns == ["step", "loss", "acc"]
    assert df["step"].to_list() == list(range(250))
    assert df["loss"][249] == pytest.approx(1 / 250)
    assert df.schema["acc"] == pl.Int64
    p = commit.manifest.metadata["provenance"]
    assert p["logger"] == {"name": "metrics", "rows": 250, "flushes": 3}
    assert p["exit_status"] == 0 and "packages" in p
    assert "partial" not in commit.manifest.metadata
    assert unfinished_logs(vault.specimen_dir("l1")) == []


def test_columns_appearing_and_vanishing_become_nulls(vault: Vault) -> None:
    with vault.start_specimen("l2", domain="training", method="fine_tuning", flush_rows=3) as s:
        s.log({"loss": 1.0})
        s.log({"loss": 0.9, "val": 2})
        s.log({"loss": 0.8})
        s.log({"val": 1.5})           # val changes from int to float across row groups
        s.log({"lr": 0.1}, step=10)   # steps may jump
    df = vault.specimen("l2").read_metrics()
    assert df["step"].to_list() == [0, 1, 2, 3, 10]
    assert df["loss"].to_list() == [1.0, 0.9, 0.8, None, None]
    assert df["val"].to_list() == [None, 2.0, None, 1.5, None]
    assert df["lr"].to_list() == [None, None, None, None, 0.1]


def test_same_step_merges_and_values_are_coerced(vault: Vault) -> None:
    with vault.start_specimen("l3", domain="training", method="fine_tuning") as s:
        s.log({"loss": np.float32(0.5)}, step=0)
        s.log({"acc": np.int64(3)}, step=0)            # merged into step 0's row
        s.log({"ok": True, "nan": float("nan"), "inf": math.inf}, step=np.int64(1))
        s.log({"arr": np.array(2.5)})                  # 0-d array
    df = vault.specimen("l3").read_metrics()
    assert df.height == 3
    assert df.row(0, named=True)["loss"] == 0.5 and df.row(0, named=True)["acc"] == 3
    r1 = df.row(1, named=True)
    assert r1["ok"] == 1 and math.isnan(r1["nan"]) and r1["inf"] == math.inf
    assert df.row(2, named=True) | {} == {"step": 2, "loss": None, "acc": None, "ok": None,
                                          "nan": None, "inf": None, "arr": 2.5}


@pytest.mark.parametrize("metrics, step, match", [
    ({"loss": "high"}, None, "must be numbers"),
    ({"loss": None}, None, "must be numbers"),
    ({"loss": [1, 2]}, None, "must be numbers"),
    ({"loss": np.ones(3)}, None, "must be numbers"),
    ({"step": 1}, None, "not a metric name"),
    ({1: 0.5}, None, "non-empty string"),
    ({"": 0.5}, None, "non-empty string"),
    ({"loss": 1.0}, 1.5, "integer"),
    ({"loss": 1.0}, True, "integer"),
    ({"loss": 1.0}, -1, ">= 0"),
    ({"loss": 1.0}, 3, "must not decrease"),
])
def test_bad_values_and_steps_are_refused(vault: Vault, metrics, step, match) -> None:
    with vault.start_specimen("bad", domain="training", method="fine_tuning") as s:
        s.log({"loss": 0.0}, step=5)
        with pytest.raises(InvalidInputError, match=match):
            s.log(metrics, step=step)
        with pytest.raises(InvalidInputError, match="already logged"):
            s.log({"loss": 2.0}, step=5)
    # Refused rows left no trace.
    assert vault.specimen("bad").read_metrics().height == 1


def test_exception_in_block_leaves_uncommitted_readable_specimen(vault: Vault) -> None:
    with pytest.raises(RuntimeError):
        with vault.start_specimen("l4", domain="training", method="fine_tuning") as s:
            for i in range(7):
                s.log({"loss": float(i)})
            raise RuntimeError("diverged")
    wd = vault.specimen_dir("l4")
    assert vault.refs.get("l4") is None
    assert read_log(wd)["loss"].to_list() == [float(i) for i in range(7)]
    with pytest.raises(InvalidInputError, match="--partial"):
        vault.commit("l4")
    c = vault.commit("l4", partial=True)
    assert c.manifest.metadata["partial"] is True
    assert vault.specimen("l4").read_metrics()["loss"].to_list() == [float(i) for i in range(7)]


def test_refusals(vault: Vault) -> None:
    with pytest.raises(InvalidInputError, match="domain= and method="):
        vault.start_specimen("nd").__enter__()
    vault.new("ex", domain="training", method="fine_tuning")
    with pytest.raises(InvalidInputError, match="exists with domain"):
        vault.start_specimen("ex", domain="alignment", method="fine_tuning").__enter__()
    # An existing uncommitted specimen can be filled without repeating domain/method.
    with vault.start_specimen("ex") as s:
        s.log({"a": 1})
    with pytest.raises(ImmutableError):
        vault.start_specimen("ex").__enter__()
    with pytest.raises(InvalidInputError, match="not open"):
        vault.start_specimen("zz", domain="training", method="fine_tuning").log({"a": 1})
    with pytest.raises(InvalidInputError):
        vault.start_specimen("zz", domain="training", method="fine_tuning", flush_rows=0)
    wd = vault.new("pre", domain="training", method="fine_tuning")
    (wd / "strata" / "metrics.parquet").write_bytes(b"x")
    with pytest.raises(AlreadyExistsError, match="another name="):
        vault.start_specimen("pre").__enter__()
    # A second logger on the same specimen and name is refused while the first runs.
    with vault.start_specimen("two", domain="training", method="fine_tuning", commit=False) as s:
        with pytest.raises(LockTimeoutError, match="another process"):
            vault.start_specimen("two").__enter__()
        with pytest.raises(LockTimeoutError, match="still being logged"):
            vault.commit("two")
        s.log({"a": 1})
    assert vault.refs.get("two") is None  # commit=False
    vault.commit("two")
    with vault.start_specimen("neg", domain="training", method="fine_tuning") as s:
        with pytest.raises(InvalidInputError, match=">= 0"):
            s.log({"a": 1}, step=-1)
        s.log({"a": 1})


CRASHER = textwrap.dedent('''
    import signal, sys
    from cas_vault import Vault
    vault = Vault.open(sys.argv[1])
    with vault.start_specimen("crash", domain="training", method="fine_tuning",
                              flush_rows=1000) as s:
        for i in range(10_000_000):
            s.log({"loss": 1.0 / (i + 1), "acc": i % 7}, step=i)
            if i == 2_499:
                print("logged", flush=True)
                signal.pause()  # rows 2000..2499 stay buffered until the kill, however late
''')


def test_sigkill_mid_training_leaves_flushed_rows_readable_and_partial_commit(
    vault: Vault, tmp_path: Path,
) -> None:
    script = tmp_path / "crasher.py"
    script.write_text(CRASHER)
    proc = subprocess.Popen([sys.executable, str(script), str(vault.root)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "logged"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    wd = vault.specimen_dir("crash")
    assert vault.refs.get("crash") is None
    assert unfinished_logs(wd) == ["metrics"]
    flushed = read_log(wd)
    # Rows 0..1999 were flushed in two parts; 2000..2499 were still buffered, so they are lost.
    assert flushed.height == 2000
    assert flushed["step"].to_list() == list(range(flushed.height))
    assert flushed["loss"][1999] == pytest.approx(1 / 2000)
    r = CliRunner().invoke(cli, ["--vault", str(vault.root), "commit", "crash"])
    assert r.exit_code == 2, r.output
    assert "--partial" in r.output
    r = CliRunner().invoke(cli, ["--vault", str(vault.root), "commit", "crash", "--partial",
                                 "-m", "killed"])
    assert r.exit_code == 0, r.output
    c = vault.get("crash")
    assert c.manifest.metadata["partial"] is True
    committed = vault.specimen("crash").read_metrics()
    assert committed.equals(flushed)
    assert unfinished_logs(wd) == []


def test_logger_under_vault_run_leaves_commit_to_runner(vault: Vault) -> None:
    wd = vault.new("lr", domain="training", method="fine_tuning")
    (wd / "protocol.py").write_text(textwrap.dedent('''
        from cas_vault import Vault, seed_everything
        seed_everything(3)
        with Vault.open().start_specimen("lr") as s:
            for i in range(10):
                s.log({"loss": 1.0 / (i + 1)})
        print("logged")
    '''))
    result = vault.run("lr")
    c = vault.get("lr")
    assert c.digest == result.commit.digest
    assert c.manifest.metadata["provenance"]["seeds"][0]["seed"] == 3
    assert vault.specimen("lr").read_metrics().height == 10


_counter = iter(range(10**9))


def test_logged_rows_match_an_independent_model(tmp_path: Path) -> None:
    """Random rows with appearing/vanishing metrics, repeated steps and flush boundaries are
    read back exactly as a plain-Python model of them says."""
    from hypothesis import given
    from hypothesis import strategies as st

    vault = Vault.init(tmp_path / "hv")
    value = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, width=64))
    row = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), value, min_size=1)

    @given(rows=st.lists(st.tuples(row, st.integers(0, 3)), min_size=1, max_size=40),
           flush_rows=st.integers(1, 7))
    def check(rows, flush_rows) -> None:
        sid = f"h{next(_counter)}"
        model: list[tuple[int, dict]] = []
        step = -1
        with vault.start_specimen(sid, domain="training", method="fine_tuning",
                                  flush_rows=flush_rows, commit=False) as s:
            for metrics, gap in rows:
                step = max(step + gap, 0)
                if model and model[-1][0] == step:
                    # Same step: joins that row, unless a metric is logged twice for it.
                    if model[-1][1].keys() & metrics.keys():
                        with pytest.raises(InvalidInputError, match="already logged"):
                            s.log(metrics, step=step)
                    else:
                        s.log(metrics, step=step)
                        model[-1][1].update(metrics)
                    continue
                s.log(metrics, step=step)
                model.append((step, dict(metrics)))
        df = read_log(vault.specimen_dir(sid))
        assert df["step"].to_list() == [st_ for st_, _ in model]
        for name in ("a", "b", "c", "d"):
            expected = [m.get(name) for _, m in model]
            if all(v is None for v in expected):
                assert name not in df.columns
                continue
            got = df[name].to_list()
            assert [g is None for g in got] == [e is None for e in expected]
            assert [float(g) for g in got if g is not None] == \
                [float(e) for e in expected if e is not None]

    check()
