// Keeps a send or migration page current while its job runs; a poll is not user activity.
(function () {
  const box = document.getElementById("job");
  if (!box) return;
  const finished = ["done", "failed", "stopped"];
  if (finished.includes(box.dataset.status)) return;
  const timer = setInterval(function () {
    fetch(box.dataset.statusUrl, { credentials: "same-origin", headers: { "X-Session-Poll": "1" } })
      .then((response) => response.json())
      .then(function (job) {
        document.getElementById("job-done").textContent = job.done;
        document.getElementById("job-total").textContent = job.total;
        const bar = document.getElementById("job-progress");
        bar.max = job.total || 1;
        bar.value = job.done + job.failed;
        if (finished.includes(job.status)) {
          clearInterval(timer);
          window.location.reload();
        }
      })
      .catch(function () { /* the next poll tries again */ });
  }, 2000);
})();
