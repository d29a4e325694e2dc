"""Control-plane backup: the database (users, tokens, shares, billing, audit log) in the backup store.

SQLite (the default run): ``database_snapshot_create`` takes a consistent copy with SQLite's online
backup API while the portal keeps running, encrypts it in the archive format (docs/encryption.md) with
a fresh data key per snapshot, wraps that key with the current master key (local or KMS), and writes
both to the replica store under ``database/sqlite/``: the encrypted copy first, then a small JSON
manifest, so a manifest always names a complete snapshot. ``database_snapshot_restore`` brings back
the newest snapshot at or before a time.

PostgreSQL: pgBackRest does it (continuous WAL archiving and base backups, point-in-time restore); see
``studies.backup.pgbackrest``.

Either way every run anchors the audit chain heads in the replica (``audit/anchors/``), so that a
restored log can be checked against what was written before the disaster.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import sqlite3
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.utils import timezone

from studies.archive import crypto, keys, stores
from studies.archive.errors import ArchiveError, ObjectCorrupt, ObjectMissing
from tenants import audit

logger = logging.getLogger(__name__)

SNAPSHOT_PREFIX = "database/sqlite/"
ANCHOR_PREFIX = "audit/anchors/"
SNAPSHOT_FORMAT = "pacs-portal-database-snapshot"
ANCHOR_FORMAT = "pacs-portal-audit-anchor"
# Stands in for the clinic uuid in the associated data and key wrapping of snapshots: they belong to no clinic.
SNAPSHOT_NAMESPACE = uuid.UUID("7f1c9d2e-8b4a-5c6d-9e0f-0a1b2c3d4e5f")
_LAST_SNAPSHOT_CACHE = "backup:database:last-snapshot"
_LAST_ANCHOR_CACHE = "backup:database:last-anchor"


class DatabaseBackupError(ArchiveError):
    """A database backup or restore could not be done; the message says why and what to do."""

    code = "database_backup_error"


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    created_at: datetime
    manifest_key: str
    data_key: str
    size_bytes: int
    sha256: str
    audit_heads: dict[str, dict[str, Any]]


def database_engine() -> str:
    """Return "sqlite" or "postgresql" for the default database."""
    engine = settings.DATABASES["default"]["ENGINE"]
    if engine.endswith("sqlite3"):
        return "sqlite"
    if "postgresql" in engine:
        return "postgresql"
    raise ImproperlyConfigured(f"Database backup supports SQLite and PostgreSQL, not {engine}.")


def sqlite_path() -> Path:
    return Path(settings.DATABASES["default"]["NAME"])


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _put_json(key: str, document: dict[str, Any]) -> None:
    stores.get_store("replica").put(key, io.BytesIO(json.dumps(document, indent=2, sort_keys=True).encode()))


def _read_json(key: str) -> dict[str, Any]:
    with contextlib.closing(stores.get_store("replica").open(key)) as stream:
        return json.loads(stream.read(4 * 1024 * 1024))


# --- audit anchors --------------------------------------------------------------------------------


def audit_anchor_write(*, force: bool = False) -> str | None:
    """Write the current audit chain heads to the replica; return the key, or None when nothing changed."""
    heads = audit.audit_chain_heads()
    fingerprint = hashlib.sha256(json.dumps(heads, sort_keys=True).encode()).hexdigest()
    if not force and cache.get(_LAST_ANCHOR_CACHE) == fingerprint:
        return None
    now = timezone.now()
    # One object per anchor (never overwritten), so a replica with Object Lock keeps every one of them.
    key = f"{ANCHOR_PREFIX}{_stamp(now)[:8]}/{_stamp(now)}.json"
    _put_json(key, {"format": ANCHOR_FORMAT, "version": 1, "created_at": now.isoformat(), "chains": heads})
    cache.set(_LAST_ANCHOR_CACHE, fingerprint, timeout=3600)
    return key


def audit_anchor_latest() -> dict[str, Any] | None:
    """Return the newest anchor document in the replica, or None."""
    names = sorted(stores.get_store("replica").list(ANCHOR_PREFIX))
    for key in reversed(names):
        try:
            document = _read_json(key)
        except (ObjectMissing, ValueError):
            continue
        if document.get("format") == ANCHOR_FORMAT:
            return document
    return None


def audit_anchors_check() -> list[audit.AnchorProblem]:
    """Check the database's audit log against the newest anchor in the replica."""
    anchor = audit_anchor_latest()
    if anchor is None:
        return []
    return audit.audit_anchor_check(chains=anchor["chains"])


# --- SQLite snapshots -----------------------------------------------------------------------------


