"""The encrypted archive service: what the rest of the code uses to store and read DICOM objects.

``object_put`` encrypts while streaming from its source and returns once the object is durable in
the store. ``object_open`` returns a read-only stream that releases plaintext only after each
segment has been authenticated; if the primary store fails (missing, corrupt or unreachable object),
it reads from the replica instead, even half-way through a stream, and reports the failure through
``on_primary_read_failure``.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol

from django.conf import settings

from studies.archive import crypto, keys, plaincache, stores
from studies.archive.errors import ArchiveError, ObjectCorrupt, ObjectMissing, StorageUnavailable
from tenants.models import Clinic

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

logger = logging.getLogger(__name__)

# The failures that a second copy can cure; KeyUnavailable (a missing master key) cannot.
FAILOVER_ERRORS = (ObjectMissing, ObjectCorrupt, StorageUnavailable)
READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    key: str  # "clinics/<clinic uuid>/objects/<object uuid>" (no patient data)
    key_id: str  # clinic key id used
    size_bytes: int  # plaintext size
    sha256: str  # plaintext SHA-256 hex


ReadFailureHook = Callable[..., object]  # called as hook(clinic=..., key=...)
_read_failure_hooks: list[ReadFailureHook] = []


def read_failure_hook_register(hook: ReadFailureHook) -> None:
    """Add a function called when a read had to fall back to the replica (backup queues a repair)."""
    if hook not in _read_failure_hooks:
        _read_failure_hooks.append(hook)


def on_primary_read_failure(clinic: Clinic, key: str) -> None:
    """Called when a read had to fall back to the replica: run the registered hooks (a repair, issue 4)."""
    logger.warning("primary store failed to serve object %s of clinic %s; read from the replica", key, clinic.uuid)
    for hook in list(_read_failure_hooks):
        hook(clinic=clinic, key=key)


def object_key_for(*, clinic: Clinic, object_uuid: uuid.UUID) -> str:
    """Return the store key of an object: opaque ids only, never patient data."""
    return f"clinics/{clinic.uuid}/objects/{uuid.UUID(str(object_uuid))}"


def _key_check(clinic: Clinic, key: str) -> None:
    if not key.startswith(f"clinics/{clinic.uuid}/"):
        # Same answer as for an absent object: another clinic's objects do not exist for this one.
        raise ObjectMissing(f"No object {key} in this clinic.", key=key)
    stores.key_check(key)


def _segment_size() -> int:
    return int(getattr(settings, "ARCHIVE_SEGMENT_SIZE", crypto.DEFAULT_SEGMENT_SIZE))


def segment_size() -> int:
    """The segment size new objects are encrypted with (their stored size follows from it)."""
    return _segment_size()


def object_put(
    *, clinic: Clinic, source: BinaryIO, object_uuid: uuid.UUID, store: str = "primary", folder_sync: bool = True
) -> StoredObject:
    """Encrypt ``source`` (read to its end) into the store; durable when this returns.

    Raises StorageUnavailable if the store fails; nothing is left under the key then (local stores
    rename a complete file into place, S3 aborts an unfinished multipart upload). With
    ``folder_sync=False`` the object is durable only after :func:`objects_folders_sync` (a batch's
    objects share one folder fsync).
    """
    key = object_key_for(clinic=clinic, object_uuid=object_uuid)
    key_id, clinic_key = keys.clinic_key_get(clinic)
    reader = crypto.EncryptingReader(
        source,
        key_id=key_id,
        clinic_key=clinic_key,
        clinic_uuid=clinic.uuid,
        object_key=key,
        segment_size=_segment_size(),
    )
    stores.get_store(store).put(key, reader, folder_sync=folder_sync)
    return StoredObject(key=key, key_id=key_id, size_bytes=reader.plaintext_size, sha256=reader.sha256)


def objects_folders_sync(*, keys: Sequence[str], store: str = "primary") -> None:
    """Make durable the objects put with ``folder_sync=False`` (one fsync per folder, not per object)."""
    if keys:
        stores.get_store(store).folders_sync(keys)


def _open_from(
    clinic: Clinic,
    key: str,
    store: str,
    *,
    clinic_keys: Mapping[str, bytes] | None = None,
    buffers: crypto.SegmentBuffers | None = None,
) -> crypto.DecryptingReader:
    raw = stores.get_store(store).open(key)
    try:
        header = crypto.header_read(raw)
        # ``clinic_keys`` holds only keys already checked to be this clinic's (ObjectStreams).
        clinic_key = (clinic_keys or {}).get(header.key_id) or keys.clinic_key_for_object(
            clinic=clinic, key_id=header.key_id
        )
        reader = crypto.DecryptingReader(
            raw, header=header, clinic_key=clinic_key, clinic_uuid=clinic.uuid, object_key=key, buffers=buffers
        )
        # Authenticate the first segment now, so a bad object fails here and not in a half-sent response.
        reader.prime()
    except BaseException:
        raw.close()
        raise
    return reader


def _report_primary_failure(clinic: Clinic, key: str, error: Exception) -> None:
    logger.warning("object %s of clinic %s: primary read failed (%s)", key, clinic.uuid, type(error).__name__)
    try:
        # Looked up at call time so that the hook installed by the backup code (or a test) is used.
        globals()["on_primary_read_failure"](clinic, key)
    except Exception:  # noqa: BLE001 - a broken repair hook must not break a read the replica can serve
        logger.exception("on_primary_read_failure hook failed for object %s", key)


class _FailoverReader(io.RawIOBase):
    """Plaintext from the primary; on a failure, the rest of it from the replica."""

    def __init__(
        self,
        clinic: Clinic,
        key: str,
        current: crypto.DecryptingReader,
        *,
        on_replica: bool,
        clinic_keys: Mapping[str, bytes] | None = None,
    ) -> None:
        super().__init__()
        self._clinic = clinic
        self._key = key
        self._clinic_keys = clinic_keys
        self._current = current
        self._on_replica = on_replica
        self._position = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: WriteableBuffer) -> int:
        try:
            count = self._current.readinto(buffer)
        except FAILOVER_ERRORS as error:
            if self._on_replica:
                raise
            self._switch_to_replica(error)
            count = self._current.readinto(buffer)
        self._position += count or 0
        return count or 0

    def read_chunk(self) -> bytes:
        """The next authenticated plaintext, as decrypted (a segment), without a copy; b"" at the end."""
        try:
            data = self._current.read_chunk()
        except FAILOVER_ERRORS as error:
            if self._on_replica:
                raise
            self._switch_to_replica(error)
            data = self._current.read_chunk()
        self._position += len(data)
        return data

    def _switch_to_replica(self, error: Exception) -> None:
        _report_primary_failure(self._clinic, self._key, error)
        replica: crypto.DecryptingReader | None = None
        try:
            # Its own buffers: the primary's shared ones may still hold what it had read ahead.
            replica = _open_from(self._clinic, self._key, "replica", clinic_keys=self._clinic_keys)
            # Skip what the caller already has; those replica bytes are authenticated like the rest.
            remaining = self._position
            while remaining:
                skipped = replica.read(min(remaining, READ_CHUNK))
                if not skipped:
                    raise ObjectCorrupt(f"The replica copy of {self._key} is shorter than the primary one.")
                remaining -= len(skipped)
        except FAILOVER_ERRORS as replica_error:
            if replica is not None:
                replica.close()
            logger.warning("object %s: replica read failed too (%s)", self._key, type(replica_error).__name__)
            raise error from replica_error
        self._current.close()
        self._current = replica
        self._on_replica = True

    def close(self) -> None:
        if not self.closed:
            self._current.close()
        super().close()


def object_open(*, clinic: Clinic, key: str, store: str | None = None) -> BinaryIO:
    """Open an object for streamed, authenticated reading.

    With ``store=None`` (the default) the primary is read and the replica takes over on failure;
    naming a store reads only that one (verification). Raises ObjectCorrupt, ObjectMissing,
    StorageUnavailable, or KeyUnavailable when the master key of the clinic key is not configured.
    """
    if store is not None:
        _key_check(clinic, key)
        return io.BufferedReader(_open_from(clinic, key, store))
    return io.BufferedReader(_failover_open(clinic, key))


def object_open_with_keys(
    *, clinic_uuid: uuid.UUID, key: str, clinic_keys: Mapping[str, bytes], store: str = "replica"
) -> tuple[crypto.Header, crypto.DecryptingReader]:
    """Open one object of ``store`` for authenticated reading with the clinic keys given (key id -> key).

    It touches no database, for the rebuild's workers and threads. Raises ValueError for a key id that
    ``clinic_keys`` lacks; closing the reader closes the store's stream.
    """
    raw = stores.get_store(store).open(key)
    try:
        header = crypto.header_read(raw)
        clinic_key = clinic_keys.get(header.key_id)
        if clinic_key is None:
            raise ValueError(f"unknown clinic key {header.key_id}")
        return header, crypto.DecryptingReader(
            raw, header=header, clinic_key=clinic_key, clinic_uuid=clinic_uuid, object_key=key
        )
    except BaseException:
        raw.close()
        raise


class ObjectStream(Protocol):
    """An open object read segment by segment: what ``object_stream_open`` returns."""

    def read_chunk(self) -> bytes: ...

    def close(self) -> None: ...


def object_stream_open(*, clinic: Clinic, key: str) -> ObjectStream:
    """Open an object like ``object_open`` (primary, replica on failure), unbuffered.

    ``read_chunk()`` hands over each authenticated segment as decrypted, with no copy: what a streaming
    sender (WADO-RS, ``readahead``) wants, a buffered reader would copy every segment once more. The
    first segment is authenticated before this returns.
    """
    return _failover_open(clinic, key)


class ObjectStreams:
    """Open one clinic's objects one after another for streaming (the instances of a WADO-RS answer).

    What the objects share is set up once: the clinic keys they name (``key_ids``, from the index) are
    looked up and unwrapped here, in the caller's thread, so that neither each object nor a read-ahead
    thread goes to the database for them; and ciphertext is read into two buffers reused from one object
    to the next. Objects must be read one at a time: each to its end, or closed, before the next is read.

    An object this process holds decrypted (``plaincache``: a viewer asked for its frames) is served from
    memory without reading the store. As for ``object_read_cached``, the caller must have found the
    objects through the clinic in the database first.
    """

    def __init__(self, *, clinic: Clinic, key_ids: Iterable[str] = ()) -> None:
        self.clinic = clinic
        self._clinic_keys: dict[str, bytes] = {}
        for key_id in set(key_ids):
            try:
                self._clinic_keys[key_id] = keys.clinic_key_for_object(clinic=clinic, key_id=key_id)
            except ArchiveError:
                continue  # the object naming it fails when it is opened, as it would on its own
        self._buffers = crypto.SegmentBuffers()

    def open(self, key: str) -> ObjectStream:
        """Open ``key`` like ``object_stream_open`` (primary, replica on failure; first segment authenticated)."""
        _key_check(self.clinic, key)
        cached = plaincache.cached(clinic=self.clinic, key=key)
        if cached is not None:
            return _CachedStream(cached)
        return _failover_open(self.clinic, key, clinic_keys=self._clinic_keys, buffers=self._buffers)


class _CachedStream:
    """An object's decrypted bytes from this process's cache, as one chunk."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def read_chunk(self) -> bytes:
        data, self._data = self._data, None
        return data or b""

    def close(self) -> None:
        self._data = None


