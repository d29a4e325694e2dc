// Warn shortly before the idle timeout, and go to the sign-in page when it has passed.
// Reading is activity: scrolling, dragging or typing in a page (the viewers among them) is reported
// to the server now and then, so a reader who is busy with cached images is never signed out.
(function () {
  const body = document.body;
  const idle = parseInt(body.dataset.idleSeconds || "0", 10);
  if (!idle) return;
  // The warning comes a minute before the end, or a third of the limit before it for short limits.
  const warnBefore = Math.min(60, idle / 3);
  // How often input is reported; the server writes activity down at a similar resolution.
  const reportEvery = Math.min(30, idle / 10) * 1000;
  const banner = document.getElementById("session-warning") || makeBanner();
  const stay = document.getElementById("session-stay");
  let lastActivity = Date.now(); // the last activity the server has seen
  let lastInput = 0;
  let reporting = false;
  let warned = false;

  function makeBanner() {
    // Pages that are not ours (the diagnostic viewer) have no banner of their own.
    const box = document.createElement("div");
    box.id = "session-warning";
    box.hidden = true;
    box.setAttribute("role", "alert");
    box.style.cssText = "position:fixed;top:0;left:0;right:0;z-index:100000;padding:.6rem 1rem;" +
      "background:#fff3cd;color:#533f03;font:14px sans-serif;text-align:center";
    box.textContent = "Your session will end soon because of inactivity. ";
    const button = document.createElement("button");
    button.type = "button";
    button.id = "session-stay";
    button.textContent = "Stay signed in";
    box.append(button);
    document.body.append(box);
    return box;
  }

  function signedOut() {
    window.location.href = body.dataset.loginUrl + "?expired=1";
  }

  function seen() {
    lastActivity = Date.now();
    if (warned) {
      warned = false;
      banner.hidden = true;
    }
  }

  function keepAlive() {
    if (reporting) return;
    reporting = true;
    fetch(body.dataset.keepaliveUrl, { credentials: "same-origin" }).then((response) => {
      // Anything but 204 means the server already ended the session.
      if (response.status !== 204) signedOut();
      else seen();
    }).catch(() => {}).finally(() => { reporting = false; });
  }
  if (stay) stay.addEventListener("click", keepAlive);

  function input() {
    const now = Date.now();
    lastInput = now;
    if (now - lastActivity >= reportEvery || warned) keepAlive();
  }
  ["pointerdown", "pointermove", "wheel", "keydown", "touchstart"].forEach(function (name) {
    window.addEventListener(name, input, { capture: true, passive: true });
  });

  setInterval(function () {
    const elapsed = (Date.now() - lastActivity) / 1000;
    // One second of slack, so the server has surely expired the session when the login page loads.
    if (elapsed >= idle + 1) {
      signedOut();
    } else if (lastInput > lastActivity && elapsed * 1000 >= reportEvery) {
      // Input came after the last report (the reader paused right after it): report it now.
      keepAlive();
    } else if (elapsed >= idle - warnBefore && !warned) {
      warned = true;
      banner.hidden = false;
    }
  }, 250);
  // Other scripts on the page (uploads, the viewer) report activity that reached the server.
  window.portalSessionActivity = seen;
})();
