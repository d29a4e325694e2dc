"""What a share link's recipient sees, without an account: PIN page, studies, viewer, download, DICOMweb.

Every request resolves the token again, so revocation and expiry take effect at once, also in the
middle of viewing. Unknown, expired, revoked and used-up links all get the same answer.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from csp.decorators import csp_update
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect

from portal.public_url import absolute_url
from studies.browse import download, selectors
from studies.models import Study
from studies.sharing import services
from studies.sharing.forms import AccessCodeForm, PinForm
from studies.sharing.models import Share
from studies.viewer.views import viewer_context
from tenants.audit import Actor
from tenants.roles import Action

INVALID_STATUS = 404


@dataclass(frozen=True)
class ShareGrant:
    """Stands in for a membership on share requests: may view, nothing else."""

    share: Share

    def can(self, action: str) -> bool:
        return action == Action.VIEW

    @property
    def label(self) -> str:
        return f"share:{self.share.uuid}"


def _grant_key(share: Share) -> str:
    return f"share-grant:{share.uuid}"


def _invalid(request: HttpRequest) -> HttpResponse:
    if "/dicomweb/" in request.path:
        return JsonResponse({"error": "not_found", "message": "This link is not valid."}, status=INVALID_STATUS)
    return render(request, "studies/share_invalid.html", status=INVALID_STATUS)


def _opened_key(share: Share) -> str:
    return f"share-opened:{share.uuid}"


def _share_for_session(request: HttpRequest, token: str) -> Share | None:
    """The link a token names, or None when it serves nothing to this session.

    A used-up link serves only the sessions that used one of its opens: any other gets the answer of
    a revoked link, before a PIN form or a PIN check, so nobody new can try (and lock) its PIN.
    """
    share = services.share_resolve(token=token)
    if share is None or (share.is_used_up and not request.session.get(_opened_key(share))):
        return None
    return share


# A PIN grant lapses after the site's idle limit without a request through the link, as a signed-in
# session does, so the next person at a shared computer does not inherit it; viewing keeps it alive
# (its time is written again at most this often, not on every frame).
GRANT_REFRESH_SECONDS = 10


def _is_granted(request: HttpRequest, share: Share) -> bool:
    if not share.has_pin:
        return True
    key = _grant_key(share)
    granted_at = request.session.get(key)
    if isinstance(granted_at, bool) or not isinstance(granted_at, (int, float)):
        return False
    now = time.time()
    if now - granted_at > settings.SESSION_IDLE_TIMEOUT.total_seconds():
        del request.session[key]
        return False
    if now - granted_at >= GRANT_REFRESH_SECONDS:
        request.session[key] = now
    return True


def _has_opened(request: HttpRequest, share: Share) -> bool:
    """Count this session's open of the link once; False when the link's opens are used up.

    A link with a maximum number of opens serves only sessions that used one of them: a fresh
    session (or a DICOMweb client without cookies) uses one, and once none is left gets the same
    answer as for a revoked link, on the page, the viewer, the download and DICOMweb alike.
    """
    opened_key = _opened_key(share)
    if request.session.get(opened_key):
        return True
    if not services.share_open(share=share, by=Actor.from_request(request)):
        return False
    request.session[opened_key] = True
    return True


def share_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Resolve the link and its PIN grant, and scope the request to the shared studies."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, share_token: str, *args: Any, **kwargs: Any) -> HttpResponse:
        share = _share_for_session(request, share_token)
        if share is None:
            return _invalid(request)
        if not _is_granted(request, share):
            if "/dicomweb/" in request.path:
                return JsonResponse({"error": "pin_required", "message": "Open the link in a browser and enter its PIN first."},
                                    status=401)
            return redirect("share:open", share_token=share_token)
        if share.max_opens is not None and not _has_opened(request, share):
            return _invalid(request)
        request.clinic = share.clinic  # type: ignore[attr-defined]
        request.membership = ShareGrant(share)  # type: ignore[attr-defined]
        request.share = share  # type: ignore[attr-defined]
        request.study_scope = {s.pk for s in services.share_studies(share=share)}  # type: ignore[attr-defined]
        return view(request, *args, share_token=share_token, **kwargs)

    return wrapper


def shared_study(request: HttpRequest, study_uuid: UUID) -> Study:
    """The study of a share link's request by its portal id, if the link shares it (404 otherwise)."""
    study = Study.objects.for_clinic(request.clinic).filter(  # type: ignore[attr-defined]
        uuid=study_uuid, pk__in=request.study_scope, deleted_at__isnull=True  # type: ignore[attr-defined]
    ).select_related("patient").first()
    if study is None:
        raise Http404("No such study in this link.")
    return study


