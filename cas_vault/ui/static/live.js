// cas-vault UI: the live page. Polls /api/live about once a second with one cursor per item
// shown, appends the rows flushed since, and says when an item was committed (with a link).
"use strict";
(function () {
  const cfg = casVault.data("live-config");
  const list = document.getElementById("live-items");
  const empty = document.getElementById("live-empty");
  const statusEl = document.getElementById("live-status");
  const items = new Map(); // key -> what the page shows for it
  let plots = 0;
  let polls = 0;

  const BADGES = {
    logging: "logging",
    waiting: "waiting for the first flush",
    finishing: "finishing",
    unfinished_log: "unfinished: its process is gone (vault commit ID --partial seals it)",
    run: "vault run in progress",
    unsealed_run: "run not sealed yet",
  };

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(6)));
  }

  const label = casVault.plotText;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.appendChild(casVault.text(text));
    return e;
  }

  function create(entry) {
    const section = el("section", "live-item");
    section.dataset.key = entry.key;
    const h = el("h2");
    const id = el("span", "live-id", entry.id);
    const badge = el("span", "badge");
    const what = el("span", "muted", entry.name ? `log ${entry.name}` : "");
    h.append(id, badge, what);
    const note = el("p", "note muted");
    const latest = el("table", "grid latest");
    const plot = el("div", "plot live-plot");
    plot.id = `live-plot-${plots++}`;
    section.append(h, note, latest, plot);
    list.appendChild(section);
    const st = { key: entry.key, id: entry.id, token: "", cols: {}, n: 0, section, h, idEl: id,
      badge, note, latest, plot, plotted: false, revision: 0, committed: false };
    items.set(entry.key, st);
    return st;
  }

  function setBadge(st, cls, text) {
    st.badge.className = `badge ${cls}`;
    st.badge.textContent = text;
  }

  /** Append rows (columns of values) to what is shown, padding columns that are new or absent. */
  function append(st, rows) {
    const add = rows.step ? rows.step.length : 0;
    for (const name of Object.keys(rows)) {
      if (!(name in st.cols)) st.cols[name] = new Array(st.n).fill(null);
    }
    for (const [name, col] of Object.entries(st.cols)) {
      const values = rows[name];
      if (values) for (const v of values) col.push(v);
      else for (let i = 0; i < add; i++) col.push(null);
    }
    st.n += add;
  }

  function showLatest(st) {
    const names = Object.keys(st.cols).filter((c) => c !== "step");
    const head = el("tr");
    const row = el("tr");
    head.appendChild(el("th", "num", "step"));
    row.appendChild(el("td", "num latest-step", fmt(st.n ? st.cols.step[st.n - 1] : null)));
    for (const name of names) {
      const col = st.cols[name];
      let v = null;
      for (let i = col.length - 1; i >= 0 && v === null; i--) v = col[i];
      head.appendChild(el("th", "num", name));
      row.appendChild(el("td", "num", fmt(v)));
    }
    st.latest.replaceChildren(el("thead"), el("tbody"));
    st.latest.tHead.appendChild(head);
    st.latest.tBodies[0].appendChild(row);
    st.section.dataset.rows = String(st.n);
  }

  function draw(st) {
    const names = Object.keys(st.cols).filter((c) => c !== "step");
    const traces = names.map((name) => ({
      type: "scatter", mode: "lines", name: label(name), x: st.cols.step, y: st.cols[name],
      line: { width: 1.2, simplify: false },
    }));
    st.revision++;
    const layout = {
      margin: { l: 55, r: 10, t: 8, b: 38 }, xaxis: { title: { text: "step" } },
      hovermode: "x", datarevision: st.revision, uirevision: "live", showlegend: true,
    };
    // The arrays grow in place: datarevision tells plotly to read them again.
    Plotly.react(st.plot, traces, layout, { responsive: true, displaylogo: false });
    st.plotted = true;
  }

  function update(entry) {
    const st = items.get(entry.key) || create(entry);
    st.section.classList.remove("ended");
    st.token = entry.token;
    if (entry.reset) { st.cols = {}; st.n = 0; }
    if (entry.rows) append(st, entry.rows);
    const state = entry.kind === "logging" ? entry.state : entry.kind;
    setBadge(st, entry.kind === "logging" ? "logging" : entry.kind, BADGES[state] || state);
    st.note.textContent = entry.kind === "unsealed_run"
      ? `a run of ${entry.specimen_id}; the next vault commit ${entry.specimen_id} seals it`
      : "";
    if (entry.rows || entry.reset) {
      showLatest(st);
      if (st.n) draw(st);
    }
  }

  function ended(entry) {
    const st = items.get(entry.key);
    if (!st) return;
    st.section.classList.add("ended");
    if (!entry.committed) {
      setBadge(st, "stopped", "stopped: not committed (yet)");
      return;
    }
    st.committed = true;
    setBadge(st, "committed", "committed");
    const link = el("a", "live-id", entry.id);
    link.href = `/specimen/${encodeURIComponent(entry.id)}`;
    st.idEl.replaceWith(link);
    st.idEl = link;
    st.note.replaceChildren(casVault.text(`Finished and committed as ${String(entry.commit).slice(0, 12)}: `));
    const open = el("a", "specimen-link", "open its specimen page");
    open.href = link.href;
    st.note.appendChild(open);
    st.note.className = "note ok";
  }

  async function poll() {
    const params = new URLSearchParams();
    for (const st of items.values()) if (!st.committed) params.append("c", `${st.key}:${st.token}`);
    let wait = cfg.poll * 1000;
    try {
      const data = await casVault.getJSON(`${cfg.api}?${params}`);
      for (const entry of data.items) update(entry);
      for (const entry of data.ended) ended(entry);
      empty.hidden = items.size > 0;
      polls++;
      document.body.dataset.polls = String(polls);
      statusEl.className = "muted";
      statusEl.textContent = `Last checked ${new Date().toLocaleTimeString()}.`;
      // More rows than one answer carries: ask again at once.
      wait = data.items.some((i) => i.more) ? 0 : data.poll * 1000;
    } catch (err) {
      statusEl.className = "error";
      statusEl.textContent = `Cannot reach the server (${err.message}); trying again.`;
      wait = 2000;
    }
    window.setTimeout(poll, wait);
  }

  poll();
})();
