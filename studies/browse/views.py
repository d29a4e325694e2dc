"""Clinic pages for finding and using studies: search, study page, thumbnails, ZIP download, trash."""

from __future__ import annotations

from contextlib import closing
from typing import Any
from uuid import UUID

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils.functional import cached_property
from django.views.decorators.http import require_GET, require_POST

from portal.exceptions import PortalError
from studies import matching
from studies.archive import objects
from studies.archive.errors import ArchiveError
from studies.browse import download, selectors, services
from studies.models import Study
from studies.quarantine import services as quarantine
from tenants import permissions
from tenants.audit import Actor, audit_record
from tenants.middleware import ClinicRequest
from tenants.roles import Action

PAGE_SIZE = 25
COUNT_CAP = 1000

SORT_CHOICES = [
    ("-date", "Study date, newest first"),
    ("date", "Study date, oldest first"),
    ("patient", "Patient name, A to Z"),
    ("-patient", "Patient name, Z to A"),
    ("-created", "Stored, newest first"),
    ("created", "Stored, oldest first"),
]


class StudySearchForm(forms.Form):
    patient_name = forms.CharField(required=False, max_length=324, label="Patient name",
                                   help_text="Case-insensitive; * and ? as wildcards.")
    patient_id = forms.CharField(required=False, max_length=64, label="Patient ID")
    accession_number = forms.CharField(required=False, max_length=64, label="Accession")
    date_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    modality = forms.CharField(required=False, max_length=16, label="Modality")
    description = forms.CharField(required=False, max_length=128, label="Description")
    sort = forms.ChoiceField(required=False, choices=SORT_CHOICES, label="Sort")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            raise forms.ValidationError("The 'from' date is after the 'to' date.")
        return data

    def search(self) -> selectors.StudySearch:
        data = self.cleaned_data
        return selectors.StudySearch(
            patient_name=data.get("patient_name") or "",
            patient_id=data.get("patient_id") or "",
            accession_number=data.get("accession_number") or "",
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
            modality=data.get("modality") or "",
            description=data.get("description") or "",
            sort=data.get("sort") or selectors.DEFAULT_SORT,
        )


class CappedPaginator(Paginator):
    """Pages over at most COUNT_CAP matches: counting every match of a broad search costs more than the page."""

    def __init__(self, object_list: Any, per_page: int, *, matched: int | None = None) -> None:
        super().__init__(object_list, per_page)
        self.matched = matched  # selectors.study_matches' count, when it has one

    @cached_property
    def count(self) -> int:
        return selectors.study_count(self.object_list, cap=COUNT_CAP, matched=self.matched)

    @property
    def is_capped(self) -> bool:
        return self.count > COUNT_CAP


def _study_or_404(request: ClinicRequest, study_uuid: UUID) -> Study:
    study = selectors.study_get(clinic=request.clinic, study_uuid=study_uuid)
    if study is None:
        raise Http404("No such study.")
    return study


def _sort_links(request: ClinicRequest, current: str) -> dict[str, dict[str, str]]:
    """For each sortable column, the query string that sorts by it (toggling the direction)."""
    links = {}
    for column in ("date", "patient", "created"):
        if current == column:
            target = f"-{column}"
        elif current == f"-{column}":
            target = column
        else:
            target = "patient" if column == "patient" else f"-{column}"
        query = request.GET.copy()
        query["sort"] = target
        query.pop("page", None)
        arrow = "▲" if current == column else "▼" if current == f"-{column}" else ""
        links[column] = {"query": query.urlencode(), "arrow": arrow}
    return links


def _study_page(request: ClinicRequest, form: StudySearchForm, search: selectors.StudySearch) -> Any:
    """The page of matches, read within the search time budget; none for a search with errors."""
    if form.is_bound and not form.is_valid():
        # Listing every study under "the 'from' date is after the 'to' date" would look like an answer.
        return CappedPaginator(Study.objects.none(), PAGE_SIZE).get_page(1)
    try:
        with matching.search_budget():
            studies, matched = selectors.study_matches(clinic=request.clinic, search=search)
            page = CappedPaginator(studies, PAGE_SIZE, matched=matched).get_page(request.GET.get("page"))
            page.object_list = list(page.object_list)
    except PortalError as exc:
        form.add_error(None, exc.message)
        return CappedPaginator(Study.objects.none(), PAGE_SIZE).get_page(1)
    return page


@require_GET
def study_list(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    permissions.action_check(request, Action.VIEW)
    form = StudySearchForm(request.GET or None)
    search = form.search() if form.is_bound and form.is_valid() else selectors.StudySearch()
    page = _study_page(request, form, search)
    services.study_search_record(clinic=request.clinic, search=search, count=len(page.object_list),
                                 source="studies_page", by=Actor.from_request(request))
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "studies/study_list.html", {
        "form": form,
        "page": page,
        "search": search,
        "sort_links": _sort_links(request, search.sort),
        "page_query": query.urlencode(),
        "count_cap": COUNT_CAP,
    }, status=400 if form.is_bound and not form.is_valid() else 200)


@require_GET
def study_detail(request: ClinicRequest, clinic_slug: str, study_uuid: UUID) -> HttpResponse:
    permissions.action_check(request, Action.VIEW)
    study = _study_or_404(request, study_uuid)
    series = selectors.series_list(clinic=request.clinic, study=study)
    audit_record(clinic=request.clinic, action="study.viewed", request=request, object_type="study",
                 object_id=str(study.uuid))
    return render(request, "studies/study_detail.html",
                  {"study": study, "series_list": series, "trash_days": settings.TRASH_DAYS})


