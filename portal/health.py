"""Liveness and readiness probes.

``/healthz`` says the process answers; it touches nothing else, so a slow database never gets a healthy
web process restarted. ``/readyz`` checks what a request needs: the database, the Celery broker and what
the apps register at start-up (the studies app: both object stores), and answers 503 naming each one
that is down; degradation checks (the studies app: backup lag and failed verifications) turn it to
"degraded" without failing it. The portal sits below the apps, so it asks them through
``readiness_check_register`` / ``degradation_check_register`` instead of importing them. Both are public (load balancers and
orchestrators call them without credentials), so they say *what* is down and a short reason from our
own error messages, never connection strings or credentials; the full error goes to the log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache

from portal.celery import app
from portal.exceptions import PortalError

logger = logging.getLogger(__name__)

# A readiness probe must answer well within an orchestrator's timeout (typically 1-10 s).
BROKER_TIMEOUT_SECONDS = 2.0


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_broker() -> None:
    url = settings.CELERY_BROKER_URL
    if url.startswith("filesystem://"):
        # The file broker "connects" to anything; what matters is that its queue folder is writable.
        options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}) or {}
        folder = Path(options.get("data_folder_in", "."))
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise PortalError("The broker's queue folder is missing or not writable.")
        return
    # The URL is read from settings on every call, so a changed broker is checked, not the one at start-up.
    with app.connection_for_write(url=url) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0.2, interval_step=0.2, timeout=BROKER_TIMEOUT_SECONDS)


CHECKS: dict[str, Callable[[], None]] = {
    "database": _check_database,
    "broker": _check_broker,
}
# name -> a function returning {component: short reason} for what is degraded (empty when all is well).
DEGRADATION_CHECKS: dict[str, Callable[[], dict[str, str]]] = {}


def readiness_check_register(name: str, check: Callable[[], None]) -> None:
    """Add a component readiness depends on (an app's ``ready()``); ``check`` raises when it is down."""
    CHECKS[name] = check


def degradation_check_register(name: str, check: Callable[[], dict[str, str]]) -> None:
    """Add a check whose problems degrade readiness without failing it (an app's ``ready()``)."""
    DEGRADATION_CHECKS[name] = check


def _reason(exc: Exception) -> str:
    if isinstance(exc, PortalError):
        return exc.message[:200]
    # Library errors can carry host names, paths or URLs; the log has them, the public answer does not.
    return f"unreachable ({type(exc).__name__})"


def readiness_problems() -> dict[str, str]:
    """Return what is down, by component, with a short reason; empty when everything is reachable."""
    problems: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", reported by name
            logger.warning("readiness check %s failed: %s: %s", name, type(exc).__name__, exc)
            problems[name] = _reason(exc)
    return problems


def degradation_problems() -> dict[str, str]:
    """What is degraded (replication lag, failed verifications): the portal keeps serving (200, status
    "degraded") while monitoring sees the problem; the backup page and the alert e-mails give the details.
    """
    problems: dict[str, str] = {}
    for name, check in DEGRADATION_CHECKS.items():
        try:
            problems.update(check())
        except Exception as exc:  # noqa: BLE001 - reported, never fatal to the probe
            logger.warning("%s health check failed: %s: %s", name, type(exc).__name__, exc)
            problems[name] = _reason(exc)
    return problems


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    problems = readiness_problems()
    if problems:
        return JsonResponse({"status": "unavailable", "down": problems}, status=503)
    degraded = degradation_problems()
    if degraded:
        return JsonResponse({"status": "degraded", "degraded": degraded, "checked": list(CHECKS)})
    return JsonResponse({"status": "ok", "checked": list(CHECKS)})
