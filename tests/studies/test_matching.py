"""One matching engine: the same table of cases through the studies page, QIDO-RS and C-FIND.

The page is asked through the browser's URL, QIDO-RS over HTTP with a token, and C-FIND over a real
pynetdicom association to the portal's listener; every door must list the same studies (or refuse the
same bad value).
"""

from __future__ import annotations

from datetime import date, time
from http import HTTPStatus

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from studies import matching
from tests.dicom_files import write_instance
from tests.factories import ingest_files, token_for
from tests.studies.dimse_support import HOST, MODALITY_AE, register_node, running_scp, tasks_inline

pytestmark = pytest.mark.django_db(transaction=True)

ERROR = "error"
YAMADA = "Yamada^Tarou=山田^太郎=やまだ^たろう"


def _write(tmp_path, *, charset: str | None = None, **identity):
    name = identity.pop("patient_name")
    path = write_instance(
        tmp_path,
        study_uid=identity.pop("study_uid"),
        series_uid=generate_uid(),
        patient_name="" if charset else name,
        **identity,
    )
    if charset:
        ds = dcmread(path)
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def archive(clinic, other_clinic, tmp_path):
    """Four studies of clinic A, and one of clinic B that no door may ever list."""
    uids = {name: generate_uid() for name in ("jane", "richard", "yamada", "percent", "elsewhere")}
    ingest_files(
        clinic,
        [
            _write(
                tmp_path,
                study_uid=uids["jane"],
                patient_name="DOE^JANE",
                patient_id="PID-1",
                accession="ACC-1",
                study_date=date(2024, 1, 15),
                study_time=time(10, 15),
                description="CT HEAD",
            ),
            write_instance(
                tmp_path,
                source="MR_small.dcm",
                study_uid=uids["jane"],
                series_uid=generate_uid(),
                patient_name="DOE^JANE",
                patient_id="PID-1",
                accession="ACC-1",
                modality="MR",
                study_date=date(2024, 1, 15),
                study_time=time(10, 15),
                description="CT HEAD",
            ),
            _write(
                tmp_path,
                study_uid=uids["richard"],
                patient_name="ROE^RICHARD",
                patient_id="PID-2",
                accession="ACC-2",
                study_date=date(2023, 6, 1),
                study_time=time(8, 0),
                description="CT CHEST",
            ),
            _write(
                tmp_path,
                source="MR_small.dcm",
                charset="ISO_IR 192",
                study_uid=uids["yamada"],
                patient_name=YAMADA,
                patient_id="PID-3",
                accession="ACC-3",
                study_date=date(2022, 3, 10),
                study_time=time(14, 30),
                description="MR BRAIN",
                modality="MR",
            ),
            # Characters that mean something to LIKE must stay literal.
            _write(
                tmp_path,
                study_uid=uids["percent"],
                patient_name="O%NEIL^SEAN",
                patient_id="PID-4",
                accession="ACC_100%",
                study_date=date(2021, 9, 9),
                study_time=time(23, 59),
                description="CT HEAD 100%",
            ),
        ],
    )
    ingest_files(
        other_clinic,
        [
            _write(
                tmp_path,
                study_uid=uids["elsewhere"],
                patient_name="DOE^JANE",
                patient_id="PID-1",
                accession="ACC-1",
                study_date=date(2024, 1, 15),
                description="CT HEAD",
            ),
        ],
    )
    return uids


