// Loaded by OHIF's page before its bundle (see studies/viewer/ohif.py): the dynamic-import helper that
// OHIF's own inline script would define (a strict CSP refuses inline scripts), and the CSRF header on
// what OHIF saves back to DICOMweb (STOW-RS of SR, SEG, measurements) with the browser session.
(function () {
  "use strict";
  window.browserImportFunction = function (name) { return import(name); };
  const portal = window.portalViewer || {};
  const root = portal.dicomwebRoot || "";

  function needsToken(method, url) {
    if (!portal.csrfToken || /^(GET|HEAD|OPTIONS)$/i.test(method || "GET")) return false;
    try { return new URL(url, window.location.href).href.startsWith(root); } catch (error) { return false; }
  }

  const open = XMLHttpRequest.prototype.open;
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url) {
    this.portalNeedsToken = needsToken(method, url);
    return open.apply(this, arguments);
  };
  XMLHttpRequest.prototype.send = function () {
    if (this.portalNeedsToken) this.setRequestHeader("X-CSRFToken", portal.csrfToken);
    return send.apply(this, arguments);
  };

  const originalFetch = window.fetch;
  window.fetch = function (input, init) {
    const method = (init && init.method) || (input && input.method) || "GET";
    const url = typeof input === "string" || input instanceof URL ? String(input) : input.url;
    if (needsToken(method, url)) {
      const headers = new Headers((init && init.headers) || (input && input.headers) || {});
      headers.set("X-CSRFToken", portal.csrfToken);
      init = Object.assign({}, init, { headers: headers });
    }
    return originalFetch.call(this, input, init);
  };

  // A clinic's viewer installs the service worker that keeps OHIF's files compiled in the browser
  // (static/studies/viewer-sw.js), so the next opening skips compiling them. Not before the reader
  // has had the first image: the install downloads and compiles them again, which would compete with it.
  if (portal.serviceWorker && "serviceWorker" in navigator && !navigator.serviceWorker.controller) {
    window.addEventListener("load", function () {
      window.setTimeout(function () {
        navigator.serviceWorker.register(portal.serviceWorker, { scope: portal.scope }).catch(function () {});
      }, 10000);
    }, { once: true });
  }
})();
