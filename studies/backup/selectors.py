"""What the backup page and ``/api/v1/clinics/<clinic>/backup/`` show, for one clinic."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, F, Min, Q
from django.utils import timezone
from django.utils.timesince import timesince

from studies.backup.verification import last_full_verification
from studies.models import Instance, RestoreDrill, VerificationRun
from tenants.models import Clinic

LAG_SAMPLE = 1000


@dataclass(frozen=True)
class BackupStatus:
    instances: int
    replicated: int
    pending: int
    oldest_pending_seconds: int | None
    last_verified_at: datetime | None  # every replicated instance verified since then
    failures: int
    verified: int
    lag_p50_seconds: float | None
    lag_p95_seconds: float | None
    last_run: VerificationRun | None


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    # Nearest-rank percentile: simple, and exact enough for an operator's dashboard.
    index = min(len(sorted_values) - 1, max(0, int(round(fraction * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


def replication_lag_seconds(*, clinic: Clinic | None, sample: int = LAG_SAMPLE) -> list[float]:
    """Replication lags (replicated_at - stored_at) of the most recent replicated instances, sorted."""
    queryset = Instance.objects.for_clinic(clinic) if clinic is not None else Instance.objects.all()
    lags = (
        queryset.filter(replicated_at__isnull=False)
        .order_by("-stored_at")
        .annotate(lag=F("replicated_at") - F("stored_at"))
        .values_list("lag", flat=True)[:sample]
    )
    return sorted(max(0.0, lag.total_seconds()) for lag in lags)


def backup_status(*, clinic: Clinic) -> BackupStatus:
    now = timezone.now()
    counts = Instance.objects.for_clinic(clinic).aggregate(
        instances=Count("pk"),
        replicated=Count("pk", filter=Q(replicated_at__isnull=False)),
        verified=Count("pk", filter=Q(replica_verified_at__isnull=False, replica_verify_failed_at=None)),
        failures=Count("pk", filter=Q(replica_verify_failed_at__isnull=False)),
        oldest_pending=Min("stored_at", filter=Q(replicated_at=None)),
    )
    oldest = counts["oldest_pending"]
    lags = replication_lag_seconds(clinic=clinic)
    return BackupStatus(
        instances=counts["instances"],
        replicated=counts["replicated"],
        pending=counts["instances"] - counts["replicated"],
        oldest_pending_seconds=max(0, int((now - oldest).total_seconds())) if oldest else None,
        last_verified_at=last_full_verification(clinic=clinic),
        failures=counts["failures"],
        verified=counts["verified"],
        lag_p50_seconds=_percentile(lags, 0.50),
        lag_p95_seconds=_percentile(lags, 0.95),
        last_run=VerificationRun.objects.for_clinic(clinic).order_by("-started_at").first()
        or VerificationRun.objects.filter(clinic=None).order_by("-started_at").first(),
    )


@dataclass(frozen=True)
class RestoreTestStatus:
    passed: bool | None  # None: never run
    finished_at: datetime | None
    label: str  # "passed, 3 days ago"
    studies_checked: int = 0
    instances_checked: int = 0
    database_snapshot: str = ""
    problems: tuple[str, ...] = ()


def restore_test_status(*, clinic: Clinic) -> RestoreTestStatus:
    """The clinic's latest restore test, as the backup page words it."""
    drill = RestoreDrill.objects.for_clinic(clinic).filter(finished_at__isnull=False).order_by("-started_at").first()
    if drill is None or drill.finished_at is None:
        return RestoreTestStatus(None, None, "none yet")
    # timesince joins number and unit with a no-break space; the page and the API text use a plain one.
    ago = timesince(drill.finished_at, timezone.now(), depth=1).replace("\xa0", " ")
    return RestoreTestStatus(
        passed=drill.passed,
        finished_at=drill.finished_at,
        label=f"{'passed' if drill.passed else 'failed'}, {ago} ago",
        studies_checked=drill.studies_checked,
        instances_checked=drill.instances_checked,
        database_snapshot=drill.database_snapshot,
        problems=tuple(drill.problems),
    )
