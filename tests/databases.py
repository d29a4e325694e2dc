"""The test database's URL, for the portal processes a test starts (listeners, workers, web servers)."""

from __future__ import annotations

from django.db import connection


def database_url() -> str:
    """``DATABASE_URL`` naming the database this test uses, on PostgreSQL or on SQLite."""
    database = connection.settings_dict
    if database["ENGINE"] == "django.db.backends.sqlite3":
        # A file on SQLite too (portal.settings sets the test database's name), so other processes open it.
        return f"sqlite:///{database['NAME']}"
    return f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
