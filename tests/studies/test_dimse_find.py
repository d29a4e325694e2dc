"""C-FIND (Patient Root and Study Root, every level) over the index, from DCMTK findscu and pynetdicom."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from django.utils import timezone
from pydicom import Dataset, dcmread
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from studies.ingest import instance_ingest
from studies.models import Study
from tenants.models import AuditEvent
from tests.dicom_files import write_study
from tests.studies.dimse_support import HOST, MODALITY_AE, c_find, dcmtk, identifier

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("tasks_run_inline")]


def ingest(clinic, study) -> None:
    for path in study.files:
        instance_ingest(clinic=clinic, source_path=str(path), source="test")


@pytest.fixture
def studies(clinic, other_clinic, tmp_path):
    """Jane's CT+MR study, Richard's older CT study, a trashed one, and another clinic's study of Jane."""
    jane = write_study(tmp_path / "jane", samples=["CT_small.dcm", "MR_small_implicit.dcm"], copies=2,
                       patient_id="PID-1", patient_name="DOE^JANE", accession="ACC-1", study_date=date(2024, 1, 15))
    richard = write_study(tmp_path / "richard", patient_id="PID-2", patient_name="ROE^RICHARD", accession="ACC-2",
                          study_date=date(2023, 6, 1))
    trashed = write_study(tmp_path / "trashed", patient_id="PID-3", patient_name="DOE^JOHN", accession="ACC-3")
    elsewhere = write_study(tmp_path / "elsewhere", patient_id="PID-1", patient_name="DOE^JANE", accession="ACC-9")
    for study in (jane, richard, trashed):
        ingest(clinic, study)
    ingest(other_clinic, elsewhere)
    Study.objects.for_clinic(clinic).filter(study_instance_uid=trashed.study_uid).update(deleted_at=timezone.now())
    return {"jane": jane, "richard": richard, "trashed": trashed, "elsewhere": elsewhere}


def find(port: int, called: str, model: str, **keys: object) -> tuple[list[Dataset], int | None]:
    """Run one C-FIND with pynetdicom; return the matches and the final status."""
    return c_find(port, called, model, identifier(**keys))


