"""The audit log page, its CSV and FHIR exports, and the REST endpoint (all need the manage right).

Looking at or exporting the trail is itself written to the trail.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.paginator import Paginator
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_safe
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.pagination import PortalPagination
from tenants import audit, audit_export
from tenants.middleware import ClinicRequest
from tenants.models import Clinic
from tenants.permissions import has_action, require_action
from tenants.roles import Action

PAGE_SIZE = 50


class AuditFilterForm(forms.Form):
    date_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    actor = forms.CharField(required=False, max_length=255, help_text="Part of an e-mail address or token name.")
    action = forms.CharField(required=False, max_length=64, help_text="An action, or a family such as auth.")
    object = forms.CharField(required=False, max_length=128, help_text="An object type, or part of its id.")
    result = forms.ChoiceField(required=False, choices=[("", "Any")])

    def __init__(self, *args: Any, clinic: Clinic, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["result"].choices = [("", "Any")] + [(r, r) for r in audit.audit_result_list(clinic=clinic)]
        self.action_choices = audit.audit_action_list(clinic=clinic)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and end < start:
            raise forms.ValidationError("The 'To' date is before the 'From' date.")
        return cleaned

    def to_filter(self) -> audit.AuditFilter:
        data = self.cleaned_data
        return audit.AuditFilter(
            date_from=data.get("date_from"), date_to=data.get("date_to"),
            actor=(data.get("actor") or "").strip(), action=(data.get("action") or "").strip(),
            object=(data.get("object") or "").strip(), result=data.get("result") or "",
        )


require_manage = require_action(Action.MANAGE, message="Only owners and admins may read the audit log.")


def _record(request: ClinicRequest, action: str, filters: audit.AuditFilter, **details: Any) -> None:
    audit.audit_record(clinic=request.clinic, action=action, request=request, object_type="audit_log",
                       object_id=str(request.clinic.uuid), details={"filters": filters.as_details(), **details})


@require_safe
@require_manage
def audit_log(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    form = AuditFilterForm(request.GET or None, clinic=request.clinic)
    if request.GET and not form.is_valid():
        return render(request, "tenants/audit_list.html", {"form": form, "page": None}, status=400)
    filters = form.to_filter() if form.is_bound else audit.AuditFilter()
    # Recorded before the query runs, like exports: the trail shows its own reading.
    _record(request, "audit.viewed", filters)
    events = audit.audit_event_list(clinic=request.clinic, filters=filters)
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "tenants/audit_list.html", {
        "form": form, "page": page, "query": query.urlencode(), "filters_active": bool(filters.as_details()),
    })


def _export(request: ClinicRequest, fmt: str) -> HttpResponse:
    form = AuditFilterForm(request.GET or None, clinic=request.clinic)
    if request.GET and not form.is_valid():
        return render(request, "tenants/audit_list.html", {"form": form, "page": None}, status=400)
    filters = form.to_filter() if form.is_bound else audit.AuditFilter()
    # Recorded before the query runs, so an export includes its own entry when the filters match it.
    _record(request, "audit.exported", filters, format=fmt)
    events = audit.audit_event_list(clinic=request.clinic, filters=filters).select_related("actor")
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    if fmt == "csv":
        response = StreamingHttpResponse(audit_export.csv_chunks(events.iterator(chunk_size=1000)),
                                         content_type="text/csv; charset=utf-8")
        filename = f"audit-{request.clinic.slug}-{stamp}.csv"
    else:
        chunks = audit_export.fhir_bundle_chunks(events.iterator(chunk_size=1000), clinic=request.clinic)
        response = StreamingHttpResponse(chunks, content_type="application/fhir+json; charset=utf-8")
        filename = f"audit-{request.clinic.slug}-{stamp}.fhir.json"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


@require_safe
@require_manage
def audit_export_csv(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    return _export(request, "csv")


@require_safe
@require_manage
def audit_export_fhir(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    return _export(request, "fhir")


class AuditEventListApi(APIView):
    """List the clinic's audit entries, newest first; same filters as the audit log page."""

    permission_classes = [
        has_action(
            Action.MANAGE, message="Only owners, admins and tokens with the admin or owner role may read the audit log."
        )
    ]

    class OutputSerializer(serializers.Serializer):
        sequence = serializers.IntegerField()
        recorded_at = serializers.DateTimeField(source="created_at")
        actor = serializers.CharField(source="actor_label")
        action = serializers.CharField()
        object_type = serializers.CharField()
        object_id = serializers.CharField()
        result = serializers.CharField()
        ip_address = serializers.CharField(allow_null=True)
        user_agent = serializers.CharField()
        details = serializers.JSONField()
        prev_hash = serializers.CharField()
        hash = serializers.CharField()

    class PageSerializer(serializers.Serializer):
        count = serializers.IntegerField()
        next = serializers.URLField(allow_null=True)
        previous = serializers.URLField(allow_null=True)
        results = serializers.ListField(child=serializers.DictField())

    @extend_schema(
        summary="List audit entries",
        description="The clinic's audit trail, newest first, paginated with `limit` and `offset`. Needs the "
        "manage right (owner or admin). Reading it is itself recorded.",
        parameters=[
            OpenApiParameter("date_from", OpenApiTypes.DATE, description="First day (UTC), inclusive."),
            OpenApiParameter("date_to", OpenApiTypes.DATE, description="Last day (UTC), inclusive."),
            OpenApiParameter("actor", str, description="Part of the actor's e-mail address or token name."),
            OpenApiParameter("action", str, description="An action (auth.login) or a family (auth)."),
            OpenApiParameter("object", str, description="An object type, or part of an object id."),
            OpenApiParameter("result", str, description="success, failure, denied, ..."),
            OpenApiParameter("limit", int), OpenApiParameter("offset", int),
        ],
        responses={200: PageSerializer},
    )
    def get(self, request: Request, clinic_slug: str) -> Response:
        clinic_request: ClinicRequest = request._request  # type: ignore[assignment]
        form = AuditFilterForm(request.query_params or None, clinic=clinic_request.clinic)
        if request.query_params and not form.is_valid():
            raise ValidationError({name: [str(e) for e in errors] for name, errors in form.errors.items()})
        filters = form.to_filter() if form.is_bound else audit.AuditFilter()
        _record(clinic_request, "audit.viewed", filters, via="api")
        events = audit.audit_event_list(clinic=clinic_request.clinic, filters=filters)
        paginator = PortalPagination()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)
