"""Production settings: `manage.py check --deploy` is clean, and unsafe defaults are refused at start-up."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Everything settings.py reads that could leak in from the developer's or CI's environment.
_SETTINGS_VARIABLES = {
    "DEBUG", "SECRET_KEY", "SECRET_KEY_FILE", "MASTER_KEYS", "MASTER_KEYS_FILE", "ALLOWED_HOSTS", "DATABASE_URL",
    "CELERY_BROKER_URL", "REDIS_URL", "PRIMARY_STORE_URL", "REPLICA_STORE_URL", "EMAIL_URL", "SECURE_SSL_REDIRECT",
    "USE_X_FORWARDED_PROTO", "CSRF_TRUSTED_ORIGINS", "CORS_ALLOWED_ORIGINS", "PORTAL_VAR_DIR", "PUBLIC_BASE_URL",
}


def production_env(tmp_path: Path, **overrides: str | None) -> dict[str, str]:
    # The browser tests' DJANGO_ALLOW_ASYNC_UNSAFE must not leak into a deployment check.
    env = {key: value for key, value in os.environ.items()
           if key not in _SETTINGS_VARIABLES and key != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update({
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "MASTER_KEYS": "prod1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "ALLOWED_HOSTS": "pacs.example.org",
        "CSRF_TRUSTED_ORIGINS": "https://pacs.example.org",
        "PUBLIC_BASE_URL": "https://pacs.example.org",
        "DATABASE_URL": "postgres://pacs@db.internal.example.org:5432/pacs",
        "CELERY_BROKER_URL": "redis://redis.internal.example.org:6379/0",
        "PRIMARY_STORE_URL": "s3://pacs-primary?region_name=eu-central-1",
        "REPLICA_STORE_URL": "s3://pacs-replica?region_name=eu-west-1",
        "EMAIL_URL": "smtp+tls://mailer:secret@smtp.example.org:587",
        "USE_X_FORWARDED_PROTO": "1",
        # Only so that nothing is written to the checkout's var/ folder.
        "PORTAL_VAR_DIR": str(tmp_path / "var"),
    })
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_check_deploy_reports_nothing_with_production_settings(tmp_path):
    result = manage(production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


@pytest.mark.slow
def test_production_settings_are_locked_down(tmp_path):
    code = (
        "import django, json; django.setup(); from django.conf import settings as s; print(json.dumps(["
        "s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, s.SECURE_SSL_REDIRECT, "
        "s.SECURE_HSTS_SECONDS >= 31536000, s.SECURE_PROXY_SSL_HEADER, s.ALLOWED_HOSTS]))"
    )

    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=production_env(tmp_path),
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == (
        '[false, true, true, true, true, true, ["HTTP_X_FORWARDED_PROTO", "https"], ["pacs.example.org"]]'
    )


@pytest.mark.parametrize("missing", ["SECRET_KEY", "MASTER_KEYS", "PUBLIC_BASE_URL"])
def test_debug_off_without_a_secret_refuses_to_start(tmp_path, missing):
    result = manage(production_env(tmp_path, **{missing: None}), "check")

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{missing} must be set when DEBUG is off" in result.stderr
    assert not (tmp_path / "var" / "secret_key").exists()
    assert not (tmp_path / "var" / "master_keys").exists()


def test_secrets_can_come_from_mounted_files(tmp_path):
    secret_file = tmp_path / "secret_key"
    secret_file.write_text(secrets.token_urlsafe(64) + "\n")
    env = production_env(tmp_path, SECRET_KEY=None, SECRET_KEY_FILE=str(secret_file))

    result = manage(env, "check")

    assert result.returncode == 0, result.stderr
