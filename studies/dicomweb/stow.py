"""STOW-RS (PS3.18 10.5): store the parts of a multipart/related request through the one ingest path.

Parts are streamed to temporary files by ``multipart.parts_read`` (python-multipart) as the body arrives,
whatever its framing, and ingested in batches of ``INGEST_BATCH_SIZE`` (one index transaction and one
replication message per batch), so a request of any size uses little memory and few round trips. The
answer follows PS3.18 10.5.3: a Store Instances Response (DICOM JSON, or XML when asked) with
ReferencedSOPSequence and FailedSOPSequence, and 200 (all stored), 202 (some failed), 409 (none stored),
413 (none stored: out of quota, or the request is larger than STOW_MAX_BYTES) or 503 (none stored:
storage down or full, retry).

The answer always says exactly what was stored: a part is listed as stored only once it is durable and
indexed, every other part is listed as failed, and a body cut short after some parts were stored is
answered with those parts rather than an error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from portal.exceptions import PortalError
from studies import ingest
from studies.archive.errors import StorageUnavailable
from studies.dicomweb import multipart, rendering
from studies.dicomweb.dicomjson import element
from studies.errors import InstanceConflict, InstanceHeld, InvalidDicom, QuotaExceeded, StudyMismatch
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
# A batch is ingested once it holds this many bytes, even with fewer parts (bounds the temporary files).
BATCH_BYTES = 64 * 1024 * 1024


class UnsupportedMediaType(PortalError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"


class RequestTooLarge(PortalError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "request_too_large"


@dataclass
class StowResult:
    stored: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    failure_reasons: list[int] = field(default_factory=list)
    study_uids: set[str] = field(default_factory=set)
    instance_ids: list[int] = field(default_factory=list)
    # Set when the body broke off after some parts were stored: said in a Warning header.
    warning: str = ""

    @property
    def status(self) -> int:
        if not self.failed:
            return HTTPStatus.ACCEPTED if self.warning else HTTPStatus.OK
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


def _failed(result: StowResult, *, path: str | None, reason: int, parsed: Any = None) -> None:
    if parsed is not None:
        sop_class, sop_instance = parsed.sop_class_uid, parsed.sop_instance_uid
    else:
        # Only a file that could not be parsed is read again, for whatever UIDs it still gives.
        sop_class, sop_instance, _ = rendering.identity(path) if path else ("", "", "")
    result.failed.append(
        {
            "00081150": element("UI", sop_class),
            "00081155": element("UI", sop_instance),
            "00081197": {"vr": "US", "Value": [reason]},
        }
    )
    result.failure_reasons.append(reason)


def _reason(error: PortalError) -> int:
    if isinstance(error, StudyMismatch):
        return FAILURE_STUDY_MISMATCH
    if isinstance(error, InstanceConflict):
        return FAILURE_CONFLICT
    if isinstance(error, QuotaExceeded):
        return FAILURE_OUT_OF_RESOURCES
    if isinstance(error, InstanceHeld):
        return FAILURE_HELD_FOR_REVIEW
    if isinstance(error, InvalidDicom):
        return FAILURE_NOT_DICOM
    # StorageUnavailable and StorageFull: retryable, the sender keeps its copy.
    return FAILURE_PROCESSING


def _stored(result: StowResult, *, instance: Any, base_url: str) -> None:
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


def stow(
    *,
    request: HttpRequest,
    clinic: Clinic,
    base_url: str,
    study_uid: str | None = None,
    origin: ingest.Origin | None = None,
) -> StowResult:
    """Store every application/dicom part of the request body.

    Raises UnsupportedMediaType, RequestTooLarge (a declared size over STOW_MAX_BYTES: nothing read), or
    MultipartInvalid when the body is malformed before any part was stored.
    """
    media_type, params = multipart.media_type_params(request.META.get("CONTENT_TYPE", ""))
    if media_type != "multipart/related":
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom".')
    declared = params.get("type", DICOM).lower()
    if declared != DICOM:
        raise UnsupportedMediaType(f"Only application/dicom parts are accepted, not {declared}.")
    length = request.META.get("CONTENT_LENGTH") or ""
    if length.isdigit() and int(length) > settings.STOW_MAX_BYTES:
        raise RequestTooLarge(
            f"A STOW-RS request may hold at most {ingest.format_bytes(settings.STOW_MAX_BYTES)}; send the "
            f"instances in several requests."
        )
    origin = origin or ingest.Origin.from_request(request, source="dicomweb")
    result = StowResult()
    batch: list[multipart.Part] = []
    parts_seen = bytes_seen = 0

    def flush() -> None:
        try:
            if batch:
                _ingest_batch(result, clinic=clinic, parts=batch, origin=origin, base_url=base_url, study_uid=study_uid)
        finally:
            for part in batch:
                os.unlink(part.path)
            batch.clear()

    try:
        for part in multipart.parts_read(multipart.request_body(request), boundary=params.get("boundary", "")):
            parts_seen += 1
            bytes_seen += part.size
            part_type = multipart.media_type_params(part.content_type)[0] or declared
            if part_type != DICOM:
                _failed(result, path=None, reason=FAILURE_NOT_DICOM)
                os.unlink(part.path)
                continue
            if parts_seen > settings.STOW_MAX_PARTS or bytes_seen > settings.STOW_MAX_BYTES:
                # Past the documented bound: refused by name, so the sender knows exactly what to send again.
                _failed(result, path=part.path, reason=FAILURE_OUT_OF_RESOURCES)
                os.unlink(part.path)
                continue
            batch.append(part)
            if len(batch) >= settings.INGEST_BATCH_SIZE or sum(p.size for p in batch) >= BATCH_BYTES:
                flush()
        flush()
    except multipart.MultipartInvalid as exc:
        flush()
        if not result.stored and not result.failed:
            raise
        # Some parts were stored before the body broke off: say exactly which, never "nothing".
        logger.warning("STOW-RS body of clinic %s broke off after %d parts: %s", clinic.pk, parts_seen, exc.message)
        result.warning = f'299 dicomweb: "The request body broke off after {parts_seen} parts: {exc.message}"'
    finally:
        for part in batch:
            os.unlink(part.path)
    return result


def _ingest_batch(
    result: StowResult,
    *,
    clinic: Clinic,
    parts: list[multipart.Part],
    origin: ingest.Origin,
    base_url: str,
    study_uid: str | None,
) -> None:
    try:
        items = ingest.instances_ingest(
            clinic=clinic, paths=[p.path for p in parts], origin=origin, study_uid=study_uid
        )
    except Exception:
        # A fault the pipeline did not expect: it stored none of this batch (its transaction rolled back).
        logger.exception("STOW-RS batch of clinic %s failed; its parts are answered as not stored", clinic.pk)
        for part in parts:
            _failed(result, path=part.path, reason=FAILURE_PROCESSING)
        return
    for item in items:
        if item.result is not None:
            _stored(result, instance=item.result.instance, base_url=base_url)
            continue
        error = item.error
        assert error is not None
        if isinstance(error, StorageUnavailable):
            logger.warning("STOW-RS part not stored for clinic %s: %s", clinic.pk, error.code)
        _failed(result, path=item.path, reason=_reason(error), parsed=item.parsed)
