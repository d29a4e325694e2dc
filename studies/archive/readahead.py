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
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TypeVar

from django.db import connection

from studies.archive.objects import ObjectStream

# Items waiting in the queue at most: with 1 MiB segments, about this many MiB per response.
DEPTH = 8
_END = object()
T = TypeVar("T")


class _Failure:
    """An error of one item, handed over in order, in that item's place."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Fatal(_Failure):
    """An error that ended the helper thread: nothing comes after it."""


def _ahead(produce: Callable[[Callable[[object], bool]], None], depth: int) -> tuple[queue.Queue, threading.Event]:
    """Run ``produce(put)`` in a helper thread; ``put`` returns False once the consumer has stopped."""
    buffer: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            produce(put)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Fatal(exc))
        finally:
            # Opening an object may read a clinic key the cache no longer holds: never keep that connection.
            connection.close()

    threading.Thread(target=run, name="read-ahead", daemon=True).start()
    return buffer, stop


def objects_read_ahead(
    openers: Sequence[Callable[[], ObjectStream]], *, first: ObjectStream | None = None, depth: int = DEPTH
) -> Generator[Iterator[bytes], None, None]:
    """Yield, for each opener in order, an iterator of that object's decrypted segments.

    ``first`` is the first object already opened by the caller (so that a store that is down is a clean
    error before the response starts). Errors of later objects are raised where their bytes would be,
    after every byte of the objects before them. Each yielded iterator must be consumed before the next
    one is used (as a multipart writer does).
    """

    def produce(put: Callable[[object], bool]) -> None:
        for index, opener in enumerate(openers):
            source = first if index == 0 and first is not None else opener()
            try:
                # Each segment goes with a flag saying whether it is its object's last: one hand-over per
                # segment, and so per instance for most (a wake-up of the other thread each time).
                data = source.read_chunk()
                while True:
                    following = source.read_chunk() if data else b""
                    if not put((data, not following)):
                        return
                    if not following:
                        break
                    data = following
            finally:
                source.close()

    buffer, stop = _ahead(produce, depth)

    def one_object() -> Iterator[bytes]:
        while True:
            item = buffer.get()
            if isinstance(item, _Failure):
                raise item.error
            data, is_last = item
            if data:
                yield data
            if is_last:
                return

    try:
        for _ in openers:
            yield one_object()
    finally:
        stop.set()
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

    buffer, stop = _ahead(produce, depth)
    try:
        while True:
            item = buffer.get()
            if item is _END:
                return
            if isinstance(item, _Fatal):
                raise item.error
            yield item.error if isinstance(item, _Failure) else item
    finally:
        stop.set()
