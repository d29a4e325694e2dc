// On the clinic's pages that open studies in the diagnostic viewer (the studies list, a study's page):
// install the viewer's service worker (static/studies/viewer-sw.js) for the viewer's prefix once the
// page has loaded, so that OHIF's files are downloaded and compiled while the reader looks for a study,
// not after the click. It keeps only OHIF's own files, never patient data. Phones (the light viewer's
// place) and data-saving connections are left alone: the files are some 7 MB to download.
(function () {
  "use strict";
  const script = document.currentScript;
  const scope = script && script.dataset.viewerScope;
  if (!scope || !("serviceWorker" in navigator)) return;
  if ((navigator.connection && navigator.connection.saveData) || !window.matchMedia("(min-width: 768px)").matches) {
    return;
  }
  function install() {
    navigator.serviceWorker.register(scope + "portal-sw.js", { scope: scope }).catch(function () {});
  }
  if (document.readyState === "complete") install();
  else window.addEventListener("load", install, { once: true });
})();