def _sqlite_copy(source: Path, target: Path) -> None:
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        # The online backup API copies a consistent state while other connections keep writing.
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def database_snapshot_create(*, database_path: Path | None = None, force: bool = False) -> Snapshot | None:
    """Write an encrypted, consistent snapshot of the SQLite database to the replica.

    Returns None (and writes nothing) when the database is unchanged since this process's last snapshot,
    unless ``force``. Raises StorageUnavailable when the replica cannot be reached, KeyUnavailable when
    the master key (or KMS) cannot wrap the snapshot key.
    """
    source = database_path or sqlite_path()
    if not source.exists():
        raise DatabaseBackupError(f"There is no SQLite database at {source}.")
    started = timezone.now()
    with tempfile.TemporaryDirectory(prefix="db-snapshot-") as folder:
        copy = Path(folder) / "snapshot.sqlite3"
        _sqlite_copy(source, copy)
        sha256 = _file_sha256(copy)
        if not force and cache.get(_LAST_SNAPSHOT_CACHE) == sha256:
            return None
        size = copy.stat().st_size
        snapshot_id = f"db_{_stamp(started)}_{uuid.uuid4().hex[:8]}"
        data_key = f"{SNAPSHOT_PREFIX}{snapshot_id}.db"
        manifest_key = f"{SNAPSHOT_PREFIX}{snapshot_id}.json"
        plain_key = AESGCM.generate_key(256)
        master_id, master = keys.master_key_current()
        wrapped = keys.key_wrap(
            master_key=master, clinic_uuid=SNAPSHOT_NAMESPACE, key_id=snapshot_id, clinic_key=plain_key
        )
        with copy.open("rb") as plain:
            reader = crypto.EncryptingReader(
                plain, key_id=snapshot_id, clinic_key=plain_key, clinic_uuid=SNAPSHOT_NAMESPACE,
                object_key=data_key,
            )
            stores.get_store("replica").put(data_key, reader)
    heads = audit.audit_chain_heads() if database_path is None else {}
    _put_json(manifest_key, {
        "format": SNAPSHOT_FORMAT,
        "version": 1,
        "snapshot_id": snapshot_id,
        "engine": "sqlite",
        "created_at": started.isoformat(),
        "object": data_key,
        "size_bytes": size,
        "sha256": sha256,
        "master_key_id": master_id,
        "wrapped_key": base64.b64encode(wrapped).decode(),
        "audit_heads": heads,
    })
    cache.set(_LAST_SNAPSHOT_CACHE, sha256, timeout=3600)
    logger.info("database snapshot %s written (%d bytes)", snapshot_id, size)
    return Snapshot(snapshot_id, started, manifest_key, data_key, size, sha256, heads)


def _snapshot_from(manifest_key: str, document: dict[str, Any]) -> Snapshot:
    return Snapshot(
        snapshot_id=document["snapshot_id"],
        created_at=datetime.fromisoformat(document["created_at"]),
        manifest_key=manifest_key,
        data_key=document["object"],
        size_bytes=int(document["size_bytes"]),
        sha256=document["sha256"],
        audit_heads=document.get("audit_heads") or {},
    )


def database_snapshot_list() -> list[Snapshot]:
    """Return the SQLite snapshots in the replica, oldest first."""
    found = []
    for key in stores.get_store("replica").list(SNAPSHOT_PREFIX):
        if not key.endswith(".json"):
            continue
        try:
            document = _read_json(key)
        except (ObjectMissing, ValueError):
            continue
        if document.get("format") == SNAPSHOT_FORMAT:
            found.append(_snapshot_from(key, document))
    return sorted(found, key=lambda snapshot: snapshot.created_at)


def database_snapshot_pick(*, at: datetime | None = None) -> Snapshot:
    """Return the newest snapshot taken at or before ``at`` (the newest of all without it)."""
    snapshots = database_snapshot_list()
    candidates = [s for s in snapshots if at is None or s.created_at <= at]
    if not candidates:
        when = f" at or before {at.isoformat()}" if at is not None else ""
        raise DatabaseBackupError(f"The backup store holds no database snapshot{when}.")
    return candidates[-1]


