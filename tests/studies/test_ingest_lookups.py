"""The lookups a stream of files (one C-STORE association) reuses for a few seconds."""

from __future__ import annotations

import time

from studies.ingest.lookups import Lookups, looked_up


def test_an_answer_is_reused_within_its_window_and_looked_up_again_after():
    asked: list[int] = []

    def look_up() -> int:
        asked.append(1)
        return len(asked)

    lookups = Lookups(seconds=0.2)
    assert [lookups.get("plan", look_up) for _ in range(3)] == [1, 1, 1]
    time.sleep(0.25)
    assert lookups.get("plan", look_up) == 2  # a change made elsewhere is seen once the window passed


def test_an_answer_keep_refuses_is_never_reused():
    asked: list[str] = []

    def rules() -> list[str]:
        asked.append("x")
        return ["rule"]

    lookups = Lookups()
    lookups.get("rules", rules, keep=lambda found: not found)
    lookups.get("rules", rules, keep=lambda found: not found)
    assert len(asked) == 2


def test_without_a_stream_every_lookup_is_fresh():
    asked: list[int] = []
    for _ in range(2):
        looked_up(None, "plan", lambda: asked.append(1))
    assert len(asked) == 2