# (key, value, expected studies or ERROR, doors); the page has no time or UID boxes.
ALL, NO_PAGE = ("page", "qido", "cfind"), ("qido", "cfind")
CASES = [
    ("PatientName", "DOE^JANE", {"jane"}, ALL),
    ("PatientName", "doe*", {"jane"}, ALL),
    ("PatientName", "*ICHAR?", {"richard"}, ALL),
    ("PatientName", "YAMADA^TAROU", {"yamada"}, ALL),
    ("PatientName", "山田^太郎", {"yamada"}, ALL),
    ("PatientName", "やまだ*", {"yamada"}, ALL),
    ("PatientName", "O%*", {"percent"}, ALL),
    ("PatientName", "?%NEIL*", {"percent"}, ALL),
    ("PatientName", "*A*A*A*A*A*A*A*A*A*A*A*A*A*A*B", set(), ALL),
    # A leading wildcard and no trailing one: the value alone, or its first group followed by others.
    ("PatientName", "*DA^TAROU", {"yamada"}, ALL),
    ("PatientName", "*DA^TARO", set(), ALL),
    # A literal start and more after it (the prefix index's range, the rest checked on its entries).
    ("PatientName", "DOE*^J?NE", {"jane"}, ALL),
    ("PatientName", "ROE*^JA*", set(), ALL),
    ("PatientID", "PID-2", {"richard"}, ALL),
    ("PatientID", "PID-?", {"jane", "richard", "yamada", "percent"}, ALL),
    ("PatientID", "pid-2", set(), ALL),
    ("AccessionNumber", "ACC-1", {"jane"}, ALL),
    ("AccessionNumber", "ACC_1*", {"percent"}, ALL),
    ("AccessionNumber", "*%", {"percent"}, ALL),
    ("StudyDate", "20240115", {"jane"}, ALL),
    ("StudyDate", "20230101-20231231", {"richard"}, ALL),
    ("StudyDate", "-20221231", {"yamada", "percent"}, ALL),
    ("StudyDate", "20230601-", {"jane", "richard"}, ALL),
    ("StudyDate", "20240101-20230101", ERROR, ALL),
    ("StudyDate", "-", ERROR, NO_PAGE),
    ("StudyDate", "2024", ERROR, NO_PAGE),
    ("StudyTime", "14", {"yamada"}, NO_PAGE),
    ("StudyTime", "0800-1015", {"jane", "richard"}, NO_PAGE),
    ("StudyTime", "-08", {"richard"}, NO_PAGE),
    ("StudyTime", "2359-", {"percent"}, NO_PAGE),
    ("StudyTime", "1500-1400", ERROR, NO_PAGE),
    ("ModalitiesInStudy", "MR", {"jane", "yamada"}, ALL),
    ("ModalitiesInStudy", "C?", {"jane", "richard", "percent"}, ALL),
    ("ModalitiesInStudy", "*R", {"jane", "yamada"}, ALL),
    ("ModalitiesInStudy", "mr", set(), NO_PAGE),  # CS values compare case (the page upper-cases its box)
    ("StudyDescription", "*HEAD*", {"jane", "percent"}, ALL),
    ("StudyDescription", "*100%", {"percent"}, ALL),
    ("StudyDescription", "CT HEAD", {"jane"}, NO_PAGE),
    ("StudyInstanceUID", ("jane", "richard"), {"jane", "richard"}, NO_PAGE),
]
PAGE_KEYS = {
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "AccessionNumber": "accession_number",
    "ModalitiesInStudy": "modality",
    "StudyDescription": "description",
}


def _value(value, uids):
    return "\\".join(uids[name] for name in value) if isinstance(value, tuple) else value


def _page(client, clinic, key, value):
    if key == "StudyDate":
        low, dash, high = value.partition("-")
        iso = {k: f"{v[:4]}-{v[4:6]}-{v[6:]}" for k, v in (("date_from", low), ("date_to", high if dash else low)) if v}
        params = iso
    else:
        params = {PAGE_KEYS[key]: value}
    response = client.get(f"/c/{clinic.slug}/studies/", params)
    rows = {s.study_instance_uid for s in response.context["page"].object_list}
    if response.status_code == HTTPStatus.BAD_REQUEST:
        assert rows == set(), "a refused search must list no studies"
        return ERROR
    assert response.status_code == HTTPStatus.OK
    return rows


def _qido(client, clinic, key, value):
    response = client.get(
        f"/dicomweb/{clinic.slug}/studies", {key: value}, HTTP_AUTHORIZATION=f"Bearer {token_for(clinic)}"
    )
    if response.status_code == HTTPStatus.BAD_REQUEST:
        assert response.json()["message"]
        return ERROR
    assert response.status_code == HTTPStatus.OK, response.content
    return {item["0020000D"]["Value"][0] for item in response.json()}


