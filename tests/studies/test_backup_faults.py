"""Faults, for real: a replica endpoint that goes away, a Celery worker killed mid-replication.

These run a real ``celery -A portal worker`` subprocess on the test Redis database and, for the replica,
moto's S3 server in a subprocess on a port of its own, stopped and started again by the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
import redis
from django.conf import settings as django_settings

from portal.celery import app
from studies.archive import stores
from studies.backup import replication
from studies.models import Instance
from tests.databases import database_url
from tests.dicom_files import write_dicom_files
from tests.factories import ingest_files
from tests.studies.backup_support import (
    backup_cache_clear,  # noqa: F401 - autouse
    stored_bytes,
    use_redis_broker,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
REPLICA_PORT = int(os.environ.get("BACKUP_FAULT_S3_PORT", "5069"))


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"Timed out after {timeout}s waiting for {what}")


class MotoServer:
    """moto's S3 server on its own port, in a subprocess this test controls."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        moto = Path(sys.executable).with_name("moto_server")
        self.process = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )

        def up() -> bool:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1)
                return True
            except OSError:
                return False

        _wait_for(up, 20, "moto server")

    def stop(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None
        _wait_for(lambda: not _port_open(self.port), 10, "moto server to stop")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Worker:
    """A real ``celery -A portal worker`` on the test database, the test Redis and the test stores."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        celery = Path(sys.executable).with_name("celery")
        self.process = subprocess.Popen(
            [str(celery), "-A", "portal", "worker", "-Q", "celery", "--concurrency=2", "--loglevel=INFO",
             "--without-mingle", "--without-gossip", "-n", f"backup-test-{os.getpid()}@%h"],
            cwd=ROOT, env=self.env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        _wait_for(lambda: b"ready." in self.log.read_bytes(), 60, "the Celery worker to start")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children): no clean shutdown, no acks."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None


@pytest.fixture
def broker_url() -> Iterator[str]:
    url = use_redis_broker()
    redis.Redis.from_url(url).flushdb()  # our own Redis database: drop messages of earlier runs
    yield url
    redis.Redis.from_url(url).flushdb()


def _worker_env(broker: str, tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": broker,
        "MASTER_KEYS": django_settings.MASTER_KEYS,
        "PORTAL_VAR_DIR": str(tmp_path / "worker-var"),
        "REPLICATION_MODE": "async",
    }
    for name in ("PRIMARY", "REPLICA"):
        for suffix in ("URL", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY"):
            env[f"{name}_STORE_{suffix}"] = getattr(django_settings, f"{name}_STORE_{suffix}") or ""
    return env


def _replicated(clinic) -> int:
    return Instance.objects.for_clinic(clinic).filter(replicated_at__isnull=False).count()


@pytest.fixture
def worker_factory(broker_url, tmp_path) -> Iterator[Callable[..., Worker]]:
    """Real workers (``make(**extra_env)``), killed at the end; tasks queued meanwhile go to them, not inline."""
    started: list[Worker] = []
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = False

    def make(**extra_env: str) -> Worker:
        worker = Worker({**_worker_env(broker_url, tmp_path), **extra_env}, tmp_path / "worker.log")
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.kill()
    app.conf.task_always_eager = eager


def test_replica_endpoint_down_during_uploads(clinic, tmp_path, settings, worker_factory):
    moto = MotoServer(REPLICA_PORT, tmp_path / "moto.log")
    moto.start()
    try:
        bucket = "replica-fault"

        def create_bucket() -> None:
            boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                         aws_access_key_id="replica", aws_secret_access_key="replica").create_bucket(Bucket=bucket)

        create_bucket()
        settings.REPLICA_STORE_URL = f"s3://{bucket}?endpoint_url={moto.endpoint}&region_name=us-east-1"
        settings.REPLICA_STORE_ACCESS_KEY_ID = settings.REPLICA_STORE_SECRET_ACCESS_KEY = "replica"
        worker = worker_factory()
        worker.start()

        before = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path / "a", count=3))
        _wait_for(lambda: _replicated(clinic) == 3, 30, "the first uploads to replicate")

        moto.stop()
        during = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path / "b", count=3))
        # The uploads succeeded (they are indexed and on primary) but cannot be replicated yet.
        assert all(stores.get_store("primary").exists(i.object_key) for i in during)
        time.sleep(2)
        assert _replicated(clinic) == 3
        assert replication.replication_sweep(older_than=timedelta(0)) == 0  # replica down: nothing queued

        moto.start()
        create_bucket()  # moto keeps nothing across restarts: the replica comes back empty
        # What beat does every minute: re-queue anything still pending.
        replication.replication_sweep(older_than=timedelta(0))
        _wait_for(lambda: _replicated(clinic) == 6, 60, "replication to catch up")
        for instance in during:
            assert stored_bytes("replica", instance.object_key) == stored_bytes("primary", instance.object_key)
        # The hourly reconcile notices the copies this empty replica lost, and copies them again.
        result = replication.replica_reconcile(clinic=clinic)
        assert result["lost_on_replica"] == 3
        for instance in before:
            assert stored_bytes("replica", instance.object_key) == stored_bytes("primary", instance.object_key)
    finally:
        moto.stop()


def test_worker_killed_mid_replication_loses_nothing(clinic, tmp_path, worker_factory):
    count = 120
    # The worker is down while the uploads commit: their replication messages wait in Redis.
    instances = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path / "in", count=count))
    assert _replicated(clinic) == 0

    worker = worker_factory()
    worker.start()
    _wait_for(lambda: _replicated(clinic) >= 5, 60, "replication to start")
    worker.kill()
    done_at_kill = _replicated(clinic)
    assert done_at_kill < count, "the worker finished everything before it could be killed"

    # Messages reserved by the dead worker stay unacknowledged; once their messages are taken as lost
    # (REPLICATION_REQUEUE_SECONDS, not waited for here) the sweep re-queues what is pending.
    replication.replication_sweep(older_than=timedelta(0), requeue_after=timedelta(0))
    worker = worker_factory()
    worker.start()
    _wait_for(lambda: _replicated(clinic) == count, 90, "replication to finish after the restart")
    for instance in instances:
        assert stored_bytes("replica", instance.object_key) == stored_bytes("primary", instance.object_key)
