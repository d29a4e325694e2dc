"""QIDO-RS: searching studies, series and instances over the index, with the matching rules of PS3.18."""

from __future__ import annotations

from datetime import date, time
from http import HTTPStatus

import pytest
from django.db import connection
from django.utils import timezone
from pydicom import dcmread
from pydicom.uid import generate_uid

from studies.dicomweb import qido
from studies.models import Series
from tests.dicom_files import write_instance
from tests.factories import ingest_files, make_study, token_for

BASE = "/dicomweb/clinic-a/"


@pytest.fixture
def archive(clinic, tmp_path):
    """Two studies of clinic A (one CT+MR, one CT), and a study in the trash."""
    jane_study, ct_series, mr_series = generate_uid(), generate_uid(), generate_uid()
    paths = [
        write_instance(tmp_path, study_uid=jane_study, series_uid=ct_series, instance_number=n, series_number=1)
        for n in (1, 2, 3)
    ]
    paths += [
        write_instance(tmp_path, source="MR_small.dcm", study_uid=jane_study, series_uid=mr_series,
                       instance_number=n, series_number=2, modality="MR")
        for n in (1, 2)
    ]
    richard_study = generate_uid()
    paths.append(
        write_instance(tmp_path, study_uid=richard_study, series_uid=generate_uid(), patient_name="ROE^RICHARD",
                       patient_id="PID-2", accession="ACC-2", study_date=date(2023, 6, 1), study_time=time(8, 0),
                       description="CT CHEST", referring="HOUSE^GREGORY")
    )
    trashed_study = generate_uid()
    paths.append(write_instance(tmp_path, study_uid=trashed_study, series_uid=generate_uid(),
                                patient_name="DOE^TRASHED", patient_id="PID-3", accession="ACC-3"))
    instances = ingest_files(clinic, paths)
    trashed = instances[-1].series.study
    trashed.deleted_at = timezone.now()
    trashed.save()
    return {"jane": jane_study, "richard": richard_study, "trashed": trashed_study, "ct": ct_series,
            "mr": mr_series, "instances": instances}


@pytest.fixture
def api(client, clinic):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic)}"
    return client


def _uids(response, tag="0020000D"):
    assert response.status_code == HTTPStatus.OK, response.content
    return [item[tag]["Value"][0] for item in response.json()]


def test_studies_answer_carries_the_required_attributes(api, archive):
    response = api.get(BASE + "studies", {"StudyInstanceUID": archive["jane"]})

    assert response["Content-Type"] == "application/dicom+json"
    [study] = response.json()
    assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]}
    assert study["00080020"]["Value"] == ["20240115"]
    assert study["00080030"]["Value"] == ["101500"]
    assert study["00080050"]["Value"] == ["ACC-1"]
    assert study["00080061"]["Value"] == ["CT", "MR"]
    assert study["00201206"]["Value"] == [2]
    assert study["00201208"]["Value"] == [5]
    assert study["00081190"]["Value"] == [f"http://testserver{BASE}studies/{archive['jane']}"]


def test_trashed_studies_are_not_found(api, archive):
    assert _uids(api.get(BASE + "studies", {"PatientName": "DOE^TRASHED"})) == []
    assert archive["trashed"] not in _uids(api.get(BASE + "studies"))


def test_patient_name_matches_wildcards_without_regard_to_case(api, archive):
    assert _uids(api.get(BASE + "studies", {"PatientName": "doe*"})) == [archive["jane"]]
    assert _uids(api.get(BASE + "studies", {"PatientName": "*richard"})) == [archive["richard"]]
    assert _uids(api.get(BASE + "studies", {"00100010": "R?E^*"})) == [archive["richard"]]


def test_study_date_ranges_match(api, archive):
    assert _uids(api.get(BASE + "studies", {"StudyDate": "20240101-"})) == [archive["jane"]]
    assert _uids(api.get(BASE + "studies", {"StudyDate": "-20231231"})) == [archive["richard"]]
    assert _uids(api.get(BASE + "studies", {"StudyDate": "20230601"})) == [archive["richard"]]
    both = _uids(api.get(BASE + "studies", {"StudyDate": "20230101-20241231"}))
    assert both == [archive["jane"], archive["richard"]]


