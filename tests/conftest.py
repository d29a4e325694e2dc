"""Shared fixtures: the standard cast of every view and API test.

``clinic`` and ``other_clinic``; ``owner``, ``admin``, ``clinician``, ``uploader`` and ``billing_admin``
belong to ``clinic``; ``outsider`` belongs to ``other_clinic`` only.
"""

from __future__ import annotations

import os
import re

import pytest
from celery.result import _set_task_join_will_block
from django.db import connection

from tenants.models import Clinic, User
from tenants.roles import Role
from tests.factories import make_clinic, make_member, make_user
from tests.workers import WORKER_INDEX


def _redis_database_per_worker() -> None:
    """Under pytest-xdist each worker takes a Redis database of its own (the one given, then the ones
    below it): tests that flush their database or count the messages in it must not see another worker's."""
    found = re.fullmatch(r"(redis://[^/]+/)(\d+)", os.environ.get("TEST_REDIS_URL", ""))
    if found:
        os.environ["TEST_REDIS_URL"] = f"{found[1]}{int(found[2]) - WORKER_INDEX}"


_redis_database_per_worker()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # schemathesis names each API operation's test "test_x[GET /path]" but, on pytest 9, gives them all
    # the node id "test_x"; pytest-xdist schedules and reports tests by node id and would run one of them.
    for item in items:
        if isinstance(item, pytest.Function) and item.parent and item.nodeid.endswith(f"::{item.originalname}"):
            params = item.name.removeprefix(item.originalname)
            if params.startswith("[") and params.endswith("]"):
                item._id = item.parent.id.child(item.originalname).with_params(params[1:-1])


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("postgresql") and connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (row locks, concurrent transactions, triggers, its catalogs or tools)")
    # Celery marks "inside a task" in one process-wide flag that an eager task sets and restores; two
    # threads running eager tasks at once (a DIMSE listener and the test) can leave it set, and every
    # later test of the process that waits on an eager result would be refused.
    _set_task_join_will_block(False)


@pytest.fixture(autouse=True)
def _mail_in_memory(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Still Argon2 (the format production uses), with test-sized cost parameters.
    settings.PASSWORD_HASHERS = ["tests.hashers.FastArgon2PasswordHasher"]


@pytest.fixture(autouse=True)
def _dicom_nodes_on_test_networks(settings, monkeypatch):
    # The tests' DICOM nodes are the peers they run on loopback, or stand for a clinic's network over a VPN
    # (10.x, never connected to): as an operator would, allow those networks, here and in the workers and
    # listeners a test starts as processes of their own. The guard's own tests
    # (tests/studies/test_dicom_node_addresses.py) set their own.
    networks = ["127.0.0.0/8", "10.0.0.0/8"]
    settings.DICOM_NODE_ALLOWED_NETWORKS = networks
    monkeypatch.setenv("DICOM_NODE_ALLOWED_NETWORKS", ",".join(networks))


@pytest.fixture
def tasks_run_inline():
    """Run the Celery tasks queued by the code under test in place (modules ask for it with ``usefixtures``)."""
    from tests.studies.dimse_support import tasks_inline

    with tasks_inline():
        yield


@pytest.fixture
def owner(db) -> User:
    return make_user(email="owner@clinic-a.example", full_name="Olivia Owner")


@pytest.fixture
def clinic(owner) -> Clinic:
    return make_clinic(name="Clinic A", slug="clinic-a", owner=owner)


@pytest.fixture
def other_clinic(db) -> Clinic:
    return make_clinic(name="Clinic B", slug="clinic-b", owner=make_user(email="owner@clinic-b.example"))


@pytest.fixture
def admin(clinic) -> User:
    return make_member(clinic=clinic, role=Role.ADMIN, user=make_user(email="admin@clinic-a.example"))


@pytest.fixture
def clinician(clinic) -> User:
    return make_member(clinic=clinic, role=Role.CLINICIAN, user=make_user(email="doctor@clinic-a.example"))


@pytest.fixture
def uploader(clinic) -> User:
    return make_member(clinic=clinic, role=Role.UPLOADER, user=make_user(email="tech@clinic-a.example"))


@pytest.fixture
def billing_admin(clinic) -> User:
    return make_member(clinic=clinic, role=Role.BILLING, user=make_user(email="billing@clinic-a.example"))


@pytest.fixture
def outsider(other_clinic) -> User:
    return make_member(clinic=other_clinic, role=Role.OWNER, user=make_user(email="outsider@clinic-b.example"))


@pytest.fixture(autouse=True)
def _stores_in_tmp(settings, tmp_path_factory):
    """Point both object stores at fresh temporary folders, and forget cached clinic keys."""
    from studies.archive import keys

    base = tmp_path_factory.mktemp("stores")
    settings.PRIMARY_STORE_URL = (base / "primary").as_uri()
    settings.REPLICA_STORE_URL = (base / "replica").as_uri()
    settings.PRIMARY_STORE_ACCESS_KEY_ID = settings.PRIMARY_STORE_SECRET_ACCESS_KEY = ""
    settings.REPLICA_STORE_ACCESS_KEY_ID = settings.REPLICA_STORE_SECRET_ACCESS_KEY = ""
    keys.key_cache_clear()
    yield
    keys.key_cache_clear()


@pytest.fixture
def s3_stores(settings):
    """Point both stores at unique buckets on the test S3 endpoint (moto), with separate credentials."""
    import os
    import uuid

    import boto3

    endpoint = os.environ.get("TEST_S3_ENDPOINT")
    if not endpoint:
        pytest.skip("TEST_S3_ENDPOINT is not set; run through bin/with-test-services")
    suffix = uuid.uuid4().hex[:12]
    buckets = {"primary": f"primary-{suffix}", "replica": f"replica-{suffix}"}
    for name, bucket in buckets.items():
        access_key, secret_key = f"{name}-access-{suffix}", f"{name}-secret-{suffix}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
        ).create_bucket(Bucket=bucket)
        prefix = name.upper()
        setattr(settings, f"{prefix}_STORE_URL", f"s3://{bucket}?endpoint_url={endpoint}&region_name=us-east-1")
        setattr(settings, f"{prefix}_STORE_ACCESS_KEY_ID", access_key)
        setattr(settings, f"{prefix}_STORE_SECRET_ACCESS_KEY", secret_key)
    return buckets


@pytest.fixture(autouse=True)
def _default_plans(request, django_db_blocker):
    """Make sure the plans seeded by migrations exist for every test that uses the database.

    Transactional and live-server tests empty every table when they finish, migration-seeded rows
    included, and every new clinic starts on a trial plan.
    """
    uses_db = request.node.get_closest_marker("django_db") is not None or bool(
        {"db", "transactional_db", "live_server"} & set(request.fixturenames)
    )
    if not uses_db:
        return
    from billing.models import Plan
    from billing.plans import plans_seed

    with django_db_blocker.unblock():
        plans_seed(Plan)


@pytest.fixture(autouse=True)
def _empty_cache():
    """Start every test with an empty cache: throttles and debounces keyed by database ids must not
    carry over from an earlier test that used the same ids."""
    from django.core.cache import cache

    cache.clear()
