"""Decrypt ahead of the sender: a helper thread prepares the next items while the caller sends the current one.

Reading a store (file or S3) and AES-GCM releases the GIL, and so does the sender's socket write, so a
thread that reads and decrypts the next objects while the request thread writes the previous ones
overlaps the two. What is ahead is bounded (``DEPTH`` items in the queue), so one response holds a few
MiB at most whatever the study size. The helper rarely touches the database (the clinic key is cached by
the first open, done by the caller; a connection it opens is closed when it ends) and stops as soon as the
consumer does (a client that goes away).

``objects_read_ahead`` streams the decrypted segments of several objects (WADO-RS); ``items_read_ahead``
prepares whole items with any function (C-MOVE / C-GET read and parse the next instance).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TypeVar

from django.db import connection

from studies.archive.objects import ObjectStream

# Batches of decrypted segments waiting at most, and the size of a batch: a response holds about
# (DEPTH + 2) x BATCH_BYTES at worst (those waiting, the one being filled and the one being sent).
DEPTH = 2
BATCH_BYTES = 2 * 1024 * 1024
_END = object()
T = TypeVar("T")


class _Failure:
    """An error of one item, handed over in order, in that item's place."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Fatal(_Failure):
    """An error that ended the helper thread: nothing comes after it."""


class _Channel:
    """A bounded hand-over from one producer thread to one consumer.

    ``queue.Queue`` locks and waits in Python (a Condition for each side), which cost a WADO-RS answer
    tens of microseconds per instance; two ``SimpleQueue`` (C), one carrying the items and one the free
    places, do the same for a fraction of that.
    """

    def __init__(self, depth: int) -> None:
        self._items: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._free: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(depth):
            self._free.put(None)
        self._stopped = threading.Event()

    def put(self, item: object) -> bool:
        """Hand ``item`` over once there is room; False (and nothing handed over) once the consumer has stopped."""
        while not self._stopped.is_set():
            try:
                self._free.get(timeout=0.5)
            except queue.Empty:
                continue
            if self._stopped.is_set():
                break
            self._items.put(item)
            return True
        return False

    def get(self) -> object:
        item = self._items.get()
        self._free.put(None)
        return item

    def stop(self) -> None:
        self._stopped.set()
        self._free.put(None)  # wake a producer waiting for room now rather than at its next timeout


def _ahead(produce: Callable[[Callable[[object], bool]], None], depth: int) -> _Channel:
    """Run ``produce(put)`` in a helper thread; ``put`` returns False once the consumer has stopped."""
    channel = _Channel(depth)

    def run() -> None:
        try:
            produce(channel.put)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            channel.put(_Fatal(exc))
        finally:
            # Opening an object may read a clinic key the cache no longer holds: never keep that connection.
            connection.close()

    threading.Thread(target=run, name="read-ahead", daemon=True).start()
    return channel


def objects_read_ahead(
    openers: Sequence[Callable[[], ObjectStream]],
    *,
    first: ObjectStream | None = None,
    depth: int = DEPTH,
    batch_bytes: int = BATCH_BYTES,
) -> Generator[Iterator[bytes], None, None]:
    """Yield, for each opener in order, an iterator of that object's decrypted segments.

    ``first`` is the first object already opened by the caller (so that a store that is down is a clean
    error before the response starts). Errors of later objects are raised where their bytes would be,
    after every byte of the objects before them. Each yielded iterator must be consumed before the next
    one is used (as a multipart writer does).

    Segments are handed over in batches of about ``batch_bytes`` (the first batch is one segment, so the
    answer starts at once), ``depth`` batches ahead at most: every hand-over wakes the other thread, and
    one per segment (per instance, for most) cost a quarter of a study's CPU time.
    """

    def produce(put: Callable[[object], bool]) -> None:
        batch: list[tuple[bytes, bool]] = []
        size, limit = 0, 1
        try:
            for index, opener in enumerate(openers):
                source = first if index == 0 and first is not None else opener()
                try:
                    data = source.read_chunk()
                    while True:
                        # Each segment goes with a flag saying whether it is its object's last.
                        following = source.read_chunk() if data else b""
                        batch.append((data, not following))
                        size += len(data)
                        if size >= limit:
                            if not put(batch):
                                return
                            batch, size, limit = [], 0, batch_bytes
                        if not following:
                            break
                        data = following
                finally:
                    source.close()
        except BaseException:
            # What was read before the failure goes out first; the failure follows it (run() hands it over).
            if batch and not put(batch):
                return
            raise
        if batch:
            put(batch)

    channel = _ahead(produce, depth)
    pending: deque[tuple[bytes, bool]] = deque()

    def one_object() -> Iterator[bytes]:
        while True:
            while not pending:
                item = channel.get()
                if isinstance(item, _Failure):
                    raise item.error
                pending.extend(item)  # type: ignore[arg-type]
            data, is_last = pending.popleft()
            if data:
                yield data
            if is_last:
                return

    try:
        for _ in openers:
            yield one_object()
    finally:
        channel.stop()
        if first is not None:
            first.close()


def items_read_ahead(source: Sequence[T], prepare: Callable[[T], object], *, depth: int = 2) -> Iterator[object]:
    """Yield ``prepare(item)`` for each item in order, computed by a helper thread up to ``depth`` ahead.

    An exception of ``prepare`` is yielded in place of that item's result (the caller decides whether
    it ends the run), so one unreadable item does not stop the others.
    """

    def produce(put: Callable[[object], bool]) -> None:
        for item in source:
            try:
                result = prepare(item)
            except Exception as exc:  # noqa: BLE001 - handed over in the item's place
                result = _Failure(exc)
            if not put(result):
                return
        put(_END)

    channel = _ahead(produce, depth)
    try:
        while True:
            item = channel.get()
            if item is _END:
                return
            if isinstance(item, _Fatal):
                raise item.error
            yield item.error if isinstance(item, _Failure) else item
    finally:
        channel.stop()
