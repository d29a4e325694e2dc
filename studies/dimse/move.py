"""C-MOVE and C-GET: which instances a request retrieves, and how each is read back for sending.

Instances are matched with the same rules as C-FIND (``find``), at the request's level and above.
Each one is decrypted from the archive as a stream into a spooled temporary file (memory for small
instances, disk for large ones) and parsed by pydicom shortly before its turn to be sent comes (a
helper thread prepares the next two while one is sent, see ``handlers._send_each``), so a large study
never sits whole in memory: a few instances at a time do.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable

from django.db.models import QuerySet
from pydicom import Dataset, dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UncompressedTransferSyntaxes,
)
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts, build_context
from pynetdicom.sop_class import Verification

from studies import transcoding
from studies.dimse.find import INDEXED, LEVELS, PATHS, QueryError, element_values, key_q, query_level
from studies.models import Instance
from tenants.models import Clinic

# The unique key a retrieve must carry at each level (PS3.4 C.4.2.2.1 / C.4.3.2.1).
UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
# pynetdicom (and PS3.8) allow at most 128 presentation contexts in one association request.
MAX_CONTEXTS = 128
SPOOL_MEMORY_BYTES = 8 * 1024 * 1024
COPY_CHUNK = 1024 * 1024
# Syntaxes pynetdicom can re-encode to little endian on the way out.
CONVERTIBLE = {*UncompressedTransferSyntaxes, DeflatedExplicitVRLittleEndian}

FIND_FOR_RETRIEVE = {
    # C-MOVE / C-GET SOP classes -> the matching C-FIND model, whose levels they share.
    "1.2.840.10008.5.1.4.1.2.1.2": "1.2.840.10008.5.1.4.1.2.1.1",
    "1.2.840.10008.5.1.4.1.2.1.3": "1.2.840.10008.5.1.4.1.2.1.1",
    "1.2.840.10008.5.1.4.1.2.2.2": "1.2.840.10008.5.1.4.1.2.2.1",
    "1.2.840.10008.5.1.4.1.2.2.3": "1.2.840.10008.5.1.4.1.2.2.1",
}


def retrieve_instances(*, clinic: Clinic, identifier: Dataset, sop_class_uid: str) -> QuerySet[Instance]:
    """Return the clinic's live instances a C-MOVE or C-GET identifier asks for.

    Raises QueryError when the level is unknown or its unique key is missing or holds a wildcard.
    """
    level = query_level(identifier, sop_class_uid=FIND_FOR_RETRIEVE.get(sop_class_uid, sop_class_uid))
    unique = UNIQUE_KEYS[level]
    unique_values = element_values(identifier, unique) if unique in identifier else []
    if not unique_values:
        raise QueryError(f"A {level} level retrieve needs {unique}.", status=0xA900)
    # PS3.4 C.4.2.2.1: the level's unique key is a single value or a list of UIDs, never a wildcard
    # (PatientID=* would move every patient of the clinic).
    if any("*" in value or "?" in value for value in unique_values):
        raise QueryError(f"A retrieve's {unique} cannot hold wildcards.", status=0xA900)
    queryset = Instance.objects.for_clinic(clinic).filter(series__study__deleted_at=None)
    level_index = LEVELS.index(level)
    for element in identifier:
        keyword = element.keyword
        if keyword not in INDEXED:
            continue
        attr_level, field = INDEXED[keyword]
        values = element_values(identifier, keyword)
        if not values or LEVELS.index(attr_level) > level_index:
            continue
        queryset = queryset.filter(key_q(keyword, values, PATHS["IMAGE"][attr_level] + field))
    return queryset.order_by("series__study_id", "series__series_number", "series_id", "instance_number", "pk")


def storage_contexts(instances: Iterable[Instance]) -> list[PresentationContext]:
    """Presentation contexts for sending these instances: each SOP class in its stored syntax.

    pynetdicom sends over a context with the exact stored syntax when the peer accepted one, so the
    bytes go out as they were stored. Every SOP class also gets a context offering explicit and
    implicit little endian, for peers that accept only those: uncompressed data pynetdicom converts
    on the fly, compressed data is decoded first (``send_syntax``).
    """
    pairs = sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in instances})
    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    for sop_class_uid, transfer_syntax_uid in pairs:
        wanted[(sop_class_uid, (transfer_syntax_uid,))] = None
    for sop_class_uid, transfer_syntax_uid in pairs:
        if transfer_syntax_uid in CONVERTIBLE or transcoding.can_decode(transfer_syntax_uid):
            wanted[(sop_class_uid, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))] = None
    return [build_context(sop_class_uid, list(syntaxes)) for sop_class_uid, syntaxes in wanted][:MAX_CONTEXTS]


def refusal_contexts() -> list[PresentationContext]:
    """Presentation contexts for a sub-association that sends nothing: Verification and common storage classes.

    pynetdicom 3 answers a C-MOVE with the handler's own failure status only once an association with
    the destination is open, and a destination (a storage SCP) accepts at least one of these.
    """
    contexts = [build_context(Verification)]
    contexts += [build_context(str(cx.abstract_syntax)) for cx in StoragePresentationContexts]
    return contexts[:MAX_CONTEXTS]


def accepted_syntaxes(contexts: Iterable[PresentationContext]) -> dict[str, set[str]]:
    """The transfer syntaxes a peer accepted, by SOP class, from an association's accepted contexts."""
    accepted: dict[str, set[str]] = {}
    for context in contexts:
        accepted.setdefault(str(context.abstract_syntax), set()).update(str(ts) for ts in context.transfer_syntax)
    return accepted


def send_syntax(*, stored: str, accepted: set[str]) -> str | None:
    """The syntax to convert an instance to before a C-STORE sub-operation, or None to send it as stored.

    As stored when the peer accepted that syntax (or, for uncompressed data, any uncompressed one:
    pynetdicom re-encodes it). Otherwise decoded to Explicit VR Little Endian for a peer that takes
    uncompressed data, or encoded losslessly in a compressed syntax it accepted; never lossily.
    """
    uncompressed = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
    # pynetdicom re-encodes little endian syntaxes; big endian needs its pixel bytes swapped (transcoding).
    if stored in accepted or (stored in CONVERTIBLE and stored != ExplicitVRBigEndian and accepted & uncompressed):
        return None
    if not transcoding.can_decode(stored):
        return None
    if accepted & uncompressed:
        return ExplicitVRLittleEndian
    for target in transcoding.TARGETS:
        if target in accepted:
            return target
    return None


def instance_dataset(*, clinic: Clinic, instance: Instance) -> Dataset:
    """Read one archived instance back as a dataset (with its file meta), decrypting as a stream.

    Raises the archive's ObjectCorrupt, ObjectMissing or StorageUnavailable when it cannot be read.
    """
    from studies.archive.objects import object_open

    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as spool:
        source = object_open(clinic=clinic, key=instance.object_key)
        try:
            shutil.copyfileobj(source, spool, COPY_CHUNK)
        finally:
            source.close()
        spool.seek(0)
        # pynetdicom encodes a dataset whole for sending: an instance is held whole while it is sent.
        return dcmread(spool)
