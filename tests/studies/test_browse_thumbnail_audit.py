"""A thumbnail fetched on its own is an access to patient data: it is audited, once per window."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from django.core.cache import cache

from studies.browse import tasks
from studies.models import Series
from tenants.models import AuditEvent
from tests.dicom_files import write_series
from tests.factories import ingest_files


def thumbnail_url(series):
    return f"/c/{series.clinic.slug}/studies/{series.study.uuid}/series/{series.uuid}/thumbnail.png"


@pytest.fixture
def series(clinic, tmp_path):
    found = ingest_files(clinic=clinic, paths=write_series(tmp_path / "ct", count=1))[0].series
    tasks.series_thumbnail_render(clinic_id=found.clinic_id, series_id=found.pk)
    return Series.objects.get(pk=found.pk)


def thumbnail_reads(clinic):
    return AuditEvent.objects.for_clinic(clinic).filter(action="study.thumbnail_viewed")


def test_fetching_a_thumbnail_directly_is_audited_with_the_study_and_the_user(client, clinic, clinician, series):
    client.force_login(clinician)

    response = client.get(thumbnail_url(series))

    assert response.status_code == HTTPStatus.OK
    event = thumbnail_reads(clinic).get()
    assert (event.object_type, event.object_id) == ("study", str(series.study.uuid))
    assert event.actor == clinician


def test_thumbnails_read_again_within_the_window_add_no_entry(client, clinic, clinician, series):
    client.force_login(clinician)

    for _ in range(3):
        client.get(thumbnail_url(series))

    assert thumbnail_reads(clinic).count() == 1


def test_another_user_reading_the_same_thumbnail_gets_their_own_entry(client, clinic, clinician, admin, series):
    client.force_login(clinician)
    client.get(thumbnail_url(series))
    client.force_login(admin)

    client.get(thumbnail_url(series))

    assert set(thumbnail_reads(clinic).values_list("actor__email", flat=True)) == {clinician.email, admin.email}


def test_thumbnail_is_audited_again_after_the_window(client, clinic, clinician, series):
    client.force_login(clinician)
    client.get(thumbnail_url(series))
    cache.clear()  # what the window's end does to its marker

    client.get(thumbnail_url(series))

    assert thumbnail_reads(clinic).count() == 2


def test_refused_thumbnail_reads_are_not_recorded_as_reads(client, clinic, uploader, outsider, series):
    client.force_login(uploader)
    forbidden = client.get(thumbnail_url(series))
    client.force_login(outsider)
    hidden = client.get(thumbnail_url(series))

    assert (forbidden.status_code, hidden.status_code) == (HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND)
    assert not thumbnail_reads(clinic).exists()
