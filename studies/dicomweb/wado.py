"""WADO-RS (PS3.18 10.4): content negotiation, instance streaming and metadata assembly.

Metadata answers are assembled from the JSON text the database already holds (one query, no
per-instance parse and re-serialise), with the ingest's ``BulkDataURI`` placeholders (tag paths)
turned into real URLs by plain string replacement.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import BinaryIO

from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast

from portal import prepared
from portal.exceptions import PortalError
from studies import transcoding
from studies.archive import objects, readahead
from studies.dicomweb import multipart, rendering
from studies.models import Instance, Study
from tenants.models import Clinic

logger = logging.getLogger(__name__)

DICOM = "application/dicom"
OCTET = "application/octet-stream"


class NotAcceptable(PortalError):
    status = HTTPStatus.NOT_ACCEPTABLE
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


def instances_negotiate(accept: str, *, stored_syntaxes: set[str]) -> str | None:
    """Choose the transfer syntax instances are sent in: None for as stored; raise NotAcceptable.

    PS3.18 8.7.3.5.2: ``transfer-syntax=*`` means as stored, no parameter (or no Accept at all)
    means Explicit VR Little Endian. Another syntax is served when every instance can be converted
    to it without lossy compression (see ``transcoding``).
    """
    for media in accept_parse(accept) or [MediaRange("multipart/related", {"type": DICOM}, 1.0)]:
        if media.quality <= 0:
            continue
        if media.media_type in ("*/*", "multipart/*"):
            syntax = None
        elif media.media_type == "multipart/related" and _matches(media.params.get("type", ""), DICOM):
            syntax = media.params.get("transfer-syntax")
        else:
            continue
        if syntax == "*":
            return None
        target = syntax or transcoding.DEFAULT
        if stored_syntaxes <= {target}:
            return None
        # Asked for by name, every instance must be convertible. By default, one we cannot decode
        # (a video, say) still goes out as stored, its part naming its syntax, rather than nothing.
        if syntax is None or all(transcoding.can_transcode(stored, target) for stored in stored_syntaxes):
            return target
    raise NotAcceptable(
        'Instances are available as multipart/related; type="application/dicom" in their stored transfer '
        "syntax (transfer-syntax=*; stored: " + ", ".join(sorted(stored_syntaxes)) + ") or converted to "
        + ", ".join(transcoding.TARGETS) + " (lossless only)."
    )


@dataclass(frozen=True)
class FrameChoice:
    decode: bool  # True: native (uncompressed) pixels; False: stored bytes
    part_type: str
    encode: str | None = None  # a lossless syntax to convert the instance to before taking its frames


# Frame media types (PS3.18 Table 8.7.3-2) we can encode to from any decodable syntax, losslessly.
FRAME_ENCODINGS = {
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
}


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
        target = FRAME_ENCODINGS.get(wanted)
        if target and syntax in (None, target) and transcoding.can_decode(stored_syntax):
            return FrameChoice(False, f"{wanted}; transfer-syntax={target}", encode=target)
    raise NotAcceptable(
        "Frames are available uncompressed (application/octet-stream), in the stored transfer syntax "
        f"({stored_syntax}), or losslessly encoded as " + ", ".join(FRAME_ENCODINGS) + "."
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


# What reading one instance's frames or bulk data needs of its row and its study's (the rest stays deferred).
_ONE_INSTANCE_FIELDS = (
    "id", "uuid", "clinic_id", "series_id", "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid",
    "object_key", "size_bytes", "number_of_frames", "rows",
)
_ITS_STUDY_FIELDS = ("id", "uuid", "clinic_id")


def _one_instance_rows(*, clinic_id: int, study_uid: str, series_uid: str, sop_uid: str) -> QuerySet:
    return Instance.objects.filter(
        clinic_id=clinic_id, sop_instance_uid=sop_uid, series__series_instance_uid=series_uid,
        series__study__study_instance_uid=study_uid, series__study__deleted_at__isnull=True,
    ).values(*_ONE_INSTANCE_FIELDS, *(f"series__study__{name}" for name in _ITS_STUDY_FIELDS))


def instance_get(*, clinic: Clinic, study_uid: str, series_uid: str, sop_uid: str) -> tuple[Study, Instance] | None:
    """The study (its id and uuid only) and the instance one WADO-RS URL names, unless trashed; or None.

    A viewer asks for hundreds of frames of a series, one request each: one statement compiled once
    (portal.prepared) instead of the study's and then the instance's, each built by the ORM every time.
    """
    rows = prepared.rows(
        "wado.instance_get", _one_instance_rows,
        clinic_id=clinic.pk, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
    )
    if not rows:
        return None
    study = prepared.model_from_row(Study, rows[0], _ITS_STUDY_FIELDS, prefix="series__study__")
    return study, prepared.model_from_row(Instance, rows[0], _ONE_INSTANCE_FIELDS)


@dataclass(frozen=True, slots=True)
class SentInstance:
    """What sending an instance needs from its index row."""

    sop_instance_uid: str
    transfer_syntax_uid: str
    object_key: str
    size_bytes: int
    key_id: str


def instances_to_send(
    *, clinic: Clinic, study: Study, series_uid: str | None = None, sop_uid: str | None = None
) -> list[SentInstance]:
    """The instances a WADO-RS retrieve names, in series then instance order; raise Instance.DoesNotExist.

    One query whatever the number of instances, reading only the columns the sender needs.
    """
    queryset = Instance.objects.for_clinic(clinic).filter(series__study=study)
    if series_uid is not None:
        queryset = queryset.filter(series__series_instance_uid=series_uid)
    if sop_uid is not None:
        queryset = queryset.filter(sop_instance_uid=sop_uid)
    rows = queryset.order_by("series__series_number", "series_id", "instance_number", "id").values_list(
        "sop_instance_uid", "transfer_syntax_uid", "object_key", "size_bytes", "key_id"
    )
    instances = [SentInstance(*row) for row in rows]
    if not instances:
        raise Instance.DoesNotExist
    return instances


def instance_parts(
    *, clinic: Clinic, instances: list[SentInstance], target: str | None = None
) -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
    """Yield (part headers, streamed decrypted bytes) for each instance, converted to ``target`` if given.

    The first object is opened (and converted, if it has to be) before anything is sent, so that a
    store that is down, an object that is missing or pixel data that cannot be decoded is a clean
    error answer rather than a cut-off stream. The clinic keys the objects name are looked up once,
    here, not per object.
    """
    streams = objects.ObjectStreams(clinic=clinic, key_ids={instance.key_id for instance in instances})
    if _converts(instances[0], target):
        with objects.object_open(clinic=clinic, key=instances[0].object_key) as first:
            first_part = _transcoded_part(first, target)  # type: ignore[arg-type]
        return _parts(streams, instances, target, first_part)
    opened = streams.open(instances[0].object_key)
    if not any(_converts(instance, target) for instance in instances):
        return _stored_parts(streams, instances, opened)
    opened.close()  # a mixed study: read one object at a time
    return _parts(streams, instances, target, None)


def stored_part_headers(instance: SentInstance) -> dict[str, str]:
    return {
        "Content-Type": f"{DICOM}; transfer-syntax={instance.transfer_syntax_uid}",
        "Content-Length": str(instance.size_bytes),
    }


def instances_body_length(*, instances: list[SentInstance], target: str | None, boundary: str) -> int | None:
    """The exact length of the multipart body when every instance goes out as stored, else None.

    With it the answer carries a Content-Length rather than chunked framing: neither gunicorn nor the
    client (nor nginx) has to frame or unframe every chunk, and a client knows a cut-off answer is short.
    """
    if any(_converts(instance, target) for instance in instances):
        return None
    return multipart.parts_length((stored_part_headers(i) for i in instances), boundary=boundary)


def _converts(instance: SentInstance, target: str | None) -> bool:
    return (
        target is not None
        and instance.transfer_syntax_uid != target
        and transcoding.can_transcode(instance.transfer_syntax_uid, target)
    )


def _transcoded_part(source: BinaryIO, target: str) -> tuple[dict[str, str], Iterator[bytes]]:
    with rendering.spool(source) as spooled:
        data, syntax = transcoding.instance_transcode(spooled, target)
    return {"Content-Type": f"{DICOM}; transfer-syntax={syntax}", "Content-Length": str(len(data))}, iter([data])


def _parts(
    streams: objects.ObjectStreams,
    instances: list[SentInstance],
    target: str | None,
    first_part: tuple[dict[str, str], Iterator[bytes]] | None,
) -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
    for index, instance in enumerate(instances):
        if index == 0 and first_part is not None:
            yield first_part
            continue
        if _converts(instance, target):
            source = objects.object_open(clinic=streams.clinic, key=instance.object_key)
            yield _transcoded_part(source, target)  # type: ignore[arg-type]
            continue
        yield stored_part_headers(instance), _lazy_chunks(streams, instance.object_key)


def _lazy_chunks(streams: objects.ObjectStreams, key: str) -> Iterator[bytes]:
    with closing(streams.open(key)) as source:
        while data := source.read_chunk():
            yield data


def _stored_parts(
    streams: objects.ObjectStreams, instances: list[SentInstance], first: objects.ObjectStream
) -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
    # A helper thread reads and decrypts the next objects while this one's bytes go out; each segment
    # is handed over as decrypted (no copy on the way to the socket).
    openers = [partial(streams.open, instance.object_key) for instance in instances]
    bodies = readahead.objects_read_ahead(openers, first=first)
    with closing(bodies):
        for instance, body in zip(instances, bodies, strict=True):
            yield stored_part_headers(instance), _logged(body, instance)


def _logged(body: Iterator[bytes], instance: SentInstance) -> Iterator[bytes]:
    """Pass ``body`` on; if its object fails part-way, say which instance before the answer is cut off."""
    try:
        yield from body
    except Exception as exc:
        logger.error(
            "WADO-RS: instance %s (object %s) could not be read (%s: %s); the answer is cut off before its part",
            instance.sop_instance_uid, instance.object_key, type(exc).__name__, exc,
        )
        raise


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
