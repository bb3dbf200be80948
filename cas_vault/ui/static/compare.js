// cas-vault UI: the compare page. Fetches every curve as binary float64 (/api/curves),
// overlays them with plotly at full resolution, and adds smoothed lines on request (the raw
// lines always stay). Keeps the log/smoothing choices in the URL, so a view can be bookmarked.
"use strict";
(function () {
  const MAGIC = "CVCURVE1";
  // Plotly's default colour cycle, then evenly spread hues for more than ten specimens.
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf"];
  const RAW_FADED = 0.3;

  function color(i, n) {
    if (n <= COLORS.length) return COLORS[i];
    return `hsl(${Math.round((i * 360) / n)}, 70%, 42%)`;
  }

  /** Decode the body of /api/curves: a JSON header, then float64 arrays viewed in place. */
  function decode(buf) {
    const bytes = new Uint8Array(buf);
    const dec = new TextDecoder();
    if (buf.byteLength < 12 || dec.decode(bytes.subarray(0, 8)) !== MAGIC) {
      throw new Error("the server sent curves in a format this page does not know");
    }
    const headerLen = new DataView(buf).getUint32(8, true);
    const header = JSON.parse(dec.decode(bytes.subarray(12, 12 + headerLen)));
    const base = Math.ceil((12 + headerLen) / 8) * 8;
    // Float64Array reads the platform's byte order: little-endian, as the server writes, on
    // every platform a browser runs on.
    for (const s of header.series) {
      s.ys = new Float64Array(buf, base + s.y.offset, s.n);
      if (s.x.offset !== undefined) {
        s.xs = new Float64Array(buf, base + s.x.offset, s.n);
      } else {
        const xs = new Float64Array(s.n);
        for (let i = 0; i < s.n; i++) xs[i] = s.x.start + s.x.stride * i;
        s.xs = xs;
      }
    }
    return header;
  }

  /** TensorBoard's smoothing: an exponential moving average, debiased for the first points;
   *  NaN and infinities pass through (they are gaps, not values to average). */
  function smooth(ys, weight) {
    const out = new Float64Array(ys.length);
    let constant = true;
    for (let i = 1; i < ys.length && constant; i++) constant = ys[i] === ys[0];
    let last = 0;
    let count = 0;
    for (let i = 0; i < ys.length; i++) {
      const v = ys[i];
      if (constant || !Number.isFinite(v)) {
        out[i] = v;
        continue;
      }
      last = last * weight + (1 - weight) * v;
      count++;
      out[i] = weight === 1 ? last : last / (1 - Math.pow(weight, count));
    }
    return out;
  }

  /** The extent of finite values (positive ones only for a log axis). */
  function extent(arrays, positiveOnly) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const a of arrays) {
      for (let i = 0; i < a.length; i++) {
        const v = a[i];
        if (v < lo && (!positiveOnly || v > 0)) lo = v;
        if (v > hi) hi = v;
      }
    }
    return lo <= hi ? [lo, hi] : null;
  }

  function padded([lo, hi], log) {
    if (log) {
      const a = Math.log10(lo);
      const b = Math.log10(hi);
      const pad = (b - a || 1) * 0.04;
      return [a - pad, b + pad];
    }
    const pad = (hi - lo || Math.abs(hi) || 1) * 0.04;
    return [lo - pad, hi + pad];
  }

  const label = casVault.plotText;

  function setUrlParam(name, value) {
    const url = new URL(window.location.href);
    if (value === null) url.searchParams.delete(name);
    else url.searchParams.set(name, value);
    window.history.replaceState(null, "", url.pathname + url.search);
  }

  function wireForms() {
    const form = document.getElementById("plot-form");
    if (!form) return;
    const file = document.getElementById("file-select");
    const metric = document.getElementById("metric-select");
    // Another file has other columns: let the server pick its first metric.
    if (file) file.addEventListener("change", () => { if (metric) metric.disabled = true; form.submit(); });
    if (metric) metric.addEventListener("change", () => form.submit());
  }

  async function main() {
    wireForms();
    const cfg = casVault.data("compare-config");
    if (!cfg) return;
    const status = document.getElementById("curves-status");
    const missingList = document.getElementById("curves-missing");
    const gd = document.getElementById("curves");
    const logToggle = document.getElementById("log-toggle");
    const smoothToggle = document.getElementById("smooth-toggle");
    const weightInput = document.getElementById("smooth-weight");
    const weightOut = document.getElementById("smooth-value");

    let log = Boolean(cfg.log);
    let smoothOn = Boolean(cfg.smoothOn);
    let weight = Number(cfg.smooth);
    const metric = label(cfg.metric);
    const config = { responsive: true, displaylogo: false };
    const baseLayout = {
      margin: { l: 60, r: 20, t: 36, b: 45 },
      xaxis: { title: { text: "step" } },
      yaxis: { title: { text: metric }, type: log ? "log" : "linear" },
      hovermode: "closest",
      legend: { font: { size: 11 } },
      uirevision: "compare",
    };
    const t0 = performance.now();
    // An empty plot is drawn while the curves download: by the time they arrive plotly's code
    // has run once and the axes are laid out, and only the data is left to draw.
    const ready = Plotly.newPlot(gd, [], baseLayout, config);
    let header;
    try {
      const r = await fetch(cfg.curvesUrl);
      if (!r.ok) {
        const body = await r.json().catch(() => ({ error: r.statusText }));
        throw new Error(body.error || r.statusText);
      }
      header = decode(await r.arrayBuffer());
    } catch (err) {
      await ready;
      Plotly.purge(gd);
      status.className = "error";
      status.textContent = "";
      status.appendChild(casVault.text(err.message));
      document.body.dataset.rendered = "error";
      return;
    }
    const arrived = performance.now();
    window.casVaultFetchMs = arrived - t0;

    const series = header.series.filter((s) => !s.missing);
    for (const s of header.series) {
      if (!s.missing) continue;
      const li = document.createElement("li");
      li.appendChild(casVault.text(`${s.id}: ${s.missing}`));
      missingList.appendChild(li);
    }
    const n = series.length;
    const xName = series.every((s) => s.x_name === "step") ? "step" : "step (row number where there is no step)";
    const xr = extent(series.map((s) => s.xs), false);

    function yRange() {
      const arrays = series.map((s) => s.ys);
      const e = extent(arrays, log);
      return e ? padded(e, log) : undefined;
    }

    function rawTraces() {
      return series.map((s, i) => ({
        type: "scatter", mode: "lines", name: s.id, legendgroup: s.id, x: s.xs, y: s.ys,
        // Every point is in the trace. Plotly's SVG line simplification (on by default) leaves
        // out of the drawn path only vertices nearly collinear with it at the current zoom
        // (within about a pixel), and draws again from all the points on every zoom: the same
        // picture, ~20% faster for 100 x 10,000 points than simplify: false. (scattergl needs
        // WebGL, which a machine without a GPU may lack.)
        line: { color: color(i, n), width: 1 }, opacity: smoothOn ? RAW_FADED : 1,
        hovertemplate: `${s.id}<br>${metric} %{y}<br>step %{x}<extra></extra>`,
      }));
    }

    function smoothTraces() {
      return series.map((s, i) => ({
        type: "scatter", mode: "lines", name: `${s.id} (smoothed)`, legendgroup: s.id,
        x: s.xs, y: smooth(s.ys, weight), line: { color: color(i, n), width: 1.6 },
        hovertemplate: `${s.id} smoothed<br>${metric} %{y:.6g}<br>step %{x}<extra></extra>`,
      }));
    }

    // Axis ranges computed here (one pass over typed arrays) spare plotly its own autorange
    // over every point; double-click still returns to them.
    const yr = yRange();
    const layout = {
      ...baseLayout,
      xaxis: { title: { text: xName }, range: xr ? padded(xr, false) : undefined, autorange: !xr },
      yaxis: { ...baseLayout.yaxis, range: yr, autorange: !yr },
      showlegend: n <= 30,
    };
    const traces = smoothOn ? [...rawTraces(), ...smoothTraces()] : rawTraces();
    await ready;
    await Plotly.react(gd, traces, layout, config);
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    // For the benchmark: data arrival to painted plot, and navigation start to painted plot.
    window.casVaultRenderMs = performance.now() - arrived;
    window.casVaultPageMs = performance.now();
    const points = series.reduce((a, s) => a + s.n, 0);
    status.className = "muted";
    status.textContent = `${n} curve${n === 1 ? "" : "s"} of ${header.metric}, ` +
      `${points.toLocaleString("en")} points (every logged value).`;
    document.body.dataset.rendered = "1";

    logToggle.addEventListener("change", () => {
      log = logToggle.checked;
      const r = yRange();
      Plotly.relayout(gd, { "yaxis.type": log ? "log" : "linear", "yaxis.range": r, "yaxis.autorange": !r });
      setUrlParam("log", log ? "1" : null);
    });

    async function applySmoothing() {
      const raw = series.map((_, i) => i);
      if (gd.data.length > n) await Plotly.deleteTraces(gd, series.map((_, i) => n + i));
      await Plotly.restyle(gd, { opacity: smoothOn ? RAW_FADED : 1 }, raw);
      if (smoothOn) await Plotly.addTraces(gd, smoothTraces());
      setUrlParam("smooth", smoothOn ? String(weight) : null);
    }

    smoothToggle.addEventListener("change", () => {
      smoothOn = smoothToggle.checked;
      weightInput.disabled = !smoothOn;
      applySmoothing();
    });
    weightInput.addEventListener("input", () => { weightOut.textContent = weightInput.value; });
    weightInput.addEventListener("change", () => {
      weight = Number(weightInput.value);
      if (smoothOn) applySmoothing();
    });
  }

  main();
})();
