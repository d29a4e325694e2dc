"""The whole disaster: database and primary storage lost; the replica and the master key rebuild everything.

Runs ``manage.py migrate``, ``rebuild_index`` and ``restore --all`` as subprocesses against a brand-new,
empty database, with a fresh empty primary store, exactly as an operator would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connection

from studies.backup import replication
from studies.models import Instance, Study
from tests.dicom_files import write_dicom_files
from tests.factories import ingest_files
from tests.studies.backup_support import (
    backup_cache_clear,  # noqa: F401 - autouse
    local_path,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def empty_database():
    database = connection.settings_dict
    name = f"{database['NAME']}_dr"
    admin = f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{name}"
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_database_and_primary_lost_rebuilt_from_replica_alone(clinic, other_clinic, tmp_path, settings,
                                                              empty_database):
    paths = write_dicom_files(tmp_path / "a", count=4, studies=2) + write_dicom_files(tmp_path / "b", count=2)
    instances = ingest_files(clinic=clinic, paths=paths[:4]) + ingest_files(clinic=other_clinic, paths=paths[4:])
    for instance in instances:
        replication.instance_replicate(instance=instance)
    expected = {
        (i.clinic.uuid.hex, i.sop_instance_uid, i.sha256, i.size_bytes, i.object_key,
         i.series.study.study_instance_uid)
        for i in Instance.objects.select_related("clinic", "series__study")
    }
    expected_studies = {
        (s.clinic.slug, s.study_instance_uid, s.number_of_instances)
        for s in Study.objects.select_related("clinic")
    }
    originals = {i.object_key: local_path(settings.PRIMARY_STORE_URL, i.object_key).read_bytes() for i in instances}

    new_primary = tmp_path / "new-primary"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DATABASE_URL": empty_database,
        "PORTAL_VAR_DIR": str(tmp_path / "var"),
        "MASTER_KEYS": django_settings.MASTER_KEYS,
        "PRIMARY_STORE_URL": new_primary.as_uri(),
        "REPLICA_STORE_URL": settings.REPLICA_STORE_URL,
        "CELERY_BROKER_URL": "memory://",
    }
    _manage(env, "migrate", "--noinput")
    out = _manage(env, "rebuild_index", "--jobs", "2")
    assert "2 clinics recreated" in out and "6 indexed" in out
    _manage(env, "restore", "--all")

    with psycopg.connect(empty_database) as conn:
        rebuilt = {
            (clinic_uuid.hex, sop, sha, size, key, study_uid)
            for clinic_uuid, sop, sha, size, key, study_uid in conn.execute(
                "SELECT c.uuid, i.sop_instance_uid, i.sha256, i.size_bytes, i.object_key, st.study_instance_uid "
                "FROM studies_instance i JOIN tenants_clinic c ON c.id = i.clinic_id "
                "JOIN studies_series se ON se.id = i.series_id JOIN studies_study st ON st.id = se.study_id"
            )
        }
        studies = set(conn.execute(
            "SELECT c.slug, st.study_instance_uid, st.number_of_instances FROM studies_study st "
            "JOIN tenants_clinic c ON c.id = st.clinic_id"
        ))
    assert rebuilt == expected
    assert studies == expected_studies
    # Same bytes: primary was rebuilt from the replica, which holds exactly what primary held.
    for key, data in originals.items():
        assert (new_primary / key).read_bytes() == data
    assert urlparse(settings.REPLICA_STORE_URL).scheme == "file"
