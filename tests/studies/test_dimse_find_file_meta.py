"""C-FIND identifiers that carry File Meta keys (Orthanc sends (0002,0003)): ignored, never returned."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from studies.dimse.find import find_matches
from tests.dicom_files import write_instance
from tests.factories import ingest_files

pytestmark = pytest.mark.django_db


@pytest.fixture
def instance(clinic, tmp_path):
    [stored] = ingest_files(clinic, [write_instance(tmp_path, study_uid=generate_uid(), series_uid=generate_uid())])
    return stored


def _image_query(instance, **extra: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = instance.series.study.study_instance_uid
    query.SeriesInstanceUID = instance.series.series_instance_uid
    query.SOPInstanceUID = ""
    for keyword, value in extra.items():
        setattr(query, keyword, value)
    return query


def test_image_level_find_with_a_file_meta_key_finds_the_instance(clinic, instance):
    query = _image_query(instance, MediaStorageSOPInstanceUID="")

    answers = list(
        find_matches(clinic=clinic, identifier=query, sop_class_uid=StudyRootQueryRetrieveInformationModelFind)
    )

    assert [a.SOPInstanceUID for a in answers] == [instance.sop_instance_uid]


def test_file_meta_keys_are_never_returned(clinic, instance):
    query = _image_query(instance, MediaStorageSOPInstanceUID="", TransferSyntaxUID="")

    [answer] = find_matches(clinic=clinic, identifier=query, sop_class_uid=StudyRootQueryRetrieveInformationModelFind)

    assert not [element for element in answer if element.tag.group == 0x0002]


def test_a_file_meta_value_is_not_matched(clinic, instance):
    query = _image_query(instance, MediaStorageSOPInstanceUID="1.2.3.4")

    answers = list(
        find_matches(clinic=clinic, identifier=query, sop_class_uid=StudyRootQueryRetrieveInformationModelFind)
    )

    assert len(answers) == 1


def test_another_clinic_finds_nothing_with_the_same_query(other_clinic, instance):
    query = _image_query(instance, MediaStorageSOPInstanceUID="")

    answers = list(
        find_matches(clinic=other_clinic, identifier=query, sop_class_uid=StudyRootQueryRetrieveInformationModelFind)
    )

    assert answers == []
