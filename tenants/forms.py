"""Forms of the accounts pages: they parse and validate input; services do the work."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib.auth import authenticate, password_validation
from django.contrib.auth.forms import AuthenticationForm, PasswordChangeForm, PasswordResetForm, SetPasswordForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from portal.public_url import absolute_url
from tenants import services
from tenants.models import Clinic, User
from tenants.roles import Role
from tenants.secrets import password_reset_token_generator

# Slugs that would read as part of the product rather than a clinic's name.
# The reset mail: its link is signed by tenants.secrets (a newer mail kills the older links).
RESET_SUBJECT_TEMPLATE = "emails/password_reset_subject.txt"
RESET_EMAIL_TEMPLATE = "emails/password_reset.txt"

RESERVED_SLUGS = frozenset({"admin", "api", "accounts", "static", "www", "dicomweb", "s", "c", "billing", "help"})
SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,48}[a-z0-9])$")


class LoginForm(AuthenticationForm):
    """E-mail and password; the e-mail is matched case-insensitively."""

    error_messages = {
        "invalid_login": "The e-mail address or password is not correct.",
        "inactive": "This account is disabled.",
    }

    def clean_username(self) -> str:
        return (self.cleaned_data.get("username") or "").strip().lower()


class CodeForm(forms.Form):
    code = forms.CharField(
        label="Code from your authenticator app", max_length=8, min_length=6,
        widget=forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "one-time-code", "autofocus": True}),
    )

    def clean_code(self) -> str:
        code = self.cleaned_data["code"].replace(" ", "")
        if not code.isdigit():
            raise ValidationError("Enter the 6-digit code your authenticator app shows.")
        return code


# django-otp's static tokens: 8 characters of the base32 alphabet, shown as "abcd-efgh".
RECOVERY_CODE_RE = re.compile(r"^[a-z2-7]{8}$")


class SecondFactorForm(forms.Form):
    """The code asked for at sign-in: from the authenticator app, or one of the recovery codes."""

    code = forms.CharField(
        label="Code from your authenticator app, or a recovery code", max_length=20, min_length=6,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "autofocus": True, "autocapitalize": "none"}),
    )

    def clean_code(self) -> str:
        code = re.sub(r"[\s-]", "", self.cleaned_data["code"]).lower()
        if not (code.isdigit() or RECOVERY_CODE_RE.match(code)):
            raise ValidationError("Enter the 6-digit code your authenticator app shows, or one of your recovery codes.")
        return code


class NewPasswordMixin(forms.Form):
    """Two password fields checked against every password rule, each failed rule named."""

    password1 = forms.CharField(
        label="Password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )
    password2 = forms.CharField(
        label="Password again", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def password_user(self) -> User:
        raise NotImplementedError

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        password1, password2 = cleaned.get("password1"), cleaned.get("password2")
        if password1 and password2 and password1 != password2:
            self.add_error("password2", "The two passwords differ.")
        elif password1:
            try:
                password_validation.validate_password(password1, user=self.password_user())
            except ValidationError as exc:
                self.add_error("password1", exc)
        return cleaned


class SignupForm(NewPasswordMixin):
    clinic_name = forms.CharField(label="Clinic name", max_length=200)
    clinic_slug = forms.CharField(
        label="Clinic address", max_length=50,
        help_text="Lower-case letters, digits and hyphens; your pages live at /c/&lt;address&gt;/.",
    )
    full_name = forms.CharField(label="Your name", max_length=150)
    email = forms.EmailField(label="E-mail", max_length=254)
    field_order = ["clinic_name", "clinic_slug", "full_name", "email", "password1", "password2"]

    def clean_clinic_slug(self) -> str:
        slug = self.cleaned_data["clinic_slug"].strip().lower()
        if not SLUG_RE.match(slug):
            raise ValidationError("Use 3 to 50 lower-case letters, digits or hyphens, not starting or ending with a hyphen.")
        if slug in RESERVED_SLUGS:
            raise ValidationError(f"The address '{slug}' is reserved; choose another.")
        if Clinic.objects.filter(slug=slug).exists():
            raise ValidationError(f"The address '{slug}' is already taken; choose another.")
        return slug

    def clean_email(self) -> str:
        # Whether the address already has an account is never said here (issue 11): the owner gets a mail.
        return self.cleaned_data["email"].strip().lower()

    def password_user(self) -> User:
        return User(email=self.cleaned_data.get("email", ""), full_name=self.cleaned_data.get("full_name", ""))


class InvitationAcceptForm(NewPasswordMixin):
    """A new account for an invited address (the address comes from the invitation)."""

    full_name = forms.CharField(label="Your name", max_length=150)
    field_order = ["full_name", "password1", "password2"]

    def __init__(self, *args: Any, email: str, **kwargs: Any) -> None:
        self.email = email
        super().__init__(*args, **kwargs)

    def password_user(self) -> User:
        return User(email=self.email, full_name=self.cleaned_data.get("full_name", ""))


class InvitationForm(forms.Form):
    email = forms.EmailField(label="E-mail", max_length=254)
    role = forms.ChoiceField(label="Role", choices=Role.choices, initial=Role.CLINICIAN)


class RoleForm(forms.Form):
    role = forms.ChoiceField(label="Role", choices=Role.choices)


class SecurityForm(forms.Form):
    require_two_factor = forms.BooleanField(
        label="Require two-factor sign-in for every member", required=False,
    )
    session_idle_minutes = forms.IntegerField(
        label="Idle timeout (minutes)", required=False, min_value=1,
        help_text="Leave empty for the site default.",
    )

    def clean_session_idle_minutes(self) -> int | None:
        value = self.cleaned_data.get("session_idle_minutes")
        site_minutes = int(settings.SESSION_IDLE_TIMEOUT.total_seconds() // 60)
        if value is not None and value > site_minutes:
            raise ValidationError(f"The idle timeout can only be shorter than the site's {site_minutes} minutes.")
        return value


class ApiTokenForm(forms.Form):
    name = forms.CharField(label="Name", max_length=100, help_text="What uses it, e.g. 'OHIF viewer' or 'modality router'.")
    role = forms.ChoiceField(label="Role", choices=Role.choices, initial=Role.UPLOADER)

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise ValidationError("Give the token a name.")
        return name


class PortalSetPasswordForm(SetPasswordForm):
    """Password reset: Django's form, our labels."""


