"""The product's own error answers: styled pages for people, JSON for API and DICOMweb clients.

Django's handlers (``handler400/403/404/500`` in ``portal.urls``) call these with ``DEBUG`` off. The default
run (``make run``) keeps ``DEBUG`` on for its local conveniences, yet it is a real single-machine
deployment, so ``ErrorPagesMiddleware`` gives it the same pages instead of Django's technical ones (which
list every URL pattern). ``TECHNICAL_ERROR_PAGES=1`` brings Django's debug pages back for development.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from http import HTTPStatus

from django.conf import settings
from django.core import signals
from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template import loader
from django.utils.log import log_response

logger = logging.getLogger("django.request")

# Machine clients: the REST API, clinic DICOMweb and a share link's DICOMweb.
MACHINE_PATH = re.compile(r"^/(api|dicomweb)/|^/s/[^/]+/dicomweb/")

MESSAGES = {
    HTTPStatus.BAD_REQUEST: "The request could not be understood.",
    HTTPStatus.FORBIDDEN: "Your role in this clinic does not allow this.",
    HTTPStatus.NOT_FOUND: "Nothing exists at this address, or it is not yours to see.",
    HTTPStatus.INTERNAL_SERVER_ERROR: "Something went wrong on our side; nothing was changed. Try again in a moment.",
}
CODES = {
    HTTPStatus.BAD_REQUEST: "bad_request",
    HTTPStatus.FORBIDDEN: "permission_denied",
    HTTPStatus.NOT_FOUND: "not_found",
    HTTPStatus.INTERNAL_SERVER_ERROR: "server_error",
}


def is_machine_path(path: str) -> bool:
    return bool(MACHINE_PATH.match(path))


def error_response(request: HttpRequest, status: HTTPStatus) -> HttpResponse:
    """Answer an error as JSON on machine paths, as a styled page elsewhere."""
    if is_machine_path(request.path):
        return JsonResponse({"error": CODES[status], "message": MESSAGES[status]}, status=status)
    if status == HTTPStatus.INTERNAL_SERVER_ERROR:
        # No request context: the context processors query the database, which may be what failed.
        body = loader.get_template("errors/500.html").render({"status": status, "message": MESSAGES[status]})
        return HttpResponse(body, status=status)
    return render(request, f"errors/{int(status)}.html", {"status": status, "message": MESSAGES[status]}, status=status)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(request, HTTPStatus.BAD_REQUEST)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(request, HTTPStatus.FORBIDDEN)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form sent without its (or with an expired) CSRF token: usually a page left open too long."""
    if is_machine_path(request.path):
        return JsonResponse(
            {"error": "csrf_failed", "message": "Send an API token, or the CSRF token of your session."}, status=403
        )
    return render(request, "errors/403_csrf.html", {"status": HTTPStatus.FORBIDDEN}, status=HTTPStatus.FORBIDDEN)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(request, HTTPStatus.NOT_FOUND)


def server_error(request: HttpRequest) -> HttpResponse:
    return error_response(request, HTTPStatus.INTERNAL_SERVER_ERROR)


class ErrorPagesMiddleware:
    """With ``DEBUG`` on, answer with the product's error pages unless TECHNICAL_ERROR_PAGES asks otherwise."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def active(self) -> bool:
        return settings.DEBUG and not settings.TECHNICAL_ERROR_PAGES

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # No URL pattern matched: with DEBUG on Django answered with its technical 404 page.
        if self.active() and response.status_code == HTTPStatus.NOT_FOUND and request.resolver_match is None:
            return page_not_found(request)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not self.active():
            return None
        if isinstance(exception, Http404):
            return page_not_found(request, exception)
        if isinstance(exception, PermissionDenied | BadRequest | SuspiciousOperation):
            return None  # Django answers these through our handlers even with DEBUG on
        signals.got_request_exception.send(sender=None, request=request)
        response = server_error(request)
        log_response("Internal Server Error: %s", request.path, response=response, request=request, exception=exception)
        return response


class OneLineClientErrors(logging.Filter):
    """Log a refused request (4xx) as one line: a traceback says nothing about the caller's mistake."""

    def filter(self, record: logging.LogRecord) -> bool:
        if 400 <= getattr(record, "status_code", 0) < 500:
            record.exc_info = None
            record.exc_text = None
        return True
