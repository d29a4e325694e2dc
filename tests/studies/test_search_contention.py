"""Searches do not wait for background writers on the SQLite default (issue 19, issue 12's QIDO p95).

With SQLite's default rollback journal a reader cannot start while a writer commits (or spills its
cache) under an exclusive lock: every QIDO request that arrived while replication or thumbnails wrote
waited in SQLite's busy handler, which sleeps in steps of 5 to 100 ms (QIDO series of one study: p95
76 ms against Orthanc's 11 ms in ``make bench-orthanc``). In WAL mode readers read the last committed
state and never wait.
"""

from __future__ import annotations

import sqlite3
import time

import pytest
from django.conf import settings
from django.db.utils import ConnectionHandler

pytestmark = pytest.mark.django_db


def test_a_search_on_sqlite_does_not_wait_for_a_writer_holding_the_database(tmp_path):
    path = tmp_path / "portal.sqlite3"
    # The portal's own SQLite options, with a short lock wait so that a blocked read fails fast.
    handler = ConnectionHandler(
        {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path),
                     "OPTIONS": {**settings.SQLITE_OPTIONS, "timeout": 1}}}
    )
    reader = handler["default"]
    with reader.cursor() as cursor:
        cursor.execute("CREATE TABLE studies (uid TEXT)")
        cursor.execute("INSERT INTO studies VALUES ('1.2.3')")
    writer = sqlite3.connect(path, isolation_level=None)
    # What a committing writer holds (replication marking instances, a thumbnail's series row).
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("INSERT INTO studies VALUES ('1.2.4')")
    try:
        started = time.monotonic()
        with reader.cursor() as cursor:
            cursor.execute("SELECT uid FROM studies")
            rows = cursor.fetchall()
        waited = time.monotonic() - started

        assert rows == [("1.2.3",)]  # the last committed state ...
        assert waited < 0.5  # ... at once, not after the writer
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        handler.close_all()
