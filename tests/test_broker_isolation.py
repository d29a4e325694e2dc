"""Two deployments started from one checkout with the default file broker do not take each other's tasks.

Each process here is a real deployment start-up (settings from the environment, the Celery app), sharing
the data folder as two deployments without their own PORTAL_VAR_DIR do; only the database differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_LEAKY = {"CELERY_BROKER_URL", "REDIS_URL", "DATABASE_URL", "PORTAL_VAR_DIR", "DJANGO_ALLOW_ASYNC_UNSAFE"}

PUBLISH = """
import json, django
django.setup()
from django.conf import settings
from portal.celery import app
app.send_task("tenants.tasks.audit_chains_check")
print(json.dumps(settings.CELERY_BROKER_TRANSPORT_OPTIONS))
"""


def deployment(var_dir: Path, database_url: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _LEAKY}
    env.update({"DJANGO_SETTINGS_MODULE": "portal.settings", "PORTAL_VAR_DIR": str(var_dir)})
    if database_url:
        env["DATABASE_URL"] = database_url
    result = subprocess.run([sys.executable, "-c", PUBLISH], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def messages_in(folder: str) -> int:
    return len([name for name in os.listdir(folder) if name.endswith(".msg")])


def test_two_deployments_on_one_data_folder_keep_their_queues_apart(tmp_path):
    clinic_a = deployment(tmp_path, "postgres://pacs@db-a.internal:5432/pacs_a")
    clinic_b = deployment(tmp_path, "postgres://pacs@db-b.internal:5432/pacs_b")

    assert clinic_a["data_folder_in"] != clinic_b["data_folder_in"]
    assert messages_in(clinic_a["data_folder_in"]) == messages_in(clinic_b["data_folder_in"]) == 1


def test_processes_of_one_deployment_share_its_queue(tmp_path):
    web = deployment(tmp_path, "postgres://pacs@db-a.internal:5432/pacs_a")
    worker = deployment(tmp_path, "postgres://pacs@db-a.internal:5432/pacs_a")
    default_run = deployment(tmp_path, None)

    assert web["data_folder_in"] == worker["data_folder_in"] != default_run["data_folder_in"]
    assert messages_in(web["data_folder_in"]) == 2
