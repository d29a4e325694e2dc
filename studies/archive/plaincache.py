"""A small cache of decrypted objects, so that frame, rendered and bulk data requests of one instance
(a viewer asks for each frame of a multi-frame image, or for an image and then its thumbnail) do not
decrypt the whole object again every time.

What it is and why it is correct with several processes:

- Per process, in memory only: decrypted patient data never goes to Redis or disk through it, and
  nothing is shared that another process would have to invalidate.
- Bounded: at most ``DECRYPTED_CACHE_BYTES`` per process (least recently used out first); an object
  larger than a quarter of that is never cached, it is read as a stream as before. Entries expire after
  ``DECRYPTED_CACHE_SECONDS`` so plaintext does not linger in memory.
- Keyed by clinic and object key, and filled only by ``objects.object_read_cached`` after ``object_open`` (which checks that the key is the
  clinic's and authenticates every byte): a clinic can never be served another clinic's entry, since
  the lookup names the asking clinic.
- Deletion: callers look the instance up in the database, through the clinic, first (a deleted or
  trashed instance, or one deleted by another process, is a 404 before the cache is asked); object keys
  are random and never reused for other content, so a cached entry can only be stale by being orphaned.
  ``object_delete`` forgets its entry at once in the process that deletes it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict

from django.conf import settings

from tenants.models import Clinic

_lock = threading.Lock()
_entries: OrderedDict[tuple[uuid.UUID, str], tuple[float, bytes]] = OrderedDict()
_size = 0


def budget() -> int:
    return int(getattr(settings, "DECRYPTED_CACHE_BYTES", 64 * 1024 * 1024))


def _lifetime() -> float:
    return float(getattr(settings, "DECRYPTED_CACHE_SECONDS", 300))


def cached(*, clinic: Clinic, key: str) -> bytes | None:
    """The decrypted bytes of this clinic's object if this process holds them (and they have not expired)."""
    global _size
    now = time.monotonic()
    with _lock:
        entry = _entries.get((clinic.uuid, key))
        if entry is None:
            return None
        expires, data = entry
        if expires < now:
            del _entries[(clinic.uuid, key)]
            _size -= len(data)
            return None
        _entries.move_to_end((clinic.uuid, key))
        return data


def remember(*, clinic: Clinic, key: str, data: bytes) -> None:
    """Keep an object's decrypted bytes, evicting the least recently used; too large ones are not kept."""
    global _size
    limit = budget()
    if len(data) > limit // 4:
        return
    with _lock:
        old = _entries.pop((clinic.uuid, key), None)
        if old is not None:
            _size -= len(old[1])
        _entries[(clinic.uuid, key)] = (time.monotonic() + _lifetime(), data)
        _size += len(data)
        while _size > limit and _entries:
            _, (_, evicted) = _entries.popitem(last=False)
            _size -= len(evicted)


def forget(*, clinic: Clinic, key: str) -> None:
    global _size
    with _lock:
        old = _entries.pop((clinic.uuid, key), None)
        if old is not None:
            _size -= len(old[1])


def clear() -> None:
    global _size
    with _lock:
        _entries.clear()
        _size = 0


def held_bytes() -> int:
    """How many decrypted bytes this process holds (for tests and diagnostics)."""
    with _lock:
        return _size
