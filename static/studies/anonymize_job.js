// Keep the anonymization job page current while the job is queued or running; reload once it ends so
// that the list of anonymized studies appears.
(function () {
  const box = document.getElementById("job");
  if (!box || box.dataset.status === "done" || box.dataset.status === "failed") return;
  const timer = setInterval(function () {
    fetch(box.dataset.statusUrl, { credentials: "same-origin", headers: { "X-Session-Poll": "1", Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (job) {
        if (!job) return;
        document.getElementById("job-status").textContent = job.status_display;
        document.getElementById("job-done").textContent = job.done;
        document.getElementById("job-total").textContent = job.total;
        document.getElementById("job-bar").style.width = Math.round(job.progress * 100) + "%";
        if (job.status === "done" || job.status === "failed") {
          clearInterval(timer);
          window.location.reload();
        }
      })
      .catch(function () { /* a missed poll is retried by the next tick */ });
  }, 1500);
})();