@never_cache
@csrf_protect
def share_open(request: HttpRequest, share_token: str) -> HttpResponse:
    """The link itself: ask for the PIN if there is one, then list the shared studies."""
    share = _share_for_session(request, share_token)
    if share is None:
        return _invalid(request)
    if not _is_granted(request, share):
        form = PinForm(request.POST or None)
        error, status = "", 200
        if request.method == "POST" and form.is_valid():
            try:
                if services.share_pin_check(share=share, pin=form.cleaned_data["pin"], by=Actor.from_request(request),
                                            base_url=absolute_url(request, "/")):
                    request.session.cycle_key()
                    request.session[_grant_key(share)] = time.time()
                    return redirect("share:open", share_token=share_token)
                error, status = services.wrong_pin_message(link=share), 400
            except services.ShareLocked as exc:
                error, status = exc.message, 429
        elif share.is_locked:
            error, status = services.locked_message(link=share), 429
        return render(request, "studies/share_pin.html", {"form": form, "error": error, "share": share},
                      status=status)
    if not _has_opened(request, share):
        return _invalid(request)
    studies = services.share_studies(share=share)
    return render(request, "studies/share_public.html", {"share": share, "studies": studies,
                                                         "share_token": share_token})


@never_cache
@csp_update({"img-src": ["'self'", "blob:"]})  # the light viewer draws slices from blob: URLs
@share_required
def share_viewer(request: HttpRequest, share_token: str, study_uuid: UUID) -> HttpResponse:
    study = shared_study(request, study_uuid)
    services.share_log(share=request.share, action="viewed", by=Actor.from_request(request), study=study)  # type: ignore[attr-defined]
    base = reverse("share-dicomweb:studies", kwargs={"share_token": share_token})[: -len("studies")]
    download = (reverse("share:download", kwargs={"share_token": share_token, "study_uuid": study.uuid})
                if request.share.allow_download else "")  # type: ignore[attr-defined]
    return render(request, "studies/viewer.html", viewer_context(study=study, dicomweb_base=base,
                                                                 download_url=download,
                                                                 back_url=reverse("share:open", kwargs={"share_token": share_token})))


@never_cache
@share_required
def share_download(request: HttpRequest, share_token: str, study_uuid: UUID) -> HttpResponse:
    if not request.share.allow_download:  # type: ignore[attr-defined]
        return render(request, "studies/share_invalid.html", {"message": "This link allows viewing only."}, status=403)
    study = shared_study(request, study_uuid)
    services.share_log(share=request.share, action="downloaded", by=Actor.from_request(request), study=study)  # type: ignore[attr-defined]
    instances = selectors.instance_list(clinic=request.clinic, study=study)  # type: ignore[attr-defined]
    return download.zip_response(clinic=request.clinic, instances=instances,  # type: ignore[attr-defined]
                                 filename=f"study-{study.uuid}.zip")


@never_cache
def access_code(request: HttpRequest) -> HttpResponse:
    """A patient types the code from their sheet; the PIN is asked on the link's own page."""
    form = AccessCodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        code = services.access_code_normalize(form.cleaned_data["code"])
        token = services.patient_token(code) if len(code) == services.ACCESS_CODE_LENGTH else ""
        if token and _share_for_session(request, token) is not None:
            return redirect("share:open", share_token=token)
        # Mistyped, or no longer valid: the same answer, on this page, so the patient can type it again.
        form.add_error("code", "This code is not right. Check it against your sheet (12 letters and digits), "
                               "or ask your clinic for a new sheet if it has expired.")
    return render(request, "studies/share_access.html", {"form": form}, status=400 if form.errors else 200)
