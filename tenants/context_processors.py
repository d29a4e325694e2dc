"""Template context shared by every page: the current clinic, the user's clinics, session limits."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from tenants import selectors
from tenants.roles import Action


def portal(request: HttpRequest) -> dict[str, Any]:
    # A share link's recipient acts inside the clinic but must see nothing of it (menu, address, name).
    on_share = getattr(request, "share", None) is not None
    context: dict[str, Any] = {
        "clinic": None if on_share else getattr(request, "clinic", None),
        "membership": None if on_share else getattr(request, "membership", None),
    }
    membership = context["membership"]
    context["clinic_perms"] = {action: membership.can(action) for action in Action.values} if membership else {}
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        context["user_clinics"] = selectors.clinic_list_for_user(user=user)
        context["session_idle_seconds"] = int(
            request.session.get("idle_seconds", settings.SESSION_IDLE_TIMEOUT.total_seconds())
        )
    return context
