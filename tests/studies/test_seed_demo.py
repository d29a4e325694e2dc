"""`manage.py seed_demo` (run by `make run`): a demo clinic with a sample study to look at at once."""

from __future__ import annotations

import io
from contextlib import closing

import pytest
from django.core.management import call_command

from studies import sample_study
from studies.archive import objects
from studies.models import Instance, Study
from tenants.models import Clinic


@pytest.fixture
def seeded(settings, tmp_path, db):
    settings.VAR_DIR = tmp_path
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def test_seed_creates_the_demo_clinic_with_the_sample_study(seeded):
    clinic = Clinic.objects.get(slug="demo")

    study = Study.objects.for_clinic(clinic).get()

    assert study.study_description == sample_study.STUDY_DESCRIPTION
    assert study.number_of_instances == sample_study.SLICES
    assert "owner@demo.example" in seeded
    assert "printed in this terminal" in seeded


def test_sample_images_are_stored_encrypted_and_read_back_as_dicom(seeded):
    from pydicom import dcmread

    clinic = Clinic.objects.get(slug="demo")
    instance = Instance.objects.for_clinic(clinic).order_by("instance_number").first()

    with closing(objects.object_open(clinic=clinic, key=instance.object_key)) as handle:
        ds = dcmread(io.BytesIO(handle.read()))

    assert ds.Modality == "CT"
    assert ds.pixel_array.shape == (sample_study.SIZE, sample_study.SIZE)
    assert ds.pixel_array.max() > ds.pixel_array.min()


def test_seeding_twice_keeps_one_sample_study(seeded, settings):
    call_command("seed_demo", stdout=io.StringIO())

    assert Study.objects.for_clinic(Clinic.objects.get(slug="demo")).count() == 1
    assert Instance.objects.count() == sample_study.SLICES


def test_a_trashed_sample_is_not_brought_back(seeded):
    Study.objects.update(deleted_at="2026-01-01T00:00:00Z")

    call_command("seed_demo", stdout=io.StringIO())

    assert Study.objects.count() == 1
