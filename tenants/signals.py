"""Sign-in events from Django and django-axes, turned into audit entries and session bookkeeping.

Authentication happens inside Django and django-axes, so their signals are the one place where every
sign-in, failure, lockout and sign-out is seen; each receiver just calls a service.
"""

from __future__ import annotations

from typing import Any

from axes.signals import user_locked_out
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest

from tenants import services
from tenants.audit import Actor
from tenants.models import User


def normalize_username(value: object) -> str:
    return str(value or "").strip().lower()


def axes_username(request: HttpRequest, credentials: dict[str, Any] | None = None) -> str | None:
    """The account axes counts failures for: the e-mail, case-insensitively, as accounts are matched."""
    raw = (credentials or {}).get("username")
    if raw is None and request is not None:
        raw = getattr(request, "POST", {}).get("username")
    return normalize_username(raw) or None


def _actor(request: HttpRequest | None) -> Actor | None:
    # Django sends its sign-in signals without a request when authenticate() was called without one.
    return Actor.from_request(request) if request is not None else None


def _user_for(username: object) -> User | None:
    email = normalize_username(username)
    return User.objects.filter(email__iexact=email).first() if email else None


@receiver(user_logged_in, dispatch_uid="tenants.login")
def on_logged_in(sender: Any, request: HttpRequest | None, user: User, **kwargs: Any) -> None:
    if request is None or not hasattr(request, "session"):
        return
    services.session_start(request=request, user=user)
    services.auth_event_record(action="auth.login", user=user, by=Actor.from_request(request))


@receiver(user_login_failed, dispatch_uid="tenants.login_failed")
def on_login_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any) -> None:
    locked = bool(getattr(request, "axes_locked_out", False))
    services.auth_event_record(
        action="auth.login_failed", user=_user_for(credentials.get("username")), by=_actor(request), result="failure",
        details={"reason": "account locked" if locked else "wrong e-mail or password"},
    )


@receiver(user_locked_out, dispatch_uid="tenants.locked_out")
def on_locked_out(sender: Any, request: HttpRequest | None, username: str | None, **kwargs: Any) -> None:
    services.auth_event_record(action="auth.locked_out", user=_user_for(username), by=_actor(request), result="denied")


@receiver(user_logged_out, dispatch_uid="tenants.logged_out")
def on_logged_out(sender: Any, request: HttpRequest | None, user: User | None, **kwargs: Any) -> None:
    # Covers sign-out and idle expiry alike; the audit entry is written by whoever ended the session.
    if request is not None and hasattr(request, "session"):
        services.session_forget(session_key=request.session.session_key)
