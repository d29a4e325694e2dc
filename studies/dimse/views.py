"""The clinic page listing its DICOM nodes, with add and remove (owners and admins: the manage right)."""

from __future__ import annotations

from uuid import UUID

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from portal.exceptions import PortalError
from studies.dimse import nodes
from studies.models import DicomNode
from tenants.audit import Actor
from tenants.middleware import ClinicRequest
from tenants.permissions import require_action
from tenants.roles import Action


class DicomNodeForm(forms.Form):
    ae_title = forms.CharField(label="AE title", max_length=16)
    host = forms.CharField(label="Host", max_length=255, help_text="Where C-MOVE sends studies to.")
    port = forms.IntegerField(label="Port", min_value=1, max_value=65535, initial=104)
    description = forms.CharField(label="Description", max_length=200, required=False)
    allowed_address = forms.CharField(
        label="Only from address", max_length=64, required=False,
        help_text="Accept calls from this IP address or network (e.g. 10.0.0.0/24). Left empty: from the "
                  "host's own address only.",
    )
    allow_any_address = forms.BooleanField(
        label="Accept calls from any address (not recommended)", required=False,
        help_text=nodes.ANY_ADDRESS_WARNING,
    )
    tls_certificate_pem = forms.CharField(
        label="TLS client certificate (optional)", required=False, max_length=20000,
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "-----BEGIN CERTIFICATE-----"}),
        help_text="PEM. The node must then connect over DICOM TLS presenting this certificate, from any address.",
    )
    allow_inbound = forms.BooleanField(label="May connect (store, query, retrieve)", required=False, initial=True)
    is_move_destination = forms.BooleanField(label="C-MOVE destination", required=False, initial=True)


@require_http_methods(["GET", "POST"])
@require_action(Action.MANAGE)
def dicom_node_list(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    form = DicomNodeForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                node = nodes.dicom_node_create(clinic=request.clinic, actor=request.user, by=Actor.from_request(request),
                                               **form.cleaned_data)
            except PortalError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(request, f"{node.ae_title} can now {_abilities(node)}.")
                if node.allow_any_address and node.allow_inbound:
                    messages.warning(request, nodes.ANY_ADDRESS_WARNING)
                return redirect("studies:dicom-nodes", clinic_slug=request.clinic.slug)
        status = 400
    context = {
        "nodes": nodes.dicom_node_list(clinic=request.clinic),
        "form": form,
        "dicom_port": settings.DICOM_PORT,
        "dicom_tls_port": settings.DICOM_TLS_PORT,
    }
    return render(request, "studies/dicom_nodes.html", context, status=status)


def _abilities(node: DicomNode) -> str:
    parts = []
    if node.allow_inbound:
        parts.append("connect to this clinic")
    if node.is_move_destination:
        parts.append(f"receive C-MOVE at {node.host}:{node.port}")
    return " and ".join(parts) or "do nothing until you enable it"


@require_POST
@require_action(Action.MANAGE)
def dicom_node_delete(request: ClinicRequest, clinic_slug: str, node_uuid: UUID) -> HttpResponse:
    node = get_object_or_404(DicomNode.objects.for_clinic(request.clinic), uuid=node_uuid)
    nodes.dicom_node_delete(clinic=request.clinic, node=node, actor=request.user, by=Actor.from_request(request))
    messages.success(request, f"{node.ae_title} was removed; it can no longer connect or receive studies.")
    return redirect("studies:dicom-nodes", clinic_slug=request.clinic.slug)
