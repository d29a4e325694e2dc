"""Replication: byte-for-byte copies, sync and async modes, sweep, keys, protection of the replica."""

from __future__ import annotations

import io
import os
import uuid
from datetime import timedelta

import pytest
from django.core import mail
from django.core.cache import cache
from django.utils import timezone

from studies.archive import keys, objects, stores
from studies.backup import replication
from studies.backup.tasks import replica_purge, replication_sweep
from studies.models import ClinicKey, Instance, Series
from tests.dicom_files import write_dicom_files
from tests.factories import ingest_files
from tests.studies.backup_support import (
    backup_cache_clear,  # noqa: F401 - autouse
    celery_eager,
    stored_bytes,
)


def test_replica_gets_the_same_encrypted_bytes_once(clinic, tmp_path):
    instance = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path, count=1))[0]
    assert instance.replicated_at is None
    assert not stores.get_store("replica").exists(instance.object_key)

    assert replication.instance_replicate(instance=instance) is True
    instance.refresh_from_db()
    assert instance.replicated_at is not None and instance.replicated_at >= instance.stored_at
    assert stored_bytes("replica", instance.object_key) == stored_bytes("primary", instance.object_key)
    # Still encrypted on the replica: no DICOM magic, our archive header instead.
    assert stored_bytes("replica", instance.object_key)[:4] == b"PXAE"
    first = instance.replicated_at
    assert replication.instance_replicate(instance=instance) is False  # idempotent
    instance.refresh_from_db()
    assert instance.replicated_at == first
    # The clinic manifest and the clinic key document are on the replica too.
    assert stores.get_store("replica").exists(f"clinics/{clinic.uuid}/clinic.json")
    key_id = ClinicKey.objects.for_clinic(clinic).get().key_id
    assert stores.get_store("replica").exists(f"clinics/{clinic.uuid}/keys/{key_id}")


def test_async_mode_replicates_on_commit(clinic, tmp_path, settings, django_capture_on_commit_callbacks):
    settings.REPLICATION_MODE = "async"
    with celery_eager(), django_capture_on_commit_callbacks(execute=True):
        instance = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path, count=1))[0]
    instance.refresh_from_db()
    assert instance.replicated_at is not None
    assert stored_bytes("replica", instance.object_key) == stored_bytes("primary", instance.object_key)


def test_sync_mode_acknowledges_with_both_copies(clinic, tmp_path, settings, django_capture_on_commit_callbacks):
    settings.REPLICATION_MODE = "sync"
    with django_capture_on_commit_callbacks(execute=True):
        instance = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path, count=1))[0]
    # No worker and no eager mode: both stores were written before instance_ingest returned.
    assert Instance.objects.get(pk=instance.pk).replicated_at is not None
    assert stored_bytes("replica", instance.object_key) == stored_bytes("primary", instance.object_key)


def test_mirrored_write_is_byte_for_byte_and_streams_big_objects(clinic, settings):
    from studies.backup import mirror

    settings.ARCHIVE_SEGMENT_SIZE = 64 * 1024
    data = os.urandom(5 * 1024 * 1024 + 123)  # more chunks than the tee may hold at once
    stored, replica_error = mirror.object_put_mirrored(clinic=clinic, source=io.BytesIO(data), object_uuid=uuid.uuid4())
    assert replica_error is None
    assert stored.size_bytes == len(data)
    assert stored_bytes("replica", stored.key) == stored_bytes("primary", stored.key)
    with objects.object_open(clinic=clinic, key=stored.key, store="replica") as stream:
        assert stream.read() == data


def test_mirrored_write_fails_when_primary_fails(clinic, settings, tmp_path):
    from studies.archive import keys
    from studies.archive.errors import StorageUnavailable
    from studies.backup import mirror

    keys.clinic_key_get(clinic)  # the clinic key exists already; only the object write fails
    blocked = tmp_path / "primary-is-a-file"
    blocked.write_text("x")
    settings.PRIMARY_STORE_URL = blocked.as_uri()
    with pytest.raises(StorageUnavailable):
        mirror.object_put_mirrored(clinic=clinic, source=io.BytesIO(b"x" * 100_000), object_uuid=uuid.uuid4())


