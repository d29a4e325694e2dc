// The diagnostic viewer's service worker (served as portal-sw.js under a clinic's viewer prefix, after
// the line studies/viewer/ohif.py writes: self.portalPrecache = {version, files}). It keeps OHIF's own
// scripts, styles and font, the same for every clinic and reader, in Cache Storage, and answers only
// requests for those files by name: the page, its config and every DICOMweb request (patient data)
// go to the network untouched and are never stored. Files put in Cache Storage while a worker
// installs are compiled by Chromium at once (V8's code cache), so even the first opening of a study
// after the install skips compiling OHIF's 17 MB bundle.
"use strict";

const precache = self.portalPrecache;
const scope = self.registration.scope;
const cacheName = "ohif-" + precache.version + " " + new URL(scope).pathname;
const files = new Set(precache.files.map((name) => new URL(name, scope).href));

self.addEventListener("install", (event) => {
  // Everything the router below does not send to the network is one of the files above.
  // (Chromium's static routing: those requests do not even wake the worker.)
  if (event.addRoutes) {
    event.addRoutes([
      { condition: { requestMode: "navigate" }, source: "network" },
      { condition: { urlPattern: new URLPattern({ pathname: "/dicomweb/*" }) }, source: "network" },
    ]).catch(() => {});
  }
  event.waitUntil(
    caches.open(cacheName).then((cache) => cache.addAll([...files])).then(() => self.skipWaiting())
  );
});

self.addEventListener("activate", (event) => {
  // Only this prefix's older copies: another clinic's viewer keeps its own.
  const mine = " " + new URL(scope).pathname;
  event.waitUntil(
    caches.keys().then((names) =>
      Promise.all(names.filter((name) => name.startsWith("ohif-") && name.endsWith(mine) && name !== cacheName)
        .map((name) => caches.delete(name)))
    )
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || !files.has(request.url)) return;
  event.respondWith(
    caches.open(cacheName)
      .then((cache) => cache.match(request))
      .then((cached) => cached || fetch(request))
  );
});
