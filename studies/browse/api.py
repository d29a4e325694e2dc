"""REST API for studies under /api/v1/clinics/<clinic_slug>/: search, detail, delete (trash), usage.

Studies are named by their Study Instance UID here, as the public contract in README says.
"""

from __future__ import annotations

from typing import Any

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.pagination import PortalPagination
from studies import matching
from studies.browse import selectors, services
from studies.models import Series, Study
from tenants.audit import Actor, audit_record
from tenants.permissions import has_action
from tenants.roles import Action

SORT_KEYS = list(selectors.SORTS)
NOT_ALLOWED = "Your role does not allow this."


def _multi(value: str) -> list[str]:
    return [part for part in (value or "").split("\\") if part]


class PatientOutput(serializers.Serializer):
    patient_name = serializers.CharField()
    patient_id = serializers.CharField()
    issuer_of_patient_id = serializers.CharField()
    patient_birth_date = serializers.DateField(allow_null=True)
    patient_sex = serializers.CharField()


class StudyOutput(serializers.Serializer):
    study_instance_uid = serializers.CharField()
    uuid = serializers.UUIDField()
    patient = PatientOutput()
    study_date = serializers.DateField(allow_null=True)
    study_time = serializers.TimeField(allow_null=True)
    accession_number = serializers.CharField()
    study_id = serializers.CharField()
    study_description = serializers.CharField()
    referring_physician_name = serializers.CharField()
    modalities_in_study = serializers.SerializerMethodField()
    body_part_examined = serializers.SerializerMethodField()
    number_of_series = serializers.IntegerField()
    number_of_instances = serializers.IntegerField()
    size_bytes = serializers.IntegerField()
    created_at = serializers.DateTimeField()

    def get_modalities_in_study(self, study: Study) -> list[str]:
        return _multi(study.modalities_in_study)

    def get_body_part_examined(self, study: Study) -> list[str]:
        return _multi(study.body_part_examined)


class SeriesOutput(serializers.Serializer):
    series_instance_uid = serializers.CharField()
    uuid = serializers.UUIDField()
    modality = serializers.CharField()
    series_number = serializers.IntegerField(allow_null=True)
    series_description = serializers.CharField()
    body_part_examined = serializers.CharField()
    number_of_instances = serializers.IntegerField()
    has_thumbnail = serializers.SerializerMethodField()

    def get_has_thumbnail(self, series: Series) -> bool:
        return bool(series.thumbnail_key)


class StudyDetailOutput(StudyOutput):
    series = serializers.SerializerMethodField()

    def get_series(self, study: Study) -> list[dict[str, Any]]:
        return SeriesOutput(self.context["series"], many=True).data


class StudyListApi(APIView):
    """Search the clinic's studies with the keys of the studies page."""

    permission_classes = [has_action(Action.VIEW, message=NOT_ALLOWED)]

    class InputSerializer(serializers.Serializer):
        patient_name = serializers.CharField(required=False, allow_blank=True, max_length=324)
        patient_id = serializers.CharField(required=False, allow_blank=True, max_length=64)
        accession_number = serializers.CharField(required=False, allow_blank=True, max_length=64)
        date_from = serializers.DateField(required=False, allow_null=True)
        date_to = serializers.DateField(required=False, allow_null=True)
        modality = serializers.CharField(required=False, allow_blank=True, max_length=16)
        description = serializers.CharField(required=False, allow_blank=True, max_length=128)
        sort = serializers.ChoiceField(required=False, choices=SORT_KEYS, default=selectors.DEFAULT_SORT)

        def validate(self, data: dict[str, Any]) -> dict[str, Any]:
            if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
                raise serializers.ValidationError("date_from is after date_to.")
            return data

    @extend_schema(
        parameters=[InputSerializer, OpenApiParameter("limit", int), OpenApiParameter("offset", int)],
        responses=StudyOutput(many=True),
    )
    def get(self, request: Request, clinic_slug: str) -> Response:
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        search = selectors.StudySearch(**{k: v for k, v in params.validated_data.items() if v is not None})
        paginator = PortalPagination()
        with matching.search_budget():
            studies = selectors.study_list(clinic=request.clinic, search=search)
            page = paginator.paginate_queryset(studies, request, view=self)
            data = StudyOutput(page, many=True).data
        services.study_search_record(clinic=request.clinic, search=search, count=len(page), source="api",
                                     by=Actor.from_request(request._request))
        return paginator.get_paginated_response(data)


class StudyDetailApi(APIView):
    """One study with its series (GET), or move it to the trash (DELETE)."""

    permission_classes = [
        has_action(Action.VIEW, methods={"GET"}, message=NOT_ALLOWED),
        has_action(Action.DELETE, methods={"DELETE"}, message=NOT_ALLOWED),
    ]

    def _study(self, request: Request, study_uid: str) -> Study:
        study = selectors.study_get_by_uid(clinic=request.clinic, study_instance_uid=study_uid)
        if study is None:
            raise Http404("No such study.")
        return study

    @extend_schema(responses=StudyDetailOutput)
    def get(self, request: Request, clinic_slug: str, study_uid: str) -> Response:
        study = self._study(request, study_uid)
        series = selectors.series_list(clinic=request.clinic, study=study)
        audit_record(clinic=request.clinic, action="study.viewed", request=request._request, object_type="study",
                     object_id=str(study.uuid))
        return Response(StudyDetailOutput(study, context={"series": series}).data)

    class DeleteOutput(serializers.Serializer):
        study_instance_uid = serializers.CharField()
        status = serializers.CharField()
        deleted_at = serializers.DateTimeField()
        purge_at = serializers.DateTimeField()

    @extend_schema(responses=DeleteOutput)
    def delete(self, request: Request, clinic_slug: str, study_uid: str) -> Response:
        study = self._study(request, study_uid)
        actor = request.user if getattr(request.user, "pk", None) else None
        services.study_delete(clinic=request.clinic, study=study, actor=actor, by=Actor.from_request(request._request))
        return Response(self.DeleteOutput({
            "study_instance_uid": study.study_instance_uid,
            "status": "trashed",
            "deleted_at": study.deleted_at,
            "purge_at": services.study_purge_at(study),
        }).data)
