"""REST: /api/v1/clinics/<clinic_slug>/anonymizations/ (POST starts a job, GET follows it)."""

from __future__ import annotations

from uuid import UUID

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from studies.anonymize import services
from studies.anonymize.models import AnonymizationJob
from studies.anonymize.profile import Option
from studies.browse import selectors
from tenants.audit import Actor
from tenants.permissions import has_action
from tenants.roles import Action

CanAnonymize = has_action(Action.SHARE, message="Your role does not allow anonymizing studies.")


class JobOutput(serializers.Serializer):
    id = serializers.UUIDField(source="uuid")
    project = serializers.CharField(source="project.name")
    options = serializers.ListField(child=serializers.CharField())
    status = serializers.CharField()
    progress = serializers.FloatField()
    total = serializers.IntegerField()
    done = serializers.IntegerField()
    failed = serializers.IntegerField()
    needs_review = serializers.IntegerField()
    errors = serializers.ListField(child=serializers.DictField())
    result_studies = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_result_studies(self, job: AnonymizationJob) -> list[str]:
        return [study.study_instance_uid for study in services.job_result_studies(job=job)]


class AnonymizationListApi(APIView):
    permission_classes = [CanAnonymize]

    class InputSerializer(serializers.Serializer):
        studies = serializers.ListField(child=serializers.CharField(max_length=64), min_length=1)
        project = serializers.CharField(max_length=100)
        options = serializers.ListField(child=serializers.ChoiceField(choices=[o.value for o in Option]),
                                        required=False, default=list)

    @extend_schema(responses=JobOutput(many=True))
    def get(self, request: Request, clinic_slug: str) -> Response:
        jobs = AnonymizationJob.objects.for_clinic(request.clinic).select_related("project").order_by("-created_at")[:100]
        return Response({"results": JobOutput(jobs, many=True).data})

    @extend_schema(request=InputSerializer, responses={202: JobOutput})
    def post(self, request: Request, clinic_slug: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        uids = data.validated_data["studies"]
        found = selectors.study_list_by_uids(clinic=request.clinic, uids=uids)
        user = request.user if getattr(request.user, "pk", None) else None
        project = services.project_get_or_create(clinic=request.clinic, name=data.validated_data["project"],
                                                  created_by=user, by=Actor.from_request(request._request))
        job = services.job_create(clinic=request.clinic, project=project, studies=found,
                                  options=data.validated_data["options"], requested_by=user, by=Actor.from_request(request._request))
        return Response(JobOutput(job).data, status=status.HTTP_202_ACCEPTED)


class AnonymizationDetailApi(APIView):
    permission_classes = [CanAnonymize]

    @extend_schema(responses=JobOutput)
    def get(self, request: Request, clinic_slug: str, job_id: UUID) -> Response:
        job = AnonymizationJob.objects.for_clinic(request.clinic).select_related("project").filter(uuid=job_id).first()
        if job is None:
            raise Http404("No such anonymization.")
        return Response(JobOutput(job).data)
