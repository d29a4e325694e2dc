"""REST endpoints for a clinic's members, invitations and API tokens (owners and admins)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.public_url import absolute_url
from tenants import selectors, services
from tenants.audit import Actor
from tenants.models import User
from tenants.permissions import has_action
from tenants.roles import Action, Role

CanManage = has_action(Action.MANAGE)


def _django_request(request: Request) -> Any:
    # Services audit with the plain HttpRequest: it carries the address, agent and API token.
    return request._request


def _actor(request: Request) -> User | None:
    """The person a token or invitation made by this request is attributed to.

    With an API token the request's user is a TokenUser: what it makes is the token's creator's, so that
    removing or demoting that member withdraws it too (a token minted by a token does not outlive them).
    """
    if isinstance(request.user, User):
        return request.user
    token = getattr(request.user, "token", None)
    return token.created_by if token is not None else None


class MemberOutput(serializers.Serializer):
    id = serializers.UUIDField(source="user.uuid")
    email = serializers.EmailField(source="user.email")
    full_name = serializers.CharField(source="user.full_name")
    role = serializers.CharField()
    joined_at = serializers.DateTimeField(source="created_at")


def _results(name: str, item: type[serializers.Serializer]) -> serializers.Serializer:
    return inline_serializer(name=name, fields={"results": item(many=True)})


class MemberListApi(APIView):
    """List the clinic's members."""

    permission_classes = [CanManage]

    @extend_schema(operation_id="clinics_members_list", responses=_results("MemberList", MemberOutput))
    def get(self, request: Request, clinic_slug: str) -> Response:
        members = selectors.member_list(clinic=request.clinic)
        return Response({"results": MemberOutput(members, many=True).data})


class MemberDetailApi(APIView):
    """Change a member's role (PATCH {"role"}) or remove them (DELETE)."""

    permission_classes = [CanManage]

    class InputSerializer(serializers.Serializer):
        role = serializers.ChoiceField(choices=Role.choices)

    def _get(self, request: Request, user_uuid: UUID) -> Any:
        membership = selectors.member_get(clinic=request.clinic, user_uuid=user_uuid)
        if membership is None:
            raise Http404("No such member.")
        return membership

    @extend_schema(responses=MemberOutput)
    def get(self, request: Request, clinic_slug: str, user_uuid: UUID) -> Response:
        return Response(MemberOutput(self._get(request, user_uuid)).data)

    @extend_schema(request=InputSerializer, responses=MemberOutput)
    def patch(self, request: Request, clinic_slug: str, user_uuid: UUID) -> Response:
        membership = self._get(request, user_uuid)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_role_change(
            membership=membership, role=data.validated_data["role"], granted_by=request.membership,
            by=Actor.from_request(_django_request(request)),
        )
        return Response(MemberOutput(membership).data)

    @extend_schema(
        parameters=[OpenApiParameter("keep_api_tokens", bool, description=(
            "Keep the API tokens this member created; by default they are revoked with the membership."))],
        responses={204: None},
    )
    def delete(self, request: Request, clinic_slug: str, user_uuid: UUID) -> Response:
        membership = self._get(request, user_uuid)
        keep = request.query_params.get("keep_api_tokens", "").lower() in ("1", "true", "yes")
        services.membership_remove(membership=membership, granted_by=request.membership, keep_api_tokens=keep,
                                   by=Actor.from_request(_django_request(request)))
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationOutput(serializers.Serializer):
    id = serializers.UUIDField(source="uuid")
    email = serializers.EmailField()
    role = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()


class InvitationListApi(APIView):
    """List open invitations (GET) or invite someone by e-mail (POST {"email", "role"})."""

    permission_classes = [CanManage]

    class InputSerializer(serializers.Serializer):
        # The column's length: a longer address would fail in the database rather than here.
        email = serializers.EmailField(max_length=254)
        role = serializers.ChoiceField(choices=Role.choices)

    @extend_schema(operation_id="clinics_invitations_list",
                   responses=_results("InvitationList", InvitationOutput))
    def get(self, request: Request, clinic_slug: str) -> Response:
        invitations = selectors.invitation_list_pending(clinic=request.clinic)
        return Response({"results": InvitationOutput(invitations, many=True).data})

    @extend_schema(request=InputSerializer, responses={201: InvitationOutput})
    def post(self, request: Request, clinic_slug: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        created = services.invitation_create(
            clinic=request.clinic, email=data.validated_data["email"], role=data.validated_data["role"],
            invited_by=_actor(request), granted_by=request.membership,
            base_url=absolute_url(request, "/"), by=Actor.from_request(_django_request(request)),
        )
        return Response(InvitationOutput(created.invitation).data, status=status.HTTP_201_CREATED)


class InvitationDetailApi(APIView):
    """Withdraw an open invitation."""

    permission_classes = [CanManage]

    @extend_schema(responses={204: None})
    def delete(self, request: Request, clinic_slug: str, invitation_uuid: UUID) -> Response:
        invitation = selectors.invitation_list_pending(clinic=request.clinic).filter(uuid=invitation_uuid).first()
        if invitation is None:
            raise Http404("No such invitation.")
        services.invitation_revoke(invitation=invitation, by=Actor.from_request(_django_request(request)))
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenOutput(serializers.Serializer):
    id = serializers.UUIDField(source="uuid")
    name = serializers.CharField()
    role = serializers.CharField()
    prefix = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class TokenCreatedOutput(TokenOutput):
    token = serializers.CharField(help_text="The secret; shown in this answer only.")


class TokenListApi(APIView):
    """List the clinic's API tokens (GET) or create one (POST {"name", "role"}; the secret is in this answer only)."""

    permission_classes = [CanManage]

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        role = serializers.ChoiceField(choices=Role.choices)

    @extend_schema(operation_id="clinics_tokens_list", responses=_results("TokenList", TokenOutput))
    def get(self, request: Request, clinic_slug: str) -> Response:
        tokens = selectors.api_token_list(clinic=request.clinic)
        return Response({"results": TokenOutput(tokens, many=True).data})

    @extend_schema(request=InputSerializer, responses={201: TokenCreatedOutput})
    def post(self, request: Request, clinic_slug: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        created = services.api_token_create(
            clinic=request.clinic, name=data.validated_data["name"], role=data.validated_data["role"],
            created_by=_actor(request), granted_by=request.membership, by=Actor.from_request(_django_request(request)),
        )
        return Response({**TokenOutput(created.token).data, "token": created.secret}, status=status.HTTP_201_CREATED)


class TokenDetailApi(APIView):
    """Revoke an API token (403 for an owner's or owner-role token, unless an owner or the token itself asks)."""

    permission_classes = [CanManage]

    @extend_schema(responses={204: None})
    def delete(self, request: Request, clinic_slug: str, token_uuid: UUID) -> Response:
        token = selectors.api_token_list(clinic=request.clinic).filter(uuid=token_uuid).first()
        if token is None:
            raise Http404("No such token.")
        services.api_token_revoke(token=token, granted_by=request.membership,
                                  by=Actor.from_request(_django_request(request)))
        return Response(status=status.HTTP_204_NO_CONTENT)
