"""/healthz and /readyz: up, and 503 naming what is down (database, broker, either store)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from http import HTTPStatus
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def closed_port() -> int:
    """A local TCP port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_broker(settings):
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        pytest.skip("TEST_REDIS_URL is not set")
    settings.CELERY_BROKER_URL = url
    return url


def test_healthz_answers_without_signing_in(client):
    response = client.get("/healthz")

    assert response.status_code == HTTPStatus.OK
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_readyz_is_ok_when_database_redis_broker_and_both_stores_are_up(client, db, redis_broker):
    response = client.get("/readyz")

    assert response.status_code == HTTPStatus.OK
    assert response.json() == {
        "status": "ok", "checked": ["database", "broker", "primary_store", "replica_store"],
    }


def test_readyz_is_ok_with_the_default_file_broker(client, db, settings, tmp_path):
    for folder in ("queue", "processed"):
        (tmp_path / folder).mkdir()
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(tmp_path / "queue"), "data_folder_out": str(tmp_path / "queue"),
        "processed_folder": str(tmp_path / "processed"),
    }

    assert client.get("/readyz").status_code == HTTPStatus.OK


def test_readyz_names_a_broker_on_a_closed_port(client, db, settings):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{closed_port()}/0"

    response = client.get("/readyz")

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    body = response.json()
    assert body["status"] == "unavailable"
    assert list(body["down"]) == ["broker"]
    # The public answer names the component, not where it lives.
    assert "127.0.0.1" not in json.dumps(body)


def test_readyz_names_a_missing_file_broker_folder(client, db, settings, tmp_path):
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(tmp_path / "gone")}

    response = client.get("/readyz")

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert list(response.json()["down"]) == ["broker"]


def test_readyz_names_an_unusable_primary_store_folder(client, db, redis_broker, settings, tmp_path):
    # A file where the folder should be: unusable even for root, who ignores permission bits.
    blocker = tmp_path / "primary"
    blocker.write_text("not a folder")
    settings.PRIMARY_STORE_URL = blocker.as_uri()

    response = client.get("/readyz")

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    down = response.json()["down"]
    assert list(down) == ["primary_store"]
    assert "primary store" in down["primary_store"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to any folder")
def test_readyz_names_a_read_only_replica_store_folder(client, db, redis_broker, settings, tmp_path):
    folder = tmp_path / "replica"
    folder.mkdir()
    folder.chmod(0o500)
    settings.REPLICA_STORE_URL = folder.as_uri()

    response = client.get("/readyz")

    folder.chmod(0o700)
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert list(response.json()["down"]) == ["replica_store"]


def test_readyz_names_a_replica_s3_endpoint_that_is_down(client, db, redis_broker, settings):
    settings.REPLICA_STORE_URL = (
        f"s3://replica?endpoint_url=http://127.0.0.1:{closed_port()}&region_name=us-east-1"
        "&connect_timeout=1&max_attempts=1"
    )
    settings.REPLICA_STORE_ACCESS_KEY_ID = "replica-key"
    settings.REPLICA_STORE_SECRET_ACCESS_KEY = "replica-secret"

    response = client.get("/readyz")

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert list(response.json()["down"]) == ["replica_store"]


def test_readyz_is_ok_with_both_stores_on_s3(client, db, redis_broker, s3_stores):
    assert client.get("/readyz").status_code == HTTPStatus.OK


def test_readyz_names_a_missing_s3_bucket(client, db, redis_broker, s3_stores, settings):
    settings.PRIMARY_STORE_URL = settings.PRIMARY_STORE_URL.replace(s3_stores["primary"], "no-such-bucket")

    response = client.get("/readyz")

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert list(response.json()["down"]) == ["primary_store"]


def test_readiness_names_a_database_that_is_down(tmp_path):
    """In a fresh process, since the test database connection must stay up for everything else."""
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{closed_port()}/portal",
        "CELERY_BROKER_URL": "filesystem://",
        "PORTAL_VAR_DIR": str(tmp_path / "var"),
        "PRIMARY_STORE_URL": (tmp_path / "primary").as_uri(),
        "REPLICA_STORE_URL": (tmp_path / "replica").as_uri(),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }
    code = (
        "import django, json; django.setup(); from portal.health import readiness_problems; "
        "print(json.dumps(readiness_problems()))"
    )

    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60, check=True)

    problems = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(problems) == ["database"]
