"""Benchmark `vault ui` in a real headless Chromium: the specimen table and the curve overlay.

Builds one vault with N small specimens (default 10,000, of 100 steps x 3 metrics each, as
bench_catalog.py builds them) and C specimens of S steps (default 100 x 10,000) for the overlay,
starts `vault ui` as its own process (uvicorn, as a user runs it), and measures in Debian's
headless Chromium (Selenium), each figure the median of R page loads:

- the specimens table's first page (50 rows, server-side paging): time to the response's first
  byte, to DOMContentLoaded (the HTML parsed and the page's scripts run: interactive) and to the
  load event; at the defaults, with a final-metric column chosen, and sorted by that column;
  target: interactive < 1 s;
- a later page (offset 9,950) and a filtered view (domain + tag + text);
- overlaying C curves of S steps on the compare page at full resolution: the time from the
  curves' data arriving to the plot drawn (``window.casVaultRenderMs``) and from navigation
  start to the plot drawn; target: rendering < 1 s;
- side by side, the floor: bare plotly.js drawing the same C x S points from arrays already in
  the page (no server, no transfer), in the same browser, with the same trace settings.

Chromium runs without a GPU here (WebGL on SwiftShader), so the plot figures are the CPU's.

The peer, when mlflow is importable: MLflow's UI on the same data. Its SQLite store (under
--dir/mlflow, reused with --reuse when complete) holds one experiment of M runs (default: as
many as specimens) named, tagged (domain, method, model, tag.<t>) and with params (lr, seed,
steps) and 100 steps of loss/accuracy/grad_norm as the specimens, plus the C long runs of
S steps of loss; each run is made through ``MlflowClient.log_batch`` at MLflow's per-request
limit (1,000 metrics), then ended. Creating 10,000 + 100 runs takes about 15-20 minutes.
``mlflow server`` (--workers 1, as ``vault ui`` is one uvicorn process, or --mlflow-workers;
its artifact roots under --dir/mlflow) then serves it alone, our server being stopped, to the
same Chromium:

- its experiment's runs page (``/#/experiments/<id>/runs``, a single-page app that asks its
  API for the first 100 runs): first byte, DOMContentLoaded (only the app's shell: no row
  yet) and "rows shown", from navigation start until >= 50 runs' rows (run-name links in the
  table's rows) are in the DOM, noted on the first animation frame that has them. It is
  compared with our first page's interactive time (our rows are in the HTML);
- its metric page (``/#/metric/loss?runs=[...]``, the "plot chart" view of selected runs) for
  the C long runs: from navigation start until its plotly plot holds a trace for every run,
  two frames later, as ours. It plots MLflow's sampled history (320 points a run, from one
  ``get-history-bulk-interval`` request), requested together with one full ``get-history``
  per run (for the page's latest/min/max table), and the server answers it after those: at
  100 runs a load takes minutes, so it is timed over min(R, 3) loads without a warm-up.
  Points per trace are printed beside ours.

Ratios are MLflow / ours.

Usage:
    python benchmarks/bench_ui.py                      # 10,000 specimens + 100 x 10,000 steps
    python benchmarks/bench_ui.py --quick              # 1,000 specimens + 20 x 10,000 steps
    python benchmarks/bench_ui.py --dir /tmp/bench-ui --keep    # later: --reuse
    # with MLflow as the peer, from a venv of its own:
    python3 -m venv /tmp/venv-peers && /tmp/venv-peers/bin/pip install -q -e '.[test]' mlflow
    /tmp/venv-peers/bin/python benchmarks/bench_ui.py --dir /tmp/bench-ui --keep --reuse
    /tmp/venv-peers/bin/python benchmarks/bench_ui.py --quick --mlflow-runs 1000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ui"))

from bench_catalog import specimen, write  # noqa: E402  (the catalog benchmark's 10,000 specimens)
from ui_browser import find_chromium, new_browser  # noqa: E402  (the test suite's browser flags)

from cas_vault import SpecimenStorage, Vault  # noqa: E402


def curve_ids(count: int) -> list[str]:
    return [f"curve_{i:03d}" for i in range(count)]


def build(root: Path, n: int, curves: int, steps: int) -> Vault:
    """A vault of ``n`` table specimens and ``curves`` long-curve specimens (batch-indexed)."""
    shutil.rmtree(root, ignore_errors=True)
    vault = Vault.init(root)
    t0 = time.perf_counter()
    with vault.batch():
        for i in range(n):
            sid = write(vault, i, 100)
            vault.commit(sid, message=f"run {i}")
            if (i + 1) % 1000 == 0:
                print(f"  ... {i + 1:,} specimens ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        for i, sid in enumerate(curve_ids(curves)):
            s = SpecimenStorage(vault.new(sid, domain="training", method="fine_tuning",
                                          tags=["long"], model="mlp"))
            rng = np.random.default_rng(10_000 + i)
            step = np.arange(steps)
            s.write_metrics({"step": step,
                             "loss": np.exp(-step / (steps / 5)) * (1 + i / curves)
                             + 0.05 * rng.standard_normal(steps).cumsum() / np.sqrt(steps)})
            vault.commit(sid, message=f"long curve {i}")
    print(f"  built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return vault


def start_ui(root: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "cas_vault", "--vault", str(root), "ui",
                             "--port", "0"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"http://\S+/", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"vault ui did not start: {line!r}")
    return proc, match.group(0).rstrip("/")


# --- MLflow, the peer: the same runs in its SQLite store, its UI in the same browser -----------

MLFLOW_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def long_loss(i: int, curves: int, steps: int) -> np.ndarray:
    """Long curve ``i``'s loss, as ``build`` writes it."""
    rng = np.random.default_rng(10_000 + i)
    step = np.arange(steps)
    return (np.exp(-step / (steps / 5)) * (1 + i / curves)
            + 0.05 * rng.standard_normal(steps).cumsum() / np.sqrt(steps))


