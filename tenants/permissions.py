"""The role table applied to views and API endpoints (the rights themselves live in tenants.roles)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import wraps
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from tenants.roles import Role


def action_check(request: Any, action: str, *, message: str = "Your role does not allow this.") -> None:
    """Raise PermissionDenied (403) unless the request's member (or API token) may perform ``action``.

    The one role check of pages and APIs: the decorator below, the DRF permission class and the views
    that check inside their body (one right on GET, another on POST) all come here.
    """
    membership = getattr(request, "membership", None)
    if membership is None or not membership.can(action):
        raise PermissionDenied(message)


def owner_check(request: Any, *, message: str = "Only the clinic's owners may do this.") -> None:
    """Raise PermissionDenied unless a signed-in owner asks (never an API token, never an admin)."""
    if getattr(getattr(request, "membership", None), "role", None) != Role.OWNER or getattr(
        request, "api_token", None
    ) is not None:
        raise PermissionDenied(message)


def require_action(
    action: str, *, message: str = "Your role does not allow this."
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Answer 403 (with ``message``) unless the request's member (or API token) may perform ``action`` in its clinic.

    ClinicMiddleware has already answered 404 for a clinic the caller does not belong to.
    """

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: Any, *args: Any, **kwargs: Any) -> HttpResponse:
            action_check(request, action, message=message)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def has_action(
    action: str, *, methods: Collection[str] | None = None, message: str | None = None
) -> type[BasePermission]:
    """A DRF permission class: the clinic member or API token may perform ``action``.

    ``methods`` limits the role check to those HTTP methods (GET implies HEAD), for a view that answers
    readers on GET and needs another right on DELETE; any other method still needs a member of the clinic.
    ``message`` is the 403's detail.
    """
    checked = {method.upper() for method in methods} if methods is not None else None
    if checked is not None and "GET" in checked:
        checked.add("HEAD")
    detail = message or f"Your role does not allow this ({action})."

    class HasAction(BasePermission):
        message = detail

        def has_permission(self, request: Request, view: Any) -> bool:
            membership = getattr(request._request, "membership", None)
            if membership is None:
                return False  # not signed in, or no member of this clinic: never let through
            if checked is not None and request.method not in checked:
                return True
            return bool(membership.can(action))

    HasAction.__name__ = f"Has{action.title()}Action"
    return HasAction
