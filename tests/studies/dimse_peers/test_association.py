"""AE-title rules of the listener, as README's DIMSE section and DESIGN.md state them."""

from __future__ import annotations

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.studies.dimse_support import HOST, MODALITY_AE, dcmtk

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("called", ["CLINIC-A", " CLINIC-A", "CLINIC-A        "])
def test_called_ae_title_padding_is_not_significant(clinic, scp_port, called):
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, scp_port, ae_title=called)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_echoscu_with_padded_calling_ae(clinic, scp_port):
    result = dcmtk("echoscu", "-aet", f" {MODALITY_AE}", "-aec", clinic.ae_title, HOST, scp_port)
    assert result.returncode == 0, result.stdout + result.stderr