def _snapshot_decrypt(snapshot: Snapshot, target: Path) -> None:
    document = _read_json(snapshot.manifest_key)
    wrapped = base64.b64decode(document["wrapped_key"])
    master = keys.master_keyring().get(document["master_key_id"])
    if master is None:
        raise DatabaseBackupError(
            f"Snapshot {snapshot.snapshot_id} is wrapped by master key {document['master_key_id']!r}, which is "
            "not in MASTER_KEYS: put that key back in MASTER_KEYS to restore it."
        )
    plain_key = keys.key_unwrap(
        master_key=master, clinic_uuid=SNAPSHOT_NAMESPACE, key_id=snapshot.snapshot_id, wrapped=wrapped
    )
    raw = stores.get_store("replica").open(snapshot.data_key)
    digest = hashlib.sha256()
    try:
        header = crypto.header_read(raw)
        if header.key_id != snapshot.snapshot_id:
            raise ObjectCorrupt(f"Snapshot object {snapshot.data_key} names another snapshot's key.")
        reader = crypto.DecryptingReader(
            raw, header=header, clinic_key=plain_key, clinic_uuid=SNAPSHOT_NAMESPACE, object_key=snapshot.data_key
        )
        with contextlib.closing(reader), target.open("wb") as out:
            while chunk := reader.read(1024 * 1024):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    finally:
        raw.close()
    if digest.hexdigest() != snapshot.sha256:
        raise ObjectCorrupt(f"Snapshot {snapshot.snapshot_id} does not match the digest in its manifest.")


def database_snapshot_check(snapshot: Snapshot, *, folder: Path) -> Path:
    """Decrypt a snapshot into ``folder`` and check it (digest, SQLite integrity); return the file."""
    target = folder / f"{snapshot.snapshot_id}.sqlite3"
    _snapshot_decrypt(snapshot, target)
    connection = sqlite3.connect(target)
    try:
        result = connection.execute("PRAGMA integrity_check").fetchone()[0]
        tables = connection.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    finally:
        connection.close()
    if result != "ok" or not tables:
        raise ObjectCorrupt(f"Snapshot {snapshot.snapshot_id} is not a sound SQLite database ({result}).")
    return target


def database_snapshot_restore(*, at: datetime | None = None, database_path: Path | None = None) -> Snapshot:
    """Replace the SQLite database with the newest snapshot at or before ``at``.

    The snapshot is decrypted and checked next to the database before anything is replaced; the file it
    replaces is kept beside it (``<name>.before-restore-<time>``), so a restore loses nothing either.
    Stop the portal's processes first.
    """
    target = database_path or sqlite_path()
    snapshot = database_snapshot_pick(at=at)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=target.parent) as folder:
        restored = database_snapshot_check(snapshot, folder=Path(folder))
        if database_path is None:
            connections.close_all()
        if target.exists():
            target.rename(target.with_name(f"{target.name}.before-restore-{_stamp(timezone.now())}"))
        for suffix in ("-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                target.with_name(target.name + suffix).unlink()
        os.replace(restored, target)
    logger.warning("database restored from snapshot %s (%s)", snapshot.snapshot_id, snapshot.created_at.isoformat())
    return snapshot


# --- retention ------------------------------------------------------------------------------------


def _to_prune(moments: list[tuple[datetime, str]], *, now: datetime) -> list[str]:
    """Keep everything of the last DATABASE_BACKUP_KEEP_HOURS, then the newest of each day for KEEP_DAYS."""
    recent = now - timedelta(hours=settings.DATABASE_BACKUP_KEEP_HOURS)
    oldest = now - timedelta(days=settings.DATABASE_BACKUP_KEEP_DAYS)
    newest_per_day: dict[str, str] = {}
    for moment, key in sorted(moments):
        newest_per_day[moment.date().isoformat()] = key
    keep_daily = set(newest_per_day.values())
    doomed = []
    for moment, key in moments:
        if moment >= recent or (moment >= oldest and key in keep_daily):
            continue
        doomed.append(key)
    return doomed


def database_backups_prune(*, now: datetime | None = None) -> int:
    """Delete snapshots and anchors past the retention (runs with the replica's delete credentials)."""
    now = now or timezone.now()
    replica = stores.get_store("replica")
    removed = 0
    snapshots = database_snapshot_list()
    newest = snapshots[-1].snapshot_id if snapshots else None
    for key in _to_prune([(s.created_at, s.manifest_key) for s in snapshots], now=now):
        snapshot = next(s for s in snapshots if s.manifest_key == key)
        if snapshot.snapshot_id == newest:
            continue
        # Manifest first: a half-pruned snapshot is then invisible rather than named but broken.
        replica.delete(snapshot.manifest_key)
        replica.delete(snapshot.data_key)
        removed += 1
    anchors = []
    for key in replica.list(ANCHOR_PREFIX):
        name = key.rsplit("/", 1)[-1].removesuffix(".json")
        with contextlib.suppress(ValueError):
            anchors.append((datetime.strptime(name, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC), key))
    latest = max(anchors)[1] if anchors else None
    for key in _to_prune(anchors, now=now):
        if key != latest:
            replica.delete(key)
            removed += 1
    return removed
