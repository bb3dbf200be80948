"""Benchmark the DuckDB catalog: commit overhead, indexing, and queries at scale.

Builds a vault of N specimens (default 10,000) of 100 steps x 3 metric columns + config through
the real API (each commit also updates the catalog), then measures, in one run:

- commit time through the Python API, and the share of it spent updating the catalog;
- indexing one new commit (`Vault.index()` in-process, and `vault index` as a fresh process);
- a catalog filter (domain + tag) through VaultQuery;             target < 100 ms
- the final loss of every specimen over `metrics`;               target < 1 s
- the final loss of every interpretability specimen (join);
- a full rebuild of the catalog;
- for reference, when mlflow is importable: the same questions through MlflowClient on its
  SQLite backend with M runs (default min(N, 1000)), each created with its tags, then one
  ``log_batch`` call carrying its params and every step's metrics, then ended; figures for all
  runs are scaled linearly to N when M < N. Ratios of the matching cas-vault and MLflow
  figures are printed at the end.

Usage:
    python benchmarks/bench_catalog.py                 # 10,000 specimens (several minutes)
    python benchmarks/bench_catalog.py --quick         # 500 specimens
    python benchmarks/bench_catalog.py --specimens 2000 --dir /tmp/bench-vault
    /tmp/venv-peers/bin/python benchmarks/bench_catalog.py --quick   # a venv with mlflow
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cas_vault import SpecimenStorage, Vault, VaultQuery
from cas_vault import catalog as catalog_mod

DOMAINS = [("interpretability", "sae_analysis"), ("training", "fine_tuning"),
           ("benchmarking", "ablation_study"), ("alignment", "probe_training")]
FILTER_SQL = ("SELECT specimen_id, created, method FROM catalog "
              "WHERE domain = 'interpretability' AND list_contains(tags, 'gpt2')")
FINAL_SQL = "SELECT specimen_id, arg_max(loss, step) AS final_loss FROM metrics GROUP BY specimen_id"
FINAL_INTERP_SQL = ("SELECT c.specimen_id, arg_max(m.loss, m.step) AS final_loss FROM catalog c "
                    "JOIN metrics m USING (specimen_id) WHERE c.domain = 'interpretability' "
                    "GROUP BY c.specimen_id")


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def specimen(i: int) -> tuple[str, str, str, list[str]]:
    """Specimen ``i``'s id, domain, method and tags."""
    domain, method = DOMAINS[i % len(DOMAINS)]
    tags = ["gpt2" if i % 3 == 0 else "pythia", f"layer_{i % 12}", f"sweep_{i // 100}"]
    return f"s{i:06d}", domain, method, tags


def write(vault: Vault, i: int, steps: int) -> str:
    """Create specimen ``i`` and write its metrics and config (not committed); return its id."""
    sid, domain, method, tags = specimen(i)
    s = SpecimenStorage(vault.new(sid, domain=domain, method=method, tags=tags, model="gpt2-small"))
    rng = np.random.default_rng(i)
    step = np.arange(steps)
    s.write_metrics({"step": step, "loss": np.exp(-step / 30) + 0.05 * rng.random(steps),
                     "accuracy": 1 - np.exp(-step / 20), "grad_norm": rng.random(steps)})
    s.write_config({"lr": float(10.0 ** -int(rng.integers(2, 5))), "seed": i, "steps": steps})
    return sid


