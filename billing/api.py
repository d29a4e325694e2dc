"""REST: /api/v1/clinics/<clinic_slug>/usage/ (owners and billing admins)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import selectors
from tenants.permissions import has_action
from tenants.roles import Action


class UsageApi(APIView):
    """Stored DICOM bytes against the clinic's quota, and its plan."""

    permission_classes = [has_action(Action.BILLING, message="Your role does not allow seeing the plan and usage.")]

    class OutputSerializer(serializers.Serializer):
        used_bytes = serializers.IntegerField()
        quota_bytes = serializers.IntegerField()
        plan = serializers.CharField(allow_null=True)
        status = serializers.CharField(allow_null=True)
        uploads_paused = serializers.CharField(allow_null=True)
        trash_days = serializers.IntegerField(help_text="Days a deleted study stays restorable (and counted).")

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request, clinic_slug: str) -> Response:
        usage = selectors.usage_get(clinic=request.clinic)
        subscription = selectors.subscription_get(clinic=request.clinic)
        return Response(self.OutputSerializer({
            "used_bytes": usage.used_bytes,
            "quota_bytes": usage.quota_bytes,
            "plan": usage.plan.code if usage.plan else None,
            "status": subscription.status if subscription else None,
            "uploads_paused": selectors.upload_block_reason(clinic=request.clinic),
            "trash_days": settings.TRASH_DAYS,
        }).data)
