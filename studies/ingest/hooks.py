"""What other capabilities plug into the store path, registered once at start-up.

Ingest sits below backup and the thumbnails in the layers, so it cannot import them; instead
``StudiesConfig.ready`` registers (1) the object writer, which in ``REPLICATION_MODE=sync`` writes both
stores before the instance is acknowledged, and (2) the after-commit step, which queues replication and
thumbnails with one message per batch, (3) anonymize-on-ingest, and (4) the copy of one object to the
replica (a staged ZIP archive). With nothing registered, objects go to the primary only and nothing
is queued (the replication sweep still finds every pending instance).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from studies.archive import objects
from studies.models import Instance
from tenants.models import Clinic


@dataclass(frozen=True)
class WrittenObject:
    """An object the writer stored, and when the replica got the same bytes (sync mode), if it did.

    ``folder_pending`` says the object's name is not durable yet: ingest syncs the primary store's
    folders once for the whole batch (``objects.objects_folders_sync``) before indexing anything.
    """

    stored: objects.StoredObject
    replicated_at: datetime | None = None
    folder_pending: bool = False


@dataclass(frozen=True)
class Anonymizer:
    """Anonymize-on-ingest, provided by the anonymize capability (which sits above ingest).

    ``rule(clinic=, api_token=, dicom_node=, upload_link=)`` names the project whose rule applies, or None;
    ``anonymize(project=, source_path=)`` writes an anonymized copy and returns (path, result with
    ``report.needs_review``); ``link(project=, study=, needs_review=)`` marks a study that arrived anonymized.
    """

    rule: Callable[..., Any]
    anonymize: Callable[..., tuple[str, Any]]
    link: Callable[..., None]


ObjectWriter = Callable[[Clinic, BinaryIO, uuid.UUID], WrittenObject]
AfterCommit = Callable[[Clinic, Sequence[Instance]], None]
# Run inside the index transaction with the new instances and their origin: what must exist exactly when
# the instances do (routing deliveries).
Indexed = Callable[[Clinic, Sequence[Instance], Any], None]


def _primary_only(clinic: Clinic, source: BinaryIO, object_uuid: uuid.UUID) -> WrittenObject:
    return WrittenObject(objects.object_put(clinic=clinic, source=source, object_uuid=object_uuid))


_object_writer: ObjectWriter = _primary_only
_after_commit: list[AfterCommit] = []
_indexed: list[Indexed] = []
_anonymizer: Anonymizer | None = None
# Copies one stored object, unchanged, from the primary to the replica (keyword ``key``).
ReplicaCopy = Callable[..., None]
_replica_copy: ReplicaCopy | None = None


def anonymizer_register(anonymizer: Anonymizer) -> None:
    """Install anonymize-on-ingest (done once at start-up)."""
    global _anonymizer
    _anonymizer = anonymizer


def anonymizer() -> Anonymizer:
    """The registered anonymizer; fails closed, so an original is never stored for want of one."""
    if _anonymizer is None:
        raise RuntimeError("No anonymizer registered: StudiesConfig.ready registers it at start-up.")
    return _anonymizer


def replica_copy_register(copy: ReplicaCopy) -> None:
    """Install the copy of one object to the replica (done once at start-up)."""
    global _replica_copy
    _replica_copy = copy


def replica_copy(*, key: str) -> None:
    """Copy one stored object to the replica; fails loudly when backup did not register its copy."""
    if _replica_copy is None:
        raise RuntimeError("No replica copy registered: StudiesConfig.ready registers it at start-up.")
    _replica_copy(key=key)


def object_writer_register(writer: ObjectWriter) -> None:
    """Install the function that writes an ingested file's encrypted object (one at a time)."""
    global _object_writer
    _object_writer = writer


def after_commit_register(hook: AfterCommit) -> None:
    """Add a step run once a batch's index rows are committed (idempotent per function)."""
    if hook not in _after_commit:
        _after_commit.append(hook)


def indexed_register(hook: Indexed) -> None:
    """Add a step run in the index transaction, after a batch's rows are written (idempotent per function)."""
    if hook not in _indexed:
        _indexed.append(hook)


def indexed_hooks() -> list[Indexed]:
    return list(_indexed)


def object_write(*, clinic: Clinic, source: BinaryIO, object_uuid: uuid.UUID) -> WrittenObject:
    return _object_writer(clinic, source, object_uuid)


def after_commit_hooks() -> list[AfterCommit]:
    return list(_after_commit)