def build(vault: Vault, n: int, steps: int,
          start: int = 0) -> tuple[list[float], list[float], list[float]]:
    """Write and commit ``n`` specimens; return specimen, commit and catalog update times.

    A specimen's time covers new + write + commit, what an MLflow run's creation covers.
    The real catalog update method is wrapped to time each of its calls (one per commit).
    """
    specimen_times: list[float] = []
    commit_times: list[float] = []
    catalog_times: list[float] = []
    real = catalog_mod.CatalogWriter.update

    def timed(self: catalog_mod.CatalogWriter, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return real(self, *args, **kwargs)
        finally:
            catalog_times.append(time.perf_counter() - t)

    catalog_mod.CatalogWriter.update = timed
    try:
        t0 = time.perf_counter()
        for i in range(start, start + n):
            t_new = time.perf_counter()
            sid = write(vault, i, steps)
            t = time.perf_counter()
            vault.commit(sid, message=f"run {i}")
            commit_times.append(time.perf_counter() - t)
            specimen_times.append(time.perf_counter() - t_new)
            if (i + 1 - start) % 1000 == 0:
                print(f"  ... {i + 1:,} specimens ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    finally:
        catalog_mod.CatalogWriter.update = real
    return specimen_times, commit_times, catalog_times


def mlflow_reference(workdir: Path, runs: int, steps: int, n: int) -> tuple[
        list[tuple[str, float, str]], dict[str, float]]:
    """The catalog's questions asked of MLflow's SQLite backend holding ``runs`` runs.

    Returns:
        Rows to print, and the figures the cas-vault ones are compared to (ms; those for all
        ``n`` specimens scaled linearly from ``runs``).
    """
    import logging

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.create_experiment("bench")  # creates and migrates the database
    ids = []
    t0 = time.perf_counter()
    for i in range(runs):
        sid, domain, method, tags = specimen(i)
        run = client.create_run(exp, tags={"domain": domain, "method": method,
                                           **{f"tag.{t}": "1" for t in tags}})
        rng = np.random.default_rng(i)
        ts = int(time.time() * 1000)
        loss = np.exp(-np.arange(steps) / 30) + 0.05 * rng.random(steps)
        metrics = [Metric("loss", float(v), ts, k) for k, v in enumerate(loss)]
        metrics += [Metric("accuracy", float(1 - np.exp(-k / 20)), ts, k) for k in range(steps)]
        metrics += [Metric("grad_norm", float(v), ts, k) for k, v in enumerate(rng.random(steps))]
        params = [Param("lr", str(10.0 ** -int(rng.integers(2, 5)))), Param("seed", str(i)),
                  Param("steps", str(steps))]
        # One call per run: the client splits it into its store's 1,000-entity transactions.
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    create = (time.perf_counter() - t0) / runs

    def search(filter_string: str) -> list[Any]:
        return client.search_runs([exp], filter_string=filter_string, max_results=50000)

    flt = median_ms(lambda: search("tags.domain = 'interpretability' AND tags.`tag.gpt2` = '1'"), 3)
    last = median_ms(lambda: [r.data.metrics.get("loss") for r in search("")], 3)
    sample = ids[: min(200, runs)]
    t = time.perf_counter()
    for rid in sample:
        client.get_metric_history(rid, "loss")
    per_history = (time.perf_counter() - t) / len(sample)
    scale = n / runs
    rows = [
        (f"mlflow: create one run ({steps} steps x 3 metrics + 3 params, 1 log_batch)",
         create * 1000, "ms/run"),
        (f"mlflow: filter domain + tag ({runs:,} runs)", flt, "ms"),
        (f"mlflow: last loss of every run ({runs:,} runs; last value only)", last, "ms"),
        ("mlflow: full loss history of one run", per_history * 1000, "ms/run"),
        (f"mlflow: full loss history of {n:,} runs (scaled from {len(sample):,})",
         per_history * n * 1000, "ms"),
        (f"mlflow: last loss of {n:,} runs (scaled linearly)", last * scale, "ms"),
    ]
    figures = {"create": create * 1000, "filter": flt * scale, "last": last * scale,
               "history": per_history * n * 1000}
    return rows, figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specimens", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="500 specimens")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the vault (default: a temp dir)")
    ap.add_argument("--mlflow-runs", type=int, default=None, help="MLflow runs (default min(N, 1000))")
    ap.add_argument("--keep", action="store_true", help="keep the vault afterwards")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the vault a previous run left in --dir: time 200 more commits instead of the build")
    args = ap.parse_args()
    n = 500 if args.quick else args.specimens
    base = args.dir or Path(tempfile.mkdtemp(prefix="bench-catalog-"))
    root = base / "vault"
    if args.reuse and args.dir is not None and (root / "vault.msgpack").exists():
        vault = Vault.open(root)
        n = len(vault.refs.all())
        print(f"Reusing {root} ({n:,} specimens); committing 200 more ...", file=sys.stderr)
        t = time.perf_counter()
        specimen_times, commit_times, catalog_times = build(vault, 200, args.steps, start=n)
        build_s = time.perf_counter() - t
        n += 200
        built = "200 more specimens on the existing vault"
    else:
        shutil.rmtree(root, ignore_errors=True)
        vault = Vault.init(root)
        print(f"Building {n:,} specimens of {args.steps} steps in {root} ...", file=sys.stderr)
        t = time.perf_counter()
        specimen_times, commit_times, catalog_times = build(vault, n, args.steps)
        build_s = time.perf_counter() - t
        built = f"{n:,} specimens"
    catalog_mod.release_writer(vault.root)
    stale = (vault.root / catalog_mod.STALE_MARKER).exists()

    rows: list[tuple[str, float, str]] = []
    cm, cc = statistics.median(commit_times) * 1000, statistics.median(catalog_times) * 1000
    rows.append((f"build: {built} (new + write + commit)", build_s, "s"))
    rows.append(("commit via Python API, median (incl. catalog update)", cm, "ms"))
    rows.append(("  of which the catalog update, median", cc, f"ms ({cc / cm:.0%} of the commit)"))
    ours: dict[str, float] = {}
    rows.append(("specimen via Python API, mean (new + write + commit)",
                 statistics.fmean(specimen_times) * 1000, "ms"))
    rows.append(("commit, median of the last 1,000 (large catalog)",
                 statistics.median(commit_times[-1000:]) * 1000, "ms"))

    # Index new commits that the catalog thread left alone (as it does when far behind).
    def commit_unindexed(*indexes: int) -> None:
        saved = catalog_mod.MAX_LINES_PER_COMMIT
        catalog_mod.MAX_LINES_PER_COMMIT = 0
        try:
            for i in indexes:
                vault.commit(write(vault, i, args.steps), message="unindexed")
            catalog_mod.release_writer(vault.root)  # as at the end of a script: the file is free
        finally:
            catalog_mod.MAX_LINES_PER_COMMIT = saved

    commit_unindexed(n, n + 1)
    t = time.perf_counter()
    r = vault.index()
    index_one = (time.perf_counter() - t) * 1000
    assert r.indexed == 2, r
    rows.append(("index 2 new commits: Vault.index() (open, update, close)", index_one, "ms  target < 1000"))
    commit_unindexed(n + 2)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "cas_vault", "--vault", str(root), "index"],
                         capture_output=True, text=True, check=True)
    rows.append(("index 1 new commit: `vault index` as a new process", (time.perf_counter() - t) * 1000,
                 "ms  target < 1000 (incl. Python start-up)"))
    assert "1 new commits" in out.stdout, out.stdout

    q = VaultQuery(vault)
    first = time.perf_counter()
    got = q.search(FILTER_SQL)
    first_ms = (time.perf_counter() - first) * 1000
    rows.append((f"catalog filter domain + tag ({got.height:,} rows), first query", first_ms, "ms"))
    ours["filter"] = median_ms(lambda: q.search(FILTER_SQL), 10)
    rows.append(("catalog filter domain + tag, median of 10 (open + check + query + close)",
                 ours["filter"], "ms  target < 100"))
    final = q.search(FINAL_SQL)
    assert final.height == n + 3
    ours["last"] = median_ms(lambda: q.search(FINAL_SQL), 5)
    rows.append((f"final loss per specimen over metrics ({final.height:,} rows), median of 5",
                 ours["last"], "ms  target < 1000"))
    rows.append(("final loss per interpretability specimen (join), median of 5",
                 median_ms(lambda: q.search(FINAL_INTERP_SQL), 5), "ms"))
    ours["history"] = median_ms(lambda: q.search("SELECT specimen_id, step, loss FROM metrics"), 3)
    rows.append(("full loss history of every specimen (all metric rows)", ours["history"], "ms"))
    rows.append(("one specimen's curve via its exp_ view",
                 median_ms(lambda: q.search("SELECT step, loss FROM exp_s000042"), 5), "ms"))
    t = time.perf_counter()
    r = vault.index(rebuild=True)
    rows.append((f"full rebuild ({r.total:,} specimens)", time.perf_counter() - t, "s"))
    size = vault.catalog_path.stat().st_size
    rows.append(("vault.duckdb size", size / 2**20, "MiB"))

    # Usage telemetry is no part of the store: its background sender would only compete for
    # the CPU (and wait on a network a benchmark machine may not have).
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow  # noqa: F401
        have_mlflow = True
    except ImportError:
        have_mlflow = False
    theirs: dict[str, float] = {}
    runs = 0
    if have_mlflow:
        runs = args.mlflow_runs or min(n, 1000)
        print(f"MLflow reference with {runs:,} runs ...", file=sys.stderr)
        mdir = base / "mlflow"
        shutil.rmtree(mdir, ignore_errors=True)
        mdir.mkdir()
        mlflow_rows, theirs = mlflow_reference(mdir, runs, args.steps, n)
        rows += mlflow_rows
        # Against as many specimens as MLflow got runs: both stores the same size then.
        ours["create"] = statistics.fmean(specimen_times[:runs]) * 1000

    print(f"\ncas-vault catalog benchmark: {n:,} specimens x {args.steps} steps"
          f"{' (catalog marked stale during build!)' if stale else ''}")
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"  {name:<{width}}  {value:>10.1f} {unit}")
    if not have_mlflow:
        print("  mlflow reference: skipped (mlflow is not importable in this Python; run this "
              "script with a venv that has it)")
    if theirs:
        scaled = "" if runs >= n else f"; MLflow's scaled linearly from {runs:,} runs"
        print(f"\nside by side (MLflow time / cas-vault time; > 1: cas-vault is faster{scaled}):")
        for key, what in (
            ("create", f"one specimen / run, new + write + commit (mean of the first "
                       f"{min(runs, len(specimen_times)):,})"),
            ("filter", f"filter domain + tag over {n:,}"),
            ("last", f"final loss of every one of {n:,}"),
            ("history", f"full loss history of all {n:,} (MLflow's: run by run)"),
        ):
            print(f"  {what:<{width - 2}}  {theirs[key]:>10.1f} ms vs {ours[key]:>8.1f} ms"
                  f"   {theirs[key] / ours[key]:7.1f}x")
    if not args.keep and args.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
