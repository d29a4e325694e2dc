"""Domain errors and the one place that turns them into HTTP answers."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from rest_framework.response import Response
from rest_framework.views import exception_handler


class PortalError(Exception):
    """A failure a person can act on; ``message`` is shown to them as it is."""

    status = HTTPStatus.BAD_REQUEST
    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotAllowed(PortalError):
    status = HTTPStatus.FORBIDDEN
    code = "not_allowed"


class Conflict(PortalError):
    status = HTTPStatus.CONFLICT
    code = "conflict"


class Transient(PortalError):
    """A failure that goes away by itself (a store or peer unreachable): the same call is safe to retry.

    Apps subclass it (``studies.archive.errors.StorageUnavailable``), so a caller in another app retries
    without importing their errors.
    """

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "unavailable"


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Answer every API error as JSON with a message a person can act on."""
    if isinstance(exc, PortalError):
        return Response({"error": exc.code, "message": exc.message, **exc.details}, status=exc.status)
    response = exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" in response.data:
        detail = response.data.pop("detail")
        response.data = {"error": getattr(detail, "code", "error"), "message": str(detail), **response.data}
    elif response is not None:
        response.data = {"error": "invalid", "message": "The request is not valid.", "fields": response.data}
    return response