def test_study_time_range_matches(api, archive):
    assert _uids(api.get(BASE + "studies", {"StudyTime": "0900-1100"})) == [archive["jane"]]


def test_uid_lists_match_any_of_their_uids(api, archive):
    uids = f"{archive['jane']},{archive['richard']}"

    assert sorted(_uids(api.get(BASE + "studies", {"StudyInstanceUID": uids}))) == sorted(
        [archive["jane"], archive["richard"]]
    )


def test_modalities_in_study_matches_one_modality_of_many(api, archive):
    assert _uids(api.get(BASE + "studies", {"ModalitiesInStudy": "MR"})) == [archive["jane"]]


def test_text_keys_match_exactly_or_by_wildcard(api, archive):
    assert _uids(api.get(BASE + "studies", {"AccessionNumber": "ACC-2"})) == [archive["richard"]]
    assert _uids(api.get(BASE + "studies", {"StudyDescription": "CT CH*"})) == [archive["richard"]]
    assert _uids(api.get(BASE + "studies", {"ReferringPhysicianName": "house*"})) == [archive["richard"]]
    assert _uids(api.get(BASE + "studies", {"PatientID": "PID-1"})) == [archive["jane"]]


def test_limit_and_offset_page_through_results(api, archive):
    first = api.get(BASE + "studies", {"limit": 1})
    second = api.get(BASE + "studies", {"limit": 1, "offset": 1})

    assert _uids(first) == [archive["jane"]]
    assert "more results" in first["Warning"]
    assert _uids(second) == [archive["richard"]]


def test_fuzzy_matching_is_refused_with_a_warning(api, archive):
    response = api.get(BASE + "studies", {"PatientName": "DOE*", "fuzzymatching": "true"})

    assert _uids(response) == [archive["jane"]]
    assert "fuzzymatching" in response["Warning"]


def test_includefield_adds_attributes(api, archive):
    [study] = api.get(BASE + "studies", {"StudyInstanceUID": archive["jane"], "includefield": "PatientSex"}).json()
    [everything] = api.get(BASE + "studies", {"StudyInstanceUID": archive["jane"], "includefield": "all"}).json()

    assert "00100040" in study
    assert "00100021" in everything


def test_series_of_a_study_are_searched(api, archive):
    response = api.get(f"{BASE}studies/{archive['jane']}/series", {"Modality": "MR"})

    [series] = response.json()
    assert series["0020000E"]["Value"] == [archive["mr"]]
    assert series["00201209"]["Value"] == [2]
    assert series["00081190"]["Value"][0].endswith(f"studies/{archive['jane']}/series/{archive['mr']}")


def test_series_are_searched_across_studies_with_study_keys(api, archive):
    response = api.get(BASE + "series", {"PatientName": "ROE*"})

    [series] = response.json()
    assert series["0020000D"]["Value"] == [archive["richard"]]
    assert series["00100010"]["Value"] == [{"Alphabetic": "ROE^RICHARD"}]


def test_instances_of_a_series_are_searched(api, archive):
    url = f"{BASE}studies/{archive['jane']}/series/{archive['ct']}/instances"

    numbers = [item["00200013"]["Value"][0] for item in api.get(url).json()]
    [second] = api.get(url, {"InstanceNumber": 2}).json()

    assert numbers == [1, 2, 3]
    assert second["00280010"]["Value"] == [128]
    assert second["00280100"]["Value"] == [16]
    assert second["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]


def test_instances_are_searched_across_the_clinic(api, archive):
    response = api.get(BASE + "instances", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4", "includefield": "00080008"})

    assert len(response.json()) == 2
    assert all(item["0020000E"]["Value"] == [archive["mr"]] for item in response.json())
    assert all("00080008" in item for item in response.json())


def test_instances_of_a_study_are_searched(api, archive):
    response = api.get(f"{BASE}studies/{archive['jane']}/instances")

    assert len(response.json()) == 5


def test_an_invalid_date_is_a_bad_request(api, archive):
    response = api.get(BASE + "studies", {"StudyDate": "2024-13-45"})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "date" in response.json()["message"]


def test_no_match_is_an_empty_list(api, archive):
    assert _uids(api.get(BASE + "studies", {"PatientID": "NOBODY"})) == []


def test_search_is_audited_once_per_minute(api, archive):
    from tenants.models import AuditEvent

    api.get(BASE + "studies")
    api.get(BASE + "studies")

    assert AuditEvent.objects.filter(action="dicomweb.search").count() == 1


def test_outsider_session_gets_404_for_our_clinic(client, outsider, archive):
    client.force_login(outsider)

    response = client.get(BASE + "studies")

    assert response.status_code == HTTPStatus.NOT_FOUND


def test_outsider_token_finds_nothing_of_ours_in_its_own_clinic(client, other_clinic, archive):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(other_clinic)}"

    listed = client.get("/dicomweb/clinic-b/studies")
    series = client.get(f"/dicomweb/clinic-b/studies/{archive['jane']}/series")
    ours = client.get(BASE + "studies")

    assert listed.json() == []
    assert series.status_code == HTTPStatus.NOT_FOUND
    assert ours.status_code == HTTPStatus.NOT_FOUND


def test_member_session_can_search(client, clinician, archive):
    client.force_login(clinician)

    assert len(_uids(client.get(BASE + "studies"))) == 2


def test_uploader_cannot_search(client, clinic, archive):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic, role='uploader')}"

    response = client.get(BASE + "studies")

    assert response.status_code == HTTPStatus.FORBIDDEN


