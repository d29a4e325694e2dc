"""Quota reconcile: used_bytes recomputed from the index; drift corrected and audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import services
from studies.ingest import quota_reserve
from tenants.models import AuditEvent, Clinic
from tests.dicom_files import write_series
from tests.factories import ingest_files


@pytest.fixture
def stored(clinic, tmp_path) -> int:
    instances = ingest_files(clinic=clinic, paths=write_series(tmp_path / "s", count=2))
    return sum(instance.size_bytes for instance in instances)


def used(clinic) -> int:
    return Clinic.objects.values_list("used_bytes", flat=True).get(pk=clinic.pk)


def test_leftover_reservation_is_removed_once_it_outlives_the_grace_period(clinic, stored, settings):
    settings.QUOTA_RESERVATION_GRACE_SECONDS = 900
    quota_reserve(clinic=clinic, size_bytes=5000)  # the process died before its index commit
    now = timezone.now()

    first = services.usage_reconcile(clinic=clinic, now=now)
    second = services.usage_reconcile(clinic=clinic, now=now + timedelta(seconds=901))

    assert first is None
    assert second is not None and second.corrected_by == -5000
    assert used(clinic) == stored
    event = AuditEvent.objects.for_clinic(clinic).get(action="billing.usage_corrected")
    assert event.details == {"used_bytes_before": stored + 5000, "indexed_bytes": stored, "corrected_by": -5000}


def test_reservation_of_an_upload_in_flight_is_left_alone(clinic, stored):
    now = timezone.now()
    services.usage_reconcile(clinic=clinic, now=now)
    quota_reserve(clinic=clinic, size_bytes=700)  # an upload that started a moment ago

    result = services.usage_reconcile(clinic=clinic, now=now + timedelta(seconds=60))

    assert result is None
    assert used(clinic) == stored + 700


def test_usage_below_the_index_is_corrected_at_once(clinic, stored):
    Clinic.objects.filter(pk=clinic.pk).update(used_bytes=0)

    result = services.usage_reconcile(clinic=clinic)

    assert result is not None and result.corrected_by == stored
    assert used(clinic) == stored


def test_leftover_reservation_stops_blocking_uploads_after_reconcile(clinic, stored, tmp_path, settings):
    from studies.errors import QuotaExceeded

    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=stored * 3)
    quota_reserve(clinic=clinic, size_bytes=stored * 2)  # a crashed upload's reservation fills the quota
    with pytest.raises(QuotaExceeded):
        ingest_files(clinic=clinic, paths=write_series(tmp_path / "late", count=1))
    now = timezone.now()
    services.usage_reconcile(clinic=clinic, now=now)
    services.usage_reconcile(clinic=clinic, now=now + timedelta(seconds=settings.QUOTA_RESERVATION_GRACE_SECONDS))

    [instance] = ingest_files(clinic=clinic, paths=write_series(tmp_path / "later", count=1))

    assert used(clinic) == stored + instance.size_bytes


def test_reconcile_touches_only_the_drifting_clinic(clinic, other_clinic, stored):
    Clinic.objects.filter(pk=clinic.pk).update(used_bytes=0)
    before = used(other_clinic)

    assert services.usage_reconcile_all() == 1

    assert used(other_clinic) == before
    assert not AuditEvent.objects.for_clinic(other_clinic).filter(action="billing.usage_corrected").exists()
