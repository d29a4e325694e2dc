"""Tenant resolution and session expiry.

``ClinicMiddleware`` is the one mechanism that decides which clinic a request acts for. Every URL that
names a clinic carries a ``clinic_slug`` argument; this middleware resolves it for the browser session
or for an API token, and sets ``request.clinic`` and ``request.membership`` (a ``Membership`` or an
``ApiToken``; both answer ``can(action)``). A clinic the caller does not belong to is a 404, exactly
like a clinic that does not exist (answered here, not raised, so that even the default run with ``DEBUG`` on
shows the product's 404: JSON for API clients).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import logout
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse

from portal import errors
from tenants import selectors, services
from tenants.audit import Actor
from tenants.models import ApiToken, Clinic, Membership

API_PREFIXES = ("/api/", "/dicomweb/")
ACTIVITY_RESOLUTION_SECONDS = 10


class ClinicRequest(HttpRequest):
    """A request inside a clinic; declares what ClinicMiddleware sets, for type checkers."""

    clinic: Clinic
    membership: Membership | ApiToken
    api_token: ApiToken | None


def bearer_token(request: HttpRequest) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def unauthenticated_response(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        response = JsonResponse(
            {"error": "not_authenticated", "message": "Sign in, or send 'Authorization: Bearer <api token>'."},
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response
    return redirect_to_login(request.get_full_path(), reverse(settings.LOGIN_URL))


def api_token_accepted(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Let a page's endpoint be called with an API token (the outermost decorator).

    Tokens are for the REST API and DICOMweb; a page route takes one only when it says so, as the
    upload endpoint does: the others are written for a signed-in person.
    """
    view.accepts_api_token = True  # type: ignore[attr-defined]
    return view


class ClinicMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.api_token = None  # type: ignore[attr-defined]
        raw = bearer_token(request)
        if raw is not None:
            token = selectors.api_token_get_active(raw_token=raw)
            if token is None:
                return JsonResponse(
                    {"error": "invalid_token", "message": "The API token is unknown or has been revoked."},
                    status=401,
                )
            request.api_token = token  # type: ignore[attr-defined]
            # Token requests carry no session or CSRF cookie, so CSRF does not apply to them.
            request._dont_enforce_csrf_checks = True  # type: ignore[attr-defined]
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], view_args: Any, view_kwargs: dict[str, Any]
    ) -> HttpResponse | None:
        slug = view_kwargs.get("clinic_slug")
        if slug is None:
            return None
        token: ApiToken | None = request.api_token  # type: ignore[attr-defined]
        if token is not None:
            if token.clinic.slug != slug:
                return errors.page_not_found(request)
            if not is_api_path(request.path) and not getattr(view_func, "accepts_api_token", False):
                return JsonResponse(
                    {"error": "api_token_not_accepted",
                     "message": "API tokens work with the REST API and DICOMweb; sign in to use this page."},
                    status=403,
                )
            request.clinic = token.clinic  # type: ignore[attr-defined]
            request.membership = token  # type: ignore[attr-defined]
            # Asked first: building the Actor loads the session's user, work most token requests skip.
            if services.api_token_use_is_due(token=token):
                services.api_token_mark_used(token=token, by=Actor.from_request(request))
            return None
        if not request.user.is_authenticated:
            return unauthenticated_response(request)
        membership = selectors.membership_get_by_slug(slug=slug, user=request.user)  # type: ignore[arg-type]
        if membership is None:
            return errors.page_not_found(request)
        clinic = membership.clinic
        request.clinic = clinic  # type: ignore[attr-defined]
        request.membership = membership  # type: ignore[attr-defined]
        if clinic.require_two_factor and not request.user.is_verified():  # type: ignore[union-attr]
            if is_api_path(request.path):
                return JsonResponse(
                    {"error": "two_factor_required", "message": "This clinic requires two-factor sign-in."},
                    status=403,
                )
            return redirect(f"{reverse('tenants:two-factor')}?{urlencode({'next': request.get_full_path()})}")
        if request.session.get("current_clinic") != clinic.slug:
            # Assigning marks the session changed even with the same value: a save, its own
            # transaction, on every request of a viewer.
            request.session["current_clinic"] = clinic.slug
        return None


class SessionTimeoutMiddleware:
    """End browser sessions after the idle limit and after the absolute limit.

    The idle limit is the shortest of the site's and those of the user's clinics; it is worked out at
    sign-in and kept in the session (``idle_seconds``) so that pages can warn before it runs out.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # The header first: a token request then never loads the session or its user. One that also sends a
        # session cookie is held to that session's limits, or any token would reopen an idle session's pages.
        token = bearer_token(request) is not None
        if (not token or settings.SESSION_COOKIE_NAME in request.COOKIES) and request.user.is_authenticated:
            now = time.time()
            session = request.session
            idle = session.get("idle_seconds", settings.SESSION_IDLE_TIMEOUT.total_seconds())
            started = session.setdefault("started_at", now)
            last_seen = session.get("last_seen_at", now)
            if now - last_seen > idle or now - started > settings.SESSION_ABSOLUTE_TIMEOUT.total_seconds():
                services.session_expire(request=request)
                logout(request)
                if token:
                    # The session's user is gone; the token still speaks for itself where tokens are accepted.
                    return self.get_response(request)
                if is_api_path(request.path):
                    return unauthenticated_response(request)
                login_url = reverse(settings.LOGIN_URL)
                if request.path == login_url:
                    return redirect(login_url + "?expired=1")
                return redirect_to_login(request.get_full_path(), login_url + "?expired=1")
            # A background keep-alive poll must not count as activity. Activity is written down at a
            # coarse resolution, so that a page's burst of requests (viewer slices) saves the session once.
            resolution = min(ACTIVITY_RESOLUTION_SECONDS, idle / 10)
            # Nor a token's request: a script's token must not keep a person's session open.
            if not token and request.headers.get("X-Session-Poll") != "1" and now - last_seen >= resolution:
                session["last_seen_at"] = now
        return self.get_response(request)