class PortalPasswordChangeForm(PasswordChangeForm):
    """Password change: Django's form (old password checked, every rule named)."""

    def __init__(self, user: User, *args: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
        self.request = request
        super().__init__(user, *args, **kwargs)

    def clean_old_password(self) -> str:
        old_password = self.cleaned_data["old_password"]
        # Checked through authenticate(), as at sign-in, so that django-axes counts a wrong one toward the
        # lockout and refuses a locked account: a signed-in session must not give unlimited guesses.
        if authenticate(self.request, username=self.user.email, password=old_password) is None:
            raise ValidationError(self.error_messages["password_incorrect"], code="password_incorrect")
        return old_password


class PortalPasswordResetForm(PasswordResetForm):
    """Password reset: Django's form, with at most a few mails per address an hour, mailed by the worker.

    The request only counts the mail and queues it, whether or not the address has an account: looking the
    account up, stamping it and talking to the mail server would otherwise make the answer slower for an
    address that has one, and tell a stranger which addresses do.
    """

    def save(self, *, request: HttpRequest | None = None, **ignored: Any) -> None:  # type: ignore[override]
        email = self.cleaned_data["email"]
        if not services.password_reset_mail_allowed(email=email):
            return
        # Breaks the cycle tenants.tasks -> tenants.forms (the task mails through this form).
        from tenants import tasks

        tasks.password_reset_mail.delay(email=email, base_url=absolute_url(request, "/") if request else "")

    def links_mail(self, *, base_url: str) -> None:
        """Mail a reset link to each active account with the form's address (on the worker)."""
        parts = urlsplit(base_url or settings.PUBLIC_BASE_URL or "http://localhost")
        super().save(
            domain_override=parts.netloc, use_https=parts.scheme == "https",
            subject_template_name=RESET_SUBJECT_TEMPLATE, email_template_name=RESET_EMAIL_TEMPLATE,
            token_generator=password_reset_token_generator,
        )

    def get_users(self, email: str) -> Any:
        # Django signs each link from the user yielded here, so the stamp is in this mail's link only.
        return (services.password_reset_request_record(user=user) for user in super().get_users(email))
