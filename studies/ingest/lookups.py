"""Lookups one stream of files may reuse for a few seconds instead of repeating them per instance.

A C-STORE association sends one image at a time and waits for each answer, so it cannot be batched;
what it can do is not ask the database again, for every image, what stays the same from one image to
the next: whether the clinic may upload (its subscription), which anonymize-on-ingest rule applies,
which routing rules exist. A :class:`Lookups` lives as long as its stream (one association) and lives
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
            with self._lock:
                self._answers[key] = (now, answer)
        return answer


def looked_up(
    lookups: Lookups | None, key: str, look_up: Callable[[], T], keep: Callable[[T], bool] | None = None
) -> T:
    """``lookups.get(key, look_up, keep)``, or a fresh look-up when the caller has no stream to reuse it in."""
    return look_up() if lookups is None else lookups.get(key, look_up, keep)
