"""Benchmark: committing many small specimens, and CLI start-up time.

Targets: committing 1,000 small specimens (100 steps x 3 metric columns + a config)
through the Python API takes under 10 ms per specimen; `vault --help` answers in under 150 ms.

Measured side by side in one run:
- baseline: the same Parquet + msgpack files written to a plain folder (a "folder of files");
- cas-vault, bulk: the 1,000 specimens committed inside ``Vault.batch()``, the API for committing
  many specimens: Vault.new + SpecimenStorage writes + Vault.commit (hash, link, commit object,
  ref, journal, every fsync) for each, and one DuckDB catalog update at the end (timed too);
  this is the figure the target is about;
- cas-vault, one at a time: the same without ``batch()``, so every commit also updates the DuckDB
  catalog before it returns (a few one-row DuckDB statements and a WAL fsync per commit);
- MLflow, when mlflow is importable: one run per specimen on its SQLite backend (its file store
  is deprecated): ``create_run``, one ``MlflowClient.log_batch`` call carrying the params and
  all 100 steps of loss and accuracy, ``set_terminated``. SQLite's defaults (rollback journal,
  synchronous=FULL) make every transaction durable, as every cas-vault commit is. Each side
  pays its one-off costs (imports, database creation and migration, first catalog) on a
  warm-up specimen or run before the clock starts.

Usage: python benchmarks/bench_commit.py [--specimens N] [--mlflow-runs N] [--quick]
       /tmp/venv-peers/bin/python benchmarks/bench_commit.py   # a venv with mlflow installed
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import polars as pl

from cas_vault import SpecimenStorage, Vault


def metrics(i: int) -> dict[str, np.ndarray]:
    """Specimen ``i``'s 100 steps of loss and accuracy (seeded, so every writer gets the same)."""
    rng = np.random.default_rng(i)
    step = np.arange(100)
    return {"step": step, "loss": np.exp(-step / 30) + 0.01 * rng.random(100),
            "accuracy": 1 - np.exp(-step / 20) * rng.random(100)}


def bench_baseline(root: Path, n: int) -> float:
    """Seconds to write ``n`` specimens' files to a plain folder (no hashing, no fsync)."""
    t = time.perf_counter()
    for i in range(n):
        d = root / f"s{i}" / "strata"
        d.mkdir(parents=True)
        pl.DataFrame(metrics(i)).write_parquet(d / "metrics.parquet", compression="zstd")
        (d / "config.msgpack").write_bytes(msgpack.packb({"seed": i, "lr": 3e-4}))
    return time.perf_counter() - t


def _one(v: Vault, i: int) -> None:
    """Create, fill and commit specimen ``i`` through the API."""
    sid = f"2024_12_19_bench_{i:05d}"
    s = SpecimenStorage(v.new(sid, domain="training", method="fine_tuning", tags=["bench"]))
    s.write_metrics(metrics(i))
    s.write_config({"seed": i, "lr": 3e-4})
    v.commit(sid, message="bench")


def _warm_vault(root: Path) -> None:
    """Commit one specimen in a throwaway vault: the imports and first-use costs it pays
    (DuckDB, Parquet writer) are paid once per process, not per commit."""
    from cas_vault.catalog import release_writer

    v = Vault.init(root)
    _one(v, 10**6)
    release_writer(v.root)  # its catalog's writer connection is not needed again


def bench_vault(root: Path, n: int) -> tuple[float, list[float]]:
    """Each commit also updates the DuckDB catalog before it returns."""
    v = Vault.init(root)
    per = []
    t = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        _one(v, i)
        per.append(time.perf_counter() - t0)
    return time.perf_counter() - t, per


def bench_vault_batch(root: Path, n: int) -> tuple[float, float]:
    """Vault.batch(): the same commits, the catalog indexed once at the end (timed too)."""
    v = Vault.init(root)
    t = time.perf_counter()
    with v.batch():
        for i in range(n):
            _one(v, i)
        t_commits = time.perf_counter() - t
    return time.perf_counter() - t, t_commits