def test_sync_mode_with_replica_down_still_stores_and_alerts_once(
    clinic, admin, tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.REPLICATION_MODE = "sync"
    settings.OPERATOR_EMAILS = ["ops@pacs.example"]
    blocked = tmp_path / "replica-is-a-file"
    blocked.write_text("not a folder")
    settings.REPLICA_STORE_URL = blocked.as_uri()
    paths = write_dicom_files(tmp_path / "in", count=2)
    with celery_eager(), django_capture_on_commit_callbacks(execute=True):
        instances = ingest_files(clinic=clinic, paths=paths)
    for instance in instances:
        instance.refresh_from_db()
        assert instance.replicated_at is None  # pending for the sweep
        assert stored_bytes("primary", instance.object_key)  # the upload itself succeeded
    assert len(mail.outbox) == 1  # rate-limited: one e-mail for two failed copies
    # Once the replica is reachable again, the sweep copies both.
    settings.REPLICA_STORE_URL = (tmp_path / "replica-back").as_uri()
    cache.delete(replication.REPLICA_DOWN_CACHE_KEY)
    Instance.objects.filter(pk__in=[i.pk for i in instances]).update(stored_at=timezone.now() - timedelta(minutes=2))
    with celery_eager():
        assert replication.replication_sweep() == 2
    assert Instance.objects.filter(pk__in=[i.pk for i in instances], replicated_at__isnull=False).count() == 2
    assert set(mail.outbox[0].to) == {"owner@clinic-a.example", "admin@clinic-a.example", "ops@pacs.example"}
    assert "backup store cannot be reached" in mail.outbox[0].subject


def test_sweep_requeues_only_instances_pending_over_a_minute(clinic, tmp_path):
    old, fresh = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path, count=2))
    Instance.objects.filter(pk=old.pk).update(stored_at=timezone.now() - timedelta(minutes=2))
    with celery_eager():
        replication_sweep.delay()
    old.refresh_from_db()
    fresh.refresh_from_db()
    assert old.replicated_at is not None
    assert fresh.replicated_at is None


def test_sweep_does_nothing_while_the_replica_is_down(clinic, tmp_path, settings):
    instance = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path, count=1))[0]
    Instance.objects.filter(pk=instance.pk).update(stored_at=timezone.now() - timedelta(minutes=5))
    blocked = tmp_path / "replica-is-a-file"
    blocked.write_text("x")
    settings.REPLICA_STORE_URL = blocked.as_uri()
    assert replication.replication_sweep() == 0


def test_growing_lag_alerts_and_degrades_readyz(clinic, tmp_path, settings, client):
    settings.BACKUP_LAG_ALERT_SECONDS = 300
    instance = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path, count=1))[0]
    assert client.get("/readyz").json()["status"] == "ok"
    Instance.objects.filter(pk=instance.pk).update(stored_at=timezone.now() - timedelta(minutes=10))
    from studies.backup import alerts

    assert alerts.backup_health_check() == 1
    assert len(mail.outbox) == 1 and "waiting for backup" in mail.outbox[0].subject
    alerts.backup_health_check()
    assert len(mail.outbox) == 1  # rate-limited
    body = client.get("/readyz").json()
    assert body["status"] == "degraded" and "replication_lag" in body["degraded"]


def test_key_documents_missing_on_replica_are_replicated(clinic, tmp_path):
    ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path, count=1))
    row = ClinicKey.objects.for_clinic(clinic).get()
    document = f"clinics/{clinic.uuid}/keys/{row.key_id}"
    stores.get_store("replica").delete(document)
    assert replication.clinic_keys_replicate() == 1
    assert stored_bytes("replica", document) == stored_bytes("primary", document)


def test_reconcile_copies_thumbnails_and_lost_replica_objects(clinic, tmp_path):
    instance = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path, count=1))[0]
    replication.instance_replicate(instance=instance)
    thumbnail = objects.object_put(clinic=clinic, source=io.BytesIO(b"\x89PNG fake thumbnail"), object_uuid=uuid.uuid4())
    Series.objects.for_clinic(clinic).update(thumbnail_key=thumbnail.key)
    orphan = objects.object_put(clinic=clinic, source=io.BytesIO(b"left by a failed ingest"), object_uuid=uuid.uuid4())
    stores.get_store("replica").delete(instance.object_key)

    result = replication.replica_reconcile(clinic=clinic)

    replica = stores.get_store("replica")
    assert result == {"copied": 2, "lost_on_replica": 1}
    assert replica.exists(thumbnail.key) and replica.exists(instance.object_key)
    assert not replica.exists(orphan.key)


def test_replica_purge_refuses_live_objects_and_foreign_keys(clinic, other_clinic, tmp_path):
    instance = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path, count=1))[0]
    replication.instance_replicate(instance=instance)
    assert replica_purge(clinic_id=clinic.pk, key=instance.object_key) is False  # still indexed
    assert replica_purge(clinic_id=other_clinic.pk, key=instance.object_key) is False  # not theirs
    assert stores.get_store("replica").exists(instance.object_key)
    Instance.objects.filter(pk=instance.pk).delete()
    assert replica_purge(clinic_id=clinic.pk, key=instance.object_key) is True
    assert not stores.get_store("replica").exists(instance.object_key)


def test_replica_purge_runs_on_its_own_queue(settings):
    from portal.celery import app

    for name in ("studies.backup.tasks.replica_purge", "studies.tasks.study_purge"):
        assert app.amqp.router.route({}, name)["queue"].name == "replica-admin"
    assert app.amqp.router.route({}, "studies.backup.tasks.instance_replicate")["queue"].name == "celery"


