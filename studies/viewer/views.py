"""The clinic's study viewer pages (light viewer and OHIF). Share links reuse ``viewer_context`` and
``ohif_response`` from ``studies.sharing`` (sharing sits above the viewer, never the other way round)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from csp.decorators import csp_update
from django.conf import settings
from django.db.models import Exists, OuterRef
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import get_object_or_404, redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils.cache import add_never_cache_headers

from studies import names
from studies.models import Instance, Series, Study
from studies.viewer import ohif
from tenants import permissions
from tenants.audit import audit_record
from tenants.middleware import ClinicRequest
from tenants.roles import Action


def _first_value(metadata: dict[str, Any], tag: str) -> Any:
    values = (metadata.get(tag) or {}).get("Value") or [None]
    return values[0]


def initial_series(*, study: Study) -> dict[str, Any]:
    """The series list and the first image series' slices, so the first image needs no search round trips.

    The same data the page would get from QIDO-RS; the viewer still asks DICOMweb for other series.
    """
    with_pixels = Instance.objects.for_clinic(study.clinic_id).filter(series=OuterRef("pk"), rows__isnull=False)
    series = list(
        Series.objects.for_clinic(study.clinic_id)
        .filter(study=study)
        .annotate(has_images=Exists(with_pixels))
        .order_by("series_number", "pk")
    )
    listed = [
        {
            "uid": s.series_instance_uid,
            "number": s.series_number,
            "modality": s.modality,
            "description": s.series_description,
            "count": s.number_of_instances,
            "images": s.has_images,
        }
        for s in series
    ]
    first = next((s for s in series if s.has_images), series[0] if series else None)
    if first is None:
        return {"series": listed, "firstSeries": None, "instances": []}
    instances = [
        {
            "sop": sop,
            "number": number,
            "frames": frames,
            "windowCenter": _first_value(metadata, "00281050"),
            "windowWidth": _first_value(metadata, "00281051"),
        }
        for sop, number, frames, metadata in Instance.objects.for_clinic(study.clinic_id)
        .filter(series=first)
        .order_by("instance_number", "pk")
        .values_list("sop_instance_uid", "instance_number", "number_of_frames", "metadata")
    ]
    # Only the first instance's window is needed; the rest would only weigh on the page.
    for item in instances[1:]:
        item.pop("windowCenter")
        item.pop("windowWidth")
    return {"series": listed, "firstSeries": first.series_instance_uid, "instances": instances}


def viewer_context(*, study: Study, dicomweb_base: str, download_url: str = "", back_url: str = "") -> dict[str, Any]:
    """What the viewer page needs: the study's overlay attributes and where its DICOMweb lives."""
    patient = study.patient
    return {
        "study": study,
        "viewer_config": {
            "dicomwebBase": dicomweb_base,
            "studyUid": study.study_instance_uid,
            "initial": initial_series(study=study),
            "overlay": {
                "patientName": names.person_name_display(patient.patient_name),
                "patientId": patient.patient_id,
                "birthDate": patient.patient_birth_date.isoformat() if patient.patient_birth_date else "",
                "sex": patient.patient_sex,
                "studyDate": study.study_date.isoformat() if study.study_date else "",
                "studyDescription": study.study_description,
                "accession": study.accession_number,
            },
        },
        "download_url": download_url,
        "back_url": back_url,
    }


# The light viewer draws slices fetched with fetch() from blob: URLs.
LIGHT_VIEWER_CSP = {"img-src": ["'self'", "blob:"]}


@csp_update(LIGHT_VIEWER_CSP)
def study_viewer(request: ClinicRequest, clinic_slug: str, study_uuid: UUID) -> HttpResponse:
    permissions.action_check(request, Action.VIEW)
    study = get_object_or_404(
        Study.objects.for_clinic(request.clinic).filter(deleted_at__isnull=True).select_related("patient"),
        uuid=study_uuid,
    )
    audit_record(
        clinic=request.clinic,
        action="study.viewer_opened",
        request=request,
        object_type="study",
        object_id=str(study.uuid),
    )
    base = reverse("dicomweb:studies", kwargs={"clinic_slug": request.clinic.slug})[: -len("studies")]
    return render(
        request,
        "studies/viewer.html",
        viewer_context(
            study=study,
            dicomweb_base=base,
            download_url=reverse("studies:download", kwargs={"clinic_slug": clinic_slug, "study_uuid": study.uuid}),
            back_url=reverse("studies:detail", kwargs={"clinic_slug": clinic_slug, "study_uuid": study.uuid}),
        ),
    )


# --- the diagnostic viewer (OHIF) ----------------------------------------------------------------------

