"""Liveness and readiness probes."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, JsonResponse


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_broker() -> None:
    from portal.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def _check_store(name: str) -> None:
    from studies.archive import stores

    stores.get_store(name).check()


def readiness_problems() -> dict[str, str]:
    """Return what is down, by component; empty when everything is reachable."""
    checks = {
        "database": _check_database,
        "broker": _check_broker,
        "primary_store": lambda: _check_store("primary"),
        "replica_store": lambda: _check_store("replica"),
    }
    problems: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", reported by name
            problems[name] = f"{type(exc).__name__}: {exc}"[:300]
    return problems


def readyz(request: HttpRequest) -> JsonResponse:
    problems = readiness_problems()
    if problems:
        return JsonResponse({"status": "unavailable", "down": problems}, status=503)
    return JsonResponse({"status": "ok"})
