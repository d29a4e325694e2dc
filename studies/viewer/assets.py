"""OHIF's files from the prepared folder, answered before sessions, sign-in and clinic look-up.

A study opens in OHIF only after some forty of its scripts and style sheets have loaded; through the
whole middleware stack each costs a session read and the clinic and membership queries, for files
that are the same for everyone (see ``studies.viewer.ohif``). This middleware answers them from the
folder ``manage.py ohif_prepare`` wrote, gzipped when the browser accepts it, with the viewer's
Content-Security-Policy (a worker takes its policy from its script's response). Under ``make run``
nginx serves the same folder itself and these requests never reach the portal. The page, its
config and OHIF's routes are not in the folder and go on to the views, which check the reader.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

from csp.decorators import csp_update
from django.http import FileResponse, HttpRequest, HttpResponseBase

from studies.viewer import ohif

# The clinic's viewer (/c/<clinic>/viewer/ohif/) and a share link's (/s/<token>/viewer/ohif/).
VIEWER_FILE = re.compile(r"^/[cs]/[^/]+/viewer/ohif/(?P<file>[^?#]+)$")
LONG_LIVED = "public, max-age=31536000, immutable"
SHORT_LIVED = "public, max-age=3600"


def _file_response(request: HttpRequest, path: Path) -> HttpResponseBase:
    # django-csp's decorator wraps a one-argument view: the file is bound by this closure.
    @csp_update(ohif.CSP_UPDATE)
    def respond(request: HttpRequest) -> HttpResponseBase:
        packed = path.with_name(path.name + ".gz")
        use_gzip = "gzip" in request.headers.get("Accept-Encoding", "").lower() and packed.is_file()
        response = FileResponse((packed if use_gzip else path).open("rb"), content_type=ohif.content_type(path))
        if use_gzip:
            response["Content-Encoding"] = "gzip"
        response["Vary"] = "Accept-Encoding"
        response["Cache-Control"] = LONG_LIVED if ohif.is_long_lived(path) else SHORT_LIVED
        return response

    return respond(request)


@functools.lru_cache(maxsize=1)
def _prepared(stamp_mtime_ns: int) -> bool:
    return ohif.prepared_current()


def _prepared_is_current() -> bool:
    """Whether the prepared folder matches the installed dist (checked again when its stamp changes)."""
    try:
        stamp_mtime_ns = (ohif.prepared_dir() / ohif.PREPARED_STAMP).stat().st_mtime_ns
    except OSError:
        return False
    return _prepared(stamp_mtime_ns)


class ViewerAssetsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.method in ("GET", "HEAD"):
            match = VIEWER_FILE.match(request.path_info)
            if match and _prepared_is_current():
                path = ohif.prepared_file(match["file"])
                if path is not None:
                    return _file_response(request, path)
        return self.get_response(request)
