// Study viewer on top of DICOMweb: QIDO-RS lists series and instances, WADO-RS "rendered" draws each
// slice (the server applies window/level, and when zoomed draws it at the size it is shown), and slices around the
// current one are prefetched. Multi-frame series play as a loop (cine).
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("viewer-config").textContent);
  const base = config.dicomwebBase;
  const study = config.studyUid;
  const $ = (id) => document.getElementById(id);
  const image = $("image");
  const viewport = $("viewport");
  const slider = $("slider");
  const status = $("status");
  const PREFETCH_AHEAD = 8;
  const PREFETCH_BEHIND = 3;
  const CACHE_LIMIT = 400;

  const state = {
    series: [], current: null, slices: [], index: 0,
    window: null, defaultWindow: null, tool: "window",
    scale: 1, tx: 0, ty: 0, stopped: false, playing: null,
  };
  const CINE_FPS = 10;
  const VIEWPORT_STEP = 64;
  const VIEWPORT_MAX = 4096;
  const cache = new Map(); // rendered URL -> Promise<object URL>

  function tag(item, code) {
    const element = item[code];
    if (!element || !element.Value || !element.Value.length) return null;
    const value = element.Value[0];
    return typeof value === "object" && value !== null && "Alphabetic" in value ? value.Alphabetic : value;
  }

  function fail(response) {
    const gone = response.status === 401 || response.status === 403 || response.status === 404;
    if (response.status === 400 || response.status === 413) {
      // This image cannot be drawn here (no pixel data, or too large); the rest of the study still can.
      status.textContent = response.status === 413 ? "This image is too large for the quick viewer: use the diagnostic viewer."
        : "This image cannot be shown here (it holds no pixel data the viewer can draw).";
      image.removeAttribute("src");
      throw new Error("not drawable: " + response.status);
    }
    state.stopped = true;
    status.textContent = gone ? "This study is no longer available here (the link may have been revoked or expired)."
      : "The server could not answer (" + response.status + ").";
    image.removeAttribute("src");
    throw new Error("viewer stopped: " + response.status);
  }

  // The size the slice is shown at, in device pixels, in steps (so zooming does not fetch every size).
  function displayedSize() {
    const ratio = window.devicePixelRatio || 1;
    const size = (length) => Math.min(VIEWPORT_MAX, Math.max(VIEWPORT_STEP,
      Math.ceil(length * state.scale * ratio / VIEWPORT_STEP) * VIEWPORT_STEP));
    return size(viewport.clientWidth) + "," + size(viewport.clientHeight);
  }

  async function getJson(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/dicom+json" } });
    if (!response.ok) fail(response);
    if (window.portalSessionActivity) window.portalSessionActivity();
    return response.status === 204 ? [] : response.json();
  }

  function sliceUrl(slice) {
    let url = base + "studies/" + study + "/series/" + state.current.uid + "/instances/" + slice.sop;
    url += slice.multiframe ? "/frames/" + slice.frame + "/rendered" : "/rendered";
    const params = ["accept=" + encodeURIComponent("image/jpeg"), "quality=92"];
    // Zoomed in, the slice is drawn at the size it is shown, not enlarged from its stored size in the browser.
    if (state.scale > 1) params.push("viewport=" + displayedSize());
    if (state.window) params.push("window=" + Math.round(state.window.center) + "," + Math.max(1, Math.round(state.window.width)) + ",linear");
    return url + "?" + params.join("&");
  }

  function load(url) {
    if (!cache.has(url)) {
      const promise = fetch(url, { credentials: "same-origin", headers: { Accept: "image/jpeg" } })
        .then((response) => (response.ok ? response.blob() : fail(response)))
        .then((blob) => URL.createObjectURL(blob));
      promise.catch(() => cache.delete(url));
      cache.set(url, promise);
      if (cache.size > CACHE_LIMIT) {
        const oldest = cache.keys().next().value;
        cache.get(oldest).then((objectUrl) => URL.revokeObjectURL(objectUrl)).catch(() => {});
        cache.delete(oldest);
      }
    }
    return cache.get(url);
  }

  function prefetch() {
    for (let step = 1; step <= PREFETCH_AHEAD; step++) {
      const ahead = state.slices[state.index + step];
      if (ahead) load(sliceUrl(ahead));
    }
    for (let step = 1; step <= PREFETCH_BEHIND; step++) {
      const behind = state.slices[state.index - step];
      if (behind) load(sliceUrl(behind));
    }
  }

  let drawSerial = 0;
  async function draw() {
    if (state.stopped || !state.slices.length) return;
    const serial = ++drawSerial;
    const slice = state.slices[state.index];
    const url = sliceUrl(slice);
    const objectUrl = await load(url);
    if (serial !== drawSerial) return; // a newer slice was asked for meanwhile
    image.src = objectUrl;
    image.dataset.src = url;
    image.dataset.slice = String(state.index + 1);
    slider.value = String(state.index + 1);
    overlay();
    prefetch();
  }

  function applyTransform() {
    image.style.transform = "translate(-50%, -50%) translate(" + state.tx + "px, " + state.ty + "px) scale(" + state.scale + ")";
  }

  function overlay() {
    const o = config.overlay;
    $("overlay-patient").textContent = [o.patientName, "ID " + o.patientId, [o.birthDate, o.sex].filter(Boolean).join(" ")].filter(Boolean).join("\n");
    $("overlay-study").textContent = [o.studyDescription, o.studyDate, o.accession ? "Acc " + o.accession : ""].filter(Boolean).join("\n");
    const s = state.current;
    $("overlay-slice").textContent = (s ? (s.number !== null ? "Se " + s.number + " " : "") + (s.description || s.modality || "") + "\n" : "") +
      "Im " + (state.index + 1) + " / " + state.slices.length + (state.scale !== 1 ? "   x" + state.scale.toFixed(2) : "");
    $("overlay-window").textContent = state.window ? "W " + Math.round(state.window.width) + "  L " + Math.round(state.window.center) : "W/L auto";
  }

  function go(index) {
    const clamped = Math.max(0, Math.min(state.slices.length - 1, index));
    if (clamped === state.index && image.dataset.src) return;
    state.index = clamped;
    draw();
  }

  function reset() {
    state.scale = 1; state.tx = 0; state.ty = 0;
    state.window = state.defaultWindow ? { ...state.defaultWindow } : null;
    $("preset").value = "";
    applyTransform();
    draw();
  }

  function slicesFrom(instances) {
    const slices = [];
    for (const item of instances) {
      const frames = item.frames || 1;
      for (let frame = 1; frame <= frames; frame++) slices.push({ sop: item.sop, frame: frame, multiframe: frames > 1 });
    }
    return slices;
  }

  async function instancesOf(series) {
    const initial = config.initial;
    if (initial && initial.firstSeries === series.uid) return initial.instances;
    const fields = ["00200013", "00280008", "00281050", "00281051"].map((f) => "includefield=" + f).join("&");
    const found = await getJson(base + "studies/" + study + "/series/" + series.uid + "/instances?" + fields);
    found.sort((a, b) => (tag(a, "00200013") ?? 0) - (tag(b, "00200013") ?? 0));
    return found.map((item) => ({
      sop: tag(item, "00080018"), number: tag(item, "00200013"),
      frames: parseInt(tag(item, "00280008") || "1", 10) || 1,
      windowCenter: tag(item, "00281050"), windowWidth: tag(item, "00281051"),
    }));
  }

  async function openSeries(series) {
    stopCine();
    state.current = series;
    document.querySelectorAll(".series-list button").forEach((b) => b.classList.toggle("active", b.dataset.uid === series.uid));
    if (series.images === false) {
      // RT Plan, SR, key objects: nothing to draw, and no request that would fail on black.
      state.slices = [];
      image.removeAttribute("src");
      image.removeAttribute("data-src");
      status.textContent = "This series (" + (series.modality || "no modality") + ") holds no images to show: " +
        "it is a document or plan, not pixels. Download the study to open it in a program made for it.";
      $("cine").hidden = true;
      overlay();
      return;
    }
    status.textContent = "Loading series…";
    const instances = await instancesOf(series);
    state.slices = slicesFrom(instances);
    const first = instances[0] || {};
    const center = parseFloat(first.windowCenter);
    const width = parseFloat(first.windowWidth);
    state.defaultWindow = Number.isFinite(center) && Number.isFinite(width) && width > 0 ? { center, width } : null;
    state.window = state.defaultWindow ? { ...state.defaultWindow } : null;
    state.index = 0;
    slider.max = String(Math.max(1, state.slices.length));
    slider.value = "1";
    status.textContent = state.slices.length ? "" : "This series holds no image.";
    $("cine").hidden = state.slices.length < 2;
    image.removeAttribute("data-src");
    state.scale = 1; state.tx = 0; state.ty = 0;
    applyTransform();
    await draw();
  }

  async function start() {
    let listed;
    if (config.initial) {
      listed = config.initial.series;
    } else {
      const fields = ["0008103E", "00200011", "00080060", "00201209"].map((f) => "includefield=" + f).join("&");
      const found = await getJson(base + "studies/" + study + "/series?" + fields);
      listed = found.map((item) => ({
        uid: tag(item, "0020000E"), number: tag(item, "00200011"), modality: tag(item, "00080060"),
        description: tag(item, "0008103E"), count: tag(item, "00201209"),
      }));
    }
    state.series = listed.slice().sort((a, b) => (a.number ?? 0) - (b.number ?? 0));
    const list = $("series-list");
    for (const s of state.series) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.uid = s.uid;
      const thumb = document.createElement("img");
      thumb.alt = "";
      thumb.loading = "lazy";
      // Thumbnails wait until the first image is on screen, so they do not compete with it.
      thumb.dataset.src = base + "studies/" + study + "/series/" + s.uid + "/thumbnail";
      const meta = document.createElement("span");
      meta.className = "meta";
      const count = s.images === false ? "no images" : (s.count || "?") + " images";
      meta.textContent = [s.modality, s.number !== null ? "#" + s.number : "", s.description || "", count].filter(Boolean).join(" · ");
      button.append(thumb, meta);
      button.addEventListener("click", () => openSeries(s));
      item.append(button);
      list.append(item);
    }
    const firstUid = config.initial && config.initial.firstSeries;
    const firstImageSeries = state.series.find((s) => s.uid === firstUid) ||
      state.series.find((s) => s.images !== false) || state.series[0];
    if (firstImageSeries) await openSeries(firstImageSeries);
    else status.textContent = "This study holds no series.";
    document.querySelectorAll(".series-list img[data-src]").forEach((img) => { img.src = img.dataset.src; });
  }

  // --- interaction -----------------------------------------------------------------------------------
  let renderTimer = null;
  function scheduleRender() {
    overlay();
    clearTimeout(renderTimer);
    renderTimer = setTimeout(draw, 90);
  }

  function dragBy(dx, dy) {
    if (state.tool === "window") {
      const w = state.window || { center: 40, width: 400 };
      const step = Math.max(1, w.width / 150);
      state.window = { center: w.center + dy * step, width: Math.max(1, w.width + dx * step) };
      scheduleRender();
    } else if (state.tool === "zoom") {
      state.scale = Math.max(0.2, Math.min(12, state.scale * Math.exp(-dy * 0.01)));
      applyTransform(); scheduleRender();
    } else if (state.tool === "pan") {
      state.tx += dx; state.ty += dy;
      applyTransform();
    } else if (state.tool === "scroll") {
      scrollAccumulator += dy;
      while (Math.abs(scrollAccumulator) >= 12) {
        go(state.index + Math.sign(scrollAccumulator));
        scrollAccumulator -= Math.sign(scrollAccumulator) * 12;
      }
    }
  }
  let scrollAccumulator = 0;

  let last = null;
  viewport.addEventListener("pointerdown", (event) => {
    viewport.setPointerCapture(event.pointerId);
    last = { x: event.clientX, y: event.clientY };
    viewport.focus();
  });
  viewport.addEventListener("pointermove", (event) => {
    if (!last || pinch) return;
    dragBy(event.clientX - last.x, event.clientY - last.y);
    last = { x: event.clientX, y: event.clientY };
  });
  const endDrag = () => { last = null; };
  viewport.addEventListener("pointerup", endDrag);
  viewport.addEventListener("pointercancel", endDrag);

  // Two fingers pinch to zoom on phones and tablets.
  let pinch = null;
  viewport.addEventListener("touchstart", (event) => {
    if (event.touches.length === 2) {
      pinch = { distance: touchDistance(event.touches), scale: state.scale };
    }
  }, { passive: true });
  viewport.addEventListener("touchmove", (event) => {
    if (pinch && event.touches.length === 2) {
      state.scale = Math.max(0.2, Math.min(12, pinch.scale * touchDistance(event.touches) / pinch.distance));
      applyTransform(); scheduleRender();
    }
  }, { passive: true });
  viewport.addEventListener("touchend", () => { if (pinch) { pinch = null; last = null; } });
  function touchDistance(touches) {
    return Math.hypot(touches[0].clientX - touches[1].clientX, touches[0].clientY - touches[1].clientY);
  }

  viewport.addEventListener("wheel", (event) => {
    event.preventDefault();
    if (event.ctrlKey) {
      state.scale = Math.max(0.2, Math.min(12, state.scale * Math.exp(-event.deltaY * 0.002)));
      applyTransform(); scheduleRender();
    } else {
      go(state.index + (event.deltaY > 0 ? 1 : -1));
    }
  }, { passive: false });

  viewport.addEventListener("keydown", (event) => {
    const moves = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 };
    if (event.key in moves) { event.preventDefault(); go(state.index + moves[event.key]); }
    else if (event.key === "Home") { event.preventDefault(); go(0); }
    else if (event.key === "End") { event.preventDefault(); go(state.slices.length - 1); }
    else if (event.key === "r") { reset(); }
  });

  slider.addEventListener("input", () => go(parseInt(slider.value, 10) - 1));

  document.querySelectorAll(".viewer-toolbar .tool").forEach((button) => {
    button.addEventListener("click", () => {
      state.tool = button.dataset.tool;
      document.querySelectorAll(".viewer-toolbar .tool").forEach((b) => b.classList.toggle("active", b === button));
    });
  });
  if (window.matchMedia && window.matchMedia("(pointer: coarse)").matches) {
    // On touch screens a one-finger drag scrolls through slices by default.
    const scrollTool = document.createElement("button");
    scrollTool.type = "button"; scrollTool.className = "tool active"; scrollTool.dataset.tool = "scroll"; scrollTool.textContent = "Scroll";
    document.querySelector(".viewer-toolbar").prepend(scrollTool);
    document.querySelectorAll(".viewer-toolbar .tool").forEach((b) => b.classList.toggle("active", b === scrollTool));
    state.tool = "scroll";
    scrollTool.addEventListener("click", () => {
      state.tool = "scroll";
      document.querySelectorAll(".viewer-toolbar .tool").forEach((b) => b.classList.toggle("active", b === scrollTool));
    });
  }

  $("preset").addEventListener("change", (event) => {
    if (!event.target.value) return;
    const [center, width] = event.target.value.split(",").map(Number);
    state.window = { center, width };
    draw();
  });
  $("reset").addEventListener("click", reset);

  // --- cine: play a multi-frame series (or a stack) as a loop ---------------------------------------------
  function stopCine() {
    if (state.playing) clearInterval(state.playing);
    state.playing = null;
    $("cine").textContent = "Play";
    $("cine").setAttribute("aria-pressed", "false");
  }
  function startCine() {
    $("cine").textContent = "Pause";
    $("cine").setAttribute("aria-pressed", "true");
    state.playing = setInterval(() => {
      if (!state.slices.length) return stopCine();
      state.index = (state.index + 1) % state.slices.length;
      draw();
    }, 1000 / CINE_FPS);
  }
  $("cine").addEventListener("click", () => (state.playing ? stopCine() : startCine()));
  let resizeTimer = null;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(draw, 200); });

  applyTransform();
  start().catch((error) => { if (!state.stopped) status.textContent = "Could not open the study: " + error.message; });
})();
