"""The shared study of the sharing tests: pydicom's CT (and an MR of another patient), stored in clinic A."""

from __future__ import annotations

import pytest

from studies.models import Study
from tests.studies.sharing.support import store


@pytest.fixture
def study(clinic, tmp_path) -> Study:
    return store(clinic, "CT_small.dcm", tmp_path)


@pytest.fixture
def other_study(clinic, tmp_path) -> Study:
    """A study of another patient than ``study``'s."""
    return store(clinic, "MR_small.dcm", tmp_path)
