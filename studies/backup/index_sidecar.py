"""Index sidecars: what the index knows of replicated instances, kept next to them in the backup store.

Rebuilding the index by decrypting and parsing every replica object costs tens of milliseconds of CPU per
instance, most of it parsing. So each time a batch of instances reaches the replica, one small document
``clinics/<clinic uuid>/index/<uuid4>`` is written there too, encrypted with the clinic key like every
other object, listing for each instance what the index writer needs: object key, key id, sha256, plain and
stored size, and the parse result (UIDs, indexed attributes, the DICOM JSON header). ``rebuild_index``
reads these few documents instead of parsing, and decodes only the objects no sidecar covers.

A sidecar is a shortcut, never the record: rebuild indexes only objects listed in the replica whose
stored size is the one the sidecar gives (anything else is decoded), and leaves the instances it indexed
this way unverified so the backup verifier decrypts and checks them against the sidecar's sha256.

Multi-process correctness:

- written by whoever finished copying the batch to the replica (the replication worker; in
  ``REPLICATION_MODE=sync`` a small task queued after commit), so only after the objects are durable on
  the replica and only from committed index rows: a batch whose index transaction rolled back has no
  rows, hence no sidecar;
- named with a fresh uuid, so concurrent workers never overwrite one another; an instance named by two
  sidecars (a redelivered message) is taken from the first, the copies being equal;
- a lost or unreadable sidecar only means those instances are decoded as before.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import date, time
from typing import Any

from django.db.models import TextField
from django.db.models.functions import Cast
from django.utils import timezone

from studies import dicom
from studies.archive import crypto, keys, objects, stores
from studies.archive.errors import ArchiveError, ObjectMissing, StorageUnavailable
from studies.models import ClinicKey, Instance
from tenants.models import Clinic

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = "pacs-portal-index-sidecar"
SIDECAR_VERSION = 1
# A sidecar document is refused above this (a batch of REPLICATION_BATCH instances is far below it).
MAX_SIDECAR_BYTES = 256 * 1024 * 1024

_DATE_FIELDS = {"patient_birth_date", "study_date"}
_TIME_FIELDS = {"study_time"}
_PARSED_FIELDS = {f.name for f in fields(dicom.ParsedInstance)}


def sidecar_prefix(clinic: Clinic) -> str:
    return f"clinics/{clinic.uuid}/index/"


@dataclass(frozen=True)
class SidecarEntry:
    """One instance as a sidecar describes it."""

    key: str
    key_id: str
    sha256: str
    size_bytes: int
    stored_size: int
    parsed: dicom.ParsedInstance  # its metadata left empty: the header is ``metadata_json``
    metadata_json: str


def _parsed_of_row(instance: Instance) -> dict[str, Any]:
    # What ingest parsed, as the committed rows keep it: patient and study fields as the index filed them
    # (from the study's first instance), so a rebuild writes the rows ingest wrote.
    series = instance.series
    study = series.study
    patient = study.patient
    parsed = dicom.ParsedInstance(
        sop_instance_uid=instance.sop_instance_uid,
        sop_class_uid=instance.sop_class_uid,
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        transfer_syntax_uid=instance.transfer_syntax_uid,
        patient_id=patient.patient_id,
        issuer_of_patient_id=patient.issuer_of_patient_id,
        patient_name=patient.patient_name,
        patient_sex=patient.patient_sex,
        patient_birth_date=patient.patient_birth_date,
        study_date=study.study_date,
        study_time=study.study_time,
        accession_number=study.accession_number,
        study_description=study.study_description,
        study_id=study.study_id,
        referring_physician_name=study.referring_physician_name,
        modality=series.modality,
        series_description=series.series_description,
        body_part_examined=series.body_part_examined,
        series_number=series.series_number,
        instance_number=instance.instance_number,
        number_of_frames=instance.number_of_frames,
        rows=instance.rows,
        columns=instance.columns,
    )
    return _parsed_document(parsed)


def _parsed_document(parsed: dicom.ParsedInstance) -> dict[str, Any]:
    # The header travels as JSON text beside it (``metadata_json``): a rebuild inserts it without decoding.
    document = asdict(replace(parsed, metadata={}))
    del document["metadata"]
    for name in _DATE_FIELDS | _TIME_FIELDS:
        value = document[name]
        document[name] = value.isoformat() if value is not None else None
    return document


def _parsed_from(document: dict[str, Any]) -> dicom.ParsedInstance:
    values = {name: value for name, value in document.items() if name in _PARSED_FIELDS and name != "metadata"}
    for name in _DATE_FIELDS:
        if values.get(name):
            values[name] = date.fromisoformat(values[name])
    for name in _TIME_FIELDS:
        if values.get(name):
            values[name] = time.fromisoformat(values[name])
    return dicom.ParsedInstance(**values)


def index_sidecar_publish(*, clinic: Clinic, instance_ids: Sequence[int]) -> str | None:
    """Write one sidecar for these instances, those of them on the replica; return its key (None: none).

    Call it only once their objects are durable on the replica. Raises StorageUnavailable when the replica
    refuses the write (callers log it: the instances are then decoded by a rebuild, as before sidecars).
    """
    rows = list(
        Instance.objects.for_clinic(clinic)
        .filter(pk__in=list(instance_ids), replicated_at__isnull=False)
        .select_related("series__study__patient")
        # The header as the database holds it, as text: decoding it only to encode it again cost more CPU
        # than the rest of a replication (about 3 ms per 12 kB header).
        .defer("metadata")
        .annotate(metadata_text=Cast("metadata", output_field=TextField()))
        .order_by("pk")
    )
    if not rows:
        return None
    segment_size = objects.segment_size()
    entries = [
        {
            "key": row.object_key,
            "key_id": row.key_id,
            "sha256": row.sha256,
            "size_bytes": row.size_bytes,
            "stored_size": crypto.ciphertext_size(
                plaintext_size=row.size_bytes, key_id=row.key_id, segment_size=segment_size
            ),
            "parsed": _parsed_of_row(row),
            "metadata_json": row.metadata_text,
        }
        for row in rows
    ]
    return _sidecar_write(clinic=clinic, entries=entries)


def _entry_document(entry: SidecarEntry) -> dict[str, Any]:
    return {
        "key": entry.key, "key_id": entry.key_id, "sha256": entry.sha256, "size_bytes": entry.size_bytes,
        "stored_size": entry.stored_size, "parsed": _parsed_document(entry.parsed),
        "metadata_json": entry.metadata_json,
    }


def _sidecar_write(*, clinic: Clinic, entries: list[dict[str, Any]]) -> str:
    document = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "clinic_uuid": str(clinic.uuid),
        "written_at": timezone.now().isoformat(),
        "instances": entries,
    }
    key = f"{sidecar_prefix(clinic)}{uuid.uuid4()}"
    # The JSON headers of a batch repeat most of their text: compressed, a sidecar is a fraction of it.
    body = zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 6)
    key_id, clinic_key = keys.clinic_key_get(clinic)
    reader = crypto.EncryptingReader(
        io.BytesIO(body), key_id=key_id, clinic_key=clinic_key, clinic_uuid=clinic.uuid, object_key=key
    )
    stores.get_store("replica").put(key, reader)
    return key


def index_sidecar_publish_logged(*, clinic: Clinic, instance_ids: Sequence[int]) -> str | None:
    """:func:`index_sidecar_publish`, logging a refused write rather than raising (the objects are safe)."""
    try:
        return index_sidecar_publish(clinic=clinic, instance_ids=instance_ids)
    except StorageUnavailable as exc:
        logger.warning("Index sidecar of %d instances of clinic %s not written (a rebuild decodes them): %s",
                       len(instance_ids), clinic.pk, exc)
        return None


def sidecar_keys(*, clinic: Clinic) -> list[str]:
    return sorted(stores.get_store("replica").list(sidecar_prefix(clinic)))


def index_sidecar_read(*, clinic: Clinic, key: str, clinic_keys: dict[str, bytes]) -> list[SidecarEntry]:
    """Return the entries of one sidecar. Raises ArchiveError or ValueError when it is unreadable.

    ``clinic_keys`` maps key ids to clinic keys, so this needs no database (rebuild threads call it).
    """
    _header, reader = objects.object_open_with_keys(clinic_uuid=clinic.uuid, key=key, clinic_keys=clinic_keys)
    with contextlib.closing(reader):
        body = reader.read(MAX_SIDECAR_BYTES + 1)
    if len(body) > MAX_SIDECAR_BYTES:
        raise ValueError("sidecar too large")
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(body, MAX_SIDECAR_BYTES * 8)
        if inflater.unconsumed_tail:
            raise ValueError("sidecar inflates too large")
    except zlib.error as exc:
        raise ValueError(f"sidecar does not inflate: {exc}") from exc
    document = json.loads(text)
    if document.get("format") != SIDECAR_FORMAT or document.get("version") != SIDECAR_VERSION:
        raise ValueError("not an index sidecar of a known version")
    try:
        return [
            SidecarEntry(
                key=str(item["key"]), key_id=str(item["key_id"]), sha256=str(item["sha256"]),
                size_bytes=int(item["size_bytes"]), stored_size=int(item["stored_size"]),
                parsed=_parsed_from(item["parsed"]),
                metadata_json=str(item["metadata_json"]),
            )
            for item in document["instances"]
        ]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed sidecar entry: {exc}") from exc


def index_sidecars_read(
    *, clinic: Clinic, clinic_keys: dict[str, bytes], sidecars: Iterable[str]
) -> Iterator[tuple[str, list[SidecarEntry] | None]]:
    """Yield (sidecar key, its entries or None when unreadable) for each sidecar, in order."""
    for key in sidecars:
        try:
            yield key, index_sidecar_read(clinic=clinic, key=key, clinic_keys=clinic_keys)
        except ObjectMissing:
            yield key, None
        except StorageUnavailable:
            raise
        except (ArchiveError, ValueError) as exc:
            logger.error("Index sidecar %s cannot be read (its instances are decoded instead): %s", key, exc)
            yield key, None


# Sidecars with fewer entries than this are merged by the compaction (one per C-STORE is common).
COMPACT_INSTANCES = 5000


@dataclass(frozen=True)
class Compaction:
    sidecars_before: int
    sidecars_written: int
    sidecars_deleted: int
    entries_dropped: int  # instances whose object is no longer on the replica (purged)


def index_sidecars_compact(*, clinic: Clinic, instances_per_sidecar: int = COMPACT_INSTANCES) -> Compaction:
    """Merge the clinic's small sidecars into few large ones, and drop what they say of purged instances.

    A purged study's objects leave the replica, but the sidecars written with them still hold its headers:
    every sidecar that is small, or names an object no longer on the replica, is rewritten with the
    entries whose object is still there, and deleted once its entries are durable in the new ones. Runs
    on the replica-admin worker (deleting needs the replica's admin credentials). Safe beside the writers:
    only sidecars listed at the start are deleted, and a crash before the deletes leaves duplicates, which
    a rebuild skips. Unreadable sidecars are left alone (logged), so nothing is lost by compacting.
    """
    replica = stores.get_store("replica")
    names = sidecar_keys(clinic=clinic)
    on_replica = dict(replica.list_sizes(f"clinics/{clinic.uuid}/objects/"))
    clinic_keys = {
        key_id: keys.clinic_key_for_object(clinic=clinic, key_id=key_id)
        for key_id in ClinicKey.objects.for_clinic(clinic).values_list("key_id", flat=True)
    }
    rewrite: list[str] = []
    kept: dict[str, dict[str, Any]] = {}
    dropped = 0
    for name, entries in index_sidecars_read(clinic=clinic, clinic_keys=clinic_keys, sidecars=names):
        if entries is None:
            continue
        gone = [entry for entry in entries if entry.key not in on_replica]
        if not gone and len(entries) >= instances_per_sidecar // 2:
            continue  # large and current: left as it is
        rewrite.append(name)
        dropped += len(gone)
        for entry in entries:
            if entry.key in on_replica:
                kept.setdefault(entry.key, _entry_document(entry))
    if len(rewrite) <= 1 and not dropped:
        return Compaction(len(names), 0, 0, 0)
    documents = list(kept.values())
    written = 0
    for first in range(0, len(documents), instances_per_sidecar):
        _sidecar_write(clinic=clinic, entries=documents[first : first + instances_per_sidecar])
        written += 1
    for name in rewrite:
        replica.delete(name)
    logger.info("Index sidecars of clinic %s compacted: %d merged into %d, %d purged instances dropped",
                clinic.pk, len(rewrite), written, dropped)
    return Compaction(len(names), written, len(rewrite), dropped)
