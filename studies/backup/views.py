"""The backup page (/c/<clinic>/backup/) and its API twin (/api/v1/clinics/<clinic>/backup/); manage right."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from studies.backup import replication, selectors
from tenants.middleware import ClinicRequest
from tenants.permissions import has_action, require_action
from tenants.roles import Action


@require_GET
@require_action(Action.MANAGE)
def backup_page(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    status = selectors.backup_status(clinic=request.clinic)
    return render(request, "studies/backup.html", {
        "status": status,
        "mode": replication.replication_mode(),
        "protection": replication.replica_protection_status(),
        "restore_test": selectors.restore_test_status(clinic=request.clinic),
    })


class BackupApi(APIView):
    """Backup health of the clinic: replication progress and lag, verification results."""

    permission_classes = [has_action(Action.MANAGE)]

    class OutputSerializer(serializers.Serializer):
        instances = serializers.IntegerField()
        replicated = serializers.IntegerField()
        pending = serializers.IntegerField()
        oldest_pending_seconds = serializers.IntegerField(allow_null=True)
        last_verified_at = serializers.DateTimeField(allow_null=True)
        failures = serializers.IntegerField()
        verified = serializers.IntegerField()
        lag_p50_seconds = serializers.FloatField(allow_null=True)
        lag_p95_seconds = serializers.FloatField(allow_null=True)
        replication_mode = serializers.CharField()
        last_restore_test_at = serializers.DateTimeField(allow_null=True)
        last_restore_test_passed = serializers.BooleanField(allow_null=True)

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request, clinic_slug: str) -> Response:
        status = selectors.backup_status(clinic=request.clinic)
        restore_test = selectors.restore_test_status(clinic=request.clinic)
        return Response(self.OutputSerializer({
            **{name: getattr(status, name) for name in (
                "instances", "replicated", "pending", "oldest_pending_seconds", "last_verified_at", "failures",
                "verified", "lag_p50_seconds", "lag_p95_seconds",
            )},
            "replication_mode": replication.replication_mode(),
            "last_restore_test_at": restore_test.finished_at,
            "last_restore_test_passed": restore_test.passed,
        }).data)
