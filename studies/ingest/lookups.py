"""Lookups one stream of files may reuse for a few seconds instead of repeating them per instance.

A C-STORE association sends one image at a time and waits for each answer, so it cannot be batched;
what it can do is not ask the database again, for every image, what stays the same from one image to
the next: whether the clinic may upload (its subscription), which anonymize-on-ingest rule applies,
which routing rules exist, which study a stored series belongs to (a hint: the index writer checks it again
in its transaction), whether the quota is far from full (a hint too: the reservation decides). A :class:`Lookups` lives as long as its stream (one association) and lives
in that stream's memory only, so nothing here is shared across processes or machines: a change made
elsewhere (a plan lapsing, a rule added) is seen by every stream within ``LOOKUP_SECONDS``, exactly as
if it had been made a moment later. Quota, existing instances, studies and series are never cached:
they are read in the transaction that depends on them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# How long a looked-up answer is reused: short enough that a change made elsewhere applies at once for a
# person, long enough to spare a CT series' images almost every lookup.
LOOKUP_SECONDS = 5.0
# Answers one stream keeps before it drops the expired ones.
MAX_ANSWERS = 1000


class Lookups:
    """Answers reused for at most ``seconds`` within one stream of files (one association)."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = LOOKUP_SECONDS if seconds is None else seconds
        self._answers: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, look_up: Callable[[], T], keep: Callable[[T], bool] | None = None) -> T:
        """The answer to ``key``: reused if looked up less than ``seconds`` ago, else ``look_up()``.

        ``keep`` says whether a fresh answer may be reused at all (default: always).
        """
        now = time.monotonic()
        with self._lock:
            found = self._answers.get(key)
        if found is not None and now - found[0] < self.seconds:
            return found[1]
        answer = look_up()
        if keep is None or keep(answer):
            self.remember(key, answer)
        return answer

    def recall(self, key: str) -> Any:
        """The answer remembered for ``key`` less than ``seconds`` ago, or None."""
        with self._lock:
            found = self._answers.get(key)
        if found is None or time.monotonic() - found[0] >= self.seconds:
            return None
        return found[1]

    def remember(self, key: str, answer: Any) -> None:
        """Keep ``answer`` for ``key`` for the next ``seconds``."""
        now = time.monotonic()
        with self._lock:
            if len(self._answers) >= MAX_ANSWERS:
                # A long-lived stream sees many series: forget what has expired rather than grow.
                self._answers = {k: v for k, v in self._answers.items() if now - v[0] < self.seconds}
            self._answers[key] = (now, answer)


def looked_up(
    lookups: Lookups | None, key: str, look_up: Callable[[], T], keep: Callable[[T], bool] | None = None
) -> T:
    """``lookups.get(key, look_up, keep)``, or a fresh look-up when the caller has no stream to reuse it in."""
    return look_up() if lookups is None else lookups.get(key, look_up, keep)
