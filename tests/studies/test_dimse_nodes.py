"""The DICOM nodes page (/c/<clinic>/dicom-nodes/) and ``manage.py add_dicom_node``."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from studies.models import DicomNode
from tenants.models import AuditEvent
from tests.studies.dimse_support import register_node

pytestmark = pytest.mark.django_db


def nodes_url(clinic) -> str:
    return reverse("studies:dicom-nodes", kwargs={"clinic_slug": clinic.slug})


def delete_url(node) -> str:
    return reverse("studies:dicom-node-delete", kwargs={"clinic_slug": node.clinic.slug, "node_uuid": node.uuid})


NEW_NODE = {"ae_title": "CT_SCANNER", "host": "10.0.0.5", "port": "104", "allow_inbound": "on",
            "is_move_destination": "on", "allowed_address": "10.0.0.0/24", "description": "CT room 2"}


def test_admin_sees_the_clinics_nodes_and_its_ae_title(client, admin, clinic, other_clinic):
    register_node(clinic, ae_title="WORKSTATION")
    register_node(other_clinic, ae_title="THEIRS")
    client.force_login(admin)

    response = client.get(nodes_url(clinic))

    assert response.status_code == HTTPStatus.OK
    page = response.content.decode()
    assert "WORKSTATION" in page
    assert "THEIRS" not in page
    assert clinic.ae_title in page


def test_admin_adds_a_node(client, admin, clinic):
    client.force_login(admin)

    response = client.post(nodes_url(clinic), NEW_NODE)

    assert response.status_code == HTTPStatus.FOUND
    node = DicomNode.objects.for_clinic(clinic).get()
    assert (node.ae_title, node.host, node.port, node.allowed_address) == ("CT_SCANNER", "10.0.0.5", 104, "10.0.0.0/24")
    assert node.allow_inbound and node.is_move_destination
    assert AuditEvent.objects.for_clinic(clinic).filter(action="dicom_node.created", actor=admin).exists()


def test_a_duplicate_ae_title_is_refused_with_a_message(client, owner, clinic):
    register_node(clinic, ae_title="CT_SCANNER")
    client.force_login(owner)

    response = client.post(nodes_url(clinic), NEW_NODE)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "already registered" in response.content.decode()
    assert DicomNode.objects.for_clinic(clinic).count() == 1


def test_an_invalid_address_restriction_is_refused(client, owner, clinic):
    client.force_login(owner)

    response = client.post(nodes_url(clinic), {**NEW_NODE, "allowed_address": "not-an-address"})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert not DicomNode.objects.exists()


def test_admin_removes_a_node(client, admin, clinic):
    node = register_node(clinic)
    client.force_login(admin)

    response = client.post(delete_url(node))

    assert response.status_code == HTTPStatus.FOUND
    assert not DicomNode.objects.exists()
    assert AuditEvent.objects.for_clinic(clinic).filter(action="dicom_node.deleted").exists()


def test_clinician_cannot_see_or_add_nodes(client, clinician, clinic):
    client.force_login(clinician)

    listed = client.get(nodes_url(clinic))
    added = client.post(nodes_url(clinic), NEW_NODE)

    assert listed.status_code == HTTPStatus.FORBIDDEN
    assert added.status_code == HTTPStatus.FORBIDDEN
    assert not DicomNode.objects.exists()


def test_clinician_cannot_remove_a_node(client, clinician, clinic):
    node = register_node(clinic)
    client.force_login(clinician)

    response = client.post(delete_url(node))

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert DicomNode.objects.filter(pk=node.pk).exists()


def test_outsider_gets_404_and_nothing_changes(client, outsider, clinic):
    node = register_node(clinic)
    client.force_login(outsider)

    listed = client.get(nodes_url(clinic))
    added = client.post(nodes_url(clinic), NEW_NODE)
    removed = client.post(delete_url(node))

    assert (listed.status_code, added.status_code, removed.status_code) == (HTTPStatus.NOT_FOUND,) * 3
    assert list(DicomNode.objects.values_list("ae_title", flat=True)) == [node.ae_title]


def test_outsider_cannot_remove_a_node_through_their_own_clinic(client, outsider, clinic, other_clinic):
    node = register_node(clinic)
    client.force_login(outsider)

    response = client.post(reverse("studies:dicom-node-delete",
                                   kwargs={"clinic_slug": other_clinic.slug, "node_uuid": node.uuid}))

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert DicomNode.objects.filter(pk=node.pk).exists()


def test_add_dicom_node_command_registers_a_node(clinic, capsys):
    call_command("add_dicom_node", "--clinic", clinic.slug, "--ae", "PACS2", "--host", "pacs2.example.org",
                 "--port", "11112")

    node = DicomNode.objects.for_clinic(clinic).get()
    assert (node.ae_title, node.host, node.port) == ("PACS2", "pacs2.example.org", 11112)
    assert node.allow_inbound and node.is_move_destination
    assert clinic.ae_title in capsys.readouterr().out


def test_add_dicom_node_command_refuses_an_unknown_clinic(db):
    with pytest.raises(CommandError, match="No clinic"):
        call_command("add_dicom_node", "--clinic", "nope", "--ae", "PACS2", "--host", "h", "--port", "104")


def test_add_dicom_node_command_refuses_a_bad_ae_title(clinic):
    with pytest.raises(CommandError, match="AE title"):
        call_command("add_dicom_node", "--clinic", clinic.slug, "--ae", "A\\B", "--host", "h", "--port", "104")

    assert not DicomNode.objects.exists()
