// Warn a minute before the idle timeout, and go to the sign-in page when it has passed.
(function () {
  const body = document.body;
  const idle = parseInt(body.dataset.idleSeconds || "0", 10);
  if (!idle) return;
  const banner = document.getElementById("session-warning");
  const stay = document.getElementById("session-stay");
  let lastActivity = Date.now();
  let warned = false;

  function keepAlive() {
    fetch(body.dataset.keepaliveUrl, { credentials: "same-origin" }).then((response) => {
      // Anything but 204 means the server already ended the session.
      if (response.status !== 204) {
        window.location.href = body.dataset.loginUrl + "?expired=1";
        return;
      }
      lastActivity = Date.now();
      warned = false;
      banner.hidden = true;
    });
  }
  if (stay) stay.addEventListener("click", keepAlive);

  setInterval(function () {
    const elapsed = (Date.now() - lastActivity) / 1000;
    // One second of slack, so the server has surely expired the session when the login page loads.
    if (elapsed >= idle + 1) {
      window.location.href = body.dataset.loginUrl + "?expired=1";
    } else if (elapsed >= idle - 60 && !warned) {
      warned = true;
      banner.hidden = false;
    }
  }, 1000);
  // Other scripts on the page (uploads, the viewer) report activity that reached the server.
  window.portalSessionActivity = function () { lastActivity = Date.now(); };
})();
