"""REST: /api/v1/clinics/<clinic_slug>/shares/ (POST creates, GET lists) and shares/<id>/ (GET, DELETE revokes)."""

from __future__ import annotations

from uuid import UUID

from django.http import Http404
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.public_url import absolute_url
from studies.browse import selectors
from studies.sharing import services
from studies.sharing.models import Share, ShareKind
from tenants.audit import Actor
from tenants.permissions import has_action
from tenants.roles import Action

CanShare = has_action(Action.SHARE, message="Your role does not allow sharing studies.")


def _user(request: Request):  # type: ignore[no-untyped-def]
    return request.user if getattr(request.user, "pk", None) else None


class ShareOutput(serializers.Serializer):
    id = serializers.UUIDField(source="uuid")
    kind = serializers.CharField()
    studies = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    allow_download = serializers.BooleanField()
    has_pin = serializers.BooleanField()
    max_opens = serializers.IntegerField(allow_null=True)
    open_count = serializers.IntegerField()
    revoked_at = serializers.DateTimeField(allow_null=True)
    note = serializers.CharField()

    def get_studies(self, share: Share) -> list[str]:
        return [s.study_instance_uid for s in share.studies.all()]


class ShareListApi(APIView):
    permission_classes = [CanShare]

    class InputSerializer(serializers.Serializer):
        studies = serializers.ListField(child=serializers.CharField(max_length=64), min_length=1)
        expires_in_days = serializers.IntegerField(min_value=1, max_value=services.MAX_EXPIRY_DAYS,
                                                   default=services.DEFAULT_EXPIRY_DAYS)
        pin = serializers.RegexField(r"^\d{4,12}$", required=False, allow_blank=True, default="")
        allow_download = serializers.BooleanField(default=False)
        note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
        recipient_email = serializers.EmailField(max_length=254, required=False, allow_blank=True, default="")
        max_opens = serializers.IntegerField(min_value=1, max_value=services.MAX_OPENS, required=False, allow_null=True,
                                             default=None)
        kind = serializers.ChoiceField(choices=ShareKind.values, default=ShareKind.LINK)

    @extend_schema(responses=ShareOutput(many=True))
    def get(self, request: Request, clinic_slug: str) -> Response:
        shares = Share.objects.for_clinic(request.clinic).prefetch_related("studies").order_by("-created_at")[:500]
        return Response({"results": ShareOutput(shares, many=True).data})

    @extend_schema(request=InputSerializer, responses={201: ShareOutput})
    def post(self, request: Request, clinic_slug: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        uids = values.pop("studies")
        found = selectors.study_list_by_uids(clinic=request.clinic, uids=uids)
        created = services.share_create(clinic=request.clinic, studies=found, created_by=_user(request),
                                        by=Actor.from_request(request._request), **values)
        url = absolute_url(request, reverse("share:open", kwargs={"share_token": created.token}))
        services.share_email_recipient(share=created.share, url=url)
        body = {**ShareOutput(created.share).data, "url": url, "token": created.token}
        if created.access_code:
            body["access_code"] = created.access_code
        return Response(body, status=status.HTTP_201_CREATED)


class ShareDetailApi(APIView):
    permission_classes = [CanShare]

    def _share(self, request: Request, share_id: UUID) -> Share:
        share = Share.objects.for_clinic(request.clinic).filter(uuid=share_id).first()
        if share is None:
            raise Http404("No such share.")
        return share

    @extend_schema(responses=ShareOutput)
    def get(self, request: Request, clinic_slug: str, share_id: UUID) -> Response:
        return Response(ShareOutput(self._share(request, share_id)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, clinic_slug: str, share_id: UUID) -> Response:
        services.share_revoke(share=self._share(request, share_id), user=_user(request), by=Actor.from_request(request._request))
        return Response(status=status.HTTP_204_NO_CONTENT)
