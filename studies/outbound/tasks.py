"""Celery entry points for outbound DICOM: load by id, call one service.

Task names are explicit so that messages already queued still resolve if the code moves.
"""

from __future__ import annotations

from celery import shared_task
from django.core.cache import cache

from studies.models import DicomNode
from studies.outbound import scu, services
from studies.outbound.models import JobStatus, MigrationJob, SendJob
from tenants.models import Clinic

SEND_RETRIES = 8
# One routing task per node at a time, so a delivery is never sent twice by two workers.
ROUTE_LOCK_SECONDS = 15 * 60


@shared_task(name="outbound.send_job_run", acks_late=True, bind=True, max_retries=SEND_RETRIES)
def send_job_run(self, clinic_id: int, job_id: int) -> None:
    job = SendJob.objects.for_clinic(clinic_id).select_related("clinic", "node", "study").filter(pk=job_id).first()
    if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        return  # deleted meanwhile, or finished by an earlier delivery of this message
    try:
        services.send_run(job=job)
    except scu.NodeUnreachable as exc:
        if self.request.retries >= SEND_RETRIES:
            services.send_give_up(job=job, reason=str(exc))
            return
        raise self.retry(exc=exc, countdown=min(1800, 30 * 2**self.request.retries)) from exc


@shared_task(name="outbound.migration_job_run", acks_late=True, bind=True, max_retries=None)
def migration_job_run(self, clinic_id: int, job_id: int) -> None:
    job = MigrationJob.objects.for_clinic(clinic_id).select_related("clinic", "node").filter(pk=job_id).first()
    if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        return
    try:
        more = services.migration_run(job=job)
    except scu.NodeUnreachable as exc:
        MigrationJob.objects.filter(pk=job.pk).update(error=str(exc)[:300])
        # A node that is down for a while is waited for, not given up on: the job resumes where it was.
        services.job_enqueue(job=job, countdown=min(1800, 30 * 2 ** min(self.request.retries, 6)))
        return
    if more:
        job.refresh_from_db()
        services.job_enqueue(job=job, countdown=services.migration_next_slice_countdown(job=job))


@shared_task(name="outbound.route_deliveries_send", acks_late=True)
def route_deliveries_send(clinic_id: int, node_id: int) -> int:
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    node = DicomNode.objects.for_clinic(clinic_id).filter(pk=node_id).first()
    if clinic is None or node is None:
        return 0
    lock = f"route-send:{node_id}"
    if not cache.add(lock, 1, timeout=ROUTE_LOCK_SECONDS):
        return 0  # another worker is sending to this node; the sweep picks up what it leaves
    try:
        return services.route_deliveries_send(clinic=clinic, node=node)
    finally:
        cache.delete(lock)


@shared_task(name="outbound.outbound_sweep", acks_late=True)
def outbound_sweep() -> dict[str, int]:
    """Periodic: re-queue jobs and deliveries that a dead worker or a lost message left behind."""
    return services.outbound_sweep()