@pytest.fixture
def locked_replica(s3_stores, settings):
    """Recreate the replica bucket with Object Lock enabled (it must be, at creation)."""
    import boto3

    bucket = f"locked-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3", endpoint_url=os.environ["TEST_S3_ENDPOINT"], region_name="us-east-1",
        aws_access_key_id=settings.REPLICA_STORE_ACCESS_KEY_ID,
        aws_secret_access_key=settings.REPLICA_STORE_SECRET_ACCESS_KEY,
    )
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    settings.REPLICA_STORE_URL = (
        f"s3://{bucket}?endpoint_url={os.environ['TEST_S3_ENDPOINT']}&region_name=us-east-1"
    )
    return client, bucket


def test_replica_versioning_and_object_lock_keep_backups(clinic, tmp_path, locked_replica):
    client, bucket = locked_replica
    status = replication.replica_protection_apply(retention_days=7, mode="COMPLIANCE")
    assert status == {"kind": "s3", "versioning": "Enabled", "object_lock": "Enabled", "retention_days": 7,
                      "mode": "COMPLIANCE"}
    instance = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path, count=1))[0]
    replication.instance_replicate(instance=instance)
    original = stored_bytes("replica", instance.object_key)
    original_version = client.head_object(Bucket=bucket, Key=instance.object_key)["VersionId"]

    # Stolen credentials: overwrite and delete. Both leave the original version in place.
    stores.get_store("replica").put(instance.object_key, io.BytesIO(b"ransomware"))
    stores.get_store("replica").delete(instance.object_key)
    versions = client.list_object_versions(Bucket=bucket, Prefix=instance.object_key)["Versions"]
    assert len(versions) == 2
    with pytest.raises(client.exceptions.ClientError) as refused:
        client.delete_object(Bucket=bucket, Key=instance.object_key, VersionId=original_version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    kept = client.get_object(Bucket=bucket, Key=instance.object_key, VersionId=original_version)["Body"].read()
    assert kept == original


def test_batch_with_one_failed_copy_keeps_the_others_replicated_and_described(clinic, tmp_path, monkeypatch):
    """A replica error on one object of a batch used to stop the batch there, and the objects copied before
    it got no index sidecar (a rebuild decoded them). Now every other copy of the batch is kept, marked
    and described; the error still fails the task, whose retry copies only what is missing."""
    import json as json_module

    from studies.archive.errors import StorageUnavailable
    from studies.backup import index_sidecar

    instances = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path, count=5))
    failing = instances[2].object_key
    replica = stores.get_store("replica")
    real_put = replica.put

    def put(key, fileobj, **kwargs):  # type: ignore[no-untyped-def]
        if key == failing:
            raise StorageUnavailable("the replica refused this one")
        return real_put(key, fileobj, **kwargs)

    monkeypatch.setattr(replica, "put", put)
    with pytest.raises(StorageUnavailable):
        replication.instances_replicate(clinic=clinic, instance_ids=[i.pk for i in instances])

    pending = set(Instance.objects.for_clinic(clinic).filter(replicated_at=None).values_list("object_key", flat=True))
    assert pending == {failing}
    for instance in instances:
        assert replica.exists(instance.object_key) is (instance.object_key != failing)
    clinic_keys = {row.key_id: keys.clinic_key_for_object(clinic=clinic, key_id=row.key_id)
                   for row in ClinicKey.objects.for_clinic(clinic)}
    (sidecar,) = index_sidecar.sidecar_keys(clinic=clinic)
    entries = index_sidecar.index_sidecar_read(clinic=clinic, key=sidecar, clinic_keys=clinic_keys)
    assert {e.key for e in entries} == {i.object_key for i in instances} - {failing}
    by_key = {i.object_key: i for i in instances}
    for entry in entries:  # the header as the index holds it
        assert json_module.loads(entry.metadata_json) == Instance.objects.get(pk=by_key[entry.key].pk).metadata

    monkeypatch.setattr(replica, "put", real_put)
    assert replication.instances_replicate(clinic=clinic, instance_ids=[i.pk for i in instances]) == 1  # the retry
    assert not Instance.objects.for_clinic(clinic).filter(replicated_at=None).exists()
    assert stored_bytes("replica", failing) == stored_bytes("primary", failing)
    assert len(index_sidecar.sidecar_keys(clinic=clinic)) == 2


def test_a_redelivered_batch_copies_nothing_again_and_writes_no_sidecar(clinic, tmp_path):
    from studies.backup import index_sidecar

    instances = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path, count=3))
    ids = [i.pk for i in instances]
    assert replication.instances_replicate(clinic=clinic, instance_ids=ids) == 3
    first = dict(Instance.objects.for_clinic(clinic).values_list("pk", "replicated_at"))

    assert replication.instances_replicate(clinic=clinic, instance_ids=ids) == 0

    assert dict(Instance.objects.for_clinic(clinic).values_list("pk", "replicated_at")) == first
    assert len(index_sidecar.sidecar_keys(clinic=clinic)) == 1
