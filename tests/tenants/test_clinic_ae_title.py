"""A clinic's called AE title: by default its slug upper-cased and cut to 16 characters (DESIGN.md)."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from portal.exceptions import PortalError
from tenants import services
from tenants.models import Clinic
from tests.factories import make_user

pytestmark = pytest.mark.django_db


def test_new_clinic_is_called_by_its_slug_upper_cased_with_its_hyphens():
    clinic = services.clinic_create(name="Clinic A", slug="clinic-a", owner=make_user())

    assert clinic.ae_title == "CLINIC-A"


def test_long_slug_is_cut_to_sixteen_characters():
    clinic = services.clinic_create(name="North", slug="harbour-radiology-north", owner=make_user())

    assert clinic.ae_title == "HARBOUR-RADIOLOG"


def test_create_clinic_command_follows_the_same_default(capsys):
    call_command("create_clinic", "--name", "Bay", "--slug", "bay-imaging", "--owner", "o@bay.example",
                 "--password", "A long Password 123!")  # fmt: skip

    assert Clinic.objects.get(slug="bay-imaging").ae_title == "BAY-IMAGING"
    assert "AE title BAY-IMAGING" in capsys.readouterr().out


@pytest.mark.parametrize("title", ["SEVENTEEN-CHARS-X", "BAD\\AE"])
def test_a_chosen_ae_title_that_dicom_does_not_allow_is_refused(title):
    with pytest.raises(PortalError):
        services.clinic_create(name="Bad", slug="bad", owner=make_user(), ae_title=title)

    assert not Clinic.objects.filter(slug="bad").exists()


def test_the_create_clinic_command_refuses_an_ae_title_over_sixteen_characters():
    with pytest.raises(CommandError, match="1 to 16 characters"):
        call_command("create_clinic", "--name", "Long", "--slug", "long", "--owner", "x@long.example",
                     "--password", "A long Password 123!", "--ae-title", "ABCDEFGHIJKLMNOPQ")  # fmt: skip

    assert not Clinic.objects.filter(slug="long").exists()
