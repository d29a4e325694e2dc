"""Synchronous replication: encrypt once, write the same ciphertext to both stores in parallel.

Used by ingest (through ``replication.object_write_for_ingest``, its registered object writer) when
``REPLICATION_MODE=sync``. One encrypting reader feeds two store writers running in two threads
through a bounded tee, so memory stays at a few segments whatever the file size, and the upload takes
about as long as the slower of the two writes instead of their sum. If the replica write fails the
primary write carries on alone (the upload succeeds, the instance stays pending for the sweep); if the
primary write fails the upload fails, as it would without a replica.
"""

from __future__ import annotations

import io
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, BinaryIO

from studies.archive import crypto, keys, objects, stores
from studies.archive.objects import StoredObject
from tenants.models import Clinic

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024
MAX_AHEAD = 4  # chunks the faster writer may run ahead of the slower one


class _Tee:
    """Serve one source's chunks to several readers, each at its own pace, holding at most MAX_AHEAD chunks."""

    def __init__(self, source: crypto.Readable, readers: int) -> None:
        self._source = source
        self._cond = threading.Condition()
        self._chunks: dict[int, bytes] = {}
        self._read = 0  # chunks taken from the source so far
        self._eof = False
        self._error: BaseException | None = None
        self._positions = [0] * readers
        self._alive = [True] * readers

    def _slowest(self) -> int:
        alive = [pos for pos, live in zip(self._positions, self._alive, strict=True) if live]
        return min(alive) if alive else self._read

    def chunk(self, reader: int) -> bytes | None:
        """The reader's next chunk, or None at the end of the source."""
        with self._cond:
            index = self._positions[reader]
            while index >= self._read:
                if self._error is not None:
                    raise self._error
                if self._eof:
                    return None
                if index - self._slowest() >= MAX_AHEAD:
                    self._cond.wait()
                    continue
                try:
                    data = crypto.read_full(self._source, CHUNK)
                except BaseException as exc:
                    self._error = exc
                    self._cond.notify_all()
                    raise
                if not data:
                    self._eof = True
                    self._cond.notify_all()
                    return None
                self._chunks[self._read] = data
                self._read += 1
                self._cond.notify_all()
            data = self._chunks[index]
            self._positions[reader] = index + 1
            self._trim()
            return data

    def _trim(self) -> None:
        keep_from = self._slowest()
        for index in [i for i in self._chunks if i < keep_from]:
            del self._chunks[index]
        self._cond.notify_all()

    def close(self, reader: int) -> None:
        """The reader gave up (its store failed): stop holding chunks for it."""
        with self._cond:
            self._alive[reader] = False
            self._trim()


class _Branch(io.RawIOBase):
    def __init__(self, tee: _Tee, reader: int) -> None:
        super().__init__()
        self._tee = tee
        self._reader = reader
        self._current = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._current:
            if self._done:
                return 0
            chunk = self._tee.chunk(self._reader)
            if chunk is None:
                self._done = True
                return 0
            self._current = memoryview(chunk)
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._current))
        view[:count] = self._current[:count]
        self._current = self._current[count:]
        return count


def object_put_mirrored(*, clinic: Clinic, source: BinaryIO, object_uuid: uuid.UUID) -> tuple[StoredObject, Exception | None]:
    """Encrypt ``source`` once into both stores in parallel; durable in both when it returns cleanly.

    Returns the stored object and the replica's error (None when the replica holds the same bytes).
    Raises the primary store's error if the primary write fails.
    """
    key = objects.object_key_for(clinic=clinic, object_uuid=object_uuid)
    key_id, clinic_key = keys.clinic_key_get(clinic)
    encrypting = crypto.EncryptingReader(
        source, key_id=key_id, clinic_key=clinic_key, clinic_uuid=clinic.uuid, object_key=key,
        segment_size=objects._segment_size(),
    )
    tee = _Tee(encrypting, readers=2)

    def write(store: str, reader: int) -> None:
        branch = io.BufferedReader(_Branch(tee, reader), CHUNK)
        try:
            stores.get_store(store).put(key, branch)
        finally:
            tee.close(reader)

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mirror") as pool:
        primary = pool.submit(write, "primary", 0)
        replica = pool.submit(write, "replica", 1)
        primary_error = primary.exception()
        replica_error = replica.exception()
    if primary_error is not None:
        if replica_error is None:
            # An orphan on the replica: never indexed, ignored by reconcile, purged by lifecycle rules.
            logger.warning("Primary write of %s failed after the replica write succeeded.", key)
        raise primary_error
    stored = StoredObject(key=key, key_id=key_id, size_bytes=encrypting.plaintext_size, sha256=encrypting.sha256)
    if replica_error is not None and not isinstance(replica_error, Exception):
        raise replica_error  # KeyboardInterrupt and the like
    return stored, replica_error
