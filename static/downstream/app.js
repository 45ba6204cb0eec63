// Behaviour the dashboard's pages share, wired here rather than in inline handlers (the
// Content-Security-Policy runs no inline script): filters that apply as they change, and the
// weekly review's Print button.
(function () {
  "use strict";
  document.querySelectorAll("select[data-submit-on-change]").forEach((select) =>
    select.addEventListener("change", () => select.form.submit()));
  document.querySelectorAll("button[data-print]").forEach((button) =>
    button.addEventListener("click", () => window.print()));
})();