def test_anonymous_caller_gets_401(client, archive):
    response = client.get(BASE + "studies")

    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_share_link_answers_point_back_at_the_share_and_list_only_its_study(client, clinic, archive):
    from studies.models import Study
    from studies.sharing import services as sharing

    jane = Study.objects.get(study_instance_uid=archive["jane"])
    token = sharing.share_create(clinic=clinic, studies=[jane], created_by=None).token
    base = f"/s/{token}/dicomweb/"

    studies = client.get(base + "studies").json()
    metadata = client.get(f"{base}studies/{archive['jane']}/metadata").json()

    assert [s["0020000D"]["Value"][0] for s in studies] == [archive["jane"]]
    assert studies[0]["00081190"]["Value"] == [f"http://testserver{base}studies/{archive['jane']}"]
    assert metadata[0]["7FE00010"]["BulkDataURI"].startswith(f"http://testserver{base}studies/{archive['jane']}/")


def test_instance_search_with_all_fields_gives_absolute_bulk_data_uris(api, archive):
    url = f"{BASE}studies/{archive['jane']}/series/{archive['ct']}/instances"

    [first, *_] = api.get(url, {"includefield": "all"}).json()

    assert first["7FE00010"]["BulkDataURI"] == first["00081190"]["Value"][0] + "/bulkdata/7FE00010"
    assert first["00100010"]["Value"] == [{"Alphabetic": "DOE^JANE"}]


def test_person_names_are_split_into_their_groups_and_each_group_matches(api, clinic, tmp_path):
    path = write_instance(tmp_path, study_uid=generate_uid(), series_uid=generate_uid(), patient_name="")
    ds = dcmread(path)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.save_as(path, enforce_file_format=True)
    ingest_files(clinic, [path])

    for name in ("山田^太郎", "やまだ^たろう", "Yamada^Tarou", "山田*"):
        [study] = api.get(BASE + "studies", {"PatientName": name}).json()
        assert study["00100010"]["Value"] == [
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
        ], name


def test_modalities_in_study_match_wildcards(api, archive):
    assert sorted(_uids(api.get(BASE + "studies", {"ModalitiesInStudy": "C?"}))) == sorted(
        [archive["jane"], archive["richard"]]
    )
    assert _uids(api.get(BASE + "studies", {"ModalitiesInStudy": "M?"})) == [archive["jane"]]


def test_a_study_without_modalities_is_answered_without_an_empty_cs_element(api, clinic):
    bare = make_study(clinic=clinic, modalities_in_study="", study_instance_uid="1.2.826.0.1.3680043.10.9.1")
    from_series = make_study(clinic=clinic, modalities_in_study="", study_instance_uid="1.2.826.0.1.3680043.10.9.2")
    Series.objects.create(clinic=clinic, study=from_series, series_instance_uid="1.2.826.0.1.3680043.10.9.2.1",
                          modality="US")

    answers = {a["0020000D"]["Value"][0]: a for a in api.get(BASE + "studies").json()}

    assert "00080061" not in answers[bare.study_instance_uid]  # OHIF's list fails on {"vr": "CS"}
    assert answers[from_series.study_instance_uid]["00080061"] == {"vr": "CS", "Value": ["US"]}


