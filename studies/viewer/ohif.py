"""The diagnostic viewer (OHIF v3): its prebuilt files, served by the portal under a prefix of ours.

OHIF's ``dist/`` is built to live at ``/`` of its own site. The portal serves it under a prefix per
clinic (``/c/<clinic>/viewer/ohif/``) or per share link (``/s/<token>/viewer/ohif/``), so that the
share's viewer never makes a request outside its link. Three things make that work:

- ``index.html`` is rewritten per request: its asset paths get the prefix, its inline scripts are
  replaced by ours, carrying the response's CSP nonce (OHIF's config for this request and
  ``static/studies/viewer-ohif.js``), and its service worker is left out (it would cache patient
  images in the browser). Inline, not separate files: those were scripts the page had to wait for
  before OHIF's bundle could start, a round trip on every opening.
- ``portal-sw.js`` (ours, generated from ``static/studies/viewer-sw.js``) is the service worker a
  clinic's pages install for its viewer's prefix: it keeps OHIF's own scripts, styles and font in the
  browser's Cache Storage, listed by name, and nothing else (see ``precache_files``).
- OHIF's config is generated per request: one DICOMweb data source, the clinic's or the share's.
- The webpack runtime of each bundle has its public path fixed to ``/``; it is rewritten to read the
  prefix (``window.PUBLIC_URL`` in the page, the script's own folder in a worker).

OHIF's own files are the same for every clinic and link and hold no patient data. ``prepare`` (run
by ``make ohif``, i.e. ``manage.py ohif_prepare``) writes them once, rewritten as above, OHIF's own
bundles minified (its dist ships them unminified), and gzipped ahead, into ``OHIF_PREPARED_DIR``; from there nginx (``make run``) or ``ViewerAssetsMiddleware``
serve them without sessions or database queries, cached by the browser for a year when their names
carry a content hash. Without a prepared folder matching the installed dist, the views serve dist/
and rewrite on the fly.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from csp.constants import NONCE
from csp.utils import build_policy
from django.conf import settings
from django.contrib.staticfiles import finders
from django.http import QueryDict

# What webpack writes into each runtime, and what we serve instead.
WEBPACK_PUBLIC_PATH = '__webpack_require__.p = "/";'
PORTAL_PUBLIC_PATH = (
    '__webpack_require__.p = (typeof window !== "undefined" ? window.PUBLIC_URL'
    ' : self.location.href.replace(/[^/]*$/, "")) || "/";'
)
# Hashed bundle names change with every release, so they can be cached for long.
HASHED_NAME = re.compile(r"\.[0-9a-f]{16}\.(?:js|wasm)$|^[0-9a-f]{16}\.\w+$")
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".html": "text/html; charset=utf-8",
    ".map": "application/json",
    ".onnx": "application/octet-stream",
    ".txt": "text/plain; charset=utf-8",
}

# Only what OHIF needs beyond the site-wide policy: WebAssembly codecs, the page's two inline scripts
# (by the response's nonce), workers started from blob: URLs, inline styles set by its React
# components, and images drawn from blob:/data: URLs.
CSP_UPDATE: dict[str, list[Any]] = {
    "script-src": ["'wasm-unsafe-eval'", NONCE],
    "worker-src": ["'self'", "blob:"],
    "style-src": ["'unsafe-inline'"],
    "img-src": ["blob:", "data:"],
    "font-src": ["'self'", "data:"],
    "connect-src": ["'self'", "blob:", "data:"],
}


# Never served from dist/: the portal writes the page and config itself, and the service worker would
# keep patient images in the browser.
NOT_SERVED = frozenset({"index.html", "app-config.js", "sw.js", "init-service-worker.js"})
# Worth gzipping ahead; larger files (ONNX runtime's WebAssembly, for AI tools only) are served as they are.
COMPRESSIBLE = frozenset({".js", ".mjs", ".css", ".wasm", ".json", ".svg", ".txt", ".ttf", ".html"})
COMPRESS_MAX_BYTES = 32 * 1024 * 1024
# Written last into a prepared folder: which dist it was made from, and by which version of prepare().
PREPARED_STAMP = ".prepared.json"
PREPARE_FORMAT = 4
# The minifier of OHIF's bundles, and the newest syntax it may write (OHIF's own is ES2022 at most).
MINIFIER = Path(settings.BASE_DIR) / "ohif" / "node_modules" / ".bin" / "esbuild"
MINIFY_TARGET = "es2022"
# What nginx adds to the files it serves from the folder (bin/web-front includes it).
NGINX_HEADERS = ".nginx-headers.conf"


class ViewerNotInstalled(Exception):
    """OHIF's files are not there: `make ohif` (part of `make run` and `make test`) installs them."""


