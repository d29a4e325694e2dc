"""Absolute URLs for answers and links: from the configured public base URL, not the Host header."""

from __future__ import annotations

from typing import Protocol

from django.conf import settings


class _Request(Protocol):
    """A Django request or a DRF one (which proxies to it)."""

    def build_absolute_uri(self, location: str | None = None) -> str: ...


def absolute_url(request: _Request, path: str) -> str:
    """Return ``path`` (absolute, starting with ``/``) as a full URL clients can use.

    Behind a proxy the Host header may lack the port or be forged by the caller; ``PUBLIC_BASE_URL``
    names the address the service is really reached at. Only the default run (no setting) builds the
    URL from the request.
    """
    if settings.PUBLIC_BASE_URL:
        return settings.PUBLIC_BASE_URL + path
    return request.build_absolute_uri(path)