@pytest.mark.parametrize("params", [
    {"offset": "99999999999999999999"}, {"limit": "99999999999999999999"}, {"offset": "-1"}, {"limit": "1e3"},
    {"NumberOfStudyRelatedSeries": "99999999999999999999"}, {"StudyDate": "20240101-20230101"}, {"StudyDate": "-"},
])
def test_numbers_and_ranges_out_of_bounds_answer_400_with_a_message(api, archive, params):
    response = api.get(BASE + "studies", params)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["error"] == "invalid_query" and response.json()["message"]


def test_a_search_past_its_time_budget_answers_503_with_a_message(api, archive, settings, monkeypatch):
    settings.SEARCH_TIME_LIMIT_SECONDS = 0.05
    search = qido.search

    def slow_search(**kwargs):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(1)" if connection.vendor == "postgresql" else
                           "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n")
        return search(**kwargs)

    monkeypatch.setattr(qido, "search", slow_search)

    response = api.get(BASE + "studies", {"PatientName": "*A*A*A*A*A*A*A*A*B"})

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response.json()["error"] == "search_too_slow"
    monkeypatch.setattr(qido, "search", search)
    assert _uids(api.get(BASE + "studies", {"PatientName": "DOE*"})) == [archive["jane"]]  # the next one runs


def test_series_of_a_study_is_answered_with_two_statements(api, archive):
    from django.test.utils import CaptureQueriesContext

    api.get(f"{BASE}studies/{archive['jane']}/series")  # the first search of a caller writes its audit entry

    with CaptureQueriesContext(connection) as queries:
        response = api.get(f"{BASE}studies/{archive['jane']}/series")

    assert sorted(_uids(response, "0020000E")) == sorted([archive["ct"], archive["mr"]])
    # The caller's token and the series: no lookup of the study of its own, no budget transaction.
    assert len(queries) == 2


def test_series_of_a_study_uid_another_clinic_also_holds_are_each_clinics_own(api, archive, other_clinic, tmp_path):
    # The statement of a search inside one study is compiled once and reused with each caller's clinic.
    theirs = generate_uid()
    ingest_files(other_clinic, [write_instance(tmp_path, study_uid=archive["jane"], series_uid=theirs)])
    api.get(f"{BASE}studies/{archive['jane']}/series")

    ours = api.get(f"{BASE}studies/{archive['jane']}/series")
    other = api.get(f"/dicomweb/{other_clinic.slug}/studies/{archive['jane']}/series",
                    HTTP_AUTHORIZATION=f"Bearer {token_for(other_clinic)}")

    assert sorted(_uids(ours, "0020000E")) == sorted([archive["ct"], archive["mr"]])
    assert _uids(other, "0020000E") == [theirs]


def test_instances_of_a_series_answer_their_header_values_and_urls(api, archive):
    response = api.get(f"{BASE}studies/{archive['jane']}/series/{archive['mr']}/instances")

    found = response.json()
    assert [item["00200013"]["Value"] for item in found] == [[1], [2]]
    assert all(item["00081190"]["Value"][0].startswith(
        f"http://testserver{BASE}studies/{archive['jane']}/series/{archive['mr']}/instances/") for item in found)


def test_series_of_a_study_in_the_trash_is_not_found(api, archive):
    response = api.get(f"{BASE}studies/{archive['trashed']}/series")

    assert response.status_code == HTTPStatus.NOT_FOUND


def test_series_of_an_unknown_study_is_not_found(api, archive):
    response = api.get(f"{BASE}studies/{generate_uid()}/series")

    assert response.status_code == HTTPStatus.NOT_FOUND


def test_a_study_search_that_matches_nothing_is_an_empty_list(api, archive):
    response = api.get(f"{BASE}studies/{archive['jane']}/series", {"Modality": "US"})

    assert response.status_code == HTTPStatus.OK
    assert response.json() == []


def test_instances_of_an_unknown_series_of_a_known_study_are_not_found(api, archive):
    response = api.get(f"{BASE}studies/{archive['jane']}/series/{generate_uid()}/instances")

    assert response.status_code == HTTPStatus.NOT_FOUND


