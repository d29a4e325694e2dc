"""Review of trash, purge and erasure: what a careless sender, a racing worker or a returning customer could lose.

Each test pins a defect found in the review: an identical file sent again while its study is in the trash or
being purged, a purged study's thumbnail left on the replica, and a clinic's data erased after it subscribed
again.
"""

from __future__ import annotations

import io
import uuid
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.utils import timezone

from billing import services as billing_services
from billing import tasks as billing_tasks
from billing.models import Plan, Subscription, SubscriptionStatus
from studies.archive import objects, stores
from studies.browse import services
from studies.models import ClinicKey, Instance, Series, Study
from tenants.models import AuditEvent, Clinic
from tests.dicom_files import write_series
from tests.factories import ingest_files, token_for
from tests.studies.backup_support import celery_eager
from tests.studies.dicomweb_support import multipart_body


@pytest.fixture
def stored(clinic, tmp_path):
    """A study of two instances, each also copied to the replica; returns it and its original files."""
    paths = write_series(tmp_path / "s", count=2)
    instances = ingest_files(clinic=clinic, paths=paths)
    primary, replica = stores.get_store("primary"), stores.get_store("replica")
    for instance in instances:
        with primary.open(instance.object_key) as source:
            replica.put(instance.object_key, source)
    return Study.objects.get(pk=instances[0].series.study_id), paths


def stow(client, clinic, paths):
    body, content_type = multipart_body(paths)
    return client.post(f"/dicomweb/{clinic.slug}/studies", data=body, content_type=content_type,
                       HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'uploader')}")


# --- an identical file sent again -----------------------------------------------------------------------


def test_an_identical_file_sent_again_brings_its_trashed_study_back_audited(client, clinic, owner, stored):
    study, paths = stored
    services.study_delete(clinic=clinic, study=study, actor=owner)
    used = Clinic.objects.get(pk=clinic.pk).used_bytes

    response = stow(client, clinic, paths[:1])

    assert response.status_code == HTTPStatus.OK
    study.refresh_from_db()
    assert study.deleted_at is None
    restored = AuditEvent.objects.get(action="study.restored")
    assert restored.object_id == str(study.uuid) and restored.details["reason"] == "instance received again"
    assert Instance.objects.for_clinic(clinic).count() == 2
    assert Clinic.objects.get(pk=clinic.pk).used_bytes == used


def test_an_identical_file_sent_while_its_study_is_purged_is_refused_as_retry_later(client, clinic, owner, stored):
    study, paths = stored
    services.study_delete(clinic=clinic, study=study, actor=owner)
    Study.objects.filter(pk=study.pk).update(purge_started_at=timezone.now())

    response = stow(client, clinic, paths[:1])

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0110]
    assert Study.objects.get(pk=study.pk).deleted_at is not None
    assert not AuditEvent.objects.filter(action="study.restored").exists()


# --- the purge ------------------------------------------------------------------------------------------


def test_purge_erases_the_series_thumbnail_from_the_replica_too(clinic, owner, stored):
    study, _ = stored
    thumbnail = objects.object_put(clinic=clinic, source=io.BytesIO(b"\x89PNG thumbnail"), object_uuid=uuid.uuid4())
    Series.objects.for_clinic(clinic).filter(study=study).update(thumbnail_key=thumbnail.key)
    with stores.get_store("primary").open(thumbnail.key) as source:
        stores.get_store("replica").put(thumbnail.key, source)  # as replica_reconcile copies it
    services.study_delete(clinic=clinic, study=study, actor=owner)

    assert services.study_purge(clinic=clinic, study_id=study.pk) is True

    assert not stores.get_store("primary").exists(thumbnail.key)
    assert not stores.get_store("replica").exists(thumbnail.key)


# --- erasing a canceled clinic's data -------------------------------------------------------------------


def test_a_clinic_that_subscribed_again_keeps_its_data_when_a_queued_destroy_runs(clinic, owner, stored):
    study, _ = stored
    billing_services.subscription_cancel(clinic=clinic, user=owner)
    Subscription.objects.filter(clinic=clinic).update(read_only_until=timezone.now() - timedelta(seconds=1))
    # The destroy is queued (daily enforcement) but the replica-admin worker only picks it up later...
    queued = {"clinic_id": clinic.pk}
    # ...after the owner has subscribed again.
    billing_services.plan_change(clinic=clinic, plan=Plan.objects.get(code="professional"), user=owner)

    with celery_eager():
        billing_tasks.clinic_data_destroy.apply(kwargs=queued)

    assert Subscription.objects.get(clinic=clinic).status == SubscriptionStatus.ACTIVE
    assert Study.objects.get(pk=study.pk).deleted_at is None
    assert all(stores.get_store("primary").exists(i.object_key) for i in Instance.objects.for_clinic(clinic))
    assert Instance.objects.for_clinic(clinic).count() == 2
    assert ClinicKey.objects.for_clinic(clinic).exists()
    assert not AuditEvent.objects.filter(action__in=["study.purged", "billing.data_destroyed"]).exists()
