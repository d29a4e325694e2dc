"""Small secrets sealed with the clinic key open only for their clinic and purpose."""

from __future__ import annotations

import pytest

from studies.archive import sealing
from studies.archive.errors import KeyUnavailable

pytestmark = pytest.mark.django_db


def test_a_sealed_payload_opens_for_its_clinic_and_purpose_only(clinic, other_clinic):
    sealed = sealing.payload_seal(clinic=clinic, plaintext=b"s3cret-token", purpose="migration-dicomweb:x")

    assert b"s3cret-token" not in sealed
    assert sealing.payload_open(clinic=clinic, sealed=sealed, purpose="migration-dicomweb:x") == b"s3cret-token"
    with pytest.raises(KeyUnavailable):
        sealing.payload_open(clinic=clinic, sealed=sealed, purpose="migration-dicomweb:y")
    with pytest.raises(KeyUnavailable):
        sealing.payload_open(clinic=other_clinic, sealed=sealed, purpose="migration-dicomweb:x")
    with pytest.raises(KeyUnavailable):
        sealing.payload_open(clinic=clinic, sealed=b"not sealed", purpose="migration-dicomweb:x")
