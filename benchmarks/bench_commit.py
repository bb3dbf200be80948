"""Benchmark: committing many small specimens, and CLI start-up time.

Targets (issue 2): committing 1,000 small specimens (100 steps x 3 metric columns + a config)
through the Python API takes under 10 ms per specimen; `vault --help` answers in under 150 ms.

Measured side by side in one run:
- baseline: the same Parquet + msgpack files written to a plain folder (a "folder of files");
- cas-vault, bulk: the 1,000 specimens committed inside ``Vault.batch()``, the API for committing
  many specimens: Vault.new + SpecimenStorage writes + Vault.commit (hash, link, commit object,
  ref, journal, every fsync) for each, and one DuckDB catalog update at the end (timed too);
  this is the figure the target is about;
- cas-vault, one at a time: the same without ``batch()``, so every commit also updates the DuckDB
  catalog before it returns (a few one-row DuckDB statements and a WAL fsync per commit);
- MLflow logging 100 steps of the same metrics, when mlflow is installed.

Usage: python benchmarks/bench_commit.py [--specimens N] [--quick]
"""

from __future__ import annotations

import argparse
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
    rng = np.random.default_rng(i)
    step = np.arange(100)
    return {"step": step, "loss": np.exp(-step / 30) + 0.01 * rng.random(100),
            "accuracy": 1 - np.exp(-step / 20) * rng.random(100)}


def bench_baseline(root: Path, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        d = root / f"s{i}" / "strata"
        d.mkdir(parents=True)
        pl.DataFrame(metrics(i)).write_parquet(d / "metrics.parquet", compression="zstd")
        (d / "config.msgpack").write_bytes(msgpack.packb({"seed": i, "lr": 3e-4}))
    return time.perf_counter() - t


def _one(v: Vault, i: int) -> None:
    sid = f"2024_12_19_bench_{i:05d}"
    s = SpecimenStorage(v.new(sid, domain="training", method="fine_tuning", tags=["bench"]))
    s.write_metrics(metrics(i))
    s.write_config({"seed": i, "lr": 3e-4})
    v.commit(sid, message="bench")


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
    try:
        import mlflow
    except ImportError:
        return None
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    root.mkdir(parents=True, exist_ok=True)
    # MLflow's recommended local backend (its file store is deprecated); the database is
    # created and migrated before the clock starts.
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    mlflow.set_experiment("bench")
    t = time.perf_counter()
    for i in range(n):
        with mlflow.start_run():
            mlflow.log_params({"seed": i, "lr": 3e-4})
            m = metrics(i)
            for s in range(100):
                mlflow.log_metrics({"loss": float(m["loss"][s]), "accuracy": float(m["accuracy"][s])}, step=s)
    return time.perf_counter() - t


def bench_help(runs: int) -> list[float]:
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
    ap.add_argument("--mlflow-runs", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="100 specimens, 10 MLflow runs")
    args = ap.parse_args()
    n = 100 if args.quick else args.specimens
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        tmp = Path(tmp)
        base = bench_baseline(tmp / "folder", n)
        total, per = bench_vault(tmp / "vault", n)
        btotal, bcommits = bench_vault_batch(tmp / "vault-batch", n)
        ml_n = 10 if args.quick else args.mlflow_runs
        ml = bench_mlflow(tmp / "mlruns", ml_n)
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
        print("mlflow: not installed (skipped)")
    else:
        print(f"mlflow (100 steps x 2 metrics, {ml_n} runs):  {ml / ml_n * 1000:7.2f} ms/run"
              f"   cas-vault one at a time is {ml / ml_n / (total / n):.1f}x faster")
    print(f"vault --help: {help_s * 1000:.0f} ms (bare python start-up {python_s * 1000:.0f} ms)   target < 150 ms")


if __name__ == "__main__":
    main()
