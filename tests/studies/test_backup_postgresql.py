"""PostgreSQL backup with pgBackRest against a private cluster: WAL archiving, base backup, point-in-time restore.

The test starts its own PostgreSQL 15 cluster (initdb and pg_ctl, as the postgres user, on a free port in a
temporary folder) whose archive_command is pgBackRest, and runs the portal's commands as an operator on the
database host would: ``backup_database --setup``, ``backup_database``, ``restore_database --at ... --run``.
Both repository kinds run: posix (a file:// replica) and S3 (a private moto endpoint behind TLS, the
replica bucket, pgBackRest with its own credentials). The machine's shared PostgreSQL is never touched.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from tests.studies.test_disaster_drill import readme_commands

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")

if not (PG_BIN / "initdb").exists() or shutil.which("pgbackrest") is None or os.geteuid() != 0:
    pytest.skip("needs PostgreSQL 15 binaries, pgbackrest and root (to run them as postgres)",
                allow_module_level=True)


def as_postgres(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["runuser", "-u", "postgres", "--", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_replica(tmp_path):
    """A private moto S3 endpoint behind TLS (pgBackRest speaks S3 over TLS only), with a replica bucket.

    socat terminates TLS with a throw-away certificate: werkzeug's own TLS mode drops connections
    without a close_notify, which OpenSSL 3 (pgBackRest) rightly refuses.
    """
    import boto3

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    moto_port, tls_port = free_port(), free_port()
    log = (tmp_path / "moto.log").open("wb")
    servers = [
        subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(moto_port)],
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen(["socat", f"OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,fork,reuseaddr,cert={cert},key={key},"
                          "verify=0", f"TCP:127.0.0.1:{moto_port}"], stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True),
    ]
    endpoint = f"https://127.0.0.1:{tls_port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", verify=False,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    for _ in range(100):
        try:
            client.create_bucket(Bucket="replica")
            break
        except Exception:  # noqa: BLE001 - the servers are still starting
            time.sleep(0.2)
    yield {
        "REPLICA_STORE_URL": f"s3://replica?endpoint_url={endpoint}&region_name=us-east-1&verify=0",
        "REPLICA_STORE_ACCESS_KEY_ID": "replica-writer", "REPLICA_STORE_SECRET_ACCESS_KEY": "testing",
        "DATABASE_BACKUP_ACCESS_KEY_ID": "pgbackrest", "DATABASE_BACKUP_SECRET_ACCESS_KEY": "testing",
    }
    for server in servers:
        os.killpg(server.pid, 15)
        server.wait(10)


@pytest.fixture(params=["posix", "s3"])
def repository(request) -> dict[str, str]:
    return request.getfixturevalue("s3_replica") if request.param == "s3" else {}


@pytest.fixture
def cluster(repository):
    folder = Path(tempfile.mkdtemp(prefix="pg-drill-", dir="/tmp"))
    shutil.chown(folder, "postgres", "postgres")
    folder.chmod(0o755)
    data, port = folder / "data", free_port()
    as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    env.update({
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{port}/portal",
        "PORTAL_VAR_DIR": str(folder / "var"),
        "MASTER_KEYS": "pg:" + base64.b64encode(os.urandom(32)).decode(),
        "PRIMARY_STORE_URL": (folder / "primary").as_uri(),
        "REPLICA_STORE_URL": (folder / "replica").as_uri(),
        "CELERY_BROKER_URL": "memory://",
        "CACHE_URL": "",
        "DATABASE_BACKUP_PG_PATH": str(data),
        "DATABASE_BACKUP_PG_SOCKET": str(folder),
        "DATABASE_BACKUP_LOCK_PATH": str(folder / "pgbackrest"),
        "DATABASE_BACKUP_CIPHER_PASS": "drill-cipher-passphrase",
        "DATABASE_BACKUP_COMMAND": "runuser -u postgres -- pgbackrest",
        "LOG_LEVEL": "WARNING",
        "PYTHONWARNINGS": "ignore:Unverified HTTPS request",
        **repository,
    })
    start = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(folder / "pg.log"),
             "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"]
    as_postgres(*start)
    for owned in (folder / "replica" / "database" / "pgbackrest", folder / "pgbackrest"):
        owned.mkdir(parents=True)
        for level in (owned, *owned.parents):
            if level == folder:
                break
            shutil.chown(level, "postgres", "postgres")
    with psycopg.connect(f"postgres://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE portal")
    yield {"folder": folder, "data": data, "port": port, "env": env, "start": start}
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop", check=False)
    shutil.rmtree(folder, ignore_errors=True)


def manage(cluster, *args: str) -> str:
    # As the operator (the portal's own user); pgBackRest itself runs as postgres (DATABASE_BACKUP_COMMAND).
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=cluster["env"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def sql(cluster, query: str) -> list[tuple]:
    with psycopg.connect(f"postgres://postgres@127.0.0.1:{cluster['port']}/portal", autocommit=True) as conn:
        return list(conn.execute(query))


# A private cluster, its WAL through pgBackRest (over TLS to S3 in the s3 case) and a replay: minutes on a busy box.
# The replay is pgBackRest's either way: the S3 repository is driven end to end by the whole drill below.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("repository", ["posix"], indirect=True)
def test_point_in_time_restore_brings_back_the_state_at_that_moment(cluster):
    manage(cluster, "migrate", "--noinput")
    setup = manage(cluster, "backup_database", "--setup")
    archive_command = next(line for line in setup.splitlines() if line.startswith("archive_command"))
    with (cluster["data"] / "postgresql.conf").open("a") as conf:
        conf.write(f"archive_mode = on\nwal_level = replica\n{archive_command}\n")
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(cluster["data"]), "-m", "fast", "stop")
    as_postgres(*cluster["start"])
    manage(cluster, "create_clinic", "--name", "Before", "--slug", "before", "--owner", "a@example.org",
           "--password", "Before-pass-1234")
    manage(cluster, "backup_database", "--type", "full")
    manage(cluster, "create_clinic", "--name", "After backup", "--slug", "after", "--owner", "b@example.org",
           "--password", "After-pass-12345")
    moment = sql(cluster, "SELECT clock_timestamp()")[0][0]
    time.sleep(1.5)
    manage(cluster, "create_clinic", "--name", "Too late", "--slug", "late", "--owner", "c@example.org",
           "--password", "Late-pass-123456")
    sql(cluster, "SELECT pg_switch_wal()")
    time.sleep(1)

    # The disaster: the data directory is gone.
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(cluster["data"]), "-m", "immediate", "stop")
    for child in cluster["data"].iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    steps = manage(cluster, "restore_database", "--at", moment.isoformat())
    manage(cluster, "restore_database", "--at", moment.isoformat(), "--run")
    as_postgres(*cluster["start"])
    for _ in range(60):
        if sql(cluster, "SELECT NOT pg_is_in_recovery()")[0][0]:
            break
        time.sleep(0.5)

    assert "pgbackrest" in steps and "--type=time" in steps
    assert sorted(row[0] for row in sql(cluster, "SELECT slug FROM tenants_clinic")) == ["after", "before"]
    assert "b@example.org" in {row[0] for row in sql(cluster, "SELECT email FROM tenants_user")}
    manage(cluster, "verify_audit_log")
    assert "matches the newest anchor" in manage(cluster, "restore_database", "--check-audit")


@pytest.mark.parametrize("repository", ["posix"], indirect=True)  # it reads the repository's files
def test_repository_is_encrypted_and_verifies(cluster):
    manage(cluster, "migrate", "--noinput")
    setup = manage(cluster, "backup_database", "--setup")
    archive_command = next(line for line in setup.splitlines() if line.startswith("archive_command"))
    with (cluster["data"] / "postgresql.conf").open("a") as conf:
        conf.write(f"archive_mode = on\nwal_level = replica\n{archive_command}\n")
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(cluster["data"]), "-m", "fast", "stop")
    as_postgres(*cluster["start"])
    manage(cluster, "create_clinic", "--name", "Secret Clinic", "--slug", "secret", "--owner", "s@example.org",
           "--password", "Secret-pass-1234")

    manage(cluster, "backup_database", "--type", "full")

    repository = cluster["folder"] / "replica" / "database" / "pgbackrest"
    files = [p for p in repository.rglob("*") if p.is_file()]
    assert files
    assert not any(b"Secret Clinic" in p.read_bytes() for p in files)
    drill = manage(cluster, "restore_drill")
    assert "passed" in drill and "pgBackRest repository" in drill


def _archiving_on(cluster) -> None:
    setup = manage(cluster, "backup_database", "--setup")
    archive_command = next(line for line in setup.splitlines() if line.startswith("archive_command"))
    with (cluster["data"] / "postgresql.conf").open("a") as conf:
        conf.write(f"archive_mode = on\nwal_level = replica\n{archive_command}\n")
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(cluster["data"]), "-m", "fast", "stop")
    as_postgres(*cluster["start"])


@pytest.mark.timeout(1200)
def test_postgresql_clinic_comes_back_whole_after_losing_primary_and_database(cluster):
    env = {**cluster["env"], "CELERY_TASK_ALWAYS_EAGER": "1"}
    cluster["env"] = env
    state_file = cluster["folder"] / "state.json"
    manage(cluster, "migrate", "--noinput")
    _archiving_on(cluster)
    subprocess.run([sys.executable, "-m", "tests.studies.dr_drill_support", "prepare", str(state_file)], cwd=ROOT,
                   env=env, check=True, capture_output=True, timeout=600)
    before = json.loads(state_file.read_text())
    sql(cluster, "SELECT pg_switch_wal()")  # what archive_timeout does every few seconds in production
    time.sleep(2)

    # The disaster: the data directory and the primary store are gone.
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(cluster["data"]), "-m", "immediate", "stop")
    for child in cluster["data"].iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    shutil.rmtree(cluster["folder"] / "primary", ignore_errors=True)
    for command in readme_commands():
        if command[2] == "restore_database" and len(command) == 3:
            # README: "PostgreSQL: --run, then start it".
            manage(cluster, "restore_database", "--run")
            as_postgres(*cluster["start"])
            for _ in range(120):
                if sql(cluster, "SELECT NOT pg_is_in_recovery()")[0][0]:
                    break
                time.sleep(0.5)
            continue
        manage(cluster, *command[2:])
    after = json.loads(subprocess.run(
        [sys.executable, "-m", "tests.studies.dr_drill_support", "check", str(state_file)], cwd=ROOT, env=env,
        check=True, capture_output=True, text=True, timeout=600,
    ).stdout)

    assert after["instances"] == before["instances"]
    assert (after["owner_signs_in"], after["token_status"], after["share_status"]) == (True, 200, 200)
    assert (after["trashed"], after["live"]) == (before["trashed"], before["live"])
    assert after["found_by_wildcard"] == before["live"]
    assert after["audit_problems"] == []
    assert set(map(tuple, before["audit_at_snapshot"])) <= set(map(tuple, after["audit"]))
