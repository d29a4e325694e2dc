"""Anonymization pages: projects, jobs with progress, and re-identification for owners and admins."""

from __future__ import annotations

import json
from uuid import UUID

from django.contrib import messages
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from portal.exceptions import PortalError
from studies.anonymize import services
from studies.anonymize.forms import AnonymizeForm, DeviceRectanglesForm, IngestRulesForm, ProjectForm, ReidentifyForm
from studies.anonymize.models import AnonymizationJob, AnonymizationProject, IngestAnonymization
from studies.models import Series, Study
from tenants import permissions
from tenants.audit import Actor
from tenants.middleware import ClinicRequest
from tenants.roles import Action


def overview(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    permissions.action_check(request, Action.SHARE)
    projects = AnonymizationProject.objects.for_clinic(request.clinic).order_by("name")
    jobs = AnonymizationJob.objects.for_clinic(request.clinic).select_related("project").order_by("-created_at")[:50]
    return render(request, "studies/anonymize_overview.html",
                  {"projects": projects, "jobs": jobs, "project_form": ProjectForm()})


@require_POST
def project_create(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    permissions.action_check(request, Action.SHARE)
    form = ProjectForm(request.POST)
    if form.is_valid():
        try:
            services.project_create(clinic=request.clinic, created_by=request.user, by=Actor.from_request(request), **form.cleaned_data)
            messages.success(request, f"Project '{form.cleaned_data['name']}' created.")
        except PortalError as exc:
            messages.error(request, exc.message)
    else:
        messages.error(request, "Give the project a name and a pseudonym prefix.")
    return redirect("anonymize:overview", clinic_slug=clinic_slug)


def project_detail(request: ClinicRequest, clinic_slug: str, project_uuid: UUID) -> HttpResponse:
    permissions.action_check(request, Action.SHARE)
    project = get_object_or_404(AnonymizationProject.objects.for_clinic(request.clinic), uuid=project_uuid)
    rectangles_form = DeviceRectanglesForm(initial={"device_rectangles": _json(project.device_rectangles)})
    reidentify_form = ReidentifyForm()
    rules = IngestAnonymization.objects.for_clinic(request.clinic).filter(project=project)
    rules_form = IngestRulesForm(clinic=request.clinic, initial={
        "clinic_wide": rules.filter(applies_to=IngestAnonymization.AppliesTo.CLINIC).exists(),
        "api_tokens": [r.api_token.uuid for r in rules.filter(api_token__isnull=False).select_related("api_token")],
        "dicom_nodes": [r.dicom_node.uuid for r in rules.filter(dicom_node__isnull=False).select_related("dicom_node")],
    })
    revealed = None
    if request.method == "POST":
        if "ingest_rules" in request.POST:
            permissions.action_check(request, Action.MANAGE)
            rules_form = IngestRulesForm(request.POST, clinic=request.clinic)
            if rules_form.is_valid():
                services.ingest_rules_set(project=project, user=request.user, by=Actor.from_request(request),
                                          clinic_wide=rules_form.cleaned_data["clinic_wide"],
                                          api_tokens=list(rules_form.cleaned_data["api_tokens"]),
                                          dicom_nodes=list(rules_form.cleaned_data["dicom_nodes"]))
                messages.success(request, "Anonymize-on-ingest rules saved.")
                return redirect("anonymize:project", clinic_slug=clinic_slug, project_uuid=project.uuid)
        elif "device_rectangles" in request.POST:
            permissions.action_check(request, Action.MANAGE)
            rectangles_form = DeviceRectanglesForm(request.POST)
            if rectangles_form.is_valid():
                project.device_rectangles = rectangles_form.cleaned_data["device_rectangles"]
                project.save(update_fields=["device_rectangles"])
                messages.success(request, "Blanking rectangles saved.")
                return redirect("anonymize:project", clinic_slug=clinic_slug, project_uuid=project.uuid)
        else:
            permissions.action_check(request, Action.MANAGE)
            reidentify_form = ReidentifyForm(request.POST)
            if reidentify_form.is_valid():
                try:
                    revealed = services.reidentify(project=project, user=request.user, by=Actor.from_request(request),
                                                   **reidentify_form.cleaned_data)
                except PortalError as exc:
                    messages.error(request, exc.message)
    return render(request, "studies/anonymize_project.html", {
        "project": project, "rectangles_form": rectangles_form, "reidentify_form": reidentify_form,
        "rules_form": rules_form,
        "revealed": revealed, "can_manage": request.membership.can(Action.MANAGE),
    })


def _json(value: object) -> str:
    return json.dumps(value, indent=2)


def study_anonymize(request: ClinicRequest, clinic_slug: str, study_uuid: UUID) -> HttpResponse:
    permissions.action_check(request, Action.SHARE)
    study = get_object_or_404(Study.objects.for_clinic(request.clinic).filter(deleted_at__isnull=True), uuid=study_uuid)
    series = list(Series.objects.for_clinic(request.clinic).filter(study=study).order_by("series_number"))
    choices = [(str(s.uuid), f"{s.series_number or ''} {s.modality} {s.series_description}".strip()) for s in series]
    form = AnonymizeForm(request.POST or None, series_choices=choices)
    if request.method == "POST" and form.is_valid():
        try:
            project = services.project_get_or_create(clinic=request.clinic, name=form.cleaned_data["project"],
                                                      created_by=request.user, by=Actor.from_request(request))
            chosen = [s for s in series if str(s.uuid) in set(form.cleaned_data["series"])]
            job = services.job_create(clinic=request.clinic, project=project, studies=[study], series=chosen,
                                      options=form.cleaned_data["options"], requested_by=request.user,
                                      by=Actor.from_request(request))
        except PortalError as exc:
            messages.error(request, exc.message)
        else:
            return redirect("anonymize:job", clinic_slug=clinic_slug, job_uuid=job.uuid)
    projects = AnonymizationProject.objects.for_clinic(request.clinic).order_by("name")
    return render(request, "studies/anonymize_form.html",
                  {"study": study, "form": form, "projects": projects}, status=400 if form.errors else 200)


def job_detail(request: ClinicRequest, clinic_slug: str, job_uuid: UUID) -> HttpResponse:
    permissions.action_check(request, Action.SHARE)
    job = get_object_or_404(AnonymizationJob.objects.for_clinic(request.clinic).select_related("project"), uuid=job_uuid)
    results = services.job_result_studies(job=job)
    if request.GET.get("format") == "json":
        return JsonResponse({"status": job.status, "status_display": job.get_status_display(), "progress": job.progress, "done": job.done, "failed": job.failed,
                             "total": job.total, "needs_review": job.needs_review})
    return render(request, "studies/anonymize_job.html", {"job": job, "results": results})
