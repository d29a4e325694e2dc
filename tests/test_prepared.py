"""portal.prepared: a values() queryset compiled once answers exactly what the queryset answers."""

from __future__ import annotations

from datetime import date, time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from portal import prepared
from studies.models import Study
from tests.factories import make_study


def _studies(*, clinic_id: int, uid: str):
    return Study.objects.for_clinic(clinic_id).filter(study_instance_uid=uid).values("uuid", "study_date", "study_time")


def test_a_prepared_query_answers_its_querysets_rows_with_their_python_types(clinic, other_clinic):
    mine = make_study(clinic=clinic, study_instance_uid="1.2.3", study_date=date(2024, 2, 3), study_time=time(9, 30))
    theirs = make_study(clinic=other_clinic, study_instance_uid="1.2.3", study_date=date(2020, 1, 1))

    rows = [prepared.rows("test-studies", _studies, clinic_id=c.pk, uid="1.2.3") for c in (clinic, other_clinic)]

    assert rows == [list(_studies(clinic_id=c.pk, uid="1.2.3")) for c in (clinic, other_clinic)]
    assert rows[0] == [{"uuid": mine.uuid, "study_date": date(2024, 2, 3), "study_time": time(9, 30)}]
    assert rows[1][0]["uuid"] == theirs.uuid


def test_a_prepared_query_asks_the_database_each_time(clinic):
    prepared.rows("test-studies", _studies, clinic_id=clinic.pk, uid="1.2.4")
    make_study(clinic=clinic, study_instance_uid="1.2.4")

    with CaptureQueriesContext(connection) as queries:
        rows = prepared.rows("test-studies", _studies, clinic_id=clinic.pk, uid="1.2.4")

    assert len(rows) == 1
    assert len(queries) == 1


def test_a_value_the_lookup_rewrites_cannot_be_prepared(clinic):
    def containing(*, text: str):
        return Study.objects.filter(study_description__icontains=text).values("id")

    with pytest.raises(ValueError, match="one parameter"):
        prepared.rows("test-contains", containing, text="brain")


def test_none_is_refused_as_a_value(clinic):
    with pytest.raises(TypeError):
        prepared.rows("test-studies", _studies, clinic_id=clinic.pk, uid=None)  # type: ignore[arg-type]
