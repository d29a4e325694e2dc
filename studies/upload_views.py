"""The upload page and its endpoints: one file per POST, ZIP archives handed to a worker.

``upload_file`` answers JSON ``{"outcome", "reason", ...}`` for every file, so the page can show a
summary: ``stored``, ``already_present``, ``skipped`` (DICOMDIR, not DICOM), ``rejected`` (with the
reason; the page does not retry these), ``queued`` (a ZIP archive; poll ``status_url``) or ``error``
(transient: storage unreachable, retried by the page).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from portal.exceptions import PortalError
from studies import ingest, tasks, uploads
from studies.archive.errors import StorageFull, StorageUnavailable
from studies.errors import (
    DicomDirectory,
    InstanceConflict,
    InstanceHeld,
    InvalidDicom,
    NotDicom,
    QuotaExceeded,
    StudyBeingPurged,
)
from studies.models import Study, UploadBatch, UploadItem
from tenants.middleware import ClinicRequest
from tenants.models import Clinic, User
from tenants.roles import Action

# The most results one status answer lists; the counts always cover the whole batch.
BATCH_ITEMS_SHOWN = 5000


def _require_upload(request: ClinicRequest) -> None:
    if not request.membership.can(Action.UPLOAD):
        raise PermissionDenied


def _user(request: ClinicRequest) -> User | None:
    # API-token requests carry no person (DRF's TokenUser at most); the audit trail names the token instead.
    return request.user if isinstance(request.user, User) else None


@require_GET
def upload_page(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    _require_upload(request)
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
    from studies.anonymize.models import AnonymizationProject

    return list(AnonymizationProject.objects.for_clinic(request.clinic).order_by("name"))


@contextmanager
def _on_disk(upload: UploadedFile) -> Iterator[str]:
    """Yield a path to the uploaded bytes: Django already spooled big files to disk; small ones we write."""
    path = getattr(upload, "temporary_file_path", None)
    if path is not None:
        yield path()
        return
    with tempfile.NamedTemporaryFile(prefix="upload-", suffix=".dcm") as tmp:
        upload.seek(0)
        shutil.copyfileobj(upload, tmp, 1024 * 1024)
        tmp.flush()
        yield tmp.name


@dataclass(frozen=True)
class UploadAnswer:
    """What became of one uploaded file, shared by the upload page's endpoint and the REST API."""

    outcome: str
    reason: str = ""
    status: int = HTTPStatus.OK
    # The study the instance is in, when it was stored or already present.
    study: Study | None = None
    # The archive's batch, when a ZIP archive was queued for unpacking.
    batch: UploadBatch | None = None
    # Kept in quarantine for review rather than filed (studies.admission); outcome "rejected" for the clinic.
    held: bool = False


