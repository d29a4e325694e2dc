"""The whole drill: primary store and database lost; README's "Disaster recovery" commands, run as written.

The default run (SQLite, local folders) in its own processes and folders: a clinic works, its database is
snapshotted, it keeps working, then the database file and the primary store are destroyed. The commands
are read from README, between the disaster-recovery-commands markers, and run in order.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- disaster-recovery-commands:begin -->\s*```sh\n(.*?)```", text, re.S)
    assert block, "README has no disaster-recovery command block"
    commands = []
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            commands.append(shlex.split(line))
    return commands


def run(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def default_run_env(tmp_path) -> dict[str, str]:
    var = tmp_path / "var"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PORTAL_VAR_DIR": str(var),
        "MASTER_KEYS": "drill:" + base64.b64encode(os.urandom(32)).decode(),
        "PRIMARY_STORE_URL": (tmp_path / "primary").as_uri(),
        "REPLICA_STORE_URL": (tmp_path / "replica").as_uri(),
        "CELERY_BROKER_URL": "memory://",
        "CELERY_TASK_ALWAYS_EAGER": "1",
        "CACHE_URL": "",
        "LOG_LEVEL": "WARNING",
    })
    return env


def test_sqlite_clinic_comes_back_whole_after_losing_primary_and_database(default_run_env, tmp_path):
    env = default_run_env
    state_file = tmp_path / "state.json"
    run(env, sys.executable, "manage.py", "migrate", "--noinput")
    run(env, sys.executable, "-m", "tests.studies.dr_drill_support", "prepare", str(state_file))
    before = json.loads(state_file.read_text())
    assert before["unreplicated"] == 0  # acknowledged and on the replica: what must come back

    # The disaster: the database and the primary store are gone.
    var = Path(env["PORTAL_VAR_DIR"])
    for leftover in var.glob("db.sqlite3*"):
        leftover.unlink()
    shutil.rmtree(tmp_path / "primary")

    outputs = [run(env, sys.executable, "manage.py", *command[2:]) for command in readme_commands()]
    after = json.loads(run(env, sys.executable, "-m", "tests.studies.dr_drill_support", "check", str(state_file)))

    assert after["instances"] == before["instances"]
    assert after["owner_signs_in"] is True
    assert after["token_status"] == 200
    assert after["share_status"] == 200
    assert after["trashed"] == before["trashed"]
    assert after["live"] == before["live"]
    assert after["found_by_wildcard"] == before["live"]
    assert after["audit_problems"] == []
    assert set(map(tuple, before["audit_at_snapshot"])) <= set(map(tuple, after["audit"]))
    assert "were written before the disaster" in "\n".join(outputs)  # entries after the snapshot, reported
    assert any(p.is_file() for p in (tmp_path / "primary").rglob("*"))


def test_readme_lists_the_recovery_commands_in_order():
    names = [command[2] for command in readme_commands()]

    assert names[0] == "restore_database"
    assert names.index("rebuild_index") < names.index("restore")
    assert "verify_audit_log" in names
