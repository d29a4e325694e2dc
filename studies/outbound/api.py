"""REST: sends (`studies/<uid>/send/`, `sends/<id>/`), migrations (`migrations/`, `migrations/<id>/`) and
routing rules (`routing-rules/`, `routing-rules/<id>/`) under /api/v1/clinics/<clinic_slug>/."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from studies.browse import selectors
from studies.models import Series
from studies.outbound import services
from studies.outbound.models import (
    MIGRATION_ASSOCIATIONS_DEFAULT,
    MIGRATION_ASSOCIATIONS_MAX,
    MigrationJob,
    RoutingRule,
    SendJob,
)
from tenants.audit import Actor
from tenants.permissions import has_action
from tenants.roles import Action

AE_TITLE_FIELD = {"max_length": 16}


def _user(request: Request) -> Any:
    return request.user if getattr(request.user, "pk", None) else None


class SendOutput(serializers.Serializer):
    id = serializers.UUIDField(source="uuid")
    node = serializers.CharField(source="node.ae_title")
    study = serializers.CharField(source="study.study_instance_uid")
    series = serializers.CharField(source="series.series_instance_uid", allow_null=True, default=None)
    status = serializers.CharField()
    progress = serializers.FloatField()
    instances_total = serializers.IntegerField()
    instances_done = serializers.IntegerField()
    instances_failed = serializers.IntegerField()
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class SendResultOutput(serializers.Serializer):
    sop_instance_uid = serializers.CharField(source="instance.sop_instance_uid")
    is_success = serializers.BooleanField()
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField()


class StudySendApi(APIView):
    permission_classes = [has_action(Action.SHARE)]

    class InputSerializer(serializers.Serializer):
        node = serializers.CharField(**AE_TITLE_FIELD)
        series = serializers.CharField(max_length=64, required=False, allow_blank=True)

    @extend_schema(request=InputSerializer, responses={202: SendOutput})
    def post(self, request: Request, clinic_slug: str, study_uid: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        study = selectors.study_get_by_uid(clinic=request.clinic, study_instance_uid=study_uid)
        if study is None:
            raise Http404("No such study.")
        node = services.node_get(clinic=request.clinic, ae_title=data.validated_data["node"])
        series = None
        if data.validated_data.get("series"):
            series = Series.objects.for_clinic(request.clinic).filter(
                study=study, series_instance_uid=data.validated_data["series"]).first()
            if series is None:
                raise Http404("No such series in this study.")
        job = services.send_create(clinic=request.clinic, study=study, node=node, series=series,
                                   actor=_user(request), by=Actor.from_request(request._request))
        return Response(SendOutput(job).data, status=status.HTTP_202_ACCEPTED)


class SendDetailApi(APIView):
    permission_classes = [has_action(Action.SHARE)]

    @extend_schema(responses=SendOutput)
    def get(self, request: Request, clinic_slug: str, send_id: UUID) -> Response:
        job = (SendJob.objects.for_clinic(request.clinic).select_related("node", "study", "series")
               .filter(uuid=send_id).first())
        if job is None:
            raise Http404("No such send.")
        results = SendResultOutput(services.send_results(job=job), many=True).data
        return Response({**SendOutput(job).data, "results": results})


class MigrationOutput(serializers.Serializer):
    # The source: a node's AE title, or a DICOMweb URL (its credentials are never returned).
    id = serializers.UUIDField(source="uuid")
    node = serializers.CharField(source="node.ae_title", allow_null=True, default=None)
    dicomweb_url = serializers.CharField()
    dicomweb_auth = serializers.CharField()
    method = serializers.CharField()
    study_date_from = serializers.CharField()
    study_date_to = serializers.CharField()
    modalities = serializers.ListField(child=serializers.CharField())
    associations = serializers.IntegerField()
    status = serializers.CharField()
    progress = serializers.FloatField()
    studies_total = serializers.IntegerField()
    instances_total = serializers.IntegerField()
    instances_done = serializers.IntegerField()
    instances_failed = serializers.IntegerField()
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class MigrationDetailOutput(MigrationOutput):
    """One migration, its speed, what is still missing and why: documents what ``_migration_data`` adds."""

    instances_per_second = serializers.FloatField(allow_null=True, read_only=True)
    seconds_left = serializers.IntegerField(allow_null=True, read_only=True)
    missing = serializers.ListField(child=serializers.CharField(), read_only=True)
    refused = serializers.DictField(child=serializers.CharField(), read_only=True)


def _migration_data(job: MigrationJob, *, with_missing: bool) -> dict[str, Any]:
    data = dict(MigrationOutput(job).data)
    speed, seconds_left = services.migration_speed(job=job)
    data["instances_per_second"] = round(speed, 2) if speed is not None else None
    data["seconds_left"] = round(seconds_left) if seconds_left is not None else None
    if with_missing:
        report = services.migration_report(job=job)
        data["missing"], data["refused"] = report.missing, report.refused
    return data


class MigrationListApi(APIView):
    permission_classes = [has_action(Action.MANAGE)]

    class InputSerializer(serializers.Serializer):
        # Either a registered node or a DICOMweb source (with a bearer token, or a user name and password).
        node = serializers.CharField(required=False, allow_blank=True, default="", **AE_TITLE_FIELD)
        dicomweb_url = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
        dicomweb_token = serializers.CharField(max_length=4000, required=False, allow_blank=True, default="",
                                               write_only=True, trim_whitespace=True)
        dicomweb_username = serializers.CharField(max_length=200, required=False, allow_blank=True, default="",
                                                  write_only=True)
        dicomweb_password = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="",
                                                  write_only=True, trim_whitespace=False)
        study_date_from = serializers.CharField(max_length=10, required=False, allow_blank=True, default="")
        study_date_to = serializers.CharField(max_length=10, required=False, allow_blank=True, default="")
        modalities = serializers.ListField(child=serializers.CharField(max_length=16), required=False,
                                           default=list, max_length=50)
        patient_ids = serializers.ListField(child=serializers.CharField(max_length=64), required=False,
                                            default=list, max_length=1000)
        method = serializers.ChoiceField(choices=MigrationJob.Method.values, required=False, allow_blank=True,
                                         default="")
        max_instances_per_second = serializers.IntegerField(min_value=0, max_value=100000, required=False,
                                                            default=0)
        window_start_hour = serializers.IntegerField(min_value=0, max_value=23, required=False, default=0)
        window_end_hour = serializers.IntegerField(min_value=0, max_value=23, required=False, default=0)
        associations = serializers.IntegerField(min_value=1, max_value=MIGRATION_ASSOCIATIONS_MAX, required=False,
                                                default=MIGRATION_ASSOCIATIONS_DEFAULT)

    @extend_schema(responses=MigrationOutput(many=True))
    def get(self, request: Request, clinic_slug: str) -> Response:
        jobs = MigrationJob.objects.for_clinic(request.clinic).select_related("node").order_by("-created_at")[:100]
        return Response({"results": [_migration_data(job, with_missing=False) for job in jobs]})

    @extend_schema(request=InputSerializer, responses={202: MigrationOutput})
    def post(self, request: Request, clinic_slug: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        ae_title = values.pop("node")
        node = services.node_get(clinic=request.clinic, ae_title=ae_title) if ae_title else None
        job = services.migration_create(clinic=request.clinic, node=node, actor=_user(request),
                                        by=Actor.from_request(request._request), **values)
        return Response(_migration_data(job, with_missing=False), status=status.HTTP_202_ACCEPTED)


class MigrationDetailApi(APIView):
    permission_classes = [has_action(Action.MANAGE)]

    @extend_schema(responses=MigrationDetailOutput)
    def get(self, request: Request, clinic_slug: str, migration_id: UUID) -> Response:
        job = MigrationJob.objects.for_clinic(request.clinic).select_related("node").filter(uuid=migration_id).first()
        if job is None:
            raise Http404("No such migration.")
        return Response(_migration_data(job, with_missing=True))


class RoutingRuleOutput(serializers.Serializer):
    id = serializers.UUIDField(source="uuid")
    name = serializers.CharField()
    calling_ae_title = serializers.CharField()
    modality = serializers.CharField()
    source = serializers.CharField()
    destinations = serializers.SerializerMethodField()
    is_active = serializers.BooleanField()

    def get_destinations(self, rule: RoutingRule) -> list[str]:
        return [node.ae_title for node in rule.destinations.all()]


class RoutingRuleListApi(APIView):
    permission_classes = [has_action(Action.MANAGE)]

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        destinations = serializers.ListField(child=serializers.CharField(**AE_TITLE_FIELD), min_length=1,
                                             max_length=20)
        calling_ae_title = serializers.CharField(required=False, allow_blank=True, default="", **AE_TITLE_FIELD)
        modality = serializers.CharField(max_length=16, required=False, allow_blank=True, default="")
        source = serializers.CharField(max_length=16, required=False, allow_blank=True, default="")

    @extend_schema(responses=RoutingRuleOutput(many=True))
    def get(self, request: Request, clinic_slug: str) -> Response:
        rules = RoutingRule.objects.for_clinic(request.clinic).prefetch_related("destinations")
        return Response({"results": RoutingRuleOutput(rules, many=True).data})

    @extend_schema(request=InputSerializer, responses={201: RoutingRuleOutput})
    def post(self, request: Request, clinic_slug: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        nodes = [services.node_get(clinic=request.clinic, ae_title=ae) for ae in values.pop("destinations")]
        rule = services.routing_rule_create(clinic=request.clinic, destinations=nodes, actor=_user(request),
                                            by=Actor.from_request(request._request), **values)
        return Response(RoutingRuleOutput(rule).data, status=status.HTTP_201_CREATED)


class RoutingRuleDetailApi(APIView):
    permission_classes = [has_action(Action.MANAGE)]

    @extend_schema(responses={204: None})
    def delete(self, request: Request, clinic_slug: str, rule_id: UUID) -> Response:
        rule = RoutingRule.objects.for_clinic(request.clinic).filter(uuid=rule_id).first()
        if rule is None:
            raise Http404("No such routing rule.")
        services.routing_rule_delete(clinic=request.clinic, rule=rule, actor=_user(request),
                                     by=Actor.from_request(request._request))
        return Response(status=status.HTTP_204_NO_CONTENT)


