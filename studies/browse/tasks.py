"""Celery entry points of browsing: series thumbnails and the trash purge. Load by id, call one service.

The task names are the ones these tasks had in ``studies.tasks`` (before browse had a package), so
messages already queued and the beat schedule still resolve.
"""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from studies.archive.errors import StorageUnavailable
from studies.browse import selectors, services, thumbnails
from studies.models import Series
from tenants.models import Clinic


@shared_task(name="studies.tasks.series_thumbnail_render", acks_late=True, bind=True, max_retries=5)
def series_thumbnail_render(self, clinic_id: int, series_id: int) -> None:
    """Render the series' thumbnail from its middle image (again only when that instance changed)."""
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    series = Series.objects.for_clinic(clinic_id).filter(pk=series_id).first() if clinic else None
    if clinic is None or series is None:
        return  # purged meanwhile
    try:
        thumbnails.series_thumbnail_render(clinic=clinic, series=series)
    except StorageUnavailable as exc:
        raise self.retry(exc=exc, countdown=min(600, 10 * 2**self.request.retries)) from exc


@shared_task(name="studies.tasks.study_purge", acks_late=True, bind=True, max_retries=8)
def study_purge(self, clinic_id: int, study_id: int) -> None:
    """Erase one trashed study whose time in the trash is over (objects, replica, rows, quota)."""
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    if clinic is None:
        return
    # Re-checked at run time: a study restored and trashed again since this message was queued stays.
    cutoff = timezone.now() - timedelta(days=settings.TRASH_DAYS)
    try:
        services.study_purge(clinic=clinic, study_id=study_id, deleted_before=cutoff)
    except StorageUnavailable as exc:
        raise self.retry(exc=exc, countdown=min(3600, 30 * 2**self.request.retries)) from exc


@shared_task(name="studies.tasks.studies_trash_purge", acks_late=True)
def studies_trash_purge() -> int:
    """Periodic: queue a purge for every study whose time in the trash is over; returns how many."""
    due = list(selectors.trash_purge_due(now=timezone.now()).values_list("clinic_id", "id"))
    for clinic_id, study_id in due:
        study_purge.delay(clinic_id=clinic_id, study_id=study_id)
    return len(due)


@shared_task(name="studies.tasks.index_statistics_check", acks_late=True)
def index_statistics_check() -> list[str]:
    """Periodic: take SQLite's planner statistics again for the index tables that outgrew them."""
    return selectors.index_statistics_refresh_if_grown()
