"""Group commit: files handed in by several threads at once are ingested together, each answered alone.

A DICOM sender waits for each C-STORE answer before it sends the next image, and that answer may be given
only once the image is durable and indexed: one association can never batch. Several associations can.
A :class:`GroupCommit` is shared by the threads that receive files for one clinic and one origin (the
associations of one node at the DIMSE listener, a migration's C-GET associations): a thread hands in its
file and waits; the first to find no batch running becomes the leader, lingers a moment for the files
the other active senders are about to hand in, and runs the batch for everyone (one parse each, one folder
fsync, one index transaction, one queue message). Each thread then returns its own file's answer, which
exists only once that batch has returned, i.e. once its rows are committed.

Only speed depends on the grouping: which files share a batch, and whether they share it with files of
another process, changes nothing a sender or the index can see. Everything that must hold across
processes (quota, one row per SOP Instance UID, counters) is decided by the database in ``pipeline``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

# What a sender hands in (a file's path, or a path with what the sender said of it), and its answer.
T = TypeVar("T")
R = TypeVar("R")

# At most this many files in one batch.
GROUP_LIMIT = 32
# How long a leader waits at most for the files of the other active senders before running its batch
# (it runs as soon as they are all in). Their answers, the next file on the wire and pynetdicom decoding
# it take a few ms per 0.5 MB image; 5 ms made batches of 2 out of 4 associations, 20 ms of 3.9. A lone
# sender never waits (see _expected).
GROUP_LINGER_SECONDS = 0.02
# A thread that handed in a file this recently counts as a sender whose next file is on its way.
ACTIVE_SECONDS = 0.5


class _Waiting(Generic[T, R]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Ingest the files several threads hand in through ``ingest`` (a batch function), together.

    ``ingest(items)`` returns one answer per item, in order; should it raise, every file of that batch
    gets the exception (raised again in the thread that handed the file in).
    """

    def __init__(
        self,
        ingest: Callable[[list[T]], list[R]],
        *,
        limit: int = GROUP_LIMIT,
        linger_seconds: float | None = None,
    ) -> None:
        self._ingest, self.limit = ingest, limit
        self.linger_seconds = GROUP_LINGER_SECONDS if linger_seconds is None else linger_seconds
        self._changed = threading.Condition()
        self._waiting: list[_Waiting[T, R]] = []
        self._busy = False
        self._receiving = 0
        self._last_seen: dict[int, float] = {}
        # Batches run and files ingested, for benchmarks and tests.
        self.batches = 0
        self.files = 0

    @contextlib.contextmanager
    def receiver(self) -> Iterator[None]:
        """Count the calling thread as a sender for as long as it receives (a batch waits for its file)."""
        with self._changed:
            self._receiving += 1
        try:
            yield
        finally:
            with self._changed:
                self._receiving -= 1
                self._changed.notify_all()

    def forget(self, thread_id: int) -> None:
        """A sender's stream ended (its association closed): batches stop waiting for its files."""
        with self._changed:
            self._last_seen.pop(thread_id, None)
            self._changed.notify_all()

    def _expected(self, now: float) -> int:
        """How many files a batch may wait for: one per sender receiving or seen a moment ago."""
        recent = 0
        for thread_id, seen in list(self._last_seen.items()):
            if now - seen < ACTIVE_SECONDS:
                recent += 1
            else:
                del self._last_seen[thread_id]
        return min(max(self._receiving, recent), self.limit)

    def submit(self, item: T) -> R:
        """Ingest the file with whatever the other senders hand in meanwhile; return its own answer."""
        mine: _Waiting[T, R] = _Waiting(item)
        with self._changed:
            self._last_seen[threading.get_ident()] = time.monotonic()
            self._waiting.append(mine)
            self._changed.notify_all()
            while True:
                while not mine.done and self._busy:
                    self._changed.wait()
                if mine.done:
                    return self._answer(mine)
                self._busy = True
                linger_until = time.monotonic() + self.linger_seconds
                while len(self._waiting) < self._expected(time.monotonic()):
                    left = linger_until - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)
                batch, self._waiting = self._waiting[: self.limit], self._waiting[self.limit :]
                # Run the batch outside the lock, so the others can hand in their next files meanwhile.
                self._changed.release()
                try:
                    self._run(batch)
                finally:
                    self._changed.acquire()
                    self._busy = False
                    self._changed.notify_all()

    def _run(self, batch: list[_Waiting[T, R]]) -> None:
        try:
            answers = self._ingest([w.item for w in batch])
        except BaseException as exc:
            for waiting in batch:
                waiting.error, waiting.done = exc, True
            if not isinstance(exc, Exception):
                raise
            return
        for waiting, answer in zip(batch, answers, strict=True):
            waiting.result, waiting.done = answer, True
        self.batches += 1
        self.files += len(batch)

    @staticmethod
    def _answer(waiting: _Waiting[T, R]) -> R:
        if waiting.error is not None:
            raise waiting.error
        return waiting.result  # type: ignore[return-value]