@require_GET
def study_download(request: ClinicRequest, clinic_slug: str, study_uuid: UUID) -> HttpResponse:
    permissions.action_check(request, Action.VIEW)
    study = _study_or_404(request, study_uuid)
    instances = selectors.instance_list(clinic=request.clinic, study=study)
    audit_record(clinic=request.clinic, action="study.downloaded", request=request, object_type="study",
                 object_id=str(study.uuid), details={"instances": study.number_of_instances})
    return download.zip_response(clinic=request.clinic, instances=instances, filename=f"study-{study.uuid}.zip")


@require_GET
def series_download(request: ClinicRequest, clinic_slug: str, study_uuid: UUID, series_uuid: UUID) -> HttpResponse:
    permissions.action_check(request, Action.VIEW)
    study = _study_or_404(request, study_uuid)
    series = selectors.series_get(clinic=request.clinic, study=study, series_uuid=series_uuid)
    if series is None:
        raise Http404("No such series.")
    instances = selectors.instance_list(clinic=request.clinic, series=series)
    audit_record(clinic=request.clinic, action="study.downloaded", request=request, object_type="study",
                 object_id=str(study.uuid), details={"series": str(series.uuid),
                                                     "instances": series.number_of_instances})
    return download.zip_response(clinic=request.clinic, instances=instances, filename=f"series-{series.uuid}.zip")


@require_GET
def series_thumbnail(request: ClinicRequest, clinic_slug: str, study_uuid: UUID, series_uuid: UUID) -> HttpResponse:
    permissions.action_check(request, Action.VIEW)
    study = _study_or_404(request, study_uuid)
    series = selectors.series_get(clinic=request.clinic, study=study, series_uuid=series_uuid)
    if series is None or not series.thumbnail_key:
        raise Http404("No thumbnail yet.")
    try:
        with closing(objects.object_open(clinic=request.clinic, key=series.thumbnail_key)) as source:
            png = source.read()
    except ArchiveError as exc:
        # A thumbnail is decoration: answer "not there" rather than fail the study page.
        raise Http404("Thumbnail unavailable.") from exc
    # An image of the patient: audited like any read, but once per window, not for every series shown.
    services.study_read_record(clinic=request.clinic, study=study, action="study.thumbnail_viewed",
                               by=Actor.from_request(request))
    response = HttpResponse(png, content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_POST
def study_delete(request: ClinicRequest, clinic_slug: str, study_uuid: UUID) -> HttpResponse:
    study = _study_or_404(request, study_uuid)
    permissions.action_check(request, Action.DELETE)
    try:
        services.study_delete(clinic=request.clinic, study=study, actor=request.user, by=Actor.from_request(request))
    except PortalError as exc:
        messages.error(request, exc.message)
    else:
        purge_at = services.study_purge_at(study)
        messages.success(request, f"The study is in the trash; you can restore it until {purge_at:%Y-%m-%d}.")
    return redirect("studies:list", clinic_slug=request.clinic.slug)


@require_GET
def trash(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    permissions.action_check(request, Action.DELETE)
    studies = selectors.trash_list(clinic=request.clinic)
    page = Paginator(studies, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [{"study": study, "purge_at": services.study_purge_at(study)} for study in page]
    # A list of patients' names is an access to each of them, as the studies page's is.
    services.study_search_record(clinic=request.clinic, search=selectors.StudySearch(), count=len(rows),
                                 source="trash_page", by=Actor.from_request(request))
    return render(request, "studies/study_trash.html", {"page": page, "rows": rows})


@require_POST
def study_restore(request: ClinicRequest, clinic_slug: str, study_uuid: UUID) -> HttpResponse:
    study = selectors.trash_get(clinic=request.clinic, study_uuid=study_uuid)
    if study is None:
        raise Http404("No such study in the trash.")
    permissions.action_check(request, Action.DELETE)
    try:
        services.study_restore(clinic=request.clinic, study=study, actor=request.user, by=Actor.from_request(request))
    except PortalError as exc:
        messages.error(request, exc.message)
        return redirect("studies:trash", clinic_slug=request.clinic.slug)
    messages.success(request, "The study is restored.")
    return redirect("studies:detail", clinic_slug=request.clinic.slug, study_uuid=study.uuid)


@require_GET
def quarantine_page(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    """Instances held for review (patient differs from the study's, or an outside sender's collision)."""
    permissions.action_check(request, Action.DELETE)
    held = quarantine.quarantine_list(clinic=request.clinic)
    page = Paginator(held, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = list(page)
    # The held instances' patient names and IDs: audited as a list of studies shown.
    services.study_search_record(clinic=request.clinic, search=selectors.StudySearch(), count=len(rows),
                                 source="quarantine_page", by=Actor.from_request(request))
    return render(request, "studies/quarantine.html", {"page": page, "rows": rows})


@require_POST
def quarantine_resolve(request: ClinicRequest, clinic_slug: str, held_uuid: UUID) -> HttpResponse:
    """File a held instance into its study (``action=file``) or discard it (``action=discard``)."""
    # The role first: a member who may not decide must not learn whether an id is held either.
    permissions.action_check(request, Action.DELETE)
    held = quarantine.quarantine_get(clinic=request.clinic, held_uuid=held_uuid)
    if held is None:
        raise Http404("No such instance in quarantine.")
    action = request.POST.get("action")
    try:
        if action == "file":
            quarantine.quarantined_file(clinic=request.clinic, held=held, actor=request.user, by=Actor.from_request(request))
            messages.success(request, "The instance is filed into its study.")
        elif action == "discard":
            quarantine.quarantined_discard(clinic=request.clinic, held=held, actor=request.user, by=Actor.from_request(request))
            messages.success(request, "The instance is discarded.")
        else:
            messages.error(request, "Choose to file or to discard the instance.")
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect("studies:quarantine", clinic_slug=request.clinic.slug)