def _cfind(port, called, key, value):
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(HOST, port, ae_title=called)
    assert assoc.is_established
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 192"
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    setattr(query, key, value)
    matches, final = set(), None
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status.Status in (0xFF00, 0xFF01):
                matches.add(identifier.StudyInstanceUID)
            else:
                final = status.Status
    finally:
        assoc.release()
    if final != 0x0000:
        assert not matches
        return ERROR
    return matches


@pytest.fixture
def scp_port(clinic):
    register_node(clinic)
    with tasks_inline(), running_scp() as port:
        yield port


def test_one_table_of_cases_gets_the_same_answer_through_every_door(client, clinic, clinician, archive, scp_port):
    client.force_login(clinician)
    wrong = []
    for key, value, expected, doors in CASES:
        text = _value(value, archive)
        want = expected if expected == ERROR else {archive[name] for name in expected}
        answers = {}
        if "page" in doors:
            answers["page"] = _page(client, clinic, key, text)
        answers["qido"] = _qido(client, clinic, key, text)
        answers["cfind"] = _cfind(scp_port, clinic.ae_title, key, text)
        for door, got in answers.items():
            if got != want:
                names = got if got == ERROR else sorted(n for n, u in archive.items() if u in got)
                wrong.append(f"{door} {key}={value!r}: {names}, expected {expected}")
    assert not wrong, "\n".join(wrong)


def test_the_page_finds_a_name_typed_as_the_list_shows_it(client, clinic, clinician, archive):
    client.force_login(clinician)
    typed_forms = [
        ("Doe, Jane", "jane"),
        ("doe,jane", "jane"),
        ("Doe, J", "jane"),
        ("Jane Doe", "jane"),
        ("DOE JANE", "jane"),
        ("jane", "jane"),
        ("Tarou Yamada", "yamada"),
        ("山田", "yamada"),
        ("Jane Roe", None),
    ]

    found = {typed: _page(client, clinic, "PatientName", typed) for typed, _ in typed_forms}

    assert found == {typed: {archive[who]} if who else set() for typed, who in typed_forms}


def test_an_inverted_date_range_shows_its_error_and_no_studies(client, clinic, clinician, archive):
    client.force_login(clinician)

    response = client.get(f"/c/{clinic.slug}/studies/", {"date_from": "2024-05-01", "date_to": "2023-01-01"})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "after the" in response.content.decode()
    assert list(response.context["page"].object_list) == []
    assert archive["jane"] not in response.content.decode()


def test_rest_search_refuses_an_inverted_range_and_finds_displayed_names(client, clinic, archive):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_for(clinic)}"}
    url = f"/api/v1/clinics/{clinic.slug}/studies/"

    assert client.get(url, {"date_from": "2024-05-01", "date_to": "2023-01-01"}, **auth).status_code == 400
    found = client.get(url, {"patient_name": "Jane Doe"}, **auth).json()["results"]
    assert [study["study_instance_uid"] for study in found] == [archive["jane"]]


def test_wildcards_are_linear_in_the_value():
    name = "A" * 60
    assert not matching.wildcard_match("*A*A*A*A*A*A*A*A*A*A*A*A*A*A*A*A*B", name)
    assert matching.wildcard_match("*A*A*A*A*A*A*A*A*A*A*A*A*A*A*A*A*", name)
    assert matching.wildcard_match("D?E^*", "DOE^JANE")
    assert matching.wildcard_match("*JANE", "DOE^JANE")
    assert not matching.wildcard_match("*JAN", "DOE^JANE")
    assert matching.wildcard_match("doe*", "DOE^JANE", ignore_case=True)
    assert not matching.wildcard_match("D*E*X", "DOE^JANE")
    assert matching.wildcard_match("A*A", "AA") and not matching.wildcard_match("A*A", "A")
    assert matching.like_pattern("50%_\\*?") == "50\\%\\_\\\\%_"