@dataclass(frozen=True)
class ViewerSite:
    """Where one viewer lives and what it reads."""

    public_url: str  # the prefix, ending in "/"
    dicomweb_root: str  # absolute URL of the DICOMweb base, without trailing "/"
    name: str  # shown as the data source's name
    show_study_list: bool
    csrf_token: str = ""
    session_script: str = ""  # our session keep-alive script, for signed-in readers
    body_attributes: dict[str, str] | None = None
    # Install our service worker for the prefix (a clinic's viewer; a share link's stays without).
    service_worker: bool = False


# OHIF's route parameter naming the studies it opens (several, comma-separated, or repeated).
STUDY_PARAMETER = "StudyInstanceUIDs"
# More than a reader opens side by side; the rest of a longer list is not looked up for the audit.
MAX_STUDIES_OPENED = 20


def study_url(*, public_url: str, study_instance_uid: str) -> str:
    """OHIF's own route for one study under a viewer prefix: the page that opens it (and records it)."""
    return f"{public_url}viewer?{urlencode({STUDY_PARAMETER: study_instance_uid})}"


def studies_opened(query: QueryDict) -> list[str]:
    """The Study Instance UIDs an OHIF route names, as OHIF reads them, at most MAX_STUDIES_OPENED."""
    uids = [uid.strip() for value in query.getlist(STUDY_PARAMETER) for uid in value.split(",")]
    return [uid for uid in uids if uid][:MAX_STUDIES_OPENED]


def dist_dir() -> Path:
    return Path(settings.OHIF_DIST_DIR)


def asset_path(relative: str) -> Path | None:
    """Return the file of OHIF's dist/ at ``relative``, or None (also for anything outside dist/)."""
    root = dist_dir().resolve()
    candidate = (root / relative).resolve()
    if root not in candidate.parents or not candidate.is_file():
        return None
    return candidate


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")


def is_long_lived(path: Path) -> bool:
    return bool(HASHED_NAME.search(path.name))


# Style sheets name fonts from the site root; relative to the sheet, they resolve under the prefix.
CSS_ROOT_URL = re.compile(rb"url\(\s*([\"']?)/(?!/)")


def _patch(path: Path) -> bytes | None:
    if path.suffix not in (".js", ".css"):
        return None
    data = path.read_bytes()
    if path.suffix == ".css":
        patched = CSS_ROOT_URL.sub(rb"url(\1", data)
    else:
        patched = data.replace(WEBPACK_PUBLIC_PATH.encode(), PORTAL_PUBLIC_PATH.encode())
    return patched if patched != data else None


@functools.lru_cache(maxsize=64)
def _patched_bytes(path: str, mtime_ns: int) -> bytes | None:
    return _patch(Path(path))


def asset_patched(path: Path) -> bytes | None:
    """The file with its root paths made relative to the prefix, or None when it needs no change."""
    if path.suffix not in (".js", ".css"):
        return None
    return _patched_bytes(str(path), path.stat().st_mtime_ns)


def prepared_dir() -> Path:
    return Path(settings.OHIF_PREPARED_DIR)


