"""Benchmark: cost of step-wise logging (target: 1,000,000 scalar points in under 2 s total).

Logs STEPS steps x METRICS metrics through ``Vault.start_specimen(...).log`` (buffering,
Parquet part flushes, assembly into strata/metrics.parquet and the commit all included),
beside a bare Python loop that only builds the same dicts (the floor any logger pays), and,
when mlflow is importable, the same points in one MLflow run on its SQLite backend (its file
store is deprecated): ``create_run``, one ``MlflowClient.log_batch`` call carrying every step's
metrics (its fastest path, not one ``log_metrics`` call per step), ``set_terminated``. Both
sides create their store (vault, database) before the clock starts; both end durable.

    python benchmarks/bench_logging.py                        # 250,000 x 4 = 1,000,000 points
    python benchmarks/bench_logging.py --quick                # 25,000 x 4
    /tmp/venv-peers/bin/python benchmarks/bench_logging.py    # a venv with mlflow installed
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import tempfile
import time
from pathlib import Path

TARGET_S_PER_MILLION = 2.0


def bench_vault(root: Path, steps: int, metrics: int) -> tuple[float, float, dict[str, float], int]:
    """Log through a vault; return wall seconds, CPU seconds, a breakdown and rows stored."""
    from cas_vault import Vault

    vault = Vault.init(root / "vault")
    names = [f"m{j}" for j in range(metrics)]
    # Time the catalog update that every commit triggers, to show it apart.
    after_commit = vault._after_commit
    catalog_s = [0.0]

    def timed_after_commit(*a: object) -> None:
        t = time.perf_counter()
        after_commit(*a)  # type: ignore[arg-type]
        catalog_s[0] += time.perf_counter() - t

    vault._after_commit = timed_after_commit  # type: ignore[method-assign]
    c0 = time.process_time()
    t0 = time.perf_counter()
    logger = vault.start_specimen("bench", domain="training", method="fine_tuning")
    with logger as s:
        t1 = time.perf_counter()
        for i in range(steps):
            x = 1.0 / (i + 1)
            s.log({n: x * k for k, n in enumerate(names, 1)}, step=i)
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    cpu = time.process_time() - c0
    rows = vault.specimen("bench").read_metrics().height
    try:  # close the catalog's writer connection before the temp directory goes away
        from cas_vault.catalog import release_writer

        release_writer(vault.root)
    except ImportError:
        pass
    parts = {"start (scaffold + provenance)": t1 - t0, "log() loop incl. flushes": t2 - t1,
             "assemble + commit": t3 - t2, "  of which catalog update": catalog_s[0]}
    return t3 - t0, cpu, parts, rows


def bench_floor(steps: int, metrics: int) -> float:
    """Seconds a bare loop takes to build the same dicts: the floor of any Python logger."""
    names = [f"m{j}" for j in range(metrics)]
    sink = []
    t0 = time.perf_counter()
    for i in range(steps):
        x = 1.0 / (i + 1)
        sink.append({n: x * k for k, n in enumerate(names, 1)})
    return time.perf_counter() - t0


def bench_mlflow(root: Path, steps: int, metrics: int) -> float | None:
    """Seconds to log ``steps`` x ``metrics`` points as one MLflow run, or None without mlflow.

    The clock covers what a training script pays: the run's creation, building the points,
    one ``log_batch`` call (the client splits it into its store's 1,000-entity transactions)
    and ending the run.
    """
    if importlib.util.find_spec("mlflow") is None:
        return None
    # Usage telemetry is no part of logging: its background sender would only compete for
    # the CPU (and wait on a network a benchmark machine may not have).
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import logging

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.create_experiment("bench")  # creates and migrates the database
    names = [f"m{j}" for j in range(metrics)]
    t0 = time.perf_counter()
    run_id = client.create_run(exp).info.run_id
    ts = int(time.time() * 1000)
    batch = []
    for i in range(steps):
        x = 1.0 / (i + 1)
        batch += [Metric(n, x * k, ts, i) for k, n in enumerate(names, 1)]
    client.log_batch(run_id, metrics=batch)
    client.set_terminated(run_id)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=250_000)
    ap.add_argument("--metrics", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="10x fewer steps")
    ap.add_argument("--mlflow-steps", type=int, default=25_000,
                    help="steps for mlflow (it is far slower; its time is scaled to the same "
                         "point count)")
    args = ap.parse_args()
    steps = args.steps // 10 if args.quick else args.steps
    points = steps * args.metrics
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        floor = bench_floor(steps, args.metrics)
        vault_s, vault_cpu, parts, rows = bench_vault(root, steps, args.metrics)
        assert rows == steps, f"expected {steps} rows, got {rows}"
        ml_steps = min(args.mlflow_steps, steps)
        ml = bench_mlflow(root, ml_steps, args.metrics)
    per_million = vault_s * 1_000_000 / points
    print(f"points logged           {points:,} ({steps:,} steps x {args.metrics} metrics)")
    print(f"cas-vault log()+commit  {vault_s:8.3f} s   {vault_s / points * 1e9:7.0f} ns/point")
    print(f"  CPU time of this process {vault_cpu:8.3f} s   (wall time inflates on a busy machine)")
    for what, sec in parts.items():
        print(f"  {what:<30} {sec:8.3f} s")
    own = vault_s - parts["  of which catalog update"]
    print(f"total without the catalog {own:8.3f} s   (the catalog update runs on every commit)")
    print(f"bare dict loop (floor)  {floor:8.3f} s   {floor / points * 1e9:7.0f} ns/point")
    print(f"overhead over floor     {vault_s - floor:8.3f} s   ratio {vault_s / floor:5.1f}x")
    print(f"per 1,000,000 points    {per_million:8.3f} s   target < {TARGET_S_PER_MILLION:.1f} s: "
          f"{'OK' if per_million < TARGET_S_PER_MILLION else 'MISSED'} "
          f"({TARGET_S_PER_MILLION / per_million:4.1f}x headroom)")
    if args.quick:
        print("(--quick: fixed costs such as imports and provenance dominate; the target is for "
              "the default 1,000,000 points)")
    if ml is None:
        print("mlflow                  skipped (mlflow is not importable in this Python; "
              "run this script with a venv that has it)")
    else:
        ml_points = ml_steps * args.metrics
        ml_million = ml * 1_000_000 / ml_points
        scaled = "" if ml_points == points else " (scaled linearly)"
        print(f"mlflow sqlite, 1 log_batch {ml:8.3f} s for {ml_points:,} points -> "
              f"{ml_million:8.1f} s per 1,000,000{scaled}   cas-vault is "
              f"{ml_million / per_million:.1f}x faster")
    assert math.isfinite(per_million)


if __name__ == "__main__":
    main()
