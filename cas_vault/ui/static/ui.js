// cas-vault UI: helpers every page's script uses.
"use strict";
window.casVault = {
  /** The value of a <script type="application/json" id=...> block the server rendered. */
  data(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  },
  /** GET a JSON document; rejects with the server's error message. */
  async getJSON(url) {
    const r = await fetch(url, { headers: { accept: "application/json" } });
    const body = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  },
  /** Text for plotly titles, axis and trace names, which understand a few HTML tags (<b>,
   *  <a href>): user text is shown as written, never as markup. */
  plotText(s) {
    return String(s == null ? "" : s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  },
  /** A text node: the only way scripts put user text into the page. */
  text(s) { return document.createTextNode(s == null ? "" : String(s)); },
};
