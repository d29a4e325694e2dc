"""A ZIP archive uploaded in the browser is unpacked by a real Celery worker on the Redis broker."""

from __future__ import annotations

import os
import time
import zipfile
from http import HTTPStatus

import kombu.pools
import pytest
from celery.contrib.testing.worker import start_worker
from django.urls import reverse

from portal.celery import app
from studies.models import Instance, UploadBatch
from tests.dicom_files import sample_path, write_ct


@pytest.fixture
def redis_worker(settings):
    """Start a Celery worker thread consuming from the test Redis database (not eager mode)."""
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        pytest.skip("TEST_REDIS_URL is not set")
    previous = (app.conf.broker_url, app.conf.broker_transport_options, app.conf.task_always_eager)
    settings.REPLICATION_MODE = "sync"

    def point_at(broker_url: str, options: dict) -> None:
        app.conf.broker_url = broker_url
        app.conf.broker_transport_options = options
        if app._pool is not None:  # connections made for the previous broker
            app._pool.force_close_all()
            app._pool = None
        app.amqp._producer_pool = None
        # kombu keeps producer pools per connection URL globally; a stopped worker leaves them closed.
        kombu.pools.reset()

    point_at(url, {})
    app.conf.task_always_eager = False
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge("celery")
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30):
        yield app
    point_at(previous[0], previous[1])
    app.conf.task_always_eager = previous[2]


@pytest.mark.django_db(transaction=True)
def test_zip_upload_is_unpacked_by_a_real_worker(redis_worker, client, clinic, uploader, tmp_path):
    client.force_login(uploader)
    archive = tmp_path / "cd.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("CD/DICOMDIR", sample_path("dicomdirtests/DICOMDIR").read_bytes())
        for i in range(3):
            zf.writestr(f"CD/IMG/{i}", write_ct(tmp_path / f"{i}.dcm", instance_number=i).read_bytes())

    with archive.open("rb") as fileobj:
        response = client.post(
            reverse("studies:upload-file", kwargs={"clinic_slug": clinic.slug}), {"file": fileobj, "path": "cd.zip"}
        )
    status_url = response.json()["status_url"]
    deadline = time.monotonic() + 60
    status = client.get(status_url).json()
    while status["status"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        status = client.get(status_url).json()

    assert response.status_code == HTTPStatus.ACCEPTED
    assert status["status"] == "done", status
    assert status["counts"] == {"stored": 3, "already_present": 0, "skipped": 1, "rejected": 0}
    assert Instance.objects.for_clinic(clinic).count() == 3
    assert UploadBatch.objects.get().staging_key == ""
