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

Usage:
    python benchmarks/bench_ui.py                      # 10,000 specimens + 100 x 10,000 steps
    python benchmarks/bench_ui.py --quick              # 1,000 specimens + 20 x 10,000 steps
    python benchmarks/bench_ui.py --dir /tmp/bench-ui --keep    # later: --reuse
"""

from __future__ import annotations

import argparse
import re
import shutil
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

from bench_catalog import write  # noqa: E402  (the same 10,000 specimens as the catalog benchmark)
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
    ap.add_argument("--reuse", action="store_true", help="reuse the vault left in --dir")
    args = ap.parse_args()
    if args.quick:
        args.specimens, args.curves = 1_000, 20
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

    proc, url = start_ui(root)
    scratch = Path(tempfile.mkdtemp(prefix="bench-ui-chromium-"))
    driver = new_browser(scratch)
    rows: list[tuple[str, str]] = []
    try:
        table_checks = "document.querySelectorAll('table#specimens tbody tr').length >= 50"
        views = [
            ("table, first page, defaults", "/"),
            ("table, first page, final loss column", "/?metrics=loss"),
            ("table, first page, sorted by final loss", "/?metrics=loss&sort=metric:loss&desc=1"),
            ("table, page 200 (offset 9,950)", "/?page=200"),
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


if __name__ == "__main__":
    main()