def _dist_stamp() -> dict[str, Any]:
    index = dist_dir() / "index.html"
    if not index.is_file():
        raise ViewerNotInstalled(str(index))
    package = dist_dir().parent / "package.json"
    version = json.loads(package.read_text())["version"] if package.is_file() else ""
    # The service worker is written into the folder too: a change of its script makes the folder stale.
    worker = hashlib.sha256(service_worker_template().encode()).hexdigest()[:16]
    return {
        "format": PREPARE_FORMAT,
        "version": version,
        "index_mtime_ns": index.stat().st_mtime_ns,
        "service_worker": worker,
    }


def prepared_current() -> bool:
    """True when the prepared folder was made from the installed dist by this version of prepare()."""
    try:
        written = json.loads((prepared_dir() / PREPARED_STAMP).read_text())
        return bool(written == _dist_stamp())
    except (OSError, ValueError, ViewerNotInstalled):
        return False


def is_minified_here(path: Path) -> bool:
    """OHIF's own bundles: its prebuilt dist/ ships them unminified (the main one 17 MB, 8 MB minified).

    The third-party scripts beside them (``*.min.js``, ONNX runtime) come minified already.
    """
    return path.suffix == ".js" and is_long_lived(path)


def _minify(scripts: list[Path], folder: Path) -> None:
    """Minify ``scripts`` in place (under ``folder``) with esbuild, pinned beside OHIF in ohif/package.json.

    esbuild parses each file as JavaScript and only drops what does not change its behaviour (comments,
    white space, local names); the target keeps it from writing syntax newer than OHIF's own.
    """
    if not scripts:
        return
    if not MINIFIER.is_file():
        raise ViewerNotInstalled(f"{MINIFIER} (esbuild, installed by `make ohif`)")
    subprocess.run(
        [str(MINIFIER), *map(str, scripts), "--minify", f"--target={MINIFY_TARGET}", "--log-level=warning",
         "--allow-overwrite", f"--outdir={folder}", f"--outbase={folder}"],
        check=True,
    )


