"""The client's address when gunicorn sits behind the web front (nginx, deploy/nginx.conf).

gunicorn listens on a Unix socket in a folder only the portal's user can open, so a request that
arrives with no peer address came through nginx, which states the client's address in ``X-Real-IP``
(replacing whatever the client sent). Only then is that header believed; over TCP, REMOTE_ADDR stays
the peer's address, so no client can choose the address the audit log records.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


class FrontProxyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        forwarded = request.META.get("HTTP_X_REAL_IP", "").strip()
        if not request.META.get("REMOTE_ADDR") and forwarded:
            request.META["REMOTE_ADDR"] = forwarded
        return self.get_response(request)
