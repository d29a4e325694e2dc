"""Shared set-up for the benchmarks: a scratch PostgreSQL database and Django on it."""

from __future__ import annotations

from urllib.parse import urlparse


def database_recreate(database_url: str) -> None:
    """Drop and create the benchmark's own database, so each run starts empty."""
    import psycopg

    parsed = urlparse(database_url)
    name = parsed.path.lstrip("/")
    admin_url = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
