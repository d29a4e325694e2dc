"""Clinic pages for share links and upload links: create, list, revoke, extend, see every access."""

from __future__ import annotations

from uuid import UUID

import qrcode
import qrcode.image.svg
from django.contrib import messages
from django.db.models import Max
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from portal.exceptions import PortalError
from portal.public_url import absolute_url
from studies.browse import services as browse_services
from studies.browse.selectors import StudySearch
from studies.models import Study
from studies.sharing import services
from studies.sharing.forms import ExtendForm, ShareForm, UploadLinkForm
from studies.sharing.models import Share, ShareKind, UploadLink
from tenants.audit import Actor, audit_record
from tenants.middleware import ClinicRequest
from tenants.permissions import require_action
from tenants.roles import Action


def qr_svg(url: str) -> str:
    """An inline SVG QR code of the address (no external service, no image file)."""
    image = qrcode.make(url, image_factory=qrcode.image.svg.SvgPathImage, box_size=8)
    return image.to_string(encoding="unicode")


@require_action(Action.SHARE)
def share_list(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    shares = (
        Share.objects.for_clinic(request.clinic)
        .prefetch_related("studies")
        .annotate(last_access=Max("accesses__at"))
        .order_by("-created_at")[:200]
    )
    links = UploadLink.objects.for_clinic(request.clinic).order_by("-created_at")[:50]
    return render(request, "studies/share_list.html", {"shares": shares, "upload_links": links,
                                                       "upload_link_form": UploadLinkForm(clinic=request.clinic)})


@require_action(Action.SHARE)
def share_create(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    """Share one or several studies (``?study=<uuid>`` repeated, or the form's hidden fields)."""
    uuids = request.POST.getlist("study") or request.GET.getlist("study")
    studies = list(Study.objects.for_clinic(request.clinic).filter(uuid__in=_uuids(uuids), deleted_at__isnull=True)
                   .select_related("patient"))
    # A share holds studies of one patient: the page offers that patient's other studies to add.
    try:
        services.share_studies_check(studies=studies)
    except PortalError as exc:
        messages.error(request, exc.message)
        return redirect("studies:list", clinic_slug=clinic_slug)
    same_patient = list(Study.objects.for_clinic(request.clinic).filter(patient_id=studies[0].patient_id,
                                                                        deleted_at__isnull=True)
                        .select_related("patient").order_by("-study_date", "-pk"))
    form = ShareForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            created = services.share_create(clinic=request.clinic, studies=studies, created_by=request.user,
                                             by=Actor.from_request(request), **form.cleaned_data)
        except PortalError as exc:
            form.add_error(None, exc.message)
        else:
            url = absolute_url(request, reverse("share:open", kwargs={"share_token": created.token}))
            services.share_email_recipient(share=created.share, url=url)
            return render(request, "studies/share_created.html", {
                "share": created.share, "url": url, "access_code": created.access_code,
                "access_url": absolute_url(request, reverse("share:access")),
                "qr": qr_svg(url) if created.access_code else "", "pin": form.cleaned_data.get("pin", ""),
                "studies": studies,
            })
    if request.method == "GET":
        # The form lists the patient's studies, as a search would.
        browse_services.study_search_record(clinic=request.clinic, search=StudySearch(), count=len(same_patient),
                                            source="share_form", by=Actor.from_request(request))
    chosen = {study.pk for study in studies}
    return render(request, "studies/share_form.html", {
        "form": form, "studies": studies, "patient": studies[0].patient,
        "candidates": [(study, study.pk in chosen) for study in same_patient],
    }, status=400 if form.errors else 200)


def _uuids(values: list[str]) -> list[UUID]:
    parsed = []
    for value in values:
        try:
            parsed.append(UUID(value))
        except ValueError:
            continue
    return parsed


@require_action(Action.SHARE)
def share_detail(request: ClinicRequest, clinic_slug: str, share_uuid: UUID) -> HttpResponse:
    share = get_object_or_404(Share.objects.for_clinic(request.clinic), uuid=share_uuid)
    accesses = share.accesses.select_related("study").order_by("-at")[:500]
    # The page names the shared patient and lists their studies: an access to patient data.
    audit_record(clinic=request.clinic, action="share.viewed", request=request, object_type="share",
                 object_id=str(share.uuid))
    return render(request, "studies/share_detail.html", {
        "share": share, "accesses": accesses, "studies": share.studies.select_related("patient"),
        "extend_form": ExtendForm(),
        "kind_patient": share.kind == ShareKind.PATIENT,
    })


@require_POST
@require_action(Action.SHARE)
def share_revoke(request: ClinicRequest, clinic_slug: str, share_uuid: UUID) -> HttpResponse:
    share = get_object_or_404(Share.objects.for_clinic(request.clinic), uuid=share_uuid)
    services.share_revoke(share=share, user=request.user, by=Actor.from_request(request))
    messages.success(request, "The link is revoked; it stops working at once.")
    return redirect("sharing:detail", clinic_slug=clinic_slug, share_uuid=share.uuid)


@require_POST
@require_action(Action.SHARE)
def share_extend(request: ClinicRequest, clinic_slug: str, share_uuid: UUID) -> HttpResponse:
    share = get_object_or_404(Share.objects.for_clinic(request.clinic), uuid=share_uuid)
    form = ExtendForm(request.POST)
    if not form.is_valid():
        messages.error(request, "A link can be extended by 1 to 90 days.")
    else:
        try:
            services.share_extend(share=share, days=form.cleaned_data["days"], user=request.user, by=Actor.from_request(request))
            messages.success(request, "The link's expiry is extended.")
        except PortalError as exc:
            messages.error(request, exc.message)
    return redirect("sharing:detail", clinic_slug=clinic_slug, share_uuid=share.uuid)


@require_POST
@require_action(Action.UPLOAD)
@require_action(Action.SHARE)
def upload_link_create(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    form = UploadLinkForm(request.POST, clinic=request.clinic)
    if not form.is_valid():
        messages.error(request, " ".join(str(e) for errors in form.errors.values() for e in errors))
        return redirect("sharing:list", clinic_slug=clinic_slug)
    try:
        created = services.upload_link_create(clinic=request.clinic, created_by=request.user, by=Actor.from_request(request),
                                              **form.cleaned_data)
    except PortalError as exc:
        messages.error(request, exc.message)
        return redirect("sharing:list", clinic_slug=clinic_slug)
    url = absolute_url(request, reverse("share:upload", kwargs={"link_token": created.token}))
    return render(request, "studies/upload_link_created.html", {"link": created.link, "url": url})


@require_POST
@require_action(Action.SHARE)
def upload_link_revoke(request: ClinicRequest, clinic_slug: str, link_uuid: UUID) -> HttpResponse:
    link = get_object_or_404(UploadLink.objects.for_clinic(request.clinic), uuid=link_uuid)
    services.upload_link_revoke(link=link, user=request.user, by=Actor.from_request(request))
    messages.success(request, "The upload link is revoked.")
    return redirect("sharing:list", clinic_slug=clinic_slug)
