"""The default run's file broker keeps up with a steady flow of short tasks (replication messages).

A real ``celery -A portal worker`` subprocess consumes from the file broker of a deployment in a
temporary data folder, started as ``make run`` starts it (settings from the environment, no Redis).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_LEAKY = {"CELERY_BROKER_URL", "REDIS_URL", "DATABASE_URL", "PORTAL_VAR_DIR", "DJANGO_ALLOW_ASYNC_UNSAFE", "CACHE_URL"}

# A task as short as the copy of one instance, without a database or stores behind it: what is measured is
# how fast the worker takes messages from the folder, not what the task does.
PUBLISH = """
import sys, django
django.setup()
from portal.celery import app
for number in range(int(sys.argv[1])):
    app.send_task("celery.accumulate", args=(number,))
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _LEAKY}
    env.update({
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PORTAL_VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    })
    return env


def _wait_for(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _worker_start(env: dict[str, str], log: Path, name: str) -> subprocess.Popen:
    """A real 2-process Celery worker on the file broker, its output in ``log``; kill its group when done."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("celery")), "-A", "portal", "worker", "--concurrency=2",
             "--loglevel=INFO", "--without-mingle", "--without-gossip", "-n", f"{name}-{os.getpid()}@%h"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _succeeded(log: Path) -> int:
    """How many ``celery.accumulate`` tasks the worker's log says succeeded."""
    return len(re.findall(rb"celery\.accumulate\[[^]]*\] succeeded", log.read_bytes()))


def test_worker_drains_a_backlog_faster_than_one_message_per_process_per_second(tmp_path):
    """kombu's file transport slept its polling interval (1 s) whenever the worker held its prefetch
    (2 messages, acks late): a 2-process worker took 2 messages a second however many waited, and
    replication at 20 uploads/s fell minutes behind. 88 of these 120 were done after 30 s then."""
    count = 120
    env = _env(tmp_path)
    subprocess.run([sys.executable, "-c", PUBLISH, str(count)], cwd=ROOT, env=env, check=True, timeout=120)
    log = tmp_path / "worker.log"
    worker = _worker_start(env, log, "drain")
    try:
        assert _wait_for(lambda: b"ready." in log.read_bytes(), 60), log.read_text()
        ready = time.monotonic()
        # Generous for a loaded machine (the fixed transport needs a few seconds), yet half the minute
        # the old one needed.
        finished = _wait_for(lambda: _succeeded(log) >= count, 30)
        assert finished, f"{_succeeded(log)} of {count} tasks done {time.monotonic() - ready:.0f} s after start"
    finally:
        os.killpg(worker.pid, 9)
        worker.wait(30)


PUBLISH_AFTER_AN_EMPTY_FILE = """
import os, sys, django
django.setup()
from django.conf import settings
from portal.celery import app
# What kombu's own writer left for a moment, and forever if it died there: a message file, still empty.
folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]
open(os.path.join(folder, "1_00000000-0000-0000-0000-000000000000.celery.msg"), "wb").close()
for number in range(int(sys.argv[1])):
    app.send_task("celery.accumulate", args=(number,))
"""


def test_a_reader_never_takes_a_message_half_written(tmp_path, monkeypatch):
    """kombu named the file before writing it: a worker listing the folder then took an empty message
    (seen under full-speed STOW-RS ingest), which stopped the worker and lost the message."""
    from queue import Empty

    from kombu import Connection
    from kombu.transport import filesystem

    import portal.celery

    folder = tmp_path / "queue"
    folder.mkdir()
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}
    channel = Connection("filesystem://", transport_options=options).default_channel
    looked: list[object] = []
    real_dumps = portal.celery.dumps

    def dumps_while_a_reader_looks(*args, **kwargs):  # type: ignore[no-untyped-def]
        text = real_dumps(*args, **kwargs)
        try:
            looked.append(channel._get("celery"))
        except Empty:
            looked.append(None)
        return text

    monkeypatch.setattr(portal.celery, "dumps", dumps_while_a_reader_looks)
    monkeypatch.setattr(filesystem, "dumps", dumps_while_a_reader_looks)
    channel._put("celery", {"body": "replicate"})
    monkeypatch.undo()

    assert looked == [None]  # nothing to take while it was being written
    assert channel._get("celery") == {"body": "replicate"}
    assert [name for name in os.listdir(folder) if not name.startswith(".")] == []


def test_worker_survives_an_unreadable_message_file(tmp_path):
    """An empty message file stopped the worker ("Unrecoverable error: JSONDecodeError"): none of the
    messages after it ran. Now it is set aside and the worker goes on."""
    count = 5
    env = _env(tmp_path)
    subprocess.run([sys.executable, "-c", PUBLISH_AFTER_AN_EMPTY_FILE, str(count)], cwd=ROOT, env=env, check=True,
                   timeout=120)
    log = tmp_path / "worker.log"
    worker = _worker_start(env, log, "unreadable")
    try:
        assert _wait_for(lambda: _succeeded(log) >= count, 60), log.read_text()
        assert worker.poll() is None  # still running
        assert b"does not decode" in log.read_bytes()
    finally:
        os.killpg(worker.pid, 9)
        worker.wait(30)