def prepare() -> int:
    """Write OHIF's files as served (rewritten, minified, gzipped ahead) into the prepared folder; return
    how many.

    Files that need no change are symbolic links into dist/. The folder is built beside the old one
    and swapped in whole, so a server reading it never sees half of it.
    """
    stamp = _dist_stamp()
    source = dist_dir().resolve()
    target = prepared_dir()
    building = target.with_name(f"{target.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    served: list[Path] = []
    scripts: list[Path] = []
    for folder, _, names in os.walk(source):
        for name in names:
            path = Path(folder) / name
            relative = path.relative_to(source)
            if name.endswith(".map") or str(relative) in NOT_SERVED:
                continue
            destination = building / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            patched = _patch(path)
            if is_minified_here(path):
                destination.write_bytes(patched if patched is not None else path.read_bytes())
                scripts.append(destination)
            elif patched is None:
                destination.symlink_to(path)
            else:
                destination.write_bytes(patched)
            served.append(destination)
    _minify(scripts, building)
    for destination in served:
        size = destination.stat().st_size
        if destination.suffix.lower() in COMPRESSIBLE and 1024 <= size <= COMPRESS_MAX_BYTES:
            data = destination.read_bytes()
            packed = gzip.compress(data, compresslevel=9, mtime=0)
            if len(packed) < 0.9 * len(data):
                destination.with_name(destination.name + ".gz").write_bytes(packed)
    count = len(served)
    worker = service_worker_js().encode()
    (building / SERVICE_WORKER).write_bytes(worker)
    (building / f"{SERVICE_WORKER}.gz").write_bytes(gzip.compress(worker, compresslevel=9, mtime=0))
    count += 1
    (building / NGINX_HEADERS).write_text(nginx_headers())
    (building / PREPARED_STAMP).write_text(json.dumps(stamp))
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    building.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return count


# Our service worker, served under each viewer prefix beside OHIF's files (its scope is that prefix).
SERVICE_WORKER = "portal-sw.js"
SERVICE_WORKER_TEMPLATE = "studies/viewer-sw.js"
# Ours, inline in OHIF's page: the dynamic-import helper, the CSRF header, the service worker's install.
VIEWER_SCRIPT = "studies/viewer-ohif.js"
# A chunk the main bundle (or a chunk it imports) can load: webpack's `__webpack_require__.e(<id>)`.
CHUNK_IMPORT = re.compile(r"__webpack_require__\.e\(\s*(?:/\*.*?\*/\s*)?(\d+)\s*\)")
CHUNK_FILE = re.compile(r"^(?P<chunk>[\w-]+)\.bundle\.[0-9a-f]{16}\.js$")
# Hashed scripts no chunk imports are worker scripts and what workers load; the small ones (codec and
# tool workers) are kept, the few large ones (whole-slide microscopy, AI models) are left to the network.
WORKER_SCRIPT_MAX_BYTES = 1024 * 1024


def precache_files() -> list[str]:
    """The names of OHIF's files the service worker keeps: what opening a study loads, and no data.

    The main bundle and its style sheet, every chunk it can import (followed through the chunks'
    own imports) with the chunk's style sheet, the small worker scripts, and the fonts. All but the
    style sheets carry a content hash, so the list changes, and the browser installs the worker
    again, when the installed OHIF does.
    """
    root = dist_dir()
    chunks: dict[str, Path] = {}
    for path in root.glob("*.bundle.*.js"):
        match = CHUNK_FILE.match(path.name)
        if match:
            chunks[match["chunk"]] = path
    if "app" not in chunks:
        raise ViewerNotInstalled(str(root / "app.bundle.<hash>.js"))
    wanted, pending = {"app"}, ["app"]
    while pending:
        text = chunks[pending.pop()].read_text(encoding="utf-8", errors="replace")
        for chunk in CHUNK_IMPORT.findall(text):
            if chunk in chunks and chunk not in wanted:
                wanted.add(chunk)
                pending.append(chunk)
    wanted |= {chunk for chunk, path in chunks.items() if path.stat().st_size <= WORKER_SCRIPT_MAX_BYTES}
    names = [chunks[chunk].name for chunk in wanted]
    names += [f"{chunk}.css" for chunk in wanted if (root / f"{chunk}.css").is_file()]
    names += ["app.bundle.css"] if (root / "app.bundle.css").is_file() else []
    names += [path.name for path in root.glob("*.woff2")]
    return sorted(names)


@functools.lru_cache(maxsize=8)
def _file_text(path: str, mtime_ns: int) -> str:
    return Path(path).read_text(encoding="utf-8")


def static_text(name: str) -> str:
    """The text of one of our static files (``name`` as for ``static()``), read again when it changes."""
    found = finders.find(name)
    if not found:
        raise ViewerNotInstalled(name)
    path = Path(str(found))
    return _file_text(str(path), path.stat().st_mtime_ns)


def service_worker_template() -> str:
    return static_text(SERVICE_WORKER_TEMPLATE)


@functools.lru_cache(maxsize=4)
def _service_worker_js(index_mtime_ns: int, template: str) -> str:
    files = precache_files()
    version = hashlib.sha256("\n".join([*files, template]).encode()).hexdigest()[:16]
    head = f"self.portalPrecache = {json.dumps({'version': version, 'files': files})};\n"
    return head + template


def service_worker_js() -> str:
    """The viewer's service worker: our script, after the list of OHIF's files it keeps and its version."""
    index = dist_dir() / "index.html"
    if not index.is_file():
        raise ViewerNotInstalled(str(index))
    return _service_worker_js(index.stat().st_mtime_ns, service_worker_template())


def nginx_headers() -> str:
    """nginx's directives for the prepared files: the viewer's CSP (a worker takes its policy from its
    script's response), the portal's nosniff, and the cache lifetime deploy/nginx.conf maps from the name."""
    policy = build_policy(update=CSP_UPDATE)
    return (
        f"add_header Content-Security-Policy {json.dumps(policy)};\n"
        "add_header X-Content-Type-Options nosniff;\n"
        "add_header Cache-Control $ohif_cache_control;\n"
        "gzip_vary on;\n"
    )


def prepared_file(relative: str) -> Path | None:
    """The prepared file at ``relative`` (no ``..``, nothing the portal writes itself), or None."""
    parts = relative.split("/")
    if not relative or any(part in ("", ".", "..") for part in parts) or relative in NOT_SERVED:
        return None
    candidate = prepared_dir().joinpath(*parts)
    return candidate if candidate.is_file() and not candidate.name.startswith(".") else None


def index_html(site: ViewerSite, nonce: str) -> str:
    """OHIF's page, rewritten for ``site`` (see the module docstring); ``nonce`` is the response's CSP nonce."""
    index = dist_dir() / "index.html"
    if not index.is_file():
        raise ViewerNotInstalled(str(index))
    html = index.read_text(encoding="utf-8")
    # OHIF's inline scripts set PUBLIC_URL and a dynamic-import helper; ours below do both.
    html = re.sub(r"<script>.*?</script>", "", html, flags=re.DOTALL)
    html = re.sub(r'<script[^>]*src="/init-service-worker\.js"[^>]*></script>', "", html)
    html = re.sub(r'<link rel="manifest"[^>]*>', "", html)
    html = re.sub(r'(href|src)="/(?!/)', lambda m: f'{m.group(1)}="{site.public_url}', html)
    ours = f'<script nonce="{nonce}">{app_config_js(site)}</script><script nonce="{nonce}">{static_text(VIEWER_SCRIPT)}</script>'
    html = html.replace(f'<script rel="preload" as="script" src="{site.public_url}app-config.js"></script>', ours)
    if site.session_script:
        # Last in the head, after OHIF's bundle: deferred scripts run in order, and the bundle need not
        # wait for this one.
        html = html.replace("</head>", f'<script defer src="{site.session_script}"></script></head>', 1)
    if site.body_attributes:
        attributes = "".join(f' {name}="{_attribute(value)}"' for name, value in site.body_attributes.items())
        html = html.replace("<body>", f"<body{attributes}>", 1)
    return html


def _attribute(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def app_config(site: ViewerSite) -> dict[str, Any]:
    """OHIF's configuration: one DICOMweb data source, read (and written, where allowed) with the session."""
    root = site.dicomweb_root
    return {
        "routerBasename": site.public_url.rstrip("/"),
        "extensions": [],
        "modes": [],
        # No guided tour over the first image a new browser opens (OHIF's onboarding, on by default).
        "customizationService": {"ohif.tours": {"$set": []}},
        "showStudyList": site.show_study_list,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "showErrorDetails": "production",
        "defaultDataSourceName": "portal",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "portal",
                "configuration": {
                    "friendlyName": site.name,
                    "name": "portal",
                    "wadoUriRoot": root,
                    "qidoRoot": root,
                    "wadoRoot": root,
                    "qidoSupportsIncludeField": True,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "singlepart": "bulkdata,video",
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }


# Inside an inline <script>: what could end it or open a comment is written as a JSON escape.
SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def app_config_js(site: ViewerSite) -> str:
    """The script OHIF's page runs first: its config, its public URL, and what our script needs (no API token)."""
    portal = {
        "dicomwebRoot": site.dicomweb_root,
        "csrfToken": site.csrf_token,
        "serviceWorker": f"{site.public_url}{SERVICE_WORKER}" if site.service_worker else "",
        "scope": site.public_url,
    }
    return (
        f"window.PUBLIC_URL = {_script_json(site.public_url)};\n"
        f"window.portalViewer = {_script_json(portal)};\n"
        f"window.config = {_script_json(app_config(site), indent=1)};\n"
    )


def _script_json(value: object, indent: int | None = None) -> str:
    return json.dumps(value, indent=indent).translate(SCRIPT_SAFE)
