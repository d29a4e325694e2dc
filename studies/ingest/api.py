"""REST: /api/v1/clinics/<clinic_slug>/uploads/ (POST one DICOM file or a ZIP archive) and uploads/<id>/.

The same ingest as the upload page (``studies.ingest.uploads.upload_receive``), answered with the same
outcomes and statuses; the study is named by its Study Instance UID, as everywhere in the REST API.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.http import Http404
from django.urls import reverse
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.public_url import absolute_url
from studies import ingest
from studies.ingest import uploads
from studies.models import UploadBatch
from tenants.permissions import has_action
from tenants.roles import Action

CanUpload = has_action(Action.UPLOAD)

UPLOAD_REQUEST_SCHEMA = {
    "type": "object",
    "properties": {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "One DICOM Part 10 file, or a ZIP archive of them.",
        },
        "path": {
            "type": "string",
            "maxLength": 1024,
            "description": "The file's path on the sender's side, shown in reports.",
        },
        "anonymize_project": {
            "type": "string",
            "format": "uuid",
            "description": "Store only a copy anonymized under this project of the clinic. Needs the anonymize "
            "right (owner, admin, clinician; 403 otherwise); without it the clinic's anonymize-on-ingest rules apply.",
        },
    },
    "required": ["file"],
}


class UploadOutput(serializers.Serializer):
    outcome = serializers.ChoiceField(choices=["stored", "already_present", "skipped", "rejected", "queued", "error"])
    reason = serializers.CharField(help_text="Why, for anything but a plain 'stored'; empty otherwise.")
    study = serializers.CharField(
        required=False, help_text="Study Instance UID of the study holding the instance (stored, already_present)."
    )
    batch = serializers.UUIDField(required=False, help_text="The archive's id (queued): poll uploads/<id>/.")
    status_url = serializers.URLField(required=False, help_text="Where to poll the archive's progress (queued).")


class UploadItemOutput(serializers.Serializer):
    name = serializers.CharField()
    outcome = serializers.CharField()
    reason = serializers.CharField()


class UploadListApi(APIView):
    """Upload one DICOM file, or a ZIP archive that a worker unpacks (multipart field `file`).

    Answers `stored` (201), `already_present` (200, same SOP Instance UID and content), `skipped` (200, a
    DICOMDIR or a file that is not DICOM at all, such as a CD's readme), `rejected` (400 no file, 422
    truncated or malformed DICOM, 409 same UID with other content, 507 over
    quota, 403 an anonymization project chosen without the anonymize right), `error` (503 storage
    unavailable: send again) or `queued` (202, a ZIP archive: poll `status_url`).
    Nothing is stored for a rejected file.
    """

    permission_classes = [CanUpload]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        operation_id="clinics_uploads_create",
        # Inline rather than a component, so that schema-driven clients see `file` as a file part.
        request={"multipart/form-data": UPLOAD_REQUEST_SCHEMA},
        responses={
            status: OpenApiResponse(UploadOutput, description=description)
            for status, description in [
                (201, "stored"),
                (200, "already_present, or skipped (a DICOMDIR or a file that is not DICOM)"),
                (202, "queued: a ZIP archive is being unpacked"),
                (400, "rejected: no file was sent"),
                (403, "rejected: an anonymization project chosen without the anonymize right"),
                (409, "rejected: same SOP Instance UID with other content"),
                (422, "rejected: truncated or malformed DICOM"),
                (503, "error: storage unavailable for a moment, send again"),
                (507, "rejected: over the clinic's storage quota"),
            ]
        },
        examples=[
            OpenApiExample(
                "stored",
                value={"outcome": "stored", "reason": "", "study": "1.2.840.113619.2.1.1.322987881.621.736170080.681"},
                response_only=True,
                status_codes=["201"],
            )
        ],
    )
    def post(self, request: Request, clinic_slug: str) -> Response:
        django_request: Any = request._request
        upload = request.FILES.get("file")
        answer = uploads.upload_receive(
            clinic=request.clinic, upload=upload, name=request.data.get("path") or "",
            # The plain HttpRequest: it carries the API token and the address the audit trail records.
            origin=ingest.Origin.from_request(django_request, source="upload"), sender=request.membership,
            anonymize_project=request.data.get("anonymize_project") or "",
        )
        body: dict[str, Any] = {"outcome": answer.outcome, "reason": answer.reason}
        if answer.study is not None:
            body["study"] = answer.study.study_instance_uid
        if answer.batch is not None:
            body["batch"] = str(answer.batch.uuid)
            body["status_url"] = absolute_url(
                request,
                reverse("studies-api:upload-detail", kwargs={"clinic_slug": clinic_slug, "batch_id": answer.batch.uuid})
            )
        return Response(body, status=answer.status)


class UploadDetailApi(APIView):
    """An uploaded ZIP archive's progress and, member by member, what happened."""

    permission_classes = [CanUpload]

    class OutputSerializer(serializers.Serializer):
        batch = serializers.UUIDField()
        status = serializers.CharField()
        archive_name = serializers.CharField()
        message = serializers.CharField()
        counts = serializers.DictField(child=serializers.IntegerField())
        items = UploadItemOutput(many=True)

    @extend_schema(operation_id="clinics_uploads_retrieve", responses=OutputSerializer)
    def get(self, request: Request, clinic_slug: str, batch_id: UUID) -> Response:
        batch = UploadBatch.objects.for_clinic(request.clinic).filter(uuid=batch_id).first()
        if batch is None:
            raise Http404("No such upload.")
        return Response(uploads.upload_batch_report(clinic=request.clinic, batch=batch))