def upload_receive(request: ClinicRequest, *, upload: UploadedFile | None, name: str = "") -> UploadAnswer:
    """Ingest one uploaded file, or stage a ZIP archive for unpacking; never raises a domain error.

    The caller has checked the upload right. ``request`` is the plain HttpRequest (the audit trail reads
    its address and API token).
    """
    if upload is None:
        return UploadAnswer(
            "rejected", "No file was sent (expected a multipart field named 'file').", HTTPStatus.BAD_REQUEST
        )
    name = name or upload.name or ""
    project = None
    chosen = (request.POST.get("anonymize_project") or "").strip()
    if chosen:
        project = _anonymize_project(request, chosen)
        if project is None:
            return UploadAnswer("rejected", "The anonymization project chosen does not exist in this clinic.",
                                HTTPStatus.UNPROCESSABLE_ENTITY)
    try:
        with _on_disk(upload) as path:
            if uploads.is_zip_file(path):
                batch = _stage_zip(request, path=path, name=name, size=upload.size or 0, anonymize_project=project)
                return UploadAnswer("queued", "The archive is being unpacked.", HTTPStatus.ACCEPTED, batch=batch)
            result = ingest.instance_ingest(
                clinic=request.clinic, source_path=path, anonymize_project=project,
                origin=ingest.Origin.from_request(request, source="upload", user=_user(request)),
            )
    except (DicomDirectory, NotDicom) as exc:
        # A CD copy's readme or viewer files are not mistakes: skipped, as inside a ZIP archive.
        return UploadAnswer("skipped", exc.message)
    except InstanceHeld as exc:
        return UploadAnswer("rejected", exc.message, HTTPStatus.UNPROCESSABLE_ENTITY, held=True)
    except StudyBeingPurged as exc:
        return UploadAnswer("error", exc.message, HTTPStatus.SERVICE_UNAVAILABLE)
    except (InvalidDicom, InstanceConflict, QuotaExceeded) as exc:
        return UploadAnswer(
            "rejected",
            exc.message,
            exc.status if exc.status != HTTPStatus.BAD_REQUEST else HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    except StorageFull:
        return UploadAnswer("error", "The archive's storage is full for the moment; nothing was stored. Keep the "
                            "file and send it again later.", HTTPStatus.SERVICE_UNAVAILABLE)
    except StorageUnavailable:
        return UploadAnswer(
            "error", "Storage is unavailable for a moment; the file will be sent again.", HTTPStatus.SERVICE_UNAVAILABLE
        )
    except PortalError as exc:
        return UploadAnswer("error", exc.message, exc.status)
    study = result.instance.series.study
    reason = ""
    if result.outcome == ingest.IngestOutcome.ALREADY_PRESENT and study.deleted_at is not None:
        reason = "Its study is in the trash: restore the study to see it again."
    status = HTTPStatus.CREATED if result.outcome == ingest.IngestOutcome.STORED else HTTPStatus.OK
    return UploadAnswer(result.outcome.value, reason, status, study=study)


@require_POST
def upload_file(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    """Ingest one uploaded file (field ``file``), or stage a ZIP archive for unpacking."""
    _require_upload(request)
    try:
        upload = request.FILES.get("file")
    except OSError:
        # Django spools the upload to a temporary file before this runs: a full disk shows up here.
        return JsonResponse({"outcome": "error", "reason": "The server has no room for the upload right now; "
                             "nothing was stored. Send it again later."}, status=HTTPStatus.SERVICE_UNAVAILABLE)
    answer = upload_receive(request, upload=upload, name=request.POST.get("path") or "")
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


def _anonymize_project(request: ClinicRequest, value: str):  # type: ignore[no-untyped-def]
    """The clinic's anonymization project named by its uuid in the upload, or None."""
    from studies.anonymize.models import AnonymizationProject

    try:
        return AnonymizationProject.objects.for_clinic(request.clinic).filter(uuid=UUID(value)).first()
    except ValueError:
        return None


def _stage_zip(request: ClinicRequest, *, path: str, name: str, size: int, anonymize_project=None) -> UploadBatch:  # type: ignore[no-untyped-def]
    # No transaction around the staging write: a long upload to the store must not hold one open.
    with open(path, "rb") as source:
        batch = uploads.upload_zip_stage(
            clinic=request.clinic, source=source, name=name, size=size, created_by=_user(request),
            anonymize_project=anonymize_project, upload_link=getattr(request, "upload_link", None),
        )
    transaction.on_commit(partial(tasks.upload_zip_extract.delay, clinic_id=request.clinic.pk, batch_id=batch.pk))
    return batch


def upload_batch_report(*, clinic: Clinic, batch: UploadBatch) -> dict[str, object]:
    """Describe an archive's progress and, member by member, what happened (the first BATCH_ITEMS_SHOWN)."""
    items = UploadItem.objects.for_clinic(clinic).filter(batch=batch).order_by("pk")
    return {
        "batch": str(batch.uuid),
        "status": batch.status,
        "archive_name": batch.archive_name,
        "message": batch.message,
        "counts": uploads.upload_batch_counts(batch=batch),
        "items": [
            {"name": item.name, "outcome": item.outcome, "reason": item.reason} for item in items[:BATCH_ITEMS_SHOWN]
        ],
    }


@require_GET
def upload_batch(request: ClinicRequest, clinic_slug: str, batch_uuid: UUID) -> HttpResponse:
    """Answer an archive's progress and, member by member, what happened."""
    _require_upload(request)
    batch = UploadBatch.objects.for_clinic(request.clinic).filter(uuid=batch_uuid).first()
    if batch is None:
        raise Http404("No such upload.")
    return JsonResponse(upload_batch_report(clinic=request.clinic, batch=batch))
