"""A URLconf for tests/test_isolation.py's self-test: the project's routes plus deliberately broken ones."""

from __future__ import annotations

from uuid import UUID

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path

from portal.urls import urlpatterns as project_urlpatterns
from studies.models import Study


def leaky_study(request: HttpRequest, clinic_slug: str, study_uuid: UUID) -> HttpResponse:
    # Deliberately wrong: looks the study up without for_clinic().
    return HttpResponse(get_object_or_404(Study, uuid=study_uuid).study_description)


def scoped_study(request: HttpRequest, clinic_slug: str, study_uuid: UUID) -> HttpResponse:
    study = get_object_or_404(Study.objects.for_clinic(request.clinic), uuid=study_uuid)  # type: ignore[attr-defined]
    return HttpResponse(study.study_description)


def open_study(request: HttpRequest, study_uuid: UUID) -> HttpResponse:
    # Deliberately wrong: no clinic in the URL and no sign-in required.
    return HttpResponse(get_object_or_404(Study, uuid=study_uuid).study_description)


urlpatterns = [
    path("c/<slug:clinic_slug>/leaky/<uuid:study_uuid>/", leaky_study, name="leaky-study"),
    path("c/<slug:clinic_slug>/scoped/<uuid:study_uuid>/", scoped_study, name="leaky-scoped"),
    path("open/<uuid:study_uuid>/", open_study, name="leaky-open"),
    *project_urlpatterns,
]
