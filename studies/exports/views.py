"""Pages of the clinic export (/c/<clinic>/exports/): ask for one, follow it, download its parts. Owners only."""

from __future__ import annotations

from uuid import UUID

from django.contrib import messages
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from portal.exceptions import PortalError
from studies.archive import objects
from studies.exports import services
from studies.exports.models import ClinicExport, ExportStatus
from tenants import permissions
from tenants.audit import Actor
from tenants.middleware import ClinicRequest


def export_list(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    permissions.owner_check(request)
    jobs = ClinicExport.objects.for_clinic(request.clinic).order_by("-created_at")[:20]
    return render(
        request,
        "studies/export_list.html",
        {
            "jobs": jobs,
            "estimate": services.clinic_export_size_estimate(clinic=request.clinic),
        },
    )


@require_POST
def export_request(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    permissions.owner_check(request)
    try:
        job = services.clinic_export_request(
            clinic=request.clinic, requested_by=request.user, base_url=request.build_absolute_uri("/"), by=Actor.from_request(request)
        )
    except PortalError as exc:
        messages.error(request, exc.message)
        return redirect("exports:list", clinic_slug=clinic_slug)
    messages.success(
        request, "The export is being prepared. You get an e-mail with the download link when it is ready."
    )
    return redirect("exports:detail", clinic_slug=clinic_slug, export_uuid=job.uuid)


def export_detail(request: ClinicRequest, clinic_slug: str, export_uuid: UUID) -> HttpResponse:
    permissions.owner_check(request)
    job = get_object_or_404(ClinicExport.objects.for_clinic(request.clinic), uuid=export_uuid)
    if request.GET.get("format") == "json":
        return JsonResponse(
            {
                "status": job.status,
                "status_display": job.get_status_display(),
                "studies_done": job.studies_done,
                "studies_total": job.studies_total,
            }
        )
    return render(
        request,
        "studies/export_detail.html",
        {"job": job, "running": job.status in (ExportStatus.QUEUED, ExportStatus.RUNNING)},
    )


def export_part_download(request: ClinicRequest, clinic_slug: str, export_uuid: UUID, number: int) -> HttpResponse:
    permissions.owner_check(request)
    job = get_object_or_404(services.clinic_export_downloadable(clinic=request.clinic), uuid=export_uuid)
    if not 1 <= number <= len(job.parts):
        raise Http404("No such part.")
    part = job.parts[number - 1]
    services.clinic_export_part_downloaded(job=job, number=number, by=Actor.from_request(request))
    source = objects.object_open(clinic=request.clinic, key=part["key"])
    response = FileResponse(source, as_attachment=True, filename=part["name"], content_type="application/zip")
    response["Content-Length"] = str(part["size_bytes"])
    return response
