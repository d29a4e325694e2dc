"""Fixtures of the DIMSE peer tests: the same listener and receiver as tests/studies/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tenants.models import Clinic
from tests.studies.dimse_support import VIEWER_AE, Receiver, register_node, running_scp, tasks_inline


@pytest.fixture
def tasks_run_inline() -> Iterator[None]:
    with tasks_inline():
        yield


@pytest.fixture
def scp_port(clinic: Clinic) -> Iterator[int]:
    register_node(clinic)
    with running_scp() as port:
        yield port


@pytest.fixture
def receiver(clinic: Clinic) -> Iterator[Receiver]:
    receiving = Receiver()
    register_node(clinic, ae_title=VIEWER_AE, port=receiving.port, allow_inbound=False)
    yield receiving
    receiving.close()
