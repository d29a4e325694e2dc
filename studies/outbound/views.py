"""Pages: send a study to a node, migrations from an old archive, routing rules (under /c/<clinic>/outbound/)."""

from __future__ import annotations

from uuid import UUID

from django.contrib import messages
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portal.exceptions import PortalError
from studies.browse import selectors
from studies.models import DicomNode, Study
from studies.outbound import services
from studies.outbound.forms import MigrationForm, RoutingRuleForm, SendForm
from studies.outbound.models import MigrationJob, RouteDelivery, RoutingRule, SendJob
from tenants.audit import Actor
from tenants.middleware import ClinicRequest
from tenants.permissions import require_action
from tenants.roles import Action


def _nodes(request: ClinicRequest):  # noqa: ANN202 - a queryset of the clinic's nodes
    return DicomNode.objects.for_clinic(request.clinic).order_by("ae_title")


@require_http_methods(["GET", "POST"])
@require_action(Action.SHARE)
def study_send(request: ClinicRequest, clinic_slug: str, study_uuid: UUID) -> HttpResponse:
    study = get_object_or_404(Study.objects.for_clinic(request.clinic).filter(deleted_at=None), uuid=study_uuid)
    form = SendForm(request.POST or None, nodes=_nodes(request),
                    series=selectors.series_list(clinic=request.clinic, study=study))
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                job = services.send_create(clinic=request.clinic, study=study, node=form.cleaned_data["node"],
                                           series=form.cleaned_data["series"], actor=request.user, by=Actor.from_request(request))
            except PortalError as exc:
                form.add_error(None, exc.message)
            else:
                return redirect("outbound:send", clinic_slug=request.clinic.slug, send_uuid=job.uuid)
        status = 400
    return render(request, "studies/outbound_send_form.html", {"study": study, "form": form}, status=status)


@require_GET
@require_action(Action.SHARE)
def send_detail(request: ClinicRequest, clinic_slug: str, send_uuid: UUID) -> HttpResponse:
    job = get_object_or_404(SendJob.objects.for_clinic(request.clinic).select_related("node", "study", "series"),
                            uuid=send_uuid)
    if request.GET.get("format") == "json":
        return JsonResponse({"status": job.status, "progress": job.progress, "done": job.instances_done,
                             "failed": job.instances_failed, "total": job.instances_total})
    return render(request, "studies/outbound_send.html", {"job": job, "results": services.send_results(job=job)})


@require_http_methods(["GET", "POST"])
@require_action(Action.MANAGE)
def migration_list(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    form = MigrationForm(request.POST or None, nodes=_nodes(request))
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                job = services.migration_create(clinic=request.clinic, actor=request.user, by=Actor.from_request(request),
                                                **form.source(), **form.scope())
            except PortalError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(request, f"The migration from {job.source_label} has started.")
                return redirect("outbound:migration", clinic_slug=request.clinic.slug, migration_uuid=job.uuid)
        status = 400
    jobs = MigrationJob.objects.for_clinic(request.clinic).select_related("node").order_by("-created_at")[:50]
    return render(request, "studies/outbound_migrations.html", {"form": form, "jobs": jobs}, status=status)


@require_GET
@require_action(Action.MANAGE)
def migration_detail(request: ClinicRequest, clinic_slug: str, migration_uuid: UUID) -> HttpResponse:
    job = get_object_or_404(MigrationJob.objects.for_clinic(request.clinic).select_related("node"),
                            uuid=migration_uuid)
    speed, seconds_left = services.migration_speed(job=job)
    if request.GET.get("format") == "json":
        return JsonResponse({"status": job.status, "progress": job.progress, "done": job.instances_done,
                             "failed": job.instances_failed, "total": job.instances_total})
    return render(request, "studies/outbound_migration.html", {
        "job": job, "report": services.migration_report(job=job), "speed": speed, "seconds_left": seconds_left,
        "attempts": services.MIGRATION_STUDY_ATTEMPTS,
    })


@require_http_methods(["GET", "POST"])
@require_action(Action.MANAGE)
def routing_rules(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    form = RoutingRuleForm(request.POST or None, nodes=_nodes(request))
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                rule = services.routing_rule_create(clinic=request.clinic, actor=request.user, by=Actor.from_request(request),
                                                    **form.cleaned_data)
            except PortalError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(request, f"Rule '{rule.name}' now forwards matching images.")
                return redirect("outbound:routing", clinic_slug=request.clinic.slug)
        status = 400
    rules = RoutingRule.objects.for_clinic(request.clinic).prefetch_related("destinations")
    deliveries = (RouteDelivery.objects.for_clinic(request.clinic).select_related("node", "rule")
                  .order_by("-created_at")[:50])
    counts = services.route_delivery_counts(clinic=request.clinic)
    return render(request, "studies/outbound_routing.html",
                  {"form": form, "rules": rules, "deliveries": deliveries, "counts": counts}, status=status)


@require_POST
@require_action(Action.MANAGE)
def routing_rule_delete(request: ClinicRequest, clinic_slug: str, rule_uuid: UUID) -> HttpResponse:
    rule = get_object_or_404(RoutingRule.objects.for_clinic(request.clinic), uuid=rule_uuid)
    services.routing_rule_delete(clinic=request.clinic, rule=rule, actor=request.user, by=Actor.from_request(request))
    messages.success(request, f"Rule '{rule.name}' was removed.")
    return redirect("outbound:routing", clinic_slug=request.clinic.slug)
