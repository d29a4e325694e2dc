"""Decrypt ahead of the sender: stream several objects in order while a helper thread reads the next ones.

Decryption (AES-GCM in ``cryptography``) and store reads release the GIL, so a thread that decrypts the
next chunks while the request thread writes the previous ones to the socket roughly overlaps the two.
The helper rarely touches the database (the clinic key is cached by the first open, done by the caller;
a connection it opens is closed when it ends) and stops as soon as the consumer does (a client that goes away).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from typing import BinaryIO

from django.db import connection

CHUNK = 1024 * 1024
# Chunks decrypted ahead at most: bounds the memory of one response to about this many MiB.
DEPTH = 8
_END = object()


def objects_read_ahead(
    openers: Sequence[Callable[[], BinaryIO]], *, first: BinaryIO | None = None, chunk: int = CHUNK
) -> Generator[Iterator[bytes], None, None]:
    """Yield, for each opener in order, an iterator of that object's decrypted chunks.

    ``first`` is the first object already opened by the caller (so that a store that is down is a clean
    error before the response starts). Errors of later objects are raised where their bytes would be.
    Each yielded iterator must be consumed before the next one is used (as a multipart writer does).
    """
    buffer: queue.Queue[object] = queue.Queue(maxsize=DEPTH)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def read_all() -> None:
        try:
            for index, opener in enumerate(openers):
                source = first if index == 0 and first is not None else opener()
                with closing(source):
                    while data := source.read(chunk):
                        if not put(data):
                            return
                if not put(_END):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(exc)
        finally:
            # Opening an object may read a clinic key the cache no longer holds: never keep that connection.
            connection.close()

    thread = threading.Thread(target=read_all, name="read-ahead", daemon=True)
    thread.start()

    def one_object() -> Iterator[bytes]:
        while True:
            item = buffer.get()
            if isinstance(item, BaseException):
                raise item
            if not isinstance(item, bytes):
                return  # _END: this object is complete
            yield item

    try:
        for _ in openers:
            yield one_object()
    finally:
        stop.set()
        if first is not None:
            first.close()