def test_instances_of_a_series_of_another_study_are_not_found(api, archive):
    response = api.get(f"{BASE}studies/{archive['richard']}/series/{archive['ct']}/instances")

    assert response.status_code == HTTPStatus.NOT_FOUND


@pytest.mark.parametrize(
    ("vr", "value", "expected"),
    [("PN", "DOE^JANE", [{"Alphabetic": "DOE^JANE"}]),
     ("PN", "Yamada^Tarou=山田^太郎=やまだ^たろう",
      [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}]),
     ("PN", "=山田^太郎", [{"Ideographic": "山田^太郎"}]), ("PN", "", None), ("PN", None, None),
     ("DA", date(2024, 1, 5), ["20240105"]), ("DA", "20240105", ["20240105"]), ("DA", None, None),
     ("TM", time(8, 5, 1, 250), ["080501.000250"]), ("TM", time(8, 5, 1), ["080501"]), ("TM", "", None),
     ("IS", 3, [3]), ("IS", "3", [3]), ("IS", None, None), ("LO", "CT HEAD", ["CT HEAD"]), ("LO", "", None),
     ("UI", "1.2.3", ["1.2.3"]), ("CS", ["A", "B"], ["A", "B"]), ("CS", [], None)],
)
def test_each_vr_is_rendered_as_dicom_json(vr, value, expected):
    from studies.dicomweb.dicomjson import element, renderer

    wanted = {"vr": vr} if expected is None else {"vr": vr, "Value": expected}
    assert renderer(vr)(value) == wanted
    assert element(vr, value) == wanted


def test_a_multi_valued_index_value_is_split_and_an_empty_one_has_no_value():
    from studies.dicomweb.dicomjson import renderer

    assert renderer("CS", multi_valued=True)("CT\\MR") == {"vr": "CS", "Value": ["CT", "MR"]}
    assert renderer("CS", multi_valued=True)(None) == {"vr": "CS"}


def test_a_name_in_three_groups_is_answered_in_three_groups(api, clinic, tmp_path):
    from tests.dicom_files import dataset_write, sample_dataset

    study_uid = generate_uid()
    ds = sample_dataset("CT_small.dcm", StudyInstanceUID=study_uid, SeriesInstanceUID=generate_uid(),
                        SpecificCharacterSet="ISO_IR 192", PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう")
    ingest_files(clinic, [dataset_write(ds, tmp_path / "yamada.dcm")])

    response = api.get(BASE + "studies", {"StudyInstanceUID": study_uid})

    assert response.json()[0]["00100010"] == {
        "vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}],
    }
    assert "山田" in response.content.decode("utf-8")


@pytest.mark.parametrize(
    ("key", "value", "found"),
    [("AccessionNumber", "ACC-2*", True), ("AccessionNumber", "acc-2*", False), ("AccessionNumber", "*c-2", False),
     ("AccessionNumber", "*C-2", True), ("AccessionNumber", "AC?-2", True), ("AccessionNumber", "ac?-2", False),
     ("StudyDescription", "*CHEST", True), ("StudyDescription", "*chest", False),
     ("ModalitiesInStudy", "C?", True), ("ModalitiesInStudy", "c?", False)],
)
def test_wildcards_on_other_attributes_compare_case_on_every_database(api, archive, key, value, found):
    """PS3.4 C.2.2.2.4: only person names may ignore case. SQLite's LIKE ignores ASCII case by itself,
    so without care the default database answered what PostgreSQL does not."""
    uids = _uids(api.get(BASE + "studies", {key: value}))

    assert (archive["richard"] in uids) is found


def test_characters_special_to_the_database_match_themselves(api, clinic, tmp_path):
    study_uid = generate_uid()
    ingest_files(clinic, [write_instance(tmp_path, study_uid=study_uid, series_uid=generate_uid(),
                                         accession="A[1]_%b")])

    for pattern, found in [("A[1]_%*", True), ("*[1]_%B", False), ("*[1]_%b", True), ("A?1]_%b", True),
                           ("A[1]x%b*", False), ("A[1]_x*", False)]:
        assert (study_uid in _uids(api.get(BASE + "studies", {"AccessionNumber": pattern}))) is found, pattern
