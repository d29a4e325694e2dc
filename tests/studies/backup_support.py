"""Helpers for the backup tests: real DICOM files, stored through the real ingest, and Celery modes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from portal.celery import app
from studies.archive import keys, stores
from studies.ingest import Origin, instances_ingest
from studies.models import ClinicKey, Instance, Patient, Series, Study
from tenants.models import Clinic


def stored_bytes(store: str, key: str) -> bytes:
    with stores.get_store(store).open(key) as stream:
        return stream.read()


def local_path(settings_url: str, key: str) -> Path:
    """The file of an object in a file:// store."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    return Path(url2pathname(urlparse(settings_url).path)) / key


@contextmanager
def celery_eager() -> Iterator[None]:
    """Run .delay() inline (for tests of the code around tasks; the fault tests use a real worker)."""
    previous = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    try:
        yield
    finally:
        app.conf.task_always_eager, app.conf.task_eager_propagates = previous


def use_redis_broker() -> str:
    """Point this process's Celery app at the test Redis database; returns the URL (workers get it too)."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/8")
    if app.conf.broker_url != url:
        app.conf.broker_url = url
        if app._pool is not None:  # connections made for the old broker URL
            app._pool.force_close_all()
            app._pool = None
        app.amqp._producer_pool = None
    return url


@pytest.fixture(autouse=True)
def backup_cache_clear() -> Iterator[None]:
    """Backup keeps small per-process flags in the cache (replica down, manifest written): start clean."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def ingest_replicated(clinic, paths, capture) -> list[Instance]:
    """Ingest one batch as a client would; the queued replication (and its sidecar) runs inline."""
    with celery_eager(), capture(execute=True):
        items = instances_ingest(clinic=clinic, paths=[str(p) for p in paths], origin=Origin.system(source="upload"))
    assert all(item.error is None for item in items)
    return [item.result.instance for item in items]


def lose_the_database() -> None:
    """The index and the clinic keys are gone (the clinic row is kept only to keep the test short)."""
    Instance.objects.all().delete()
    Series.objects.all().delete()
    Study.objects.all().delete()
    Patient.objects.all().delete()
    ClinicKey.objects.all().delete()
    Clinic.objects.update(used_bytes=0)
    keys.key_cache_clear()
