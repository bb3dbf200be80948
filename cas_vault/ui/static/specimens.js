// The specimens table: a changed filter menu applies itself (the form is an ordinary GET, so
// every view stays in the URL); a new filter starts again at the first page.
"use strict";
(function () {
  // Ticked rows go to the compare page as one `ids=a,b` parameter.
  const compare = document.getElementById("compare-form");
  if (compare) {
    const button = document.getElementById("compare-selected");
    const ticked = () => Array.from(document.querySelectorAll("input.pick:checked"), (c) => c.value);
    const update = () => {
      const n = ticked().length;
      button.disabled = n === 0;
      button.textContent = n ? `Compare selected (${n})` : "Compare selected";
    };
    document.addEventListener("change", (e) => { if (e.target.matches("input.pick")) update(); });
    compare.addEventListener("formdata", (event) => event.formData.set("ids", ticked().join(",")));
    update();
  }
  const form = document.getElementById("filters");
  if (!form) return;
  for (const select of form.querySelectorAll("select.autosubmit")) {
    select.addEventListener("change", () => form.requestSubmit());
  }
  // Several ticked metrics travel as one `metrics=a,b` parameter, as bookmarks write them,
  // unless a name holds a comma.
  form.addEventListener("formdata", (event) => {
    const data = event.formData;
    const metrics = data.getAll("metrics");
    if (metrics.length > 1 && metrics.every((m) => !m.includes(","))) {
      data.delete("metrics");
      data.append("metrics", metrics.join(","));
    }
    for (const [name, value] of Array.from(data.entries())) {
      if (value === "" ) data.delete(name);  // keep the URL short: empty filters are defaults
    }
  });
})();
