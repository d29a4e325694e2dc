"""STOW-RS (PS3.18 10.5): store each part of a multipart/related request through the one ingest path.

Parts are streamed to temporary files by ``multipart.parts_read`` and ingested one by one, so a
request of any size uses little memory. The answer follows PS3.18 10.5.3: a DICOM JSON Store
Instances Response with ReferencedSOPSequence and FailedSOPSequence, and 200 (all stored), 202 (some
failed), 409 (none stored), 413 (none stored: out of quota) or 503 (none stored: storage down).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from django.http import HttpRequest

from portal.exceptions import PortalError
from studies.dicomweb import multipart, rendering
from studies.dicomweb.dicomjson import element
from tenants.models import Clinic

logger = logging.getLogger(__name__)

# PS3.18 Table 10.5.3-1 / PS3.4 Annex B failure reasons.
FAILURE_PROCESSING = 0x0110
FAILURE_CONFLICT = 0x0111  # Duplicate SOP Instance with different content
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_NOT_DICOM = 0xC000  # Cannot understand
FAILURE_STUDY_MISMATCH = 0xC409  # Instance does not belong to the study named in the URL
# Held in quarantine for review: its patient differs from that of the stored study with its Study Instance UID.
FAILURE_HELD_FOR_REVIEW = 0xC410
DICOM = "application/dicom"


class UnsupportedMediaType(PortalError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"


@dataclass
class StowResult:
    stored: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    failure_reasons: list[int] = field(default_factory=list)
    study_uids: set[str] = field(default_factory=set)
    instance_ids: list[int] = field(default_factory=list)

    @property
    def status(self) -> int:
        if not self.failed:
            return HTTPStatus.OK
        if self.stored:
            return HTTPStatus.ACCEPTED
        reasons = set(self.failure_reasons)
        if reasons == {FAILURE_OUT_OF_RESOURCES}:
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        if reasons == {FAILURE_PROCESSING}:
            return HTTPStatus.SERVICE_UNAVAILABLE
        return HTTPStatus.CONFLICT

    def body(self, *, base_url: str, study_uid: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
            "00081198": {"vr": "SQ", "Value": self.failed} if self.failed else {"vr": "SQ"},
            "00081199": {"vr": "SQ", "Value": self.stored} if self.stored else {"vr": "SQ"},
        }
        uids = {study_uid} if study_uid else self.study_uids
        if len(uids) == 1:
            body["00081190"] = element("UR", f"{base_url}studies/{next(iter(uids))}")
        return dict(sorted(body.items()))


def _failed(result: StowResult, *, path: str | None, reason: int) -> None:
    # The file is read again only when it failed: a stored instance's UIDs come from its index row.
    sop_class, sop_instance, _ = rendering.identity(path) if path else ("", "", "")
    result.failed.append(
        {
            "00081150": element("UI", sop_class),
            "00081155": element("UI", sop_instance),
            "00081197": {"vr": "US", "Value": [reason]},
        }
    )
    result.failure_reasons.append(reason)


def stow(*, request: HttpRequest, clinic: Clinic, base_url: str, study_uid: str | None = None) -> StowResult:
    """Store every application/dicom part of the request body; raise UnsupportedMediaType or MultipartInvalid."""
    from studies import ingest
    from studies.archive.errors import StorageUnavailable
    from studies.errors import InstanceConflict, InstanceHeld, InvalidDicom, QuotaExceeded

    media_type, params = multipart.media_type_params(request.META.get("CONTENT_TYPE", ""))
    if media_type != "multipart/related":
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom".')
    declared = params.get("type", DICOM).lower()
    if declared != DICOM:
        raise UnsupportedMediaType(f"Only application/dicom parts are accepted, not {declared}.")
    result = StowResult()
    for part in multipart.parts_read(request, boundary=params.get("boundary", "")):  # type: ignore[arg-type]
        try:
            part_type = multipart.media_type_params(part.content_type)[0] or declared
            if part_type != DICOM:
                _failed(result, path=None, reason=FAILURE_NOT_DICOM)
                continue
            if study_uid is not None and rendering.identity(part.path)[2] != study_uid:
                _failed(result, path=part.path, reason=FAILURE_STUDY_MISMATCH)
                continue
            try:
                outcome = ingest.instance_ingest(clinic=clinic, source_path=part.path, source="dicomweb", request=request)
            except InstanceHeld:
                _failed(result, path=part.path, reason=FAILURE_HELD_FOR_REVIEW)
                continue
            except InvalidDicom:
                _failed(result, path=part.path, reason=FAILURE_NOT_DICOM)
                continue
            except InstanceConflict:
                _failed(result, path=part.path, reason=FAILURE_CONFLICT)
                continue
            except QuotaExceeded:
                _failed(result, path=part.path, reason=FAILURE_OUT_OF_RESOURCES)
                continue
            except StorageUnavailable:
                logger.warning("STOW-RS part not stored for clinic %s: storage unavailable", clinic.pk)
                _failed(result, path=part.path, reason=FAILURE_PROCESSING)
                continue
            instance = outcome.instance
            study = instance.series.study.study_instance_uid
            series = instance.series.series_instance_uid
            result.study_uids.add(study)
            result.instance_ids.append(instance.pk)
            result.stored.append(
                {
                    "00081150": element("UI", instance.sop_class_uid),
                    "00081155": element("UI", instance.sop_instance_uid),
                    "00081190": element(
                        "UR", f"{base_url}studies/{study}/series/{series}/instances/{instance.sop_instance_uid}"
                    ),
                }
            )
        finally:
            os.unlink(part.path)
    return result
