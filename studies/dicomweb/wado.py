"""WADO-RS (PS3.18 10.4): content negotiation, instance streaming and metadata assembly.

Metadata answers are assembled from the JSON text the database already holds (one query, no
per-instance parse and re-serialise), with the ingest's ``BulkDataURI`` placeholders (tag paths)
turned into real URLs by plain string replacement.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any, BinaryIO

from django.db.models import Q, TextField
from django.db.models.functions import Cast

from portal.exceptions import PortalError
from studies.archive import readahead
from studies.dicomweb import multipart, rendering
from studies.models import Instance, Series, Study
from tenants.models import Clinic

DICOM = "application/dicom"
OCTET = "application/octet-stream"


class NotAcceptable(PortalError):
    status = 406
    code = "not_acceptable"


@dataclass(frozen=True)
class MediaRange:
    media_type: str
    params: dict[str, str]
    quality: float


def accept_parse(header: str) -> list[MediaRange]:
    """Parse an Accept header into media ranges, best first (RFC 9110 12.5.1)."""
    ranges = []
    for item in re.split(r',(?=(?:[^"]*"[^"]*")*[^"]*$)', header or ""):
        if not item.strip():
            continue
        media_type, params = multipart.media_type_params(item)
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 1.0
        ranges.append(MediaRange(media_type, params, quality))
    return sorted(ranges, key=lambda r: -r.quality)


def _matches(wanted: str, offered: str) -> bool:
    if wanted in ("", "*/*") or wanted == offered:
        return True
    return wanted.endswith("/*") and offered.startswith(wanted[:-1])


def instances_negotiate(accept: str, *, stored_syntaxes: set[str]) -> None:
    """Check the client accepts multipart application/dicom in the stored syntaxes; raise NotAcceptable."""
    ranges = accept_parse(accept)
    if not ranges:
        return
    for media in ranges:
        if media.quality <= 0:
            continue
        if media.media_type == "*/*" or media.media_type == "multipart/*":
            return
        if media.media_type != "multipart/related" or not _matches(media.params.get("type", ""), DICOM):
            continue
        syntax = media.params.get("transfer-syntax")
        # Without a transfer-syntax parameter the stored syntax is served: this archive does not transcode.
        if syntax is None or syntax == "*" or stored_syntaxes <= {syntax}:
            return
    raise NotAcceptable(
        "This archive serves instances in their stored transfer syntax only: ask for "
        'multipart/related; type="application/dicom"; transfer-syntax=* (stored: '
        + ", ".join(sorted(stored_syntaxes))
        + ")."
    )


@dataclass(frozen=True)
class FrameChoice:
    decode: bool  # True: native (uncompressed) pixels; False: stored bytes
    part_type: str


def frames_negotiate(accept: str, *, stored_syntax: str) -> FrameChoice:
    """Choose how frames are sent (stored codestream or uncompressed bytes); raise NotAcceptable."""
    compressed_type = rendering.FRAME_MEDIA_TYPES.get(stored_syntax)
    is_native = stored_syntax in rendering.NATIVE_SYNTAXES
    # Native frames are sent as little-endian bytes, which is what Explicit VR Little Endian names.
    native_part = f"{OCTET}; transfer-syntax={rendering.EXPLICIT_LE}"
    stored_part = native_part if is_native else f"{compressed_type or OCTET}; transfer-syntax={stored_syntax}"
    ranges = accept_parse(accept) or [MediaRange("multipart/related", {"type": OCTET}, 1.0)]
    for media in ranges:
        if media.quality <= 0:
            continue
        if media.media_type in ("*/*", "multipart/*"):
            return FrameChoice(stored_syntax == "1.2.840.10008.1.2.2", stored_part)
        if media.media_type != "multipart/related":
            continue
        wanted = media.params.get("type", OCTET)
        syntax = media.params.get("transfer-syntax")
        if wanted == OCTET:
            if syntax == "*" and not is_native:
                return FrameChoice(False, f"{OCTET}; transfer-syntax={stored_syntax}")
            if syntax in (None, "*", rendering.EXPLICIT_LE) or (syntax == stored_syntax and is_native):
                return FrameChoice(not is_native or stored_syntax == "1.2.840.10008.1.2.2", native_part)
            if syntax == stored_syntax:
                return FrameChoice(False, f"{OCTET}; transfer-syntax={stored_syntax}")
            continue
        if wanted.endswith("/*") and syntax in (None, "*", stored_syntax):
            if _matches(wanted, stored_part.split(";")[0]):
                return FrameChoice(stored_syntax == "1.2.840.10008.1.2.2", stored_part)
            if _matches(wanted, OCTET):
                return FrameChoice(not is_native, native_part)
        if compressed_type and _matches(wanted, compressed_type) and syntax in (None, "*", stored_syntax):
            return FrameChoice(False, stored_part)
    raise NotAcceptable(
        "Frames are available uncompressed (application/octet-stream) or in the stored transfer syntax "
        f"({stored_syntax}) only."
    )


def rendered_negotiate(accept: str, query_accept: str | None) -> str:
    """Pick image/jpeg or image/png for a rendered answer; raise NotAcceptable."""
    for media in accept_parse(query_accept or accept) or [MediaRange("image/jpeg", {}, 1.0)]:
        if media.quality <= 0:
            continue
        if media.media_type in ("image/jpeg", "image/png"):
            return media.media_type
        if media.media_type in ("*/*", "image/*"):
            return "image/jpeg"
        if media.media_type == "multipart/related" and media.params.get("type") in ("image/jpeg", "image/png"):
            return media.params["type"]
    raise NotAcceptable("Rendered images are available as image/jpeg or image/png.")


def instances_for(
    *, clinic: Clinic, study: Study, series_uid: str | None = None, sop_uid: str | None = None
) -> list[Instance]:
    """The instances a WADO-RS request names, in series then instance order; raise Instance.DoesNotExist."""
    queryset = Instance.objects.for_clinic(clinic).filter(series__study=study)
    if series_uid is not None:
        queryset = queryset.filter(series__series_instance_uid=series_uid)
    if sop_uid is not None:
        queryset = queryset.filter(sop_instance_uid=sop_uid)
    instances = list(
        queryset.order_by("series__series_number", "series_id", "instance_number", "id").only(
            "uuid", "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "object_key", "size_bytes",
            "series__series_instance_uid", "series__series_number", "number_of_frames", "rows",
        ).select_related("series")
    )
    if not instances:
        raise Instance.DoesNotExist
    return instances


def instance_parts(*, clinic: Clinic, instances: list[Instance]) -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
    """Yield (part headers, streamed decrypted bytes) for each instance.

    The first object is opened before anything is sent, so that a store that is down or an object
    that is missing is a clean error answer (503/500) rather than a cut-off stream.
    """
    from studies.archive import objects

    first = objects.object_open(clinic=clinic, key=instances[0].object_key)
    return _parts(clinic, instances, first, objects)


def _parts(
    clinic: Clinic, instances: list[Instance], first: BinaryIO, objects: Any
) -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
    # A helper thread decrypts the next objects while this one's bytes go out (1 MiB reads match the
    # archive's segment size, so each read decrypts whole segments).
    openers = [functools.partial(objects.object_open, clinic=clinic, key=i.object_key) for i in instances]
    bodies = readahead.objects_read_ahead(openers, first=first)
    with closing(bodies):
        for instance, body in zip(instances, bodies, strict=True):
            headers = {
                "Content-Type": f"{DICOM}; transfer-syntax={instance.transfer_syntax_uid}",
                "Content-Length": str(instance.size_bytes),
            }
            yield headers, body


def metadata_body(
    *,
    clinic: Clinic,
    study: Study,
    base_url: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> str | None:
    """Return the DICOM JSON array of the named instances' headers, or None when none exists.

    One query fetches each header as JSON text; the array is joined from those texts directly.
    """
    queryset = Instance.objects.for_clinic(clinic).filter(series__study=study)
    if series_uid is not None:
        queryset = queryset.filter(series__series_instance_uid=series_uid)
    if sop_uid is not None:
        queryset = queryset.filter(sop_instance_uid=sop_uid)
    rows = list(
        queryset.order_by().values_list(
            "series__series_number", "series_id", "instance_number", "id",
            "sop_instance_uid", "series__series_instance_uid", Cast("metadata", output_field=TextField()),
        )
    )
    # Sorted here rather than in SQL: PostgreSQL would carry megabytes of header text through its sort.
    rows.sort(key=lambda row: (row[0] is None, row[0] or 0, row[1], row[2] is None, row[2] or 0, row[3]))
    study_url = f"{base_url}studies/{study.study_instance_uid}"
    pieces = []
    for *_, sop, series, header in rows:
        if "BulkDataURI" in header:
            # The ingest leaves each BulkDataURI as a tag path; prefix it with this instance's URL.
            # PostgreSQL prints jsonb with '": "', other databases may print compact JSON.
            prefix = f"{study_url}/series/{series}/instances/{sop}/bulkdata/"
            header = header.replace('"BulkDataURI": "', '"BulkDataURI": "' + prefix).replace(
                '"BulkDataURI":"', '"BulkDataURI":"' + prefix
            )
        pieces.append(header)
    if not pieces:
        return None
    return "[" + ",".join(pieces) + "]"


def study_get(*, clinic: Clinic, study_uid: str) -> Study | None:
    """The clinic's study with this UID, unless it is in the trash."""
    return Study.objects.for_clinic(clinic).filter(study_instance_uid=study_uid, deleted_at=None).first()


def series_thumbnail_key(*, clinic: Clinic, study: Study, series_uid: str | None) -> str:
    queryset = Series.objects.for_clinic(clinic).filter(study=study).exclude(thumbnail_key="")
    if series_uid is not None:
        queryset = queryset.filter(series_instance_uid=series_uid)
    return queryset.order_by("series_number", "id").values_list("thumbnail_key", flat=True).first() or ""


def representative_instance(
    *, clinic: Clinic, study: Study, series_uid: str | None, sop_uid: str | None
) -> Instance | None:
    """The image shown for a thumbnail: the middle image of the (first) series."""
    queryset = Instance.objects.for_clinic(clinic).filter(series__study=study, rows__isnull=False)
    if series_uid is not None:
        queryset = queryset.filter(series__series_instance_uid=series_uid)
    if sop_uid is not None:
        queryset = queryset.filter(sop_instance_uid=sop_uid)
    first = queryset.order_by("series__series_number", "series_id").values_list("series_id", flat=True).first()
    if first is None:
        return None
    in_series = queryset.filter(Q(series_id=first)).order_by("instance_number", "id")
    count = in_series.count()
    return in_series[count // 2]
