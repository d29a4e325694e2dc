"""Storage commitment test peers: a modality asking for commitment, and the N-ACTION it sends."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import StorageCommitmentPushModel

from studies.dimse.commitment import COMMITMENT_INSTANCE
from tests.studies.dimse_support import HOST, MODALITY_AE, free_port


def commitment_action(references: Iterable[tuple[str, str]]) -> Dataset:
    """The N-ACTION information of a storage commitment request for these (SOP Class, SOP Instance) UIDs."""
    action = Dataset()
    action.TransactionUID = generate_uid()
    action.ReferencedSOPSequence = []
    for sop_class, uid in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = uid
        action.ReferencedSOPSequence.append(item)
    return action


class Modality:
    """A pynetdicom storage commitment SCU that also listens for reports on a new association."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, Dataset, str]] = []
        self.received = threading.Event()
        self.port = free_port()
        listener = AE(ae_title=MODALITY_AE)
        listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.server = listener.start_server(
            (HOST, self.port),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report_new), (evt.EVT_PDU_SENT, self._on_pdu_sent)],
        )

    def _keep(self, event, how: str) -> tuple[int, None]:
        self.reports.append((event.request.EventTypeID, event.event_information, how))
        return 0x0000, None

    def _on_pdu_sent(self, event) -> None:
        # The report counts as received once our answer to it is on the wire: releasing the association
        # before that races the answer (pynetdicom refuses P-DATA while awaiting the release reply), and the
        # portal, which waits for the answer to audit the report, never gets it.
        if self.reports and isinstance(event.pdu, P_DATA_TF):
            self.received.set()

    def _on_report_same(self, event) -> tuple[int, None]:
        return self._keep(event, "same")

    def _on_report_new(self, event) -> tuple[int, None]:
        return self._keep(event, "new")

    def request(self, scp_port: int, called: str, references, *, keep_open: bool, timeout: float = 20) -> int:
        ae = AE(ae_title=MODALITY_AE)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate(
            HOST,
            scp_port,
            ae_title=called,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report_same), (evt.EVT_PDU_SENT, self._on_pdu_sent)],
        )
        assert assoc.is_established
        action = commitment_action(references)
        self.transaction_uid = action.TransactionUID
        status, _ = assoc.send_n_action(action, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
        if keep_open:
            self.received.wait(timeout)
        assoc.release()
        if not keep_open:
            self.received.wait(timeout)
        return status.Status

    def close(self) -> None:
        self.server.shutdown()
