/* Upload page: files, folders and ZIP archives, by picker or drag and drop.
 *
 * One file per request (XMLHttpRequest, for upload progress), a few at a time. Transient failures are
 * retried automatically with backoff, then offered to a button. Results are remembered in localStorage
 * per batch (by path + size + modification time), so after leaving the page the same files added again
 * are not sent twice: the upload resumes at file granularity. ZIP archives are unpacked by the server;
 * the page polls their status and lists each member's result.
 */
(function () {
  "use strict";

  var root = document.getElementById("upload");
  if (!root) return;

  var FILE_URL = root.dataset.fileUrl;
  var STORAGE_KEY = root.dataset.storageKey;
  var CONCURRENCY = 3;
  var MAX_ATTEMPTS = 4; // first try + 3 automatic retries
  var BACKOFF_MS = [1000, 3000, 9000];
  var POLL_MS = 1500;
  var FINAL = { stored: 1, already_present: 1, skipped: 1, rejected: 1 };

  var csrfToken = (root.querySelector("input[name=csrfmiddlewaretoken]") || {}).value || "";
  var tbody = document.querySelector("#file-table tbody");
  var dropZone = document.getElementById("drop-zone");
  var progressSection = document.getElementById("progress-section");
  var overallBar = document.getElementById("overall-bar");
  var overallNumbers = document.getElementById("overall-numbers");
  var overallLabel = document.getElementById("overall-label");
  var summary = document.getElementById("summary");
  var retryButton = document.getElementById("retry-failed");
  var resumeNote = document.getElementById("resume-note");

  var entries = []; // {key, file, path, size, loaded, state, outcome, reason, attempts, row}
  var byKey = {};
  var active = 0;
  var archiveRows = []; // results of ZIP members: {outcome}
  var pollers = 0;

  // ---- remembered batch (resume) -------------------------------------------------------------------

  function loadBatch() {
    try {
      var saved = JSON.parse(window.localStorage.getItem(STORAGE_KEY) || "null");
      // A batch ends when its summary is shown; only an unfinished one is resumed.
      if (saved && saved.id && saved.done && !saved.finished) return saved;
    } catch (e) { /* unreadable: start afresh */ }
    return { id: String(Date.now()), done: {} };
  }
  var batch = loadBatch();

  function saveBatch() {
    try {
      window.localStorage.setItem(STORAGE_KEY, JSON.stringify(batch));
    } catch (e) { /* storage full or disabled: resume just won't work */ }
  }

  function fileKey(path, file) {
    return path + "|" + file.size + "|" + (file.lastModified || 0);
  }

  var rememberedCount = Object.keys(batch.done).length;
  if (rememberedCount) {
    resumeNote.hidden = false;
    resumeNote.textContent = "Your last upload did not finish: " + rememberedCount + " file(s) of it were already sent. " +
      "Add the same files or folder again to send only the rest.";
  }

  // ---- table ------------------------------------------------------------------------------------------

  function humanSize(bytes) {
    var units = ["B", "kB", "MB", "GB", "TB"];
    var value = bytes;
    var i = 0;
    while (value >= 1000 && i < units.length - 1) { value /= 1000; i += 1; }
    return i === 0 ? value + " B" : value.toFixed(1) + " " + units[i];
  }

  var LABELS = {
    stored: "Stored", already_present: "Already present", skipped: "Skipped", rejected: "Rejected",
    failed: "Failed", queued: "Unpacking archive…", waiting: "Waiting", sending: "Sending", retrying: "Retrying"
  };

  function addRow(name, size) {
    var row = document.createElement("tr");
    var nameCell = document.createElement("td");
    nameCell.textContent = name;
    var sizeCell = document.createElement("td");
    sizeCell.textContent = size === null ? "" : humanSize(size);
    var progressCell = document.createElement("td");
    var bar = document.createElement("div");
    bar.className = "progress";
    bar.setAttribute("role", "progressbar");
    var fill = document.createElement("span");
    fill.style.width = "0%";
    bar.appendChild(fill);
    progressCell.appendChild(bar);
    var resultCell = document.createElement("td");
    resultCell.className = "result";
    row.appendChild(nameCell);
    row.appendChild(sizeCell);
    row.appendChild(progressCell);
    row.appendChild(resultCell);
    tbody.appendChild(row);
    return { row: row, fill: fill, result: resultCell };
  }

  function showState(entry) {
    entry.row.row.className = "outcome-" + entry.state;
    entry.row.row.dataset.outcome = entry.state;
    var text = LABELS[entry.state] || entry.state;
    if (entry.reason) text += ": " + entry.reason;
    entry.row.result.textContent = text;
    var percent = entry.size ? Math.round(100 * entry.loaded / entry.size) : (FINAL[entry.state] ? 100 : 0);
    entry.row.fill.style.width = percent + "%";
    entry.row.fill.parentNode.setAttribute("aria-valuenow", String(percent));
  }

  // ---- queue ------------------------------------------------------------------------------------------

  function enqueue(file, path) {
    path = path || file.webkitRelativePath || file.name;
    var key = fileKey(path, file);
    if (byKey[key]) return; // the same file added twice in this page
    var entry = { key: key, file: file, path: path, size: file.size, loaded: 0, state: "waiting",
                  reason: "", attempts: 0, row: addRow(path, file.size) };
    var remembered = batch.done[key];
    if (remembered) {
      // Sent before the page was left: nothing is sent now, so it is not "stored" by this upload.
      var sentEarlier = remembered.outcome === "stored";
      entry.state = sentEarlier ? "already_present" : remembered.outcome;
      entry.reason = sentEarlier ? (remembered.archive ? "Archive unpacked earlier." : "Sent earlier.") : (remembered.reason || "");
      entry.loaded = entry.size;
      entry.remembered = true;
    }
    byKey[key] = entry;
    entries.push(entry);
    showState(entry);
  }

  function finish(entry, outcome, reason) {
    entry.state = outcome;
    entry.reason = reason || "";
    if (FINAL[outcome]) {
      entry.loaded = entry.size;
      batch.done[entry.key] = { outcome: outcome, reason: entry.reason, archive: !!entry.isArchive };
      saveBatch();
    }
    showState(entry);
  }

  function pump() {
    while (active < CONCURRENCY) {
      var next = null;
      for (var i = 0; i < entries.length; i += 1) {
        if (entries[i].state === "waiting") { next = entries[i]; break; }
      }
      if (!next) break;
      send(next);
    }
    update();
  }

  function send(entry) {
    active += 1;
    entry.state = "sending";
    entry.attempts += 1;
    entry.loaded = 0;
    showState(entry);
    var xhr = new XMLHttpRequest();
    xhr.open("POST", FILE_URL);
    xhr.setRequestHeader("X-CSRFToken", csrfToken);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = function (event) {
      if (event.lengthComputable && event.total) {
        entry.loaded = Math.min(entry.size, Math.round(entry.size * event.loaded / event.total));
        showState(entry);
        update();
      }
    };
    xhr.onload = function () { active -= 1; handleAnswer(entry, xhr); pump(); };
    xhr.onerror = function () { active -= 1; transientFailure(entry, "The connection failed."); pump(); };
    xhr.ontimeout = xhr.onerror;
    var form = new FormData();
    form.append("path", entry.path);
    var anonymize = document.getElementById("anonymize-project");
    if (anonymize && anonymize.value) form.append("anonymize_project", anonymize.value);
    form.append("file", entry.file, entry.file.name);
    xhr.send(form);
  }

  function handleAnswer(entry, xhr) {
    var answer = null;
    try { answer = JSON.parse(xhr.responseText); } catch (e) { answer = null; }
    if (xhr.status === 401 || (xhr.responseURL && xhr.responseURL.indexOf("/accounts/") !== -1)) {
      finish(entry, "failed", "Your session ended: sign in again, then add the files again to resume.");
      return;
    }
    if (xhr.status === 403) {
      // The server says why (a project its role may not choose, say); a bare 403 means no upload right.
      finish(entry, "rejected", (answer && answer.reason) || "You may not upload to this clinic.");
      return;
    }
    if (answer && FINAL[answer.outcome]) {
      finish(entry, answer.outcome, answer.reason);
      return;
    }
    if (answer && answer.outcome === "queued" && answer.status_url) {
      entry.loaded = entry.size;
      finish(entry, "queued", "");
      pollArchive(entry, answer.status_url);
      return;
    }
    transientFailure(entry, (answer && answer.reason) || ("The server answered " + xhr.status + "."));
  }

  function transientFailure(entry, reason) {
    if (entry.attempts < MAX_ATTEMPTS) {
      entry.state = "retrying";
      entry.reason = reason;
      showState(entry);
      // data-backoff-ms="a,b,c" overrides the delays (tests use short ones).
      var delays = root.dataset.backoffMs ? root.dataset.backoffMs.split(",").map(Number) : BACKOFF_MS;
      var delay = delays[Math.min(entry.attempts - 1, delays.length - 1)];
      entry.retryTimer = window.setTimeout(function () {
        entry.state = "waiting";
        pump();
      }, delay);
      return;
    }
    finish(entry, "failed", reason);
  }

  // ---- ZIP archives --------------------------------------------------------------------------------

  function pollArchive(entry, url) {
    pollers += 1;
    update();
    var members = {};
    function poll() {
      var xhr = new XMLHttpRequest();
      xhr.open("GET", url);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.onload = function () {
        var status = null;
        try { status = JSON.parse(xhr.responseText); } catch (e) { status = null; }
        if (!status) { window.setTimeout(poll, POLL_MS * 2); return; }
        (status.items || []).forEach(function (item) {
          if (members[item.name]) return;
          var row = addRow(entry.path + " › " + item.name, null);
          var member = { state: item.outcome, reason: item.reason, size: 0, loaded: 0, row: row };
          members[item.name] = member;
          archiveRows.push(member);
          showState(member);
        });
        if (status.status === "done" || status.status === "failed") {
          pollers -= 1;
          var counts = status.counts || {};
          var total = Object.keys(counts).reduce(function (sum, k) { return sum + counts[k]; }, 0);
          if (status.status === "failed") {
            finish(entry, "rejected", status.message || "The archive could not be unpacked.");
          } else {
            entry.isArchive = true;
            finish(entry, "stored", "Unpacked " + total + " file(s).");
          }
          update();
          return;
        }
        window.setTimeout(poll, POLL_MS);
      };
      xhr.onerror = function () { window.setTimeout(poll, POLL_MS * 2); };
      xhr.send();
    }
    poll();
  }

  // ---- progress and summary -----------------------------------------------------------------------

  function update() {
    if (!entries.length) return;
    progressSection.hidden = false;
    var total = 0, loaded = 0, finished = 0;
    var counts = { stored: 0, already_present: 0, skipped: 0, rejected: 0, failed: 0 };
    entries.forEach(function (entry) {
      total += entry.size;
      loaded += FINAL[entry.state] || entry.state === "failed" || entry.state === "queued" ? entry.size : entry.loaded;
      if (FINAL[entry.state] || entry.state === "failed") finished += 1;
      if (entry.isArchive) return; // its members are counted instead
      if (counts[entry.state] !== undefined) counts[entry.state] += 1;
    });
    archiveRows.forEach(function (member) {
      if (counts[member.state] !== undefined) counts[member.state] += 1;
    });
    var percent = total ? Math.floor(100 * loaded / total) : 100;
    overallBar.style.width = percent + "%";
    overallBar.parentNode.setAttribute("aria-valuenow", String(percent));
    overallNumbers.textContent = finished + " of " + entries.length + " files · " +
      humanSize(loaded) + " of " + humanSize(total) + " · " + percent + "%";
    var done = finished === entries.length && active === 0 && pollers === 0;
    overallLabel.textContent = done ? "Upload finished" : "Uploading…";
    Object.keys(counts).forEach(function (name) {
      document.getElementById("count-" + name).textContent = String(counts[name]);
    });
    retryButton.hidden = counts.failed === 0;
    summary.hidden = !done;
    root.dataset.state = done ? "done" : "running";
    if (done && !batch.finished) {
      batch.finished = true;
      saveBatch();
      resumeNote.hidden = true;
    }
  }

  retryButton.addEventListener("click", function () {
    entries.forEach(function (entry) {
      if (entry.state === "failed") {
        entry.state = "waiting";
        entry.attempts = 0;
        entry.reason = "";
        showState(entry);
      }
    });
    summary.hidden = true;
    batch.finished = false;
    saveBatch();
    pump();
  });

  function startNewBatch() {
    batch = { id: String(Date.now()), done: {} };
    saveBatch();
    entries = [];
    byKey = {};
    archiveRows = [];
    tbody.textContent = "";
    summary.hidden = true;
    progressSection.hidden = true;
    resumeNote.hidden = true;
    root.dataset.state = "";
  }

  document.getElementById("new-batch").addEventListener("click", startNewBatch);

  // ---- pickers and drag and drop --------------------------------------------------------------------

  function addFiles(list) {
    // Files added after a summary start a new upload; the server says which are already present.
    if (root.dataset.state === "done") startNewBatch();
    for (var i = 0; i < list.length; i += 1) enqueue(list[i]);
    pump();
  }

  document.getElementById("file-input").addEventListener("change", function (event) {
    addFiles(event.target.files);
    event.target.value = "";
  });
  document.getElementById("folder-input").addEventListener("change", function (event) {
    addFiles(event.target.files);
    event.target.value = "";
  });

  function readDirectory(dirEntry, done) {
    var reader = dirEntry.createReader();
    var children = [];
    // readEntries answers in chunks (100 in Chromium); call it until it answers nothing.
    (function readMore() {
      reader.readEntries(function (batchOfEntries) {
        if (!batchOfEntries.length) { done(children); return; }
        children = children.concat(Array.prototype.slice.call(batchOfEntries));
        readMore();
      }, function () { done(children); });
    })();
  }

  function walkEntry(entry, pending) {
    pending.count += 1;
    if (entry.isFile) {
      entry.file(function (file) {
        enqueue(file, entry.fullPath.replace(/^\//, ""));
        settle(pending);
      }, function () { settle(pending); });
    } else if (entry.isDirectory) {
      readDirectory(entry, function (children) {
        children.forEach(function (child) { walkEntry(child, pending); });
        settle(pending);
      });
    } else {
      settle(pending);
    }
  }

  function settle(pending) {
    pending.count -= 1;
    if (pending.count === 0) pump();
  }

  ["dragenter", "dragover"].forEach(function (type) {
    dropZone.addEventListener(type, function (event) {
      event.preventDefault();
      dropZone.classList.add("dragging");
    });
  });
  dropZone.addEventListener("dragleave", function () { dropZone.classList.remove("dragging"); });
  dropZone.addEventListener("drop", function (event) {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    var transfer = event.dataTransfer;
    var items = transfer && transfer.items ? Array.prototype.slice.call(transfer.items) : [];
    var fsEntries = items.map(function (item) {
      return item.kind === "file" && item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
    }).filter(Boolean);
    if (fsEntries.length) {
      if (root.dataset.state === "done") startNewBatch();
      var pending = { count: 0 };
      fsEntries.forEach(function (entry) { walkEntry(entry, pending); });
    } else if (transfer && transfer.files) {
      addFiles(transfer.files);
    }
  });

  window.addEventListener("beforeunload", function (event) {
    if (active > 0 || entries.some(function (e) { return e.state === "waiting" || e.state === "retrying"; })) {
      event.preventDefault();
      event.returnValue = "";
    }
  });

  // Files chosen while the page was still loading raised their change event before we listened.
  ["file-input", "folder-input"].forEach(function (id) {
    var input = document.getElementById(id);
    if (input.files && input.files.length) {
      addFiles(input.files);
      input.value = "";
    }
  });
})();
