// cas-vault UI: the specimen page's plots (tensor heatmap, metric curves, spectroscopy).
// Data comes from the page's JSON block ("specimen-data") and the /api/specimen/... endpoints;
// user text (names, columns) reaches the page only as text nodes.
"use strict";
(function () {
  const page = casVault.data("specimen-data");
  if (!page) return;
  const api = "/api/specimen/" + encodeURIComponent(page.id);
  const config = { responsive: true, displaylogo: false };
  const smallConfig = { ...config, displayModeBar: false };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.appendChild(casVault.text(text));
    return e;
  }
  const plotText = casVault.plotText;
  function ordinal(n) {
    const tens = n % 100, ones = n % 10;
    const suffix = tens >= 11 && tens <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[ones] || "th");
    return n + suffix;
  }
  function setText(id, text) {
    const e = document.getElementById(id);
    if (e) e.replaceChildren(casVault.text(text));
  }

  // -- tensor preview ----------------------------------------------------------------------
  const tensorForm = document.getElementById("tensor-form");
  if (tensorForm && page.tensors.length) {
    const byName = new Map(page.tensors.map((t) => [t.name, t]));
    const select = document.getElementById("tensor-name");
    const indexBox = document.getElementById("tensor-index");

    // One number input per leading dimension of a tensor of more than 2 dimensions.
    function indexInputs() {
      const t = byName.get(select.value);
      indexBox.replaceChildren();
      const lead = t.shape.length > 2 ? t.shape.slice(0, -2) : [];
      lead.forEach((n, i) => {
        const label = el("label", null, "index " + i + " (0–" + (n - 1) + ")");
        const input = el("input", "tensor-index-input");
        input.type = "number";
        input.min = "0";
        input.max = String(n - 1);
        input.value = "0";
        input.required = true;
        input.dataset.dim = String(i);
        label.appendChild(input);
        indexBox.appendChild(label);
      });
    }

    async function show() {
      const t = byName.get(select.value);
      const index = Array.from(indexBox.querySelectorAll("input")).map((i) => i.value.trim());
      const params = new URLSearchParams({ name: t.name });
      if (index.length) params.set("index", index.join(","));
      setText("tensor-error", "");
      let d;
      try {
        d = await casVault.getJSON(api + "/tensor?" + params.toString());
      } catch (err) {
        setText("tensor-error", err.message);
        return;
      }
      const where = d.index.length ? "[" + d.index.join(", ") + ", :, :]" : "";
      let caption = d.name + where + " (" + d.rows + " × " + d.cols + ", " + d.dtype + ")";
      if (d.row_step > 1 || d.col_step > 1) {
        caption += ": preview of every " + (d.row_step > 1 ? ordinal(d.row_step) + " " : "") +
          "row and every " + (d.col_step > 1 ? ordinal(d.col_step) + " " : "") + "column";
      } else {
        caption += ": every value";
      }
      if (d.complex) caption += "; magnitudes of complex values";
      setText("tensor-caption", caption);
      const trace = { type: "heatmap", z: d.z, x: d.x, y: d.y, colorscale: "Viridis",
                      hoverongaps: false };
      const layout = { margin: { t: 20, r: 20, b: 40, l: 50 },
                       yaxis: { autorange: "reversed", title: { text: "row" } },
                       xaxis: { title: { text: "column" } } };
      await Plotly.react("tensor-plot", [trace], layout, config);
    }

    select.addEventListener("change", () => { indexInputs(); show(); });
    tensorForm.addEventListener("submit", (ev) => { ev.preventDefault(); show(); });
    indexInputs();
    show();
  }

  // -- metric curves -----------------------------------------------------------------------
  const small = (title, x) => ({
    title: { text: plotText(title), font: { size: 13 } }, margin: { t: 30, r: 10, b: 35, l: 50 },
    height: 240, xaxis: { title: { text: plotText(x) } }, showlegend: false,
  });

  async function drawFile(file, container) {
    let d;
    try {
      d = await casVault.getJSON(api + "/metrics?" + new URLSearchParams({ file: file.name }));
    } catch (err) {
      container.replaceChildren(el("p", "error", err.message));
      return;
    }
    const xs = d.x ? d.columns[d.x] : Array.from({ length: d.rows }, (_, i) => i);
    const xName = d.x || "row";
    for (const [i, col] of file.columns.entries()) {
      const div = el("div", "plot-small metric-plot");
      div.id = "metric-" + container.dataset.index + "-" + i;
      div.dataset.column = col;
      container.appendChild(div);
      const ys = d.columns[col] || [];
      // WebGL keeps long series responsive; every point is drawn either way.
      const type = ys.length > 5000 ? "scattergl" : "scatter";
      Plotly.newPlot(div, [{ type, mode: ys.length > 200 ? "lines" : "lines+markers", x: xs, y: ys,
                             name: plotText(col) }], small(col, xName), smallConfig);
    }
  }

  const fileDivs = document.querySelectorAll("#metrics .parquet-file");
  const plotted = new Map(page.metrics.map((m) => [m.name, m]));
  fileDivs.forEach((div, i) => {
    const file = plotted.get(div.dataset.file);
    const container = div.querySelector(".metric-plots");
    if (!file || !container) return;
    container.dataset.index = String(i);
    drawFile(file, container);
  });

  // -- spectroscopy ------------------------------------------------------------------------
  const spectro = page.spectroscopy;
  if (spectro) {
    const grid = document.getElementById("spectro-scores");
    for (const [name, values] of Object.entries(spectro.scores)) {
      const div = el("div", "plot-small spectro-score");
      div.id = "spectro-score-" + name;
      grid.appendChild(div);
      Plotly.newPlot(div, [{ type: "bar", x: spectro.inputs, y: values, name }],
                     { ...small(name, "input"), xaxis: { title: { text: "input" }, type: "category" } },
                     smallConfig);
    }

    const form = document.getElementById("spectrum-form");
    const inputBox = document.getElementById("spectrum-input");
    const topBox = document.getElementById("spectrum-top");
    inputBox.max = String(Math.max(0, spectro.n_inputs - 1));

    async function spectrum() {
      const params = new URLSearchParams({ input: inputBox.value.trim(), top: topBox.value.trim() });
      setText("spectrum-error", "");
      let d;
      try {
        d = await casVault.getJSON(api + "/spectrum?" + params.toString());
      } catch (err) {
        setText("spectrum-error", err.message);
        return;
      }
      setText("spectrum-caption", "input " + d.input + ": the " + d.features.length +
               " strongest of " + d.n_features + " lines, by intensity (sum over tokens)");
      const trace = { type: "bar", x: d.features.map((f) => "f" + f), y: d.intensity,
                      hovertemplate: "feature %{x}<br>intensity %{y}<extra></extra>" };
      await Plotly.react("spectrum-plot", [trace], {
        margin: { t: 20, r: 20, b: 60, l: 60 }, xaxis: { type: "category", title: { text: "feature" } },
        yaxis: { title: { text: "intensity" } },
      }, config);
    }
    form.addEventListener("submit", (ev) => { ev.preventDefault(); spectrum(); });
    spectrum();
  }
})();
