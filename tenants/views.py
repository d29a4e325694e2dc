"""Sign-in, sign-out and the clinic pages of the tenants app."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from tenants import selectors
from tenants.middleware import ClinicRequest

LOCKED_MESSAGE = (
    "Too many failed sign-in attempts. This account is locked for a while; try again later "
    "or reset your password."
)


def lockout_response(request: HttpRequest, credentials: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> HttpResponse:
    """What django-axes answers for a locked account: the same page whether the account exists or not."""
    form = AuthenticationForm(request)
    return render(request, "tenants/login.html", {"form": form, "locked_message": LOCKED_MESSAGE}, status=429)


def _safe_next(request: HttpRequest) -> str | None:
    target = request.POST.get("next") or request.GET.get("next")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return None


def login_view(request: HttpRequest) -> HttpResponse:
    form = AuthenticationForm(request, data=request.POST or None)
    if request.method == "POST" and form.is_valid():
        login(request, form.get_user())
        return redirect(_safe_next(request) or "home")
    status = 400 if request.method == "POST" else 200
    return render(request, "tenants/login.html", {"form": form, "next": _safe_next(request) or ""}, status=status)


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    messages.info(request, "You are signed out.")
    return redirect("tenants:login")


@login_required
def two_factor(request: HttpRequest) -> HttpResponse:
    return render(request, "tenants/two_factor.html", {})


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Send the user to the clinic they used last, or their first clinic."""
    clinics = selectors.clinic_list_for_user(user=request.user)
    current = request.session.get("current_clinic")
    clinic = clinics.filter(slug=current).first() or clinics.first()
    if clinic is None:
        return render(request, "tenants/no_clinic.html", {})
    return redirect("clinic:dashboard", clinic_slug=clinic.slug)


def dashboard(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    return render(request, "tenants/dashboard.html", {})


@login_required
def keepalive(request: HttpRequest) -> HttpResponse:
    """Count as activity, so the idle timer starts again (the page's "stay signed in" button)."""
    return HttpResponse(status=204)


@login_required
def switch_clinic(request: HttpRequest) -> HttpResponse:
    clinic = selectors.clinic_list_for_user(user=request.user).filter(slug=request.GET.get("clinic", "")).first()
    if clinic is None:
        return redirect("home")
    return redirect("clinic:dashboard", clinic_slug=clinic.slug)


@login_required
def account(request: HttpRequest) -> HttpResponse:
    return render(request, "tenants/account.html", {})