def _failover_open(
    clinic: Clinic,
    key: str,
    *,
    clinic_keys: Mapping[str, bytes] | None = None,
    buffers: crypto.SegmentBuffers | None = None,
) -> _FailoverReader:
    _key_check(clinic, key)
    try:
        first = _open_from(clinic, key, "primary", clinic_keys=clinic_keys, buffers=buffers)
        on_replica = False
    except FAILOVER_ERRORS as error:
        _report_primary_failure(clinic, key, error)
        try:
            first = _open_from(clinic, key, "replica", clinic_keys=clinic_keys)
        except FAILOVER_ERRORS as replica_error:
            logger.warning("object %s: replica read failed too (%s)", key, type(replica_error).__name__)
            raise error from replica_error
        on_replica = True
    return _FailoverReader(clinic, key, first, on_replica=on_replica, clinic_keys=clinic_keys)


def object_open_seekable(*, clinic: Clinic, key: str, max_memory: int = 8 * 1024 * 1024) -> BinaryIO:
    """Decrypt the whole object into a seekable temporary file (for parsers such as pydicom).

    Small objects stay in memory, larger ones spill to disk; the caller closes it.
    """
    spool = tempfile.SpooledTemporaryFile(max_size=max_memory)  # noqa: SIM115 - returned to the caller
    try:
        with object_open(clinic=clinic, key=key) as source:
            shutil.copyfileobj(source, spool, READ_CHUNK)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool  # type: ignore[return-value]


def object_read_cached(*, clinic: Clinic, key: str, size_bytes: int | None = None) -> BinaryIO:
    """The decrypted object as a readable file, from this process's bounded cache when it holds it.

    For repeated reads of one instance (frames, rendered images, bulk data): decrypted once, then served
    from memory (see ``plaincache``). The caller must have found the instance through the clinic in the
    database first: that is what makes a deleted instance unreachable in every process. ``size_bytes``
    (the index's plaintext size) lets an object too large to cache stream without being held in memory.
    """
    data = plaincache.cached(clinic=clinic, key=key)
    if data is not None:
        return io.BytesIO(data)
    source = object_open(clinic=clinic, key=key)
    if size_bytes is not None and size_bytes > plaincache.budget() // 4:
        return source
    with source:
        data = source.read()
    plaincache.remember(clinic=clinic, key=key, data=data)
    return io.BytesIO(data)


def object_delete(*, clinic: Clinic, key: str, store: str = "primary") -> None:
    """Delete an object from a store; deleting an absent object is not an error."""
    _key_check(clinic, key)
    plaincache.forget(clinic=clinic, key=key)
    stores.get_store(store).delete(key)
