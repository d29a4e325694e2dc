"""Sign-up, sign-in (with two-factor), sessions, invitations and the clinic's member, token and security pages."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import qrcode
import qrcode.image.svg
from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, login, logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST
from django_otp import login as otp_login

from portal.exceptions import PortalError
from portal.public_url import absolute_url
from tenants import forms, selectors, services
from tenants.audit import Actor
from tenants.middleware import ClinicRequest
from tenants.permissions import require_action
from tenants.roles import Action
from tenants.secrets import password_reset_token_generator


def locked_message() -> str:
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return (
        f"Too many failed sign-in attempts: this account is locked for {minutes} minutes. "
        "Try again later, or reset your password."
    )


def lockout_response(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """What django-axes answers for a locked account: the same page whether the account exists or not."""
    form = forms.LoginForm(request)
    return render(request, "tenants/login.html", {"form": form, "locked_message": locked_message()}, status=429)


def _safe_next(request: HttpRequest) -> str | None:
    target = request.POST.get("next") or request.GET.get("next")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return None


# --- sign-in and sign-out ---------------------------------------------------------------------------

PENDING_LOGIN = "pending_login"
# A password checked for an account with two-factor sign-in waits this long for its code.
PENDING_LOGIN_SECONDS = 300


def login_view(request: HttpRequest) -> HttpResponse:
    if request.method == "GET" and request.user.is_authenticated and not request.GET.get("expired"):
        return redirect(_safe_next(request) or "home")
    form = forms.LoginForm(request, data=request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.get_user()
        if selectors.user_has_two_factor(user=user):
            # The password was right; the account is signed in only once the code is too.
            request.session[PENDING_LOGIN] = {
                "user": user.pk, "backend": user.backend, "at": time.time(), "next": _safe_next(request) or "",
            }
            return redirect("tenants:login-code")
        login(request, user)
        return redirect(_safe_next(request) or "home")
    status = 400 if request.method == "POST" else 200
    return render(request, "tenants/login.html", {"form": form, "next": _safe_next(request) or ""}, status=status)


def login_code(request: HttpRequest) -> HttpResponse:
    """Second step of signing in with two-factor: the code from the authenticator app."""
    pending = request.session.get(PENDING_LOGIN)
    if not pending or time.time() - pending["at"] > PENDING_LOGIN_SECONDS:
        request.session.pop(PENDING_LOGIN, None)
        messages.warning(request, "Sign in again: the code was not entered in time.")
        return redirect("tenants:login")
    user = get_user_model().objects.filter(pk=pending["user"], is_active=True).first()
    if user is None:
        request.session.pop(PENDING_LOGIN, None)
        return redirect("tenants:login")
    if AxesProxyHandler.is_locked(request, credentials={"username": user.email}):
        # Locked since its password was checked (wrong passwords from elsewhere): the code finishes nothing.
        request.session.pop(PENDING_LOGIN, None)
        return lockout_response(request)
    form = forms.SecondFactorForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        check = services.two_factor_check(user=user, code=form.cleaned_data["code"], by=Actor.from_request(request))
        if check.device is not None:
            del request.session[PENDING_LOGIN]
            user.otp_device = check.device  # django-otp marks the new session as verified at login
            login(request, user, backend=pending["backend"])
            _recovery_code_notice(request, check)
            return redirect(pending["next"] or "home")
        reason = "two-factor code already used" if check.message == services.REPLAYED_CODE_MESSAGE else "wrong two-factor code"
        services.auth_event_record(action="auth.login_failed", user=user, by=Actor.from_request(request), result="failure",
                                   details={"reason": reason})
        form.add_error("code", check.message)
    status = 400 if request.method == "POST" else 200
    return render(request, "tenants/login_code.html", {"form": form}, status=status)


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        services.auth_event_record(action="auth.logout", user=request.user, by=Actor.from_request(request))
    # logout() flushes the session, deleting it from the session store, not just the cookie.
    logout(request)
    messages.info(request, "You are signed out.")
    return redirect("tenants:login")


@login_required
@require_POST
def logout_everywhere(request: HttpRequest) -> HttpResponse:
    services.user_sessions_end_all(user=request.user, by=Actor.from_request(request))
    logout(request)
    messages.info(request, "You are signed out on every device.")
    return redirect("tenants:login")


def signup(request: HttpRequest) -> HttpResponse:
    form = forms.SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            services.user_signup(
                clinic_name=data["clinic_name"], clinic_slug=data["clinic_slug"], full_name=data["full_name"],
                email=data["email"], password=data["password1"], base_url=request.build_absolute_uri("/")[:-1],
                by=Actor.from_request(request),
            )
        except PortalError as exc:
            form.add_error(None, exc.message)
        except ValidationError as exc:
            form.add_error("password1", exc)
        else:
            # The same answer whether or not the address already had an account.
            return render(request, "tenants/signup_sent.html", {"email": data["email"],
                                                                "valid_days": settings.SIGNUP_CONFIRM_DAYS})
    status = 400 if request.method == "POST" else 200
    return render(request, "tenants/signup.html", {"form": form}, status=status)


def signup_confirm(request: HttpRequest, token: str) -> HttpResponse:
    """The link of the sign-up mail: activate the account, sign it in, and open its clinic."""
    if request.method != "POST":
        # A GET only shows a button: mail scanners that open links must not use up the sign-up.
        return render(request, "tenants/signup_confirm.html")
    confirmed = services.user_signup_confirm(token=token, by=Actor.from_request(request))
    if confirmed is None:
        return render(request, "tenants/signup_confirm.html", {"invalid": True}, status=400)
    user, clinic = confirmed
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    messages.success(request, f"Welcome! {clinic.name} is ready.")
    return redirect("clinic:dashboard", clinic_slug=clinic.slug)


# --- two-factor -----------------------------------------------------------------------------------


def _qr_svg(data: str) -> str:
    image = qrcode.make(data, image_factory=qrcode.image.svg.SvgPathImage, box_size=8)
    return image.to_string(encoding="unicode")


@login_required
def two_factor(request: HttpRequest) -> HttpResponse:
    """Where members of a clinic that requires two-factor land until this session is verified."""
    next_url = _safe_next(request) or reverse("home")
    if request.user.is_verified():
        return redirect(next_url)
    if not selectors.user_has_two_factor(user=request.user):
        return redirect(f"{reverse('tenants:two-factor-setup')}?{urlencode({'next': next_url})}")
    form = forms.SecondFactorForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        check = services.two_factor_check(user=request.user, code=form.cleaned_data["code"], by=Actor.from_request(request))
        if check.device is not None:
            otp_login(request, check.device)
            _recovery_code_notice(request, check)
            return redirect(next_url)
        form.add_error("code", check.message)
    status = 400 if request.method == "POST" else 200
    required = selectors.clinics_requiring_two_factor(user=request.user)
    return render(request, "tenants/two_factor.html", {"form": form, "next": next_url, "required": required},
                  status=status)


@login_required
def two_factor_setup(request: HttpRequest) -> HttpResponse:
    next_url = _safe_next(request) or reverse("tenants:account")
    if selectors.user_has_two_factor(user=request.user) and not request.user.is_verified():
        # Replacing an authenticator takes the current second factor: otherwise a session opened with the
        # password alone (before two-factor was on, or stolen) could swap in its own and pass the clinic's rule.
        here = f"{reverse('tenants:two-factor-setup')}?{urlencode({'next': next_url})}"
        return redirect(f"{reverse('tenants:two-factor')}?{urlencode({'next': here})}")
    device = services.two_factor_device_get_or_start(user=request.user)
    form = forms.CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            enabled = services.two_factor_confirm(user=request.user, code=form.cleaned_data["code"], by=Actor.from_request(request))
        except PortalError as exc:
            form.add_error("code", exc.message)
        else:
            otp_login(request, enabled.device)
            messages.success(request, "Two-factor sign-in is on. You will be asked for a code when you sign in.")
            # Shown once, on the next page (a redirect, so that reloading does not post the code again).
            request.session[NEW_RECOVERY_CODES] = enabled.recovery_codes
            return redirect(f"{reverse('tenants:two-factor-recovery-codes')}?{urlencode({'next': next_url})}")
    context = {
        "form": form, "next": next_url, "qr_svg": _qr_svg(device.config_url),
        "secret": services.two_factor_secret_base32(device=device),
        "has_device": selectors.user_has_two_factor(user=request.user),
    }
    return render(request, "tenants/two_factor_setup.html", context, status=400 if request.method == "POST" else 200)


NEW_RECOVERY_CODES = "new_recovery_codes"


def _recovery_code_notice(request: HttpRequest, check: services.CodeCheck) -> None:
    if check.is_recovery_code:
        left = selectors.recovery_code_count(user=request.user)
        messages.warning(request, f"You signed in with a recovery code; {left} left. If your phone is lost, "
                                  "set up a new authenticator and new recovery codes on your account page.")


@login_required
def two_factor_recovery_codes(request: HttpRequest) -> HttpResponse:
    """Show new recovery codes once (after set-up, or regenerated here by a two-factor verified session)."""
    next_url = _safe_next(request) or reverse("tenants:account")
    codes = request.session.pop(NEW_RECOVERY_CODES, None)
    if request.method == "POST":
        if not request.user.is_verified():
            raise PermissionDenied("Sign in with your second factor before making new recovery codes.")
        codes = services.recovery_codes_generate(user=request.user, by=Actor.from_request(request))
    context = {"codes": codes or [], "next": next_url, "remaining": selectors.recovery_code_count(user=request.user),
               "has_two_factor": selectors.user_has_two_factor(user=request.user)}
    return render(request, "tenants/recovery_codes.html", context)


@login_required
@require_POST
def two_factor_disable(request: HttpRequest) -> HttpResponse:
    form = forms.SecondFactorForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(form.errors.get("code", ["Enter your code."])))
        return redirect("tenants:account")
    try:
        services.two_factor_disable(user=request.user, code=form.cleaned_data["code"], by=Actor.from_request(request))
    except PortalError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Two-factor sign-in is off.")
    return redirect("tenants:account")


# --- account and passwords --------------------------------------------------------------------------


@login_required
def account(request: HttpRequest) -> HttpResponse:
    context = {
        "has_two_factor": selectors.user_has_two_factor(user=request.user),
        "session_count": selectors.user_session_count(user=request.user),
        "code_form": forms.CodeForm(),
        "memberships": request.user.memberships.select_related("clinic").order_by("clinic__name"),
    }
    return render(request, "tenants/account.html", context)


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "tenants/password_change.html"
    form_class = forms.PortalPasswordChangeForm
    success_url = reverse_lazy("tenants:account")

    def get_form_kwargs(self) -> dict[str, Any]:
        return {**super().get_form_kwargs(), "request": self.request}

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        services.password_changed_record(user=form.user, request=self.request, how="changed")
        messages.success(self.request, "Your password is changed. Other devices have been signed out.")
        return response

    def form_invalid(self, form: Any) -> HttpResponse:
        return self.render_to_response(self.get_context_data(form=form), status=400)


class PasswordResetView(auth_views.PasswordResetView):
    # The form queues the mail (PortalPasswordResetForm.save): its templates and signer are the form's.
    form_class = forms.PortalPasswordResetForm
    template_name = "tenants/password_reset.html"
    success_url = reverse_lazy("tenants:password-reset-done")


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "tenants/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "tenants/password_reset_confirm.html"
    form_class = forms.PortalSetPasswordForm
    success_url = reverse_lazy("tenants:password-reset-complete")
    token_generator = password_reset_token_generator

    def get_user(self, uidb64: str) -> Any:
        user = super().get_user(uidb64)
        # Django's reset form mails active accounts only, but a link sent before the account was disabled
        # would still set its password (and lift its lockout): the link dies with the account.
        return user if user is not None and user.is_active else None

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        services.password_changed_record(user=form.user, request=None, how="reset")
        return response

    def form_invalid(self, form: Any) -> HttpResponse:
        return self.render_to_response(self.get_context_data(form=form), status=400)


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "tenants/password_reset_complete.html"


# --- invitations --------------------------------------------------------------------------------------


def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    invitation = selectors.invitation_get_by_token(token=token)
    if invitation is None:
        raise Http404("No such invitation.")
    if not invitation.is_usable:
        return render(request, "tenants/invitation_accept.html",
                      {"invitation": invitation, "unusable": services.INVITATION_UNUSABLE}, status=410)
    user = request.user if request.user.is_authenticated else None
    account_exists = user is None and get_user_model().objects.filter(email__iexact=invitation.email).exists()
    form = forms.InvitationAcceptForm(request.POST or None, email=invitation.email) if user is None else None
    context: dict[str, Any] = {"invitation": invitation, "form": form, "account_exists": account_exists,
                               "wrong_user": user is not None and user.email.lower() != invitation.email.lower()}
    if request.method == "POST" and not account_exists and (form is None or form.is_valid()):
        try:
            membership = services.invitation_accept(
                token=token, user=user, by=Actor.from_request(request),
                full_name=form.cleaned_data["full_name"] if form else "",
                password=form.cleaned_data["password1"] if form else "",
            )
        except PortalError as exc:
            context["error"] = exc.message
        except ValidationError as exc:
            form.add_error("password1", exc)  # type: ignore[union-attr]
        else:
            if user is None:
                login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, f"Welcome to {membership.clinic.name}.")
            return redirect("clinic:dashboard", clinic_slug=membership.clinic.slug)
    status = 400 if request.method == "POST" else 200
    return render(request, "tenants/invitation_accept.html", context, status=status)


# --- home, dashboard, switching -----------------------------------------------------------------------


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


# --- clinic pages: members, security, API tokens --------------------------------------------------------


def _members_page(request: ClinicRequest, invite_form: forms.InvitationForm | None = None, status: int = 200) -> HttpResponse:
    context = {
        "members": selectors.member_list(clinic=request.clinic),
        "invitations": selectors.invitation_list_pending(clinic=request.clinic),
        "invite_form": invite_form or forms.InvitationForm(),
        "roles": forms.RoleForm.base_fields["role"].choices,
    }
    return render(request, "tenants/member_list.html", context, status=status)


@require_action(Action.MANAGE)
def members(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    return _members_page(request)


@require_POST
@require_action(Action.MANAGE)
def invitation_create(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    form = forms.InvitationForm(request.POST)
    if form.is_valid():
        try:
            services.invitation_create(
                clinic=request.clinic, email=form.cleaned_data["email"], role=form.cleaned_data["role"],
                invited_by=request.user, granted_by=request.membership, base_url=absolute_url(request, "/"),
                by=Actor.from_request(request),
            )
        except PortalError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Invitation sent to {form.cleaned_data['email']}.")
            return redirect("clinic:members", clinic_slug=request.clinic.slug)
    return _members_page(request, invite_form=form, status=400)


@require_POST
@require_action(Action.MANAGE)
def invitation_revoke(request: ClinicRequest, clinic_slug: str, invitation_uuid: UUID) -> HttpResponse:
    invitation = selectors.invitation_list_pending(clinic=request.clinic).filter(uuid=invitation_uuid).first()
    if invitation is None:
        raise Http404("No such invitation.")
    services.invitation_revoke(invitation=invitation, by=Actor.from_request(request))
    messages.success(request, f"The invitation for {invitation.email} is withdrawn.")
    return redirect("clinic:members", clinic_slug=request.clinic.slug)


def _member_or_404(request: ClinicRequest, user_uuid: UUID) -> Any:
    membership = selectors.member_get(clinic=request.clinic, user_uuid=user_uuid)
    if membership is None:
        raise Http404("No such member.")
    return membership


@require_POST
@require_action(Action.MANAGE)
def member_role(request: ClinicRequest, clinic_slug: str, user_uuid: UUID) -> HttpResponse:
    membership = _member_or_404(request, user_uuid)
    form = forms.RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose one of the listed roles.")
        return redirect("clinic:members", clinic_slug=request.clinic.slug)
    try:
        services.membership_role_change(membership=membership, role=form.cleaned_data["role"],
                                        granted_by=request.membership, by=Actor.from_request(request))
    except PortalError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{membership.user.email} is now {membership.get_role_display()}.")
    return redirect("clinic:members", clinic_slug=request.clinic.slug)


@require_POST
@require_action(Action.MANAGE)
def member_remove(request: ClinicRequest, clinic_slug: str, user_uuid: UUID) -> HttpResponse:
    membership = _member_or_404(request, user_uuid)
    try:
        services.membership_remove(membership=membership, granted_by=request.membership, by=Actor.from_request(request),
                                   keep_api_tokens=request.POST.get("keep_api_tokens") == "on")
    except PortalError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{membership.user.email} is no longer a member.")
    return redirect("clinic:members", clinic_slug=request.clinic.slug)


@require_action(Action.MANAGE)
def security(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    clinic = request.clinic
    form = forms.SecurityForm(
        request.POST or None,
        initial={"require_two_factor": clinic.require_two_factor, "session_idle_minutes": clinic.session_idle_minutes},
    )
    if request.method == "POST" and form.is_valid():
        try:
            services.clinic_security_update(clinic=clinic, by=Actor.from_request(request), **form.cleaned_data)
        except PortalError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, "The security policy is saved. It applies from each member's next sign-in.")
            return redirect("clinic:security", clinic_slug=clinic.slug)
    context = {"form": form, "site_idle_minutes": int(settings.SESSION_IDLE_TIMEOUT.total_seconds() // 60)}
    return render(request, "tenants/security.html", context, status=400 if request.method == "POST" else 200)


@require_action(Action.MANAGE)
def tokens(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    form = forms.ApiTokenForm(request.POST or None)
    created = None
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                created = services.api_token_create(
                    clinic=request.clinic, name=form.cleaned_data["name"], role=form.cleaned_data["role"],
                    created_by=request.user, granted_by=request.membership, by=Actor.from_request(request),
                )
            except PortalError as exc:
                form.add_error(None, exc.message)
            else:
                # The secret is shown in this response only; it is never stored in the clear.
                status, form = 200, forms.ApiTokenForm()
    token_list = list(selectors.api_token_list(clinic=request.clinic))
    context = {"form": form, "created": created, "tokens": token_list,
               "revocable": services.api_tokens_revocable(granted_by=request.membership, tokens=token_list)}
    return render(request, "tenants/token_list.html", context, status=status)


@require_POST
@require_action(Action.MANAGE)
def token_revoke(request: ClinicRequest, clinic_slug: str, token_uuid: UUID) -> HttpResponse:
    token = selectors.api_token_list(clinic=request.clinic).filter(uuid=token_uuid).first()
    if token is None:
        raise Http404("No such token.")
    try:
        services.api_token_revoke(token=token, granted_by=request.membership, by=Actor.from_request(request))
    except PortalError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"The token '{token.name}' is revoked.")
    return redirect("clinic:tokens", clinic_slug=request.clinic.slug)