def ohif_response(
    request: HttpRequest, path: str, site: ohif.ViewerSite, opened: Callable[[list[str]], None] | None = None,
) -> HttpResponse:
    """Answer one request under a viewer prefix: a file of OHIF's dist/, or its page.

    ``opened`` is called with the Study Instance UIDs the page's route names, if any, when the answer is the page:
    the one request every opening of a study makes, from a link, a bookmark or a reload.
    """
    if path == ohif.SERVICE_WORKER:
        # Served from the prepared folder before the session when there is one; this is the fallback.
        try:
            return HttpResponse(ohif.service_worker_js(), content_type="text/javascript")
        except ohif.ViewerNotInstalled:
            raise Http404("The diagnostic viewer is not installed.") from None
    asset = ohif.asset_path(path) if path else None
    if asset is not None and asset.name != "index.html":
        patched = ohif.asset_patched(asset)
        if patched is not None:
            response: HttpResponse = HttpResponse(patched, content_type=ohif.content_type(asset))
        else:
            response = FileResponse(asset.open("rb"), content_type=ohif.content_type(asset))
        long_lived = ohif.is_long_lived(asset)
        response["Cache-Control"] = "private, max-age=31536000, immutable" if long_lived else "private, max-age=3600"
        return response
    if "." in path.rsplit("/", 1)[-1]:
        raise Http404("No such file in the viewer.")
    # Any other path is one of OHIF's own routes (/viewer?StudyInstanceUIDs=..., the study list).
    try:
        html = ohif.index_html(site, nonce=str(request.csp_nonce))  # type: ignore[attr-defined]
    except ohif.ViewerNotInstalled:
        return HttpResponse(
            "The diagnostic viewer is not installed: run `make ohif` (part of `make run`).",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
    study_instance_uids = ohif.studies_opened(request.GET)
    if opened is not None and study_instance_uids:
        opened(study_instance_uids)
    return _no_store(HttpResponse(html))


def _no_store(response: HttpResponse) -> HttpResponse:
    add_never_cache_headers(response)
    return response


@csp_update(ohif.CSP_UPDATE)
def ohif_clinic(request: ClinicRequest, clinic_slug: str, path: str = "") -> HttpResponse:
    """OHIF for a signed-in reader, on the clinic's DICOMweb with the browser session."""
    permissions.action_check(request, Action.VIEW)
    dicomweb = reverse("dicomweb:studies", kwargs={"clinic_slug": request.clinic.slug})[: -len("/studies")]
    site = ohif.ViewerSite(
        public_url=reverse("viewer:ohif", kwargs={"clinic_slug": request.clinic.slug}),
        dicomweb_root=request.build_absolute_uri(dicomweb),
        name=request.clinic.name,
        show_study_list=True,
        csrf_token=get_token(request),
        session_script=static("portal/session.js"),
        body_attributes=session_attributes(request),
        service_worker=True,
    )
    return ohif_response(request, path, site, opened=lambda uids: _audit_opened(request, uids))


def _audit_opened(request: ClinicRequest, study_instance_uids: list[str]) -> None:
    """Record ``study.viewer_opened`` for each named study the reader's clinic holds (others name nothing)."""
    studies = Study.objects.for_clinic(request.clinic).filter(
        deleted_at__isnull=True, study_instance_uid__in=study_instance_uids,
    )
    for study_uuid in studies.values_list("uuid", flat=True):
        audit_record(
            clinic=request.clinic,
            action="study.viewer_opened",
            request=request,
            object_type="study",
            object_id=str(study_uuid),
        )


def session_attributes(request: HttpRequest) -> dict[str, str]:
    """What static/portal/session.js reads from <body> (base.html writes the same for portal pages)."""
    return {
        "data-idle-seconds": str(
            int(request.session.get("idle_seconds", settings.SESSION_IDLE_TIMEOUT.total_seconds()))
        ),
        "data-keepalive-url": reverse("tenants:keepalive"),
        "data-login-url": reverse("tenants:login"),
    }


def study_ohif(request: ClinicRequest, clinic_slug: str, study_uuid: UUID) -> HttpResponse:
    """Open one study in the diagnostic viewer by its portal id: a redirect to OHIF's route, whose page
    records the opening (the studies list and the study page link to that route directly)."""
    permissions.action_check(request, Action.VIEW)
    study = get_object_or_404(Study.objects.for_clinic(request.clinic).filter(deleted_at__isnull=True), uuid=study_uuid)
    public_url = reverse("viewer:ohif", kwargs={"clinic_slug": request.clinic.slug})
    return redirect(ohif.study_url(public_url=public_url, study_instance_uid=study.study_instance_uid))
