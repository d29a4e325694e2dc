"""PostgreSQL backup with pgBackRest: continuous WAL archiving, base backups, point-in-time restore.

The repository is the replica store: with an ``s3://`` replica, pgBackRest writes to the same bucket
under its own prefix (``<replica prefix>/database/pgbackrest``) with its own credentials
(``DATABASE_BACKUP_ACCESS_KEY_ID``/``..._SECRET_ACCESS_KEY``); with a ``file://`` replica (or
``DATABASE_BACKUP_REPO_PATH``), a posix repository in that folder. pgBackRest encrypts the repository itself
(``DATABASE_BACKUP_CIPHER_PASS``, aes-256-cbc) and keeps ``DATABASE_BACKUP_RETENTION_FULL`` full backups with the
WAL needed to restore to any moment since the oldest.

``pgbackrest_config`` renders pgbackrest.conf from the settings; PostgreSQL's ``archive_command`` runs
``pgbackrest --config=<it> --stanza=<stanza> archive-push %p``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse
from urllib.request import url2pathname

from django.conf import settings

from studies.backup.database import DatabaseBackupError

REPO_SUBPATH = "database/pgbackrest"


def _repo_options() -> dict[str, str]:
    url = settings.REPLICA_STORE_URL
    parsed = urlparse(url)
    options: dict[str, str] = {}
    if settings.DATABASE_BACKUP_REPO_PATH or parsed.scheme == "file":
        root = settings.DATABASE_BACKUP_REPO_PATH or str(Path(url2pathname(unquote(parsed.path))) / REPO_SUBPATH)
        options.update({"repo1-type": "posix", "repo1-path": root})
    elif parsed.scheme == "s3":
        query = {name: values[-1] for name, values in parse_qs(parsed.query).items()}
        location = "/".join(part for part in (parsed.path.strip("/"), REPO_SUBPATH) if part)
        options.update({"repo1-type": "s3", "repo1-s3-bucket": parsed.netloc, "repo1-path": f"/{location}",
                        "repo1-s3-region": query.get("region_name") or "us-east-1"})
        endpoint = urlparse(query["endpoint_url"]) if query.get("endpoint_url") else None
        if endpoint is not None:
            options["repo1-s3-endpoint"] = endpoint.hostname or ""
            if endpoint.port:
                options["repo1-storage-port"] = str(endpoint.port)
            options["repo1-s3-uri-style"] = "path"
        else:
            options["repo1-s3-endpoint"] = f"s3.{options['repo1-s3-region']}.amazonaws.com"
        if query.get("verify", "").lower() in {"0", "false", "no"}:
            options["repo1-storage-verify-tls"] = "n"
        if not settings.DATABASE_BACKUP_ACCESS_KEY_ID:
            raise DatabaseBackupError(
                "pgBackRest writes to the replica bucket with its own credentials: set "
                "DATABASE_BACKUP_ACCESS_KEY_ID and DATABASE_BACKUP_SECRET_ACCESS_KEY."
            )
        options["repo1-s3-key"] = settings.DATABASE_BACKUP_ACCESS_KEY_ID
        options["repo1-s3-key-secret"] = settings.DATABASE_BACKUP_SECRET_ACCESS_KEY
    else:
        raise DatabaseBackupError("REPLICA_STORE_URL must be file:// or s3:// for pgBackRest.")
    options["repo1-retention-full"] = str(settings.DATABASE_BACKUP_RETENTION_FULL)
    if settings.DATABASE_BACKUP_CIPHER_PASS:
        options["repo1-cipher-type"] = "aes-256-cbc"
        options["repo1-cipher-pass"] = settings.DATABASE_BACKUP_CIPHER_PASS
    return options


def _stanza_options() -> dict[str, str]:
    database = settings.DATABASES["default"]
    if not settings.DATABASE_BACKUP_PG_PATH:
        raise DatabaseBackupError("Set DATABASE_BACKUP_PG_PATH to the PostgreSQL data directory (on the database host).")
    options = {"pg1-path": settings.DATABASE_BACKUP_PG_PATH}
    if database.get("PORT"):
        options["pg1-port"] = str(database["PORT"])
    if database.get("USER"):
        options["pg1-user"] = str(database["USER"])
    # pgBackRest reaches a local PostgreSQL through its Unix socket only.
    host = str(database.get("HOST") or "")
    socket_path = settings.DATABASE_BACKUP_PG_SOCKET or (host if host.startswith("/") else "")
    if socket_path:
        options["pg1-socket-path"] = socket_path
    return options


def pgbackrest_config() -> str:
    """Return pgbackrest.conf for this deployment (it holds the repository's credentials: keep it 0600)."""
    lines = ["[global]"]
    lines += [f"{name}={value}" for name, value in _repo_options().items()]
    lines += ["start-fast=y", "archive-async=n", "compress-type=zst", "repo1-bundle=y", "log-level-console=warn"]
    if settings.DATABASE_BACKUP_LOCK_PATH:
        lines.append(f"lock-path={settings.DATABASE_BACKUP_LOCK_PATH}")
        lines.append(f"log-path={settings.DATABASE_BACKUP_LOCK_PATH}")
    lines += ["", f"[{settings.DATABASE_BACKUP_STANZA}]"]
    lines += [f"{name}={value}" for name, value in _stanza_options().items()]
    return "\n".join(lines) + "\n"


def config_path() -> Path:
    return Path(settings.DATABASE_BACKUP_CONFIG or settings.VAR_DIR / "pgbackrest.conf")


def config_write() -> Path:
    """Write pgbackrest.conf (mode 0640) where DATABASE_BACKUP_CONFIG says; return its path."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pgbackrest_config())
    path.chmod(0o640)
    data = Path(settings.DATABASE_BACKUP_PG_PATH)
    if os.geteuid() == 0 and data.exists():
        # pgBackRest runs as the data directory's owner (archive_command too): it must read its config.
        os.chown(path, data.stat().st_uid, data.stat().st_gid)
    return path


def archive_command() -> str:
    """The archive_command line for postgresql.conf."""
    return f"pgbackrest --config={config_path()} --stanza={settings.DATABASE_BACKUP_STANZA} archive-push %p"


def command_line(*arguments: str) -> list[str]:
    return [*shlex.split(settings.DATABASE_BACKUP_COMMAND), f"--config={config_path()}",
            f"--stanza={settings.DATABASE_BACKUP_STANZA}", *arguments]


def run(*arguments: str, timeout: int = 3600) -> str:
    """Run one pgBackRest command; raise DatabaseBackupError with its message when it fails."""
    try:
        # pgBackRest reads PGBACKREST_* variables as options: pass none but the ones we mean.
        environment = {key: value for key, value in os.environ.items() if not key.startswith("PGBACKREST_")}
        result = subprocess.run(command_line(*arguments), capture_output=True, text=True, timeout=timeout,
                                env=environment)
    except FileNotFoundError:
        raise DatabaseBackupError("pgbackrest is not installed (Debian package pgbackrest).") from None
    except subprocess.TimeoutExpired:
        raise DatabaseBackupError(f"pgbackrest {arguments[0]} did not finish within {timeout} s.") from None
    if result.returncode != 0:
        raise DatabaseBackupError(
            f"pgbackrest {arguments[0]} failed (exit {result.returncode}): {(result.stderr or result.stdout).strip()}"
        )
    return result.stdout


def stanza_create() -> str:
    """Create the stanza in the repository (idempotent; run once, and after a PostgreSQL upgrade)."""
    config_write()
    return run("stanza-create")


def base_backup(*, kind: str = "incr") -> str:
    """Take a base backup (``full``, ``diff`` or ``incr``; pgBackRest makes the first one full)."""
    if kind not in {"full", "diff", "incr"}:
        raise DatabaseBackupError("The backup type is full, diff or incr.")
    config_write()
    return run("backup", f"--type={kind}")


def restore_arguments(*, at: datetime | None) -> list[str]:
    arguments = ["restore", "--delta"]
    if at is not None:
        arguments += ["--type=time", f"--target={at.isoformat(sep=' ')}", "--target-action=promote"]
    return arguments


def restore_steps(*, at: datetime | None) -> list[str]:
    """The operator's steps for a point-in-time restore, as shell commands for the database host."""
    return [
        "# on the database host, as the postgres user:",
        f"pg_ctl -D {settings.DATABASE_BACKUP_PG_PATH} stop -m fast   # or: systemctl stop postgresql",
        shlex.join(command_line(*restore_arguments(at=at))),
        f"pg_ctl -D {settings.DATABASE_BACKUP_PG_PATH} start          # or: systemctl start postgresql",
    ]


def restore(*, at: datetime | None) -> str:
    """Run pgBackRest's restore into DATABASE_BACKUP_PG_PATH (PostgreSQL must be stopped)."""
    config_write()
    return run(*restore_arguments(at=at))
