"""portal.prepared: a values() queryset compiled once answers exactly what the queryset answers."""

from __future__ import annotations

from datetime import date, time

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from portal import prepared
from studies.models import Study
from tenants.models import Clinic
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


def _studies_in(*, clinic_id: int, **uids: str):
    return Study.objects.for_clinic(clinic_id).filter(study_instance_uid__in=list(uids.values())).values(
        "study_instance_uid"
    )


def test_an_in_list_of_any_length_matches_as_the_queryset_does(clinic, other_clinic):
    for uid in ("1.5.1", "1.5.2", "1.5.3"):
        make_study(clinic=clinic, study_instance_uid=uid)
    make_study(clinic=other_clinic, study_instance_uid="1.5.4")

    for asked in (["1.5.1"], ["1.5.2", "1.5.9"], ["1.5.1", "1.5.2", "1.5.3"], ["1.5.4", "1.5.3", "1.5.2", "1.5.1", "9"]):
        rows = prepared.rows("test-in", _studies_in, clinic_id=clinic.pk, **prepared.in_values("uid", asked))

        assert sorted(r["study_instance_uid"] for r in rows) == sorted(set(asked) & {"1.5.1", "1.5.2", "1.5.3"})
    # Padded to powers of two: lists of 3 and 4 share one statement, 5 to 8 another.
    assert len(prepared.in_values("uid", ["a", "b", "c"])) == 4
    assert len(prepared.in_values("uid", list("abcde"))) == 8
    with pytest.raises(ValueError):
        prepared.in_values("uid", [])


def test_a_model_is_built_from_a_row_whatever_the_order_of_the_fields_named(clinic):
    made = make_study(clinic=clinic, patient_name="DOE^JANE")
    fields = ("study_instance_uid", "uuid", "id")  # not the model's order
    row = {f"study__{name}": value for name, value in Study.objects.filter(pk=made.pk).values(*fields).get().items()}

    study = prepared.model_from_row(Study, row, fields, prefix="study__")

    assert (study.pk, study.uuid, study.study_instance_uid) == (made.pk, made.uuid, made.study_instance_uid)
    assert study.get_deferred_fields() >= {"patient_name"}


def _reservation(*, clinic_id: int, size: int):
    return Clinic.objects.filter(pk=clinic_id, used_bytes__lte=F("quota_bytes") - size), {
        "used_bytes": F("used_bytes") + size
    }


def test_a_prepared_update_changes_what_the_querysets_update_would_and_counts_the_rows(clinic, other_clinic):
    gb = 10**9  # sizes past 2**31, which PostgreSQL's driver is handed wrapped
    Clinic.objects.filter(pk__in=[clinic.pk, other_clinic.pk]).update(quota_bytes=5 * gb, used_bytes=0)

    # The same value in the filter and in the assignment; the second clinic's row is never touched.
    assert prepared.update("test-reserve", _reservation, clinic_id=clinic.pk, size=3 * gb) == 1
    assert prepared.update("test-reserve", _reservation, clinic_id=clinic.pk, size=3 * gb) == 0  # 6 > 5 GB
    assert prepared.update("test-reserve", _reservation, clinic_id=clinic.pk, size=2 * gb) == 1

    assert dict(Clinic.objects.filter(pk__in=[clinic.pk, other_clinic.pk]).values_list("pk", "used_bytes")) == {
        clinic.pk: 5 * gb,
        other_clinic.pk: 0,
    }


def test_an_update_filtered_through_a_join_cannot_be_prepared(clinic):
    def by_clinic_slug(*, slug: str):
        return Study.objects.filter(clinic__slug=slug), {"number_of_instances": F("number_of_instances") + 1}

    with pytest.raises(ValueError, match="one table"):
        prepared.update("test-join", by_clinic_slug, slug=clinic.slug)
