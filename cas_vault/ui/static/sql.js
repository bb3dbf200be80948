// The SQL page: Ctrl+Enter (Cmd+Enter) in the editor runs the query (an ordinary GET form).
"use strict";
(function () {
  const form = document.getElementById("sql-form");
  const editor = document.getElementById("sql-editor");
  if (!form || !editor) return;
  editor.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
})();
