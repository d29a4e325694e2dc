"""A big multi-frame file uploads through a real gunicorn worker whose memory stays far below its size."""

from __future__ import annotations

import os
from http import HTTPStatus

import pytest
from django.urls import reverse

from studies.models import Instance
from tenants import services
from tenants.roles import Role
from tests.dicom_files import write_large_multiframe
from tests.studies.upload_memory_support import (
    gunicorn_server,
    peak_rss_bytes,
    server_env,
    stream_upload,
)

UPLOAD_BYTES = 200 * 1024 * 1024
MEMORY_LIMIT = 160 * 1024 * 1024  # well under the 256 MB budget, and under the file's own size


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_200_mb_upload_keeps_the_web_process_small(clinic, tmp_path, settings):
    env = server_env(settings, CELERY_BROKER_URL=os.environ.get("TEST_REDIS_URL", "memory://"),
                     FILE_UPLOAD_TEMP_DIR=str(tmp_path))
    token = services.api_token_create(clinic=clinic, name="memory-test", role=Role.UPLOADER).secret
    big = write_large_multiframe(tmp_path / "big.dcm", UPLOAD_BYTES)
    url = reverse("studies:upload-file", kwargs={"clinic_slug": clinic.slug})

    with gunicorn_server(env) as (port, worker_pid):
        status, answer = stream_upload(port=port, url=url, path=big, token=token)
        peak = peak_rss_bytes(worker_pid)

    assert status == HTTPStatus.CREATED, answer
    assert answer["outcome"] == "stored"
    assert Instance.objects.for_clinic(clinic).get().size_bytes == big.stat().st_size
    assert peak < MEMORY_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
