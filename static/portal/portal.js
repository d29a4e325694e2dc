// Small behaviours of every page, kept out of the HTML so that the Content-Security-Policy can forbid
// inline script: auto-submitting selects, confirmations, print and copy buttons, progress bar widths.
(function () {
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

  document.querySelectorAll("button[data-print]").forEach(function (button) {
    button.addEventListener("click", function () { window.print(); });
  });

  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      const source = document.getElementById(button.dataset.copy);
      const text = source.value !== undefined ? source.value : source.textContent.trim();
      const label = button.textContent;
      const done = function (message) {
        button.textContent = message;
        setTimeout(function () { button.textContent = label; }, 2000);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () { done("Copied"); }, function () { done("Copy failed: select the link"); });
      } else {
        // Plain-HTTP pages have no clipboard API: select the text so that Ctrl+C copies it.
        const range = document.createRange();
        range.selectNodeContents(source);
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
        done(document.execCommand("copy") ? "Copied" : "Press Ctrl+C to copy");
      }
    });
  });

  document.querySelectorAll("[data-progress]").forEach(function (bar) {
    bar.style.width = Math.max(0, Math.min(100, parseFloat(bar.dataset.progress) || 0)) + "%";
  });
})();
