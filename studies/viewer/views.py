"""The clinic's study viewer page; the share-link viewer reuses ``viewer_context`` with its own DICOMweb base."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse

from studies.models import Instance, Series, Study
from tenants.audit import audit_record
from tenants.middleware import ClinicRequest
from tenants.roles import Action

NON_IMAGE_MODALITIES = {"SR", "PR", "KO", "DOC"}


def _first_value(metadata: dict[str, Any], tag: str) -> Any:
    values = (metadata.get(tag) or {}).get("Value") or [None]
    return values[0]


def initial_series(*, study: Study) -> dict[str, Any]:
    """The series list and the first image series' slices, so the first image needs no search round trips.

    The same data the page would get from QIDO-RS; the viewer still asks DICOMweb for other series.
    """
    series = list(Series.objects.for_clinic(study.clinic_id).filter(study=study).order_by("series_number", "pk"))
    listed = [
        {"uid": s.series_instance_uid, "number": s.series_number, "modality": s.modality,
         "description": s.series_description, "count": s.number_of_instances}
        for s in series
    ]
    first = next((s for s in series if s.modality not in NON_IMAGE_MODALITIES), series[0] if series else None)
    if first is None:
        return {"series": listed, "firstSeries": None, "instances": []}
    instances = [
        {"sop": sop, "number": number, "frames": frames,
         "windowCenter": _first_value(metadata, "00281050"), "windowWidth": _first_value(metadata, "00281051")}
        for sop, number, frames, metadata in Instance.objects.for_clinic(study.clinic_id)
        .filter(series=first).order_by("instance_number", "pk")
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
                "patientName": patient.patient_name.replace("^", " ").strip(),
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


def study_viewer(request: ClinicRequest, clinic_slug: str, study_uuid: UUID) -> HttpResponse:
    if not request.membership.can(Action.VIEW):
        raise PermissionDenied
    study = get_object_or_404(
        Study.objects.for_clinic(request.clinic).filter(deleted_at__isnull=True).select_related("patient"),
        uuid=study_uuid,
    )
    audit_record(clinic=request.clinic, action="study.viewer_opened", request=request, object_type="study",
                 object_id=str(study.uuid))
    base = reverse("dicomweb:studies", kwargs={"clinic_slug": request.clinic.slug})[: -len("studies")]
    return render(request, "studies/viewer.html", viewer_context(
        study=study,
        dicomweb_base=base,
        download_url=reverse("studies:download", kwargs={"clinic_slug": clinic_slug, "study_uuid": study.uuid}),
        back_url=reverse("studies:detail", kwargs={"clinic_slug": clinic_slug, "study_uuid": study.uuid}),
    ))