def mlflow_store(mdir: Path, runs: int, curves: int, steps: int) -> tuple[str, list[str]]:
    """MLflow's SQLite store under ``mdir`` holding the vault's data; its experiment and long runs.

    One experiment holds ``runs`` runs named and tagged as the table's specimens (domain,
    method, model, one ``tag.<t>`` per tag; params lr/seed/steps; 100 steps of loss, accuracy
    and grad_norm) and ``curves`` runs of ``steps`` steps of loss, as ``build`` writes them.
    Each run is created with its tags, its params and metrics sent with ``log_batch`` in
    chunks at MLflow's per-request limits, then ended. A store left complete by an earlier
    run with the same sizes is reused; one left incomplete is completed (runs that were not
    ended are deleted and made again); one holding more runs is made anew.
    """
    import logging

    from mlflow.entities import Metric, Param, RunStatus, ViewType
    from mlflow.tracking import MlflowClient
    from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_METRICS_PER_BATCH

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    os.environ.update(MLFLOW_ENV)
    state_file = mdir / "bench_ui.json"
    want = {"runs": runs, "curves": curves, "steps": steps}
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if state.get("complete") == want:
        print(f"Reusing MLflow's store in {mdir}", file=sys.stderr)
        return state["experiment_id"], state["curve_run_ids"]
    if (state.get("curves"), state.get("steps")) != (curves, steps) or state.get("runs", 0) > runs:
        shutil.rmtree(mdir, ignore_errors=True)
        state = {}
    mdir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{mdir / 'mlflow.db'}")
    if "experiment_id" in state:
        exp = state["experiment_id"]
    else:
        exp = client.create_experiment(
            "bench", artifact_location=str(mdir / "artifacts"),
            # What the UI asks a new experiment's user to pick: classic ML, not GenAI.
            tags={"mlflow.experimentKind": "custom_model_development"})
        state = {"experiment_id": exp, "curves": curves, "steps": steps, "runs": runs}
        state_file.write_text(json.dumps(state))
    state["runs"] = runs
    state_file.write_text(json.dumps(state))
    done: dict[str, str] = {}
    for r in client.search_runs([exp], run_view_type=ViewType.ACTIVE_ONLY, max_results=50_000):
        if r.info.status == RunStatus.to_string(RunStatus.FINISHED):
            done[r.info.run_name] = r.info.run_id
        else:  # cut off mid-way by an earlier run of this script
            client.delete_run(r.info.run_id)

    def log(run_id: str, metrics: list[Any], params: list[Any]) -> None:
        first = min(MAX_ENTITIES_PER_BATCH - len(params), MAX_METRICS_PER_BATCH)
        client.log_batch(run_id, metrics=metrics[:first], params=params)
        for k in range(first, len(metrics), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[k:k + MAX_METRICS_PER_BATCH])
        client.set_terminated(run_id)

    todo = [n for n in curve_ids(curves) if n not in done]
    todo_table = [i for i in range(runs) if specimen(i)[0] not in done]
    if todo or todo_table:
        print(f"Creating {len(todo_table):,} MLflow runs of 100 steps x 3 metrics + {len(todo)} of "
              f"{steps:,} steps in {mdir} (log_batch, {MAX_METRICS_PER_BATCH} metrics a "
              "request) ...",
              file=sys.stderr)
    t0 = time.perf_counter()
    for name in todo:
        i = int(name.rsplit("_", 1)[1])
        run = client.create_run(exp, run_name=name, tags={
            "domain": "training", "method": "fine_tuning", "model": "mlp", "tag.long": "1"})
        ts = int(time.time() * 1000)
        log(run.info.run_id, [Metric("loss", float(v), ts, k)
                              for k, v in enumerate(long_loss(i, curves, steps))], [])
        done[name] = run.info.run_id
    if todo:
        print(f"  ... {len(todo)} long runs ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    for n_done, i in enumerate(todo_table, 1):
        sid, domain, method, tags = specimen(i)
        run = client.create_run(exp, run_name=sid, tags={
            "domain": domain, "method": method, "model": "gpt2-small",
            **{f"tag.{t}": "1" for t in tags}})
        # The values ``write`` gives specimen i, drawn in the same order.
        rng = np.random.default_rng(i)
        ts = int(time.time() * 1000)
        k = np.arange(100)
        metrics = [Metric("loss", float(v), ts, j)
                   for j, v in enumerate(np.exp(-k / 30) + 0.05 * rng.random(100))]
        metrics += [Metric("accuracy", float(v), ts, j) for j, v in enumerate(1 - np.exp(-k / 20))]
        metrics += [Metric("grad_norm", float(v), ts, j) for j, v in enumerate(rng.random(100))]
        params = [Param("lr", str(float(10.0 ** -int(rng.integers(2, 5))))),
                  Param("seed", str(i)), Param("steps", "100")]
        log(run.info.run_id, metrics, params)
        if n_done % 1000 == 0:
            print(f"  ... {n_done:,} runs ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if todo or todo_table:
        print(f"  created in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    state["curve_run_ids"] = [done[n] for n in curve_ids(curves)]
    state["complete"] = want
    state_file.write_text(json.dumps(state))
    return exp, state["curve_run_ids"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mlflow(mdir: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """``mlflow server`` on the store in ``mdir`` (artifacts under it too), once it answers."""
    import urllib.request

    port = free_port()
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_cli)] if mlflow_cli.exists() else [sys.executable, "-m", "mlflow"]
    cmd += ["server", "--backend-store-uri", f"sqlite:///{mdir / 'mlflow.db'}",
            "--default-artifact-root", str(mdir / "artifacts"),
            "--artifacts-destination", str(mdir / "mlartifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    log = open(mdir / "server.log", "wb")  # noqa: SIM115  (closed with the process)
    # Its own process group: the server starts uvicorn and job runners, stopped with it.
    proc = subprocess.Popen(cmd, cwd=mdir, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **MLFLOW_ENV}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow server exited ({proc.returncode}): see {mdir / 'server.log'}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    stop_mlflow(proc)
    raise SystemExit(f"mlflow server did not answer within 180 s: see {mdir / 'server.log'}")


def stop_mlflow(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server started by ``start_mlflow`` and every process of its group."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


# Injected into every document the browser loads once our pages are done (MLflow's pages are
# single-page apps: the navigation timing's events come before anything is shown). On every
# frame it looks for what the page should show and notes performance.now() (ms since
# navigation start) when it first is:
#   rows: the runs table holds >= ROWS run-name links (distinct runs) in its rows;
#   plot: a plotly plot holds a trace with points for each of >= RUNS distinct runs; noted
#         two frames later (drawn and painted), as our compare page notes its own.
MLFLOW_PROBE = """
(() => {
  const want = %s;
  const b = window.__bench = {};
  const rows = () => new Set(Array.from(document.querySelectorAll('.ag-row a[href*="/runs/"]'))
                             .map(a => a.getAttribute('href'))).size;
  const plot = () => {
    const p = document.querySelector('.js-plotly-plot');
    if (!p || !Array.isArray(p.data)) return 0;
    return new Set(p.data.filter(t => t.x && t.x.length > 0).map(t => t.uuid || t.name)).size;
  };
  const tick = () => {
    if (location.hash.startsWith('#/metric')) {
      if (b.plot === undefined && plot() >= want.runs) {
        b.plot = null;
        requestAnimationFrame(() => requestAnimationFrame(() => { b.plot = performance.now(); }));
      }
    } else if (b.rows === undefined && rows() >= want.rows) {
      b.rows = performance.now();
    }
    if (b.rows === undefined && b.plot === undefined && performance.now() < 600000)
      requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
})();
"""


def mlflow_wait(driver: Any, key: str, timeout: float) -> float | None:
    """The probe's time for ``key`` (ms from navigation start), or None after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = driver.execute_script(f"return window.__bench ? window.__bench.{key} : undefined")
        if isinstance(got, (int, float)):
            return float(got)
        time.sleep(0.05)
    return None


def mlflow_measure(driver: Any, url: str, exp: str, curve_runs: list[str], total_runs: int,
                   steps: int, repeat: int,
                   metric_repeat: int) -> tuple[list[tuple[str, str]], dict[str, float | None]]:
    """MLflow's runs page (one warm-up, ``repeat`` loads) and its metric page for the long runs
    (``metric_repeat`` loads), timed in ``driver``."""
    rows_wanted = min(50, total_runs)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {
        "source": MLFLOW_PROBE % json.dumps({"rows": rows_wanted, "runs": len(curve_runs)})})
    out: list[tuple[str, str]] = []
    figures: dict[str, float | None] = {}

    runs_page = f"{url}/#/experiments/{exp}/runs"
    shown, navs = [], []
    for i in range(repeat + 1):
        driver.get("about:blank")  # a hash change alone would not load the page again
        driver.get(runs_page)
        t = mlflow_wait(driver, "rows", 120)
        if t is None:
            raise SystemExit(f"MLflow's runs page showed fewer than {rows_wanted} runs in 120 s")
        if i:
            shown.append(t)
            navs.append(driver.execute_script(NAV))
    n_rows = driver.execute_script(
        "return new Set(Array.from(document.querySelectorAll('.ag-row a[href*=\"/runs/\"]'))"
        ".map(a => a.getAttribute('href'))).size")
    ttfb, dcl, _ = (statistics.median(c) for c in zip(*navs, strict=True))
    figures["rows"], figures["dcl"] = statistics.median(shown), dcl
    out.append((f"mlflow: runs page ({total_runs:,} runs in one experiment)",
                f"first byte {ttfb:6.0f} ms   DOMContentLoaded {dcl:6.0f} ms   "
                f"rows shown {figures['rows']:6.0f} ms"))
    out.append((f"  (rows shown: >= {rows_wanted} runs' rows in the table's DOM; "
                f"its first page holds {n_rows})", ""))

    metric = "loss"
    q = {"runs": json.dumps(curve_runs), "metric": json.dumps(metric),
         "experiments": json.dumps([exp]), "plot_metric_keys": json.dumps([metric]),
         "plot_layout": "{}", "x_axis": "step", "y_axis_scale": "linear",
         "line_smoothness": "1", "show_point": "false", "deselected_curves": "[]",
         "last_linear_y_axis_range": "[]"}
    from urllib.parse import quote
    metric_page = (f"{url}/#/metric/{metric}?"
                   + "&".join(f"{k}={quote(v, safe='')}" for k, v in q.items()))
    # Each load takes minutes at 100 runs (see the docstring): no warm-up, at most 3 loads.
    drawn: list[float] = []
    failed = None
    for i in range(metric_repeat):
        driver.get("about:blank")
        driver.get(metric_page)
        t = mlflow_wait(driver, "plot", 600)
        if t is None:
            failed = driver.execute_script(
                "const p = document.querySelector('.js-plotly-plot'); return p && p.data ? "
                "new Set(p.data.filter(t => t.x && t.x.length).map(t => t.uuid)).size : 0")
            break
        drawn.append(t)
        print(f"  ... MLflow's metric page, load {i + 1} of {metric_repeat}: {t / 1000:.1f} s",
              file=sys.stderr)
    if failed is not None:
        figures["plot"] = None
        out.append((f"mlflow: metric page, {len(curve_runs)} runs' loss",
                    f"NOT MEASURED: only {failed} of {len(curve_runs)} runs drawn within 600 s"))
        return out, figures
    traces = driver.execute_script(
        "return document.querySelector('.js-plotly-plot').data.map(t => [t.uuid, t.x.length])")
    per_trace = sorted({n for _, n in traces})
    runs_drawn = len({u for u, _ in traces})
    full = driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => "
        "e.name.includes('/metrics/get-history?')).length")
    figures["plot"] = statistics.median(drawn)
    figures["points"] = float(max(per_trace))
    out.append((f"mlflow: metric page, {runs_drawn} runs' {metric}: navigation start -> drawn",
                f"{figures['plot']:6.0f} ms   (median of {len(drawn)} loads)"))
    out.append((f"  {len(traces)} plotly traces ({len(traces) // max(runs_drawn, 1)} a run) of "
                f"{'/'.join(map(str, per_trace))} points each: MLflow samples each run's history",
                f"(ours: all {steps:,})"))
    out.append((f"  it also fetched {full} runs' full history (get-history) for its table", ""))
    return out, figures


NAV = """const n = performance.getEntriesByType('navigation')[0];
return [n.responseStart - n.startTime, n.domContentLoadedEventEnd - n.startTime,
        n.loadEventEnd - n.startTime];"""


def page_timings(driver: Any, url: str, repeat: int, check: str) -> list[list[float]]:
    """Load ``url`` ``repeat`` times (after one warm-up); navigation timings of each load."""
    out = []
    for i in range(repeat + 1):
        driver.get(url)
        # The page must show what was asked for, not just arrive.
        ok = driver.execute_script(f"return {check}")
        if not ok:
            raise SystemExit(f"{url} did not show what it should ({check})")
        if i:
            out.append(driver.execute_script(NAV))
    return out


def wait_rendered(driver: Any, timeout: float = 120) -> tuple[float, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = driver.execute_script(
            "return document.body.dataset.rendered === '1' ? "
            "[window.casVaultRenderMs, performance.now()] : null")
        if got:
            return float(got[0]), float(got[1])
        err = driver.execute_script("const e = document.querySelector('.error'); "
                                    "return e && e.textContent.trim() ? e.textContent : null")
        if err:
            raise SystemExit(f"the compare page says: {err}")
        time.sleep(0.01)
    raise SystemExit("the compare page never finished rendering")


FLOOR_JS = """
const done = arguments[arguments.length - 1];
const [count, steps, traceType] = [arguments[0], arguments[1], arguments[2]];
const div = document.createElement('div'); div.style.width = '1200px'; div.style.height = '600px';
document.body.appendChild(div);
const x = new Float64Array(steps); for (let i = 0; i < steps; i++) x[i] = i;
const traces = [];
for (let t = 0; t < count; t++) {
  const y = new Float64Array(steps); let v = 1;
  for (let i = 0; i < steps; i++) { v = v * 0.9995 + Math.random() * 0.001; y[i] = v + t * 0.01; }
  traces.push({type: traceType, mode: 'lines', x: x, y: y, line: {width: 1}});
}
const t0 = performance.now();
Plotly.newPlot(div, traces, {showlegend: false}).then(() => requestAnimationFrame(() =>
  requestAnimationFrame(() => done(performance.now() - t0))));
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specimens", type=int, default=10_000)
    ap.add_argument("--curves", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="1,000 specimens, 20 curves")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the vault (and MLflow's store, if complete) left in --dir")
    ap.add_argument("--mlflow-runs", type=int, default=None,
                    help="MLflow runs of 100 steps (default: as many as --specimens)")
    ap.add_argument("--mlflow-workers", type=int, default=1, help="mlflow server --workers")
    args = ap.parse_args()
    if args.quick:
        args.specimens, args.curves = 1_000, 20
    mlflow_runs = args.specimens if args.mlflow_runs is None else args.mlflow_runs
    try:
        import mlflow
        have_mlflow = True
    except ImportError:
        have_mlflow = False
    if find_chromium() is None:
        raise SystemExit("no chromium/chromedriver: apt-get install chromium chromium-driver")
    base = args.dir or Path(tempfile.mkdtemp(prefix="bench-ui-"))
    root = base / "vault"
    if args.reuse and (root / "vault.msgpack").exists():
        print(f"Reusing {root}", file=sys.stderr)
    else:
        print(f"Building {args.specimens:,} specimens + {args.curves} x {args.steps:,} steps in "
              f"{root} ...", file=sys.stderr)
        build(root, args.specimens, args.curves, args.steps)
    Vault.open(root).index()
    mdir = base / "mlflow"
    if have_mlflow:
        if not args.reuse:
            shutil.rmtree(mdir, ignore_errors=True)
        exp, curve_runs = mlflow_store(mdir, mlflow_runs, args.curves, args.steps)

    proc, url = start_ui(root)
    scratch = Path(tempfile.mkdtemp(prefix="bench-ui-chromium-"))
    driver = new_browser(scratch)
    rows: list[tuple[str, str]] = []
    try:
        table_checks = "document.querySelectorAll('table#specimens tbody tr').length >= 50"
        # A later full page: page 200 (offset 9,950) at the defaults; the last full one if fewer.
        late = min(200, (args.specimens + args.curves) // 50)
        views = [
            ("table, first page, defaults", "/"),
            ("table, first page, final loss column", "/?metrics=loss"),
            ("table, first page, sorted by final loss", "/?metrics=loss&sort=metric:loss&desc=1"),
            (f"table, page {late} (offset {(late - 1) * 50:,})", f"/?page={late}"),
        ]
        interactive: dict[str, float] = {}
        for name, path in views:
            t = page_timings(driver, url + path, args.repeat, table_checks)
            ttfb, dcl, load = (statistics.median(c) for c in zip(*t, strict=True))
            interactive[name] = dcl
            rows.append((name, f"first byte {ttfb:6.0f} ms   interactive {dcl:6.0f} ms   "
                               f"loaded {load:6.0f} ms"))
        filt = "/?domain=interpretability&tag=gpt2&q=run"
        t = page_timings(driver, url + filt, args.repeat,
                         "document.querySelectorAll('table#specimens tbody tr').length > 0")
        ttfb, dcl, load = (statistics.median(c) for c in zip(*t, strict=True))
        rows.append(("table, filtered (domain + tag + text)",
                     f"first byte {ttfb:6.0f} ms   interactive {dcl:6.0f} ms   loaded {load:6.0f} ms"))

        ids = ",".join(curve_ids(args.curves))
        compare = f"{url}/compare?ids={ids}&metric=loss"
        render, total = [], []
        for i in range(args.repeat + 1):
            driver.get(compare)
            r, now = wait_rendered(driver)
            if i:
                render.append(r)
                total.append(now)
            n_points = driver.execute_script(
                "return Array.from(document.querySelectorAll('.js-plotly-plot'))"
                ".flatMap(p => p.data).filter(t => !t.name || !String(t.name).includes('smoothed'))"
                ".reduce((a, t) => a + t.x.length, 0)")
            if n_points != args.curves * args.steps:
                raise SystemExit(f"the plot holds {n_points} points, not {args.curves * args.steps}")
        trace_type = driver.execute_script(
            "return document.querySelector('.js-plotly-plot').data[0].type || 'scatter'")
        floor = []
        for _ in range(args.repeat):
            driver.get(url + "/")
            driver.execute_script(
                "const s = document.createElement('script'); s.src = '/assets/plotly.min.js';"
                "document.head.appendChild(s);")
            while not driver.execute_script("return typeof Plotly !== 'undefined'"):
                time.sleep(0.01)
            floor.append(driver.execute_async_script(FLOOR_JS, args.curves, args.steps, trace_type))
        rmed, fmed = statistics.median(render), statistics.median(floor)
        rows.append((f"overlay {args.curves} x {args.steps:,} steps: data in -> drawn ({trace_type})",
                     f"{rmed:6.0f} ms"))
        rows.append(("  navigation start -> drawn (request, transfer, decode, draw)",
                     f"{statistics.median(total):6.0f} ms"))
        rows.append(("  bare plotly.js, same points and trace type, data already in the page",
                     f"{fmed:6.0f} ms   (ours / bare: {rmed / fmed:.2f}x)"))
        if have_mlflow:
            proc.terminate()  # MLflow's server gets the machine to itself, as ours did
            proc.wait(30)
            print(f"Starting mlflow server ({mlflow.__version__}) ...", file=sys.stderr)
            mproc, murl = start_mlflow(mdir, args.mlflow_workers)
            try:
                peer_rows, peer = mlflow_measure(driver, murl, exp, curve_runs,
                                                 mlflow_runs + args.curves, args.steps,
                                                 args.repeat, min(args.repeat, 3))
            finally:
                stop_mlflow(mproc)
    finally:
        driver.quit()
        shutil.rmtree(scratch, ignore_errors=True)
        proc.terminate()
        proc.wait(30)
        if not args.keep and args.dir is None:
            shutil.rmtree(base, ignore_errors=True)

    print(f"\nvault ui in headless Chromium, {args.specimens:,} + {args.curves} specimens, "
          f"median of {args.repeat}:")
    for name, value in rows:
        print(f"  {name:<72} {value}")
    first = interactive["table, first page, defaults"]
    print(f"\ntarget: table first page interactive < 1 s: {first:.0f} ms "
          f"({'met' if first < 1000 else 'MISSED'})")
    rmed = statistics.median(render)
    print(f"target: {args.curves} x {args.steps:,} curves rendered < 1 s: {rmed:.0f} ms "
          f"({'met' if rmed < 1000 else 'MISSED'})")
    if not have_mlflow:
        print("\nmlflow not installed: skipped (run this script with the Python of a venv that "
              "has it: see the module's docstring)")
        return
    print(f"\nMLflow {mlflow.__version__}'s UI (mlflow server, SQLite store, --workers "
          f"{args.mlflow_workers}) in the same Chromium, median of {args.repeat}:")
    for name, value in peer_rows:
        print(f"  {name:<72} {value}".rstrip())
    print(f"\nside by side (MLflow / ours; ours: {args.specimens:,} + {args.curves} specimens, "
          f"MLflow: {mlflow_runs:,} + {args.curves} runs):")
    print(f"  {'table first page: ours interactive vs MLflow rows shown':<72} "
          f"{first:6.0f} ms vs {peer['rows']:6.0f} ms   {peer['rows'] / first:6.1f}x")
    ours_total = statistics.median(total)
    if peer.get("plot") is None:
        print(f"  {'overlay of the long curves, navigation start -> drawn':<72} "
              f"{ours_total:6.0f} ms vs not measured (see above)")
    else:
        print(f"  {'overlay of the long curves, navigation start -> drawn':<72} "
              f"{ours_total:6.0f} ms vs {peer['plot']:6.0f} ms   "
              f"{peer['plot'] / ours_total:6.1f}x")
        print(f"  {'  points drawn per curve':<72} {args.steps:6,}    vs {peer['points']:6,.0f}"
              f"      (MLflow samples; ours draws every point)")


if __name__ == "__main__":
    main()
