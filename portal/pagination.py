"""The REST API's one pagination style: ``limit`` and ``offset``, with ``limit`` capped."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination


class PortalPagination(LimitOffsetPagination):
    # Without a cap a huge `limit` reaches the database as an out-of-range LIMIT (a server error).
    max_limit = 1000
