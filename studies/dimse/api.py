"""REST: /api/v1/clinics/<clinic_slug>/dicom-nodes/ (GET lists, POST registers) and dicom-nodes/<id>/ (DELETE)."""

from __future__ import annotations

from uuid import UUID

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from studies.dimse import nodes
from studies.models import DicomNode
from tenants import permissions
from tenants.audit import Actor
from tenants.roles import Action

MANAGE_MESSAGE = "Only owners and admins manage DICOM nodes."


def _user(request: Request):  # type: ignore[no-untyped-def]
    return request.user if getattr(request.user, "pk", None) else None


class DicomNodeOutput(serializers.Serializer):
    id = serializers.UUIDField(source="uuid")
    ae_title = serializers.CharField()
    host = serializers.CharField()
    port = serializers.IntegerField()
    description = serializers.CharField()
    allow_inbound = serializers.BooleanField()
    is_move_destination = serializers.BooleanField()
    allowed_address = serializers.CharField()
    allow_any_address = serializers.BooleanField()
    tls_certificate_sha256 = serializers.CharField()
    warning = serializers.SerializerMethodField()

    def get_warning(self, node: DicomNode) -> str:
        return nodes.ANY_ADDRESS_WARNING if node.allow_any_address and node.allow_inbound else ""


class DicomNodeListApi(APIView):
    """The clinic's registered DICOM nodes; POST registers one (owners and admins)."""

    class InputSerializer(serializers.Serializer):
        ae_title = serializers.CharField(max_length=16)
        host = serializers.CharField(max_length=255)
        port = serializers.IntegerField(min_value=1, max_value=65535)
        description = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        allow_inbound = serializers.BooleanField(default=True)
        is_move_destination = serializers.BooleanField(default=True)
        allowed_address = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
        allow_any_address = serializers.BooleanField(default=False, help_text=nodes.ANY_ADDRESS_WARNING)
        tls_certificate_pem = serializers.CharField(max_length=20000, required=False, allow_blank=True, default="")

    @extend_schema(responses=DicomNodeOutput(many=True))
    def get(self, request: Request, clinic_slug: str) -> Response:
        permissions.action_check(request, Action.MANAGE, message=MANAGE_MESSAGE)
        return Response({"results": DicomNodeOutput(nodes.dicom_node_list(clinic=request.clinic), many=True).data})

    @extend_schema(request=InputSerializer, responses={201: DicomNodeOutput})
    def post(self, request: Request, clinic_slug: str) -> Response:
        permissions.action_check(request, Action.MANAGE, message=MANAGE_MESSAGE)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node = nodes.dicom_node_create(clinic=request.clinic, actor=_user(request), by=Actor.from_request(request._request),
                                       **data.validated_data)
        return Response(DicomNodeOutput(node).data, status=status.HTTP_201_CREATED)


class DicomNodeDetailApi(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, clinic_slug: str, node_uuid: UUID) -> Response:
        permissions.action_check(request, Action.MANAGE, message=MANAGE_MESSAGE)
        node = DicomNode.objects.for_clinic(request.clinic).filter(uuid=node_uuid).first()
        if node is None:
            raise Http404("No such DICOM node.")
        nodes.dicom_node_delete(clinic=request.clinic, node=node, actor=_user(request), by=Actor.from_request(request._request))
        return Response(status=status.HTTP_204_NO_CONTENT)
