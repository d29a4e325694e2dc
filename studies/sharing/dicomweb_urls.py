"""Read-only DICOMweb for a share link at /s/<token>/dicomweb/: the clinic's DICOMweb routes, each
wrapped so that it answers only GET, only for a usable link, only about the shared studies, never
into the browser's cache, and, on a view-only link, without handing out the DICOM files; what it
serves is listed on the link's page."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, path
from django.views.decorators.cache import never_cache

from studies.dicomweb import urls as clinic_dicomweb
from studies.dicomweb.views import PIXEL_DATA_TAGS
from studies.models import Instance, Study
from studies.sharing import services
from studies.sharing.models import Share
from studies.sharing.public_views import share_required
from tenants.audit import Actor, read_first_in_window

app_name = "share-dicomweb"

# Routes that answer the stored objects (application/dicom) or an instance's bulk data.
STUDY_SERIES_RETRIEVE_ROUTES = frozenset({"study", "series-retrieve"})
INSTANCE_RETRIEVE_ROUTE = "instance"
BULKDATA_ROUTE = "instance-bulkdata"

# Non-image objects a viewer loads whole (OHIF retrieves a SEG or an RT structure set as an instance and a
# PDF through its bulk data; SR and presentation states are read whole too): a view-only link serves them.
# Video is not among them: OHIF (our config's singlepart "video") asks for a video at the instance's
# rendered URL, never for its file or bulk data, so a video is refused like any image.
WHOLE_OBJECT_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
})
WHOLE_OBJECT_SOP_CLASS_FAMILIES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports (SR), key objects
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
)


def is_loaded_whole(sop_class_uid: str) -> bool:
    """Whether a viewer needs the whole object of this SOP class (not frames or rendered images) to show it."""
    return sop_class_uid in WHOLE_OBJECT_SOP_CLASSES or sop_class_uid.startswith(WHOLE_OBJECT_SOP_CLASS_FAMILIES)


def download_refused(request: HttpRequest, route: str | None, kwargs: dict[str, Any]) -> bool:
    """Whether a view-only link refuses this request: it would hand out the original DICOM files.

    Metadata, frames, rendered images and thumbnails are viewing and stay allowed; so does an image's
    bulk data other than its pixel data (OHIF reads large palette colour tables that way).
    """
    share: Share = request.share  # type: ignore[attr-defined]
    if share.allow_download:
        return False
    if route in STUDY_SERIES_RETRIEVE_ROUTES:
        return True
    if route == BULKDATA_ROUTE and kwargs["tag_path"].strip("/").upper() not in PIXEL_DATA_TAGS:
        return False
    if route not in (INSTANCE_RETRIEVE_ROUTE, BULKDATA_ROUTE):
        return False
    sop_class_uid = Instance.objects.for_clinic(request.clinic).filter(  # type: ignore[attr-defined]
        sop_instance_uid=kwargs["sop_uid"], series__series_instance_uid=kwargs["series_uid"],
        series__study__study_instance_uid=kwargs["study_uid"],
    ).values_list("sop_class_uid", flat=True).first()
    # An instance that is not there is the view's 404, not a refusal.
    return sop_class_uid is not None and not is_loaded_whole(sop_class_uid)


def read_kind(route: str | None) -> str:
    """What a share DICOMweb route reads, as the link's page lists it: metadata, frames, instances..."""
    route = route or ""
    for kind in ("metadata", "rendered", "thumbnail", "bulkdata", "frames"):
        if route.endswith(kind):
            return kind
    return "instances" if route in (*STUDY_SERIES_RETRIEVE_ROUTES, INSTANCE_RETRIEVE_ROUTE) else "search"


def _read_record(request: HttpRequest, route: str | None, study: Study | None) -> None:
    """List a read on the link's page, at most once per link, study and kind of read per window.

    Keyed by the kind of read (as the DICOMweb audit is by caller and study), so a viewer's hundreds of
    frame requests make one row a minute, and a retrieve of the files shows even right after the metadata.
    The clinic's audit entry is written by the DICOMweb view itself, naming the link.
    """
    share: Share = request.share  # type: ignore[attr-defined]
    kind = read_kind(route)
    if read_first_in_window("share", share.pk, kind, study.pk if study is not None else ""):
        services.share_access_record(share=share, action=f"dicomweb {kind}", by=Actor.from_request(request),
                                     study=study)


def _read_only(view: Callable[..., HttpResponse], route: str | None) -> Callable[..., HttpResponse]:
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, share_token: str, **kwargs: Any) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            response = JsonResponse({"error": "read_only", "message": "A share link is read-only."}, status=405)
            response["Allow"] = "GET, HEAD"
            return response
        study_uid = kwargs.get("study_uid")
        study = None
        if study_uid is not None:
            study = Study.objects.for_clinic(request.clinic).filter(  # type: ignore[attr-defined]
                study_instance_uid=study_uid, pk__in=request.study_scope  # type: ignore[attr-defined]
            ).only("id", "uuid").first()
            if study is None:
                return JsonResponse({"error": "not_found", "message": "No such study in this link."}, status=404)
        if download_refused(request, route, kwargs):
            return JsonResponse({"error": "download_not_allowed",
                                 "message": "This link allows viewing only: its DICOM files cannot be downloaded."},
                                status=403)
        response = view(request, *args, clinic_slug=request.clinic.slug, **kwargs)  # type: ignore[attr-defined]
        if response.status_code < 400:
            _read_record(request, route, study)
        return response

    # Revoking a link must take its images away: nothing it answers (errors included) stays in a browser.
    return never_cache(share_required(wrapper))


def _share_pattern(pattern: URLPattern) -> URLPattern:
    return path(str(pattern.pattern), _read_only(pattern.callback, pattern.name), name=pattern.name)


urlpatterns = [_share_pattern(p) for p in clinic_dicomweb.urlpatterns]