def findscu(port: int, called: str, out: Path, *args: str) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    dcmtk("findscu", "-aet", MODALITY_AE, "-aec", called, HOST, port, "-X", "-od", out, *args, check=True)
    return [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def test_findscu_study_root_study_level_by_patient_id(clinic, scp_port, studies, tmp_path):
    answers = findscu(
        scp_port, clinic.ae_title, tmp_path / "rsp", "-S",
        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PID-1", "-k", "StudyInstanceUID", "-k", "PatientName",
        "-k", "StudyDate", "-k", "AccessionNumber", "-k", "ModalitiesInStudy", "-k", "NumberOfStudyRelatedInstances",
        "-k", "NumberOfStudyRelatedSeries", "-k", "RetrieveAETitle",
    )

    assert len(answers) == 1
    answer = answers[0]
    assert answer.StudyInstanceUID == studies["jane"].study_uid
    assert str(answer.PatientName) == "DOE^JANE"
    assert answer.StudyDate == "20240115"
    assert answer.AccessionNumber == "ACC-1"
    assert set(answer.ModalitiesInStudy) == {"CT", "MR"}
    assert answer.NumberOfStudyRelatedInstances == 4
    assert answer.NumberOfStudyRelatedSeries == 2
    assert answer.RetrieveAETitle == clinic.ae_title


def test_findscu_patient_root_patient_level_wildcard_name(clinic, scp_port, studies, tmp_path):
    answers = findscu(
        scp_port, clinic.ae_title, tmp_path / "rsp", "-P",
        "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientName=doe*", "-k", "PatientID",
        "-k", "NumberOfPatientRelatedStudies", "-k", "NumberOfPatientRelatedInstances",
    )

    # John Doe's only study is in the trash, so he is not found.
    assert [(a.PatientID, a.NumberOfPatientRelatedStudies, a.NumberOfPatientRelatedInstances) for a in answers] == [
        ("PID-1", 1, 4)
    ]


def test_findscu_series_level_in_patient_root(clinic, scp_port, studies, tmp_path):
    answers = findscu(
        scp_port, clinic.ae_title, tmp_path / "rsp", "-P",
        "-k", "QueryRetrieveLevel=SERIES", "-k", "PatientID=PID-1", "-k", f"StudyInstanceUID={studies['jane'].study_uid}",
        "-k", "SeriesInstanceUID", "-k", "Modality", "-k", "NumberOfSeriesRelatedInstances",
    )

    assert sorted((a.Modality, a.NumberOfSeriesRelatedInstances) for a in answers) == [("CT", 2), ("MR", 2)]
    assert {a.SeriesInstanceUID for a in answers} == set(studies["jane"].series_uids)


def test_findscu_image_level(clinic, scp_port, studies, tmp_path):
    series_uid = studies["jane"].series_uids[0]
    answers = findscu(
        scp_port, clinic.ae_title, tmp_path / "rsp", "-S",
        "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={studies['jane'].study_uid}",
        "-k", f"SeriesInstanceUID={series_uid}", "-k", "SOPInstanceUID", "-k", "SOPClassUID", "-k", "InstanceNumber",
        "-k", "Rows",
    )

    assert sorted(a.InstanceNumber for a in answers) == [1, 2]
    assert {a.SOPInstanceUID for a in answers} == set(studies["jane"].sop_uids[:2])
    assert {a.Rows for a in answers} == {128}


def test_study_date_ranges(clinic, scp_port, studies):
    model = StudyRootQueryRetrieveInformationModelFind

    this_year, _ = find(scp_port, clinic.ae_title, model, QueryRetrieveLevel="STUDY", StudyDate="20240101-20241231",
                        StudyInstanceUID="")
    before, _ = find(scp_port, clinic.ae_title, model, QueryRetrieveLevel="STUDY", StudyDate="-20231231",
                     StudyInstanceUID="")
    since, _ = find(scp_port, clinic.ae_title, model, QueryRetrieveLevel="STUDY", StudyDate="20230601-",
                    StudyInstanceUID="")

    assert [a.StudyInstanceUID for a in this_year] == [studies["jane"].study_uid]
    assert [a.StudyInstanceUID for a in before] == [studies["richard"].study_uid]
    assert {a.StudyInstanceUID for a in since} == {studies["jane"].study_uid, studies["richard"].study_uid}


def test_uid_list_matching(clinic, scp_port, studies):
    uids = [studies["jane"].study_uid, studies["richard"].study_uid, studies["elsewhere"].study_uid]

    answers, status = find(scp_port, clinic.ae_title, StudyRootQueryRetrieveInformationModelFind,
                           QueryRetrieveLevel="STUDY", StudyInstanceUID=uids, PatientID="")

    assert status == 0x0000
    assert {a.StudyInstanceUID for a in answers} == set(uids[:2])


def test_modalities_in_study_matches_any_of_its_values(clinic, scp_port, studies):
    answers, _ = find(scp_port, clinic.ae_title, StudyRootQueryRetrieveInformationModelFind,
                      QueryRetrieveLevel="STUDY", ModalitiesInStudy="MR", StudyInstanceUID="")

    assert [a.StudyInstanceUID for a in answers] == [studies["jane"].study_uid]


def test_image_level_matches_and_returns_keys_from_the_stored_header(clinic, scp_port, studies):
    answers, _ = find(scp_port, clinic.ae_title, PatientRootQueryRetrieveInformationModelFind,
                      QueryRetrieveLevel="IMAGE", PatientID="PID-1", StudyInstanceUID=studies["jane"].study_uid,
                      SeriesInstanceUID=studies["jane"].series_uids[0], SOPInstanceUID="", Manufacturer="GE*",
                      SliceThickness="")

    assert len(answers) == 2
    assert {a.Manufacturer for a in answers} == {"GE MEDICAL SYSTEMS"}
    assert {float(a.SliceThickness) for a in answers} == {5.0}


def test_trashed_studies_are_not_found(clinic, scp_port, studies):
    answers, status = find(scp_port, clinic.ae_title, StudyRootQueryRetrieveInformationModelFind,
                           QueryRetrieveLevel="STUDY", PatientID="PID-3", StudyInstanceUID="")

    assert status == 0x0000
    assert answers == []


def test_another_clinics_studies_are_never_found(clinic, scp_port, studies):
    answers, _ = find(scp_port, clinic.ae_title, StudyRootQueryRetrieveInformationModelFind,
                      QueryRetrieveLevel="STUDY", AccessionNumber="ACC-9", StudyInstanceUID="")

    assert answers == []


def test_patient_level_in_study_root_is_refused(clinic, scp_port, studies):
    answers, status = find(scp_port, clinic.ae_title, StudyRootQueryRetrieveInformationModelFind,
                           QueryRetrieveLevel="PATIENT", PatientID="PID-1")

    assert answers == []
    assert status == 0xA900


def test_each_find_is_audited_without_patient_data(clinic, scp_port, studies):
    find(scp_port, clinic.ae_title, StudyRootQueryRetrieveInformationModelFind,
         QueryRetrieveLevel="STUDY", PatientID="PID-1", StudyInstanceUID="")

    event = AuditEvent.objects.for_clinic(clinic).get(action="dimse.find")
    assert event.details == {"level": "STUDY", "matches": 1}