def bench_mlflow(root: Path, n: int) -> float | None:
    """Seconds for ``n`` MLflow runs holding what a specimen holds, or None without mlflow.

    Every run's metrics go in one ``log_batch`` call (MLflow's fastest path: the client splits
    it into its store's 1,000-entity transactions itself), not one ``log_metrics`` per step.
    """
    # Usage telemetry is no part of logging: its background sender would only compete for
    # the CPU (and wait on a network a benchmark machine may not have).
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return None
    import logging

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    root.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.create_experiment("bench")  # creates and migrates the database

    def one(i: int) -> None:
        run_id = client.create_run(exp).info.run_id
        m = metrics(i)
        ts = int(time.time() * 1000)
        batch = [Metric(key, float(m[key][s]), ts, s)
                 for s in range(100) for key in ("loss", "accuracy")]
        client.log_batch(run_id, metrics=batch,
                         params=[Param("seed", str(i)), Param("lr", str(3e-4))])
        client.set_terminated(run_id)

    one(10**6)  # warm-up run, as cas-vault's warm-up specimen
    t = time.perf_counter()
    for i in range(n):
        one(i)
    return time.perf_counter() - t


def bench_help(runs: int) -> list[float]:
    """Median seconds of ``vault --help`` and of a bare ``python -c pass``, ``runs`` each."""
    exe = [sys.executable, "-m", "cas_vault", "--help"]
    script = Path(sys.executable).with_name("vault")
    if script.exists():
        exe = [str(script), "--help"]
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(exe, check=True, capture_output=True)
        out.append(time.perf_counter() - t)
    bare = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, capture_output=True)
        bare.append(time.perf_counter() - t)
    return [statistics.median(out), statistics.median(bare)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specimens", type=int, default=1000)
    ap.add_argument("--mlflow-runs", type=int, default=None,
                    help="MLflow runs (default: as many as specimens)")
    ap.add_argument("--quick", action="store_true", help="100 specimens, 100 MLflow runs")
    args = ap.parse_args()
    n = 100 if args.quick else args.specimens
    ml_n = args.mlflow_runs or n
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp_name:
        tmp = Path(tmp_name)
        _warm_vault(tmp / "warm-up")
        base = bench_baseline(tmp / "folder", n)
        total, per = bench_vault(tmp / "vault", n)
        btotal, bcommits = bench_vault_batch(tmp / "vault-batch", n)
        ml = bench_mlflow(tmp / "mlflow", ml_n)
    help_s, python_s = bench_help(11)
    print(f"specimens: {n} (100 steps x 3 metric columns + config each)")
    print(f"folder of files (parquet+msgpack, no fsync):  {base / n * 1000:7.2f} ms/specimen")
    print(f"cas-vault bulk, Vault.batch() (catalog once): {btotal / n * 1000:7.2f} ms/specimen "
          f"(commits {bcommits / n * 1000:.2f} + catalog {(btotal - bcommits) * 1000:.0f} ms in all)"
          f"   target < 10 ms   ratio to folder {btotal / base:.2f}x")
    print(f"cas-vault one at a time (catalog per commit): {total / n * 1000:7.2f} ms/specimen "
          f"(median {statistics.median(per) * 1000:.2f}, p95 {sorted(per)[int(0.95 * n) - 1] * 1000:.2f})"
          f"   ratio to folder {total / base:.2f}x")
    if ml is None:
        print("mlflow: skipped (mlflow is not importable in this Python; "
              "run this script with a venv that has it)")
    else:
        per_run = ml / ml_n
        print(f"mlflow, sqlite, one log_batch per run:        {per_run * 1000:7.2f} ms/run "
              f"({ml_n} runs of 100 steps x 2 metrics + 2 params)   ratio to folder "
              f"{per_run / (base / n):.2f}x")
        print(f"  cas-vault is faster by: one at a time {per_run / (total / n):.1f}x, "
              f"bulk {per_run / (btotal / n):.1f}x (both durable at every commit, as MLflow's "
              f"sqlite transactions)")
    print(f"vault --help: {help_s * 1000:.0f} ms (bare python start-up {python_s * 1000:.0f} ms)   target < 150 ms")


if __name__ == "__main__":
    main()
