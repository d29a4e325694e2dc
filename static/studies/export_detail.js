// Follow a clinic export while it is prepared; reload once it is ready so the download links appear.
(function () {
  const box = document.getElementById("export");
  if (!box) return;
  const timer = setInterval(function () {
    fetch(box.dataset.statusUrl, { credentials: "same-origin", headers: { "X-Session-Poll": "1" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (job) {
        if (!job) return;
        document.getElementById("export-status").textContent = job.status_display;
        const progress = document.getElementById("export-progress");
        if (progress) progress.textContent = job.studies_done + " of " + job.studies_total;
        if (job.status !== "queued" && job.status !== "running") { clearInterval(timer); window.location.reload(); }
      })
      .catch(function () { /* retried on the next tick */ });
  }, 2000);
})();
