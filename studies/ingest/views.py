"""The upload page and its endpoints: one file per POST, ZIP archives handed to a worker.

``upload_file`` answers JSON ``{"outcome", "reason", ...}`` for every file, so the page can show a
summary: ``stored``, ``already_present``, ``skipped`` (DICOMDIR, not DICOM), ``rejected`` (with the
reason; the page does not retry these), ``queued`` (a ZIP archive; poll ``status_url``) or ``error``
(transient: storage unreachable, retried by the page).
"""

from __future__ import annotations

from http import HTTPStatus
from uuid import UUID

from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from studies import ingest
from studies.ingest import uploads
from studies.models import AnonymizationProject, UploadBatch
from tenants import permissions
from tenants.middleware import ClinicRequest, api_token_accepted
from tenants.roles import Action


@require_GET
def upload_page(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    permissions.action_check(request, Action.UPLOAD)
    return render(
        request,
        "studies/upload_page.html",
        {
            "file_url": reverse("studies:upload-file", kwargs={"clinic_slug": request.clinic.slug}),
            "studies_url": reverse("studies:list", kwargs={"clinic_slug": request.clinic.slug}),
            "can_view": request.membership.can(Action.VIEW),
            "anonymize_projects": _anonymize_projects(request),
        },
    )


def _anonymize_projects(request: ClinicRequest) -> list[object]:
    # Only members who may anonymize choose a project (uploads.upload_receive refuses the others).
    if not request.membership.can(Action.SHARE):
        return []
    return list(AnonymizationProject.objects.for_clinic(request.clinic).order_by("name"))


@api_token_accepted
@require_POST
def upload_file(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    """Ingest one uploaded file (field ``file``), or stage a ZIP archive for unpacking."""
    permissions.action_check(request, Action.UPLOAD)
    try:
        upload = request.FILES.get("file")
    except OSError:
        # Django spools the upload to a temporary file before this runs: a full disk shows up here.
        return JsonResponse({"outcome": "error", "reason": "The server has no room for the upload right now; "
                             "nothing was stored. Send it again later."}, status=HTTPStatus.SERVICE_UNAVAILABLE)
    answer = uploads.upload_receive(
        clinic=request.clinic, upload=upload, name=request.POST.get("path") or "",
        origin=ingest.Origin.from_request(request, source="upload"), sender=request.membership,
        anonymize_project=request.POST.get("anonymize_project") or "",
    )
    extra: dict[str, object] = {}
    if answer.held:
        extra["held"] = True
    if answer.study is not None:
        extra["study"] = str(answer.study.uuid)
        extra["study_url"] = reverse(
            "studies:detail", kwargs={"clinic_slug": request.clinic.slug, "study_uuid": answer.study.uuid}
        )
    if answer.batch is not None:
        extra["batch"] = str(answer.batch.uuid)
        extra["status_url"] = reverse(
            "studies:upload-batch", kwargs={"clinic_slug": request.clinic.slug, "batch_uuid": answer.batch.uuid}
        )
    return JsonResponse({"outcome": answer.outcome, "reason": answer.reason, **extra}, status=answer.status)


@require_GET
def upload_batch(request: ClinicRequest, clinic_slug: str, batch_uuid: UUID) -> HttpResponse:
    """Answer an archive's progress and, member by member, what happened."""
    permissions.action_check(request, Action.UPLOAD)
    batch = UploadBatch.objects.for_clinic(request.clinic).filter(uuid=batch_uuid).first()
    if batch is None:
        raise Http404("No such upload.")
    return JsonResponse(uploads.upload_batch_report(clinic=request.clinic, batch=batch))
