"""Read-only DICOMweb for a share link at /s/<token>/dicomweb/: the clinic's DICOMweb routes, each
wrapped so that it answers only GET, only for a usable link, and only about the shared studies."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, path

from studies.dicomweb import urls as clinic_dicomweb
from studies.models import Study
from studies.sharing.public_views import share_required

app_name = "share-dicomweb"


def _read_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, share_token: str, **kwargs: Any) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            response = JsonResponse({"error": "read_only", "message": "A share link is read-only."}, status=405)
            response["Allow"] = "GET, HEAD"
            return response
        study_uid = kwargs.get("study_uid")
        if study_uid is not None:
            in_scope = Study.objects.for_clinic(request.clinic).filter(  # type: ignore[attr-defined]
                study_instance_uid=study_uid, pk__in=request.study_scope  # type: ignore[attr-defined]
            ).exists()
            if not in_scope:
                return JsonResponse({"error": "not_found", "message": "No such study in this link."}, status=404)
        return view(request, *args, clinic_slug=request.clinic.slug, **kwargs)  # type: ignore[attr-defined]

    return share_required(wrapper)


def _share_pattern(pattern: URLPattern) -> URLPattern:
    return path(str(pattern.pattern), _read_only(pattern.callback), name=pattern.name)


urlpatterns = [_share_pattern(p) for p in clinic_dicomweb.urlpatterns]
