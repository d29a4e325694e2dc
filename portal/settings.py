"""Settings for the cloud PACS portal.

Everything comes from the environment (see the configuration table in README.md). The defaults make a
laptop run work with no external service: SQLite, local folders for both stores and a broker kept in
files, all under ``var/``. With ``DEBUG`` off, unsafe defaults are refused at start-up.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    value = os.environ.get(name)
    if not value:
        return list(default or [])
    return [item.strip() for item in value.split(",") if item.strip()]


def env_secret(name: str, default: str = "") -> str:
    """Read a secret from NAME, or from the file named by NAME_FILE (mounted secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(name, default)


DEBUG = env_bool("DEBUG", True)
VAR_DIR = Path(env_str("PORTAL_VAR_DIR", str(BASE_DIR / "var")))


def _local_secret(filename: str, make: callable) -> str:  # type: ignore[valid-type]
    """Return a secret kept in var/, generating it on first use (default run only)."""
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    path = VAR_DIR / filename
    if not path.exists():
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


def _new_master_keys() -> str:
    return "local1:" + base64.b64encode(secrets.token_bytes(32)).decode()


SECRET_KEY = env_secret("SECRET_KEY")
MASTER_KEYS = env_secret("MASTER_KEYS")
if not DEBUG:
    if not SECRET_KEY:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    if not MASTER_KEYS:
        raise ImproperlyConfigured("MASTER_KEYS must be set when DEBUG is off.")
if not SECRET_KEY:
    SECRET_KEY = _local_secret("secret_key", lambda: secrets.token_urlsafe(50))
if not MASTER_KEYS:
    MASTER_KEYS = _local_secret("master_keys", _new_master_keys)

# Credentials for a KMS master key (MASTER_KEYS=aws-kms://... or kms://...); empty: boto3's default chain.
KMS_ACCESS_KEY_ID = env_secret("KMS_ACCESS_KEY_ID")
KMS_SECRET_ACCESS_KEY = env_secret("KMS_SECRET_ACCESS_KEY")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
# Absolute URLs in answers (DICOMweb RetrieveURL and BulkDataURI, share and invitation links) start
# with this, never with the request's Host header; only the default run falls back to the request.
PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL").rstrip("/")
if PUBLIC_BASE_URL and not re.fullmatch(r"https?://[^/?#\s]+", PUBLIC_BASE_URL):
    raise ImproperlyConfigured("PUBLIC_BASE_URL is scheme://host[:port], e.g. https://pacs.example.org.")
if not DEBUG and not PUBLIC_BASE_URL:
    raise ImproperlyConfigured("PUBLIC_BASE_URL must be set when DEBUG is off (e.g. https://pacs.example.org).")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "corsheaders",
    "csp",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "tenants",
    "studies",
    "billing",
]

MIDDLEWARE = [
    # First: the client address behind the web front (nginx) for everything after it, e.g. the audit log.
    "portal.front.FrontProxyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # django-csp's, keeping the site policy built (portal/csp.py).
    "portal.csp.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "studies.viewer.assets.ViewerAssetsMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "portal.errors.ErrorPagesMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "tenants.middleware.SessionTimeoutMiddleware",
    # Django's, with the storage made on first use (portal/messages.py).
    "portal.messages.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "tenants.middleware.ClinicMiddleware",
    # Last, so that it sees the final request state; django-axes asks for that.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.context_processors.portal",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"), conn_max_age=60
    )
}
SQLITE_OPTIONS = {"timeout": 30, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process, the worker and beat share one file; wait for locks instead of failing. In WAL
    # mode readers never wait for a writer (with the default rollback journal every search stalled in
    # SQLite's busy handler, tens of ms, while replication or thumbnails committed: issue 19). synchronous=FULL
    # (named, not left to the build's WAL default): a commit is on disk before an instance is acknowledged.
    DATABASES["default"]["OPTIONS"] = SQLITE_OPTIONS
    # Each web thread keeps its connection, as on PostgreSQL: opening one (and its PRAGMAs) per request
    # was about half the CPU of a small search (QIDO series of a study: 3.5 of 7 ms). Outside a
    # transaction an idle SQLite connection holds no lock and no WAL snapshot.
    DATABASES["default"]["CONN_MAX_AGE"] = 60
    # The suite on SQLite uses a file, as every deployment does: Django's default in-memory test database
    # shares one cache between connections, where a second writer is refused at once ("database table is
    # locked") instead of waiting its turn, so tests of concurrent listeners failed only there.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "tenants.User"
AUTHENTICATION_BACKENDS = [
    # First, so that a locked-out account is refused before its password is even checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "tenants.validators.CharacterClassValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "tenants.validators.StrengthValidator", "OPTIONS": {"min_score": env_int("PASSWORD_MIN_SCORE", 3)}},
    {
        "NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator",
        "OPTIONS": {"user_attributes": ("email", "full_name")},
    },
]
LOGIN_URL = "tenants:login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "tenants:login"

# Lockout: N failures for one account, from any address, lock it for a while.
AXES_FAILURE_LIMIT = env_int("LOCKOUT_FAILURES", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOCKOUT_MINUTES", 30))
AXES_LOCKOUT_PARAMETERS = ["username"]
AXES_USERNAME_FORM_FIELD = "username"
# Counted per account case-insensitively, as e-mail addresses are matched.
AXES_USERNAME_CALLABLE = "tenants.signals.axes_username"
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "tenants.views.lockout_response"
AXES_ENABLE_ACCESS_FAILURE_LOG = False
AXES_VERBOSE = False
# The issue asks for lockout per account from any address; an address-based lock would let one
# attacker lock out a whole clinic behind a shared NAT, so axes' W006 advice does not apply.
SILENCED_SYSTEM_CHECKS = ["axes.W006"]

# Sessions: idle and absolute limits are enforced by tenants.middleware.SessionTimeoutMiddleware.
SESSION_IDLE_TIMEOUT = timedelta(minutes=env_int("SESSION_IDLE_MINUTES", 15))
SESSION_ABSOLUTE_TIMEOUT = timedelta(hours=env_int("SESSION_ABSOLUTE_HOURS", 12))
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_AGE = int(SESSION_ABSOLUTE_TIMEOUT.total_seconds())
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
INVITATION_VALID_DAYS = env_int("INVITATION_VALID_DAYS", 7)
SIGNUP_CONFIRM_DAYS = env_int("SIGNUP_CONFIRM_DAYS", 3)
OTP_TOTP_ISSUER = env_str("OTP_TOTP_ISSUER", "PACS Portal")
PASSWORD_RESET_TIMEOUT = 60 * 60

# Transport security in production.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
if env_bool("USE_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = 0 if DEBUG else 31536000
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp): scripts and styles only from our own static files, never inline,
# and no framing. The diagnostic viewer's views add only what OHIF needs (studies.viewer.ohif.CSP_UPDATE,
# which admits its page's own two inline scripts by nonce) with django-csp's per-view decorator, never
# site-wide.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:", "blob:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        # Plan changes post to us and are redirected to Stripe's hosted checkout and billing portal.
        "form-action": ["'self'", "https://checkout.stripe.com", "https://billing.stripe.com"],
        "frame-ancestors": ["'none'"],
    }
}
# The default run shows the product's error pages although DEBUG is on (portal/errors.py); set this to
# get Django's technical pages while developing.
TECHNICAL_ERROR_PAGES = env_bool("TECHNICAL_ERROR_PAGES", False)
# Rendered images (WADO-RS rendered, thumbnails, the light viewer): what one request may cost.
# Decrypted instances kept in each web process's memory for repeated frame/rendered requests (0: none).
DECRYPTED_CACHE_BYTES = env_int("DECRYPTED_CACHE_BYTES", 64 * 1024 * 1024)
DECRYPTED_CACHE_SECONDS = env_int("DECRYPTED_CACHE_SECONDS", 300)
DICOMWEB_RENDER_MAX_FRAMES = env_int("DICOMWEB_RENDER_MAX_FRAMES", 16)
DICOMWEB_RENDER_MAX_SOURCE_PIXELS = env_int("DICOMWEB_RENDER_MAX_SOURCE_PIXELS", 40_000_000)
DICOMWEB_RENDER_MAX_OUTPUT_PIXELS = env_int("DICOMWEB_RENDER_MAX_OUTPUT_PIXELS", 32 * 1024 * 1024)
# The diagnostic viewer: OHIF's prebuilt files, installed by `make ohif` from ohif/package-lock.json.
OHIF_DIST_DIR = BASE_DIR / "ohif" / "node_modules" / "@ohif" / "app" / "dist"
# The same files as served (rewritten for the portal's prefixes, gzipped ahead): `make ohif` writes them.
OHIF_PREPARED_DIR = Path(os.environ.get("OHIF_PREPARED_DIR") or BASE_DIR / "ohif" / "prepared")
CSRF_FAILURE_VIEW = "portal.errors.csrf_failure"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# Uploads are streamed to disk by Django, never held whole in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = env_str("FILE_UPLOAD_TEMP_DIR") or None
# ZIP archives uploaded in the browser are unpacked by a worker within these limits (zip-bomb guard).
UPLOAD_ZIP_MAX_MEMBERS = env_int("UPLOAD_ZIP_MAX_MEMBERS", 20000)
UPLOAD_ZIP_MAX_TOTAL_BYTES = env_int("UPLOAD_ZIP_MAX_TOTAL_BYTES", 50 * 1000**3)
UPLOAD_ZIP_MAX_MEMBER_BYTES = env_int("UPLOAD_ZIP_MAX_MEMBER_BYTES", 4 * 1000**3)
UPLOAD_ZIP_MAX_RATIO = env_int("UPLOAD_ZIP_MAX_RATIO", 200)
# A queued or unpacking archive untouched this long (lost message, killed worker) is handed out again.
UPLOAD_ZIP_STALE_SECONDS = env_int("UPLOAD_ZIP_STALE_SECONDS", 900)

# Object stores: file:///path or s3://bucket?endpoint_url=...&region_name=...
PRIMARY_STORE_URL = env_str("PRIMARY_STORE_URL", (VAR_DIR / "primary").as_uri())
PRIMARY_STORE_ACCESS_KEY_ID = env_secret("PRIMARY_STORE_ACCESS_KEY_ID")
PRIMARY_STORE_SECRET_ACCESS_KEY = env_secret("PRIMARY_STORE_SECRET_ACCESS_KEY")
REPLICA_STORE_URL = env_str("REPLICA_STORE_URL", (VAR_DIR / "replica").as_uri())
REPLICA_STORE_ACCESS_KEY_ID = env_secret("REPLICA_STORE_ACCESS_KEY_ID")
REPLICA_STORE_SECRET_ACCESS_KEY = env_secret("REPLICA_STORE_SECRET_ACCESS_KEY")
DEFAULT_CLINIC_QUOTA_BYTES = env_int("DEFAULT_CLINIC_QUOTA_BYTES", 100 * 1000**3)
# Ingest (README "Ingest"): a local primary store refuses new objects (503 / C-STORE 0xA700, retryable)
# once less than this is free, so the index and the temporary files beside it never hit a full disk.
PRIMARY_STORE_MIN_FREE_BYTES = env_int("PRIMARY_STORE_MIN_FREE_BYTES", 256 * 1024**2)
# STOW-RS: one request holds at most this many parts and bytes (413 beyond, nothing stored when the size
# is declared; a chunked body's extra parts are listed as failed with 0xA700).
STOW_MAX_PARTS = env_int("STOW_MAX_PARTS", 5000)
STOW_MAX_BYTES = env_int("STOW_MAX_BYTES", 8 * 1024**3)
# Instances ingested together (one index transaction, one replication message) by STOW-RS and jobs.
INGEST_BATCH_SIZE = env_int("INGEST_BATCH_SIZE", 32)

# Cache: shared by every process through Redis when configured (throttles, debounces, "replica down"
# flags); otherwise each process keeps its own, which only makes those throttles per process.
CACHE_URL = env_str("CACHE_URL") or env_str("REDIS_URL")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
    if CACHE_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

# Celery: a broker kept in files by default, so that the default run needs no server.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or env_str("REDIS_URL") or "filesystem://"
if CELERY_BROKER_URL == "filesystem://":
    # One queue folder per database: two deployments started from one checkout without their own
    # PORTAL_VAR_DIR share var/, and a worker must never run the other deployment's tasks (their ids
    # name other rows in its database). The web process, worker and beat of one deployment name the
    # same database, so they meet in the same folder.
    _database = DATABASES["default"]
    _deployment = hashlib.sha256(
        "|".join(str(_database.get(k) or "") for k in ("ENGINE", "HOST", "PORT", "NAME")).encode()
    ).hexdigest()[:16]
    _broker_dir = VAR_DIR / "broker" / _deployment
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        # How often an idle worker looks at an empty folder: a message waits for up to this long (kombu's
        # 1 s made the replication lag p50 0.5 s). An idle worker then spends ~0.3% of a core (measured:
        # 0.11-0.15 s CPU in 40 s, against 0.03 s at 1 s).
        "polling_interval": 0.1,
    }
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 30 * 60)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 35 * 60)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE: dict[str, dict] = {}

# Mail: console by default; EMAIL_URL=smtp://user:pass@host:port or smtp+tls://...
EMAIL_URL = env_secret("EMAIL_URL", "console://")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "PACS Portal <no-reply@localhost>")
OPERATOR_EMAILS = env_list("OPERATOR_EMAILS")


def _email_settings(url: str) -> dict[str, object]:
    parsed = urlparse(url)
    if parsed.scheme == "console":
        return {"EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"}
    if parsed.scheme == "locmem":
        return {"EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend"}
    if parsed.scheme in {"smtp", "smtp+tls", "smtp+ssl"}:
        return {
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": parsed.hostname or "localhost",
            "EMAIL_PORT": parsed.port or 25,
            "EMAIL_HOST_USER": unquote(parsed.username or ""),
            "EMAIL_HOST_PASSWORD": unquote(parsed.password or ""),
            "EMAIL_USE_TLS": parsed.scheme == "smtp+tls",
            "EMAIL_USE_SSL": parsed.scheme == "smtp+ssl",
        }
    raise ImproperlyConfigured(f"EMAIL_URL scheme {parsed.scheme!r} is not supported.")


globals().update(_email_settings(EMAIL_URL))

# Stripe: absent keys mean billing test mode.
STRIPE_SECRET_KEY = env_secret("STRIPE_SECRET_KEY")
STRIPE_WEBHOOK_SECRET = env_secret("STRIPE_WEBHOOK_SECRET")
BILLING_TRIAL_PLAN = env_str("BILLING_TRIAL_PLAN", "starter")
BILLING_TRIAL_DAYS = env_int("BILLING_TRIAL_DAYS", 14)
BILLING_GRACE_DAYS = env_int("BILLING_GRACE_DAYS", 14)
BILLING_RETENTION_DAYS = env_int("BILLING_RETENTION_DAYS", 30)
CELERY_BEAT_SCHEDULE["billing-enforce"] = {"task": "billing.tasks.billing_enforce", "schedule": 3600.0}
# SQLite's planner statistics follow the index tables' growth (PostgreSQL's autovacuum does it there).
CELERY_BEAT_SCHEDULE["index-statistics-check"] = {"task": "studies.tasks.index_statistics_check", "schedule": 3600.0}
# Daily check of the audit hash chains; operators are e-mailed about any break.
CELERY_BEAT_SCHEDULE["audit-chains-check"] = {"task": "tenants.tasks.audit_chains_check", "schedule": 86400.0}

# DICOM
DICOM_PORT = env_int("DICOM_PORT", 11112)
# Loopback by default, like the web server: listening on every interface is an explicit choice.
DICOM_BIND_ADDRESS = env_str("DICOM_BIND_ADDRESS", "127.0.0.1")
# After this many refused associations from one address within the window, every association from
# it is refused (rejected-transient) until the window ends; counted in the shared cache.
DICOM_REJECT_LIMIT = env_int("DICOM_REJECT_LIMIT", 10)
DICOM_REJECT_WINDOW_SECONDS = env_int("DICOM_REJECT_WINDOW_SECONDS", 600)
# DICOM TLS (PS3.15 Annex B) on a port of its own, 0 for none (2762 is the registered one): the
# listener's certificate and key, and the CA file that nodes' client certificates must chain to.
DICOM_TLS_PORT = env_int("DICOM_TLS_PORT", 0)
DICOM_TLS_CERTIFICATE = env_str("DICOM_TLS_CERTIFICATE")
DICOM_TLS_PRIVATE_KEY = env_str("DICOM_TLS_PRIVATE_KEY")
DICOM_TLS_CA_FILE = env_str("DICOM_TLS_CA_FILE")
DICOM_AE_TITLE = env_str("DICOM_AE_TITLE", "PACSPORTAL")
# Storage commitment: how long a request waits for backup copies before reporting them failed.
STORAGE_COMMITMENT_WAIT_SECONDS = env_int("STORAGE_COMMITMENT_WAIT_SECONDS", 300)
# Patient IDs that name no one (sent by modalities and emergency workflows instead of an empty ID): a file
# with one is filed by name and birth date like one without an ID (studies.patients). Set empty for none;
# env_list would read an empty value as "unset".
PLACEHOLDER_PATIENT_IDS = [
    p.strip() for p in env_str("PLACEHOLDER_PATIENT_IDS", "UNKNOWN,ANONYMOUS,NONE,N/A,NA,0,-,?").split(",") if p.strip()
]

# CORS is opened only for DICOMweb, and only to the configured origins.
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS")
CORS_URLS_REGEX = r"^/(dicomweb|s/[^/]+/dicomweb)/.*$"
CORS_ALLOW_CREDENTIALS = False

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.api_auth.ClinicTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # Names nested Input/OutputSerializers after their view and documents the bearer token; see portal/openapi.py.
    "DEFAULT_SCHEMA_CLASS": "portal.openapi.PortalAutoSchema",
    "EXCEPTION_HANDLER": "portal.exceptions.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "portal.pagination.PortalPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Cloud PACS portal API",
    "DESCRIPTION": "Clinic-scoped REST API. Authenticate with `Authorization: Bearer <api token>`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The interactive docs load Swagger UI from our own static files (drf-spectacular-sidecar), not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Swagger UI would otherwise send the schema to validator.swagger.io for its badge.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"one_line_client_errors": {"()": "portal.errors.OneLineClientErrors"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"axes": {"level": "WARNING"}, "django.request": {"filters": ["one_line_client_errors"]}},
}

# Trash: a deleted study stays restorable this many days, then the periodic purge erases it.
TRASH_DAYS = env_int("TRASH_DAYS", 30)
# A study search (page, REST, QIDO-RS, C-FIND) stops after this long instead of holding the database.
SEARCH_TIME_LIMIT_SECONDS = env_int("SEARCH_TIME_LIMIT_SECONDS", 10)
CELERY_BEAT_SCHEDULE["studies-trash-purge"] = {"task": "studies.tasks.studies_trash_purge", "schedule": 3600.0}
# Stalled ZIP unpacking, and replica copies of staged archives and quarantined instances (README "Uploading").
CELERY_BEAT_SCHEDULE["studies-intake-sweep"] = {"task": "studies.tasks.intake_sweep", "schedule": 60.0}

# Backup and recovery (issue 4; README "Backup and recovery").
# sync: an upload is acknowledged once both stores hold it (falls back to pending + alert if the replica is down).
REPLICATION_MODE = env_str("REPLICATION_MODE", "async")
if REPLICATION_MODE not in {"sync", "async"}:
    raise ImproperlyConfigured("REPLICATION_MODE must be 'sync' or 'async'.")
REPLICATION_SWEEP_AGE_SECONDS = env_int("REPLICATION_SWEEP_AGE_SECONDS", 60)
REPLICATION_SWEEP_LIMIT = env_int("REPLICATION_SWEEP_LIMIT", 10000)
# The sweep queues an instance again only once its last message is this old (taken as lost by then).
REPLICATION_REQUEUE_SECONDS = env_int("REPLICATION_REQUEUE_SECONDS", 600)
# Replica copies in flight per replication message (threads of the worker process: a PUT mostly waits).
REPLICATION_COPY_THREADS = env_int("REPLICATION_COPY_THREADS", 8)
BACKUP_VERIFY_INTERVAL_DAYS = env_int("BACKUP_VERIFY_INTERVAL_DAYS", 7)
BACKUP_VERIFY_BATCH_SIZE = env_int("BACKUP_VERIFY_BATCH_SIZE", 2000)
BACKUP_LAG_ALERT_SECONDS = env_int("BACKUP_LAG_ALERT_SECONDS", 600)
BACKUP_ALERT_INTERVAL_MINUTES = env_int("BACKUP_ALERT_INTERVAL_MINUTES", 60)
# Default Object Lock retention applied by `manage.py replica_protect` (0: versioning only).
REPLICA_OBJECT_LOCK_DAYS = env_int("REPLICA_OBJECT_LOCK_DAYS", 30)
REPLICA_OBJECT_LOCK_MODE = env_str("REPLICA_OBJECT_LOCK_MODE", "GOVERNANCE")
CELERY_BEAT_SCHEDULE["backup-replication-sweep"] = {"task": "studies.backup.tasks.replication_sweep", "schedule": 60.0}
CELERY_BEAT_SCHEDULE["backup-replica-reconcile"] = {"task": "studies.backup.tasks.replica_reconcile", "schedule": 3600.0}
# Self-service clinic export for owners (studies/exports): parts of at most this many bytes, kept this long.
CLINIC_EXPORT_PART_BYTES = env_int("CLINIC_EXPORT_PART_BYTES", 4 * 1000**3)
CLINIC_EXPORT_KEEP_DAYS = env_int("CLINIC_EXPORT_KEEP_DAYS", 7)
CELERY_BEAT_SCHEDULE["clinic-exports-expire"] = {"task": "studies.exports.tasks.clinic_exports_expire", "schedule": 3600.0}
# A build reports at least every minute while it runs; silent this long, its worker is taken to be dead and
# the export is built again from the start (the sweep looks every 5 minutes).
CLINIC_EXPORT_STALE_SECONDS = env_int("CLINIC_EXPORT_STALE_SECONDS", 900)
CELERY_BEAT_SCHEDULE["clinic-exports-resume"] = {"task": "studies.exports.tasks.clinic_exports_resume", "schedule": 300.0}
CELERY_BEAT_SCHEDULE["backup-verify"] = {"task": "studies.backup.tasks.backup_verify_batch", "schedule": 600.0}
# Control-plane backup (issue 15; README "Disaster recovery"). SQLite: an encrypted snapshot to the replica
# every DATABASE_BACKUP_INTERVAL_SECONDS (RPO); PostgreSQL: pgBackRest (WAL archiving + base backups).
DATABASE_BACKUP_INTERVAL_SECONDS = env_int("DATABASE_BACKUP_INTERVAL_SECONDS", 60)
DATABASE_BACKUP_KEEP_HOURS = env_int("DATABASE_BACKUP_KEEP_HOURS", 48)
DATABASE_BACKUP_KEEP_DAYS = env_int("DATABASE_BACKUP_KEEP_DAYS", 35)
DATABASE_BACKUP_ACCESS_KEY_ID = env_secret("DATABASE_BACKUP_ACCESS_KEY_ID")
DATABASE_BACKUP_SECRET_ACCESS_KEY = env_secret("DATABASE_BACKUP_SECRET_ACCESS_KEY")
DATABASE_BACKUP_COMMAND = env_str("DATABASE_BACKUP_COMMAND", "pgbackrest")
DATABASE_BACKUP_CONFIG = env_str("DATABASE_BACKUP_CONFIG")
DATABASE_BACKUP_STANZA = env_str("DATABASE_BACKUP_STANZA", "portal")
DATABASE_BACKUP_PG_PATH = env_str("DATABASE_BACKUP_PG_PATH")
DATABASE_BACKUP_PG_SOCKET = env_str("DATABASE_BACKUP_PG_SOCKET")
DATABASE_BACKUP_REPO_PATH = env_str("DATABASE_BACKUP_REPO_PATH")
DATABASE_BACKUP_LOCK_PATH = env_str("DATABASE_BACKUP_LOCK_PATH")
DATABASE_BACKUP_CIPHER_PASS = env_secret("DATABASE_BACKUP_CIPHER_PASS")
DATABASE_BACKUP_RETENTION_FULL = env_int("DATABASE_BACKUP_RETENTION_FULL", 4)
# Base backups by beat only where the worker can reach the data directory (DATABASE_BACKUP_PG_PATH set).
DATABASE_BACKUP_BASE_HOURS = env_int("DATABASE_BACKUP_BASE_HOURS", 24)
RESTORE_DRILL_INTERVAL_DAYS = env_int("RESTORE_DRILL_INTERVAL_DAYS", 7)
RESTORE_DRILL_SAMPLE_STUDIES = env_int("RESTORE_DRILL_SAMPLE_STUDIES", 3)
CELERY_BEAT_SCHEDULE["backup-database"] = {
    "task": "studies.backup.tasks.database_backup", "schedule": float(DATABASE_BACKUP_INTERVAL_SECONDS)
}
CELERY_BEAT_SCHEDULE["backup-database-base"] = {
    "task": "studies.backup.tasks.database_base_backup", "schedule": DATABASE_BACKUP_BASE_HOURS * 3600.0
}
CELERY_BEAT_SCHEDULE["backup-database-prune"] = {"task": "studies.backup.tasks.database_backups_prune",
                                                 "schedule": 3600.0}
CELERY_BEAT_SCHEDULE["backup-restore-drill"] = {"task": "studies.backup.tasks.restore_drill", "schedule": 86400.0}
CELERY_BEAT_SCHEDULE["backup-study-states"] = {"task": "studies.backup.tasks.study_states_sweep", "schedule": 3600.0}
CELERY_BEAT_SCHEDULE["backup-index-sidecars-compact"] = {"task": "studies.backup.tasks.index_sidecars_compact",
                                                         "schedule": 86400.0}
CELERY_BEAT_SCHEDULE["billing-usage-reconcile"] = {"task": "billing.tasks.usage_reconcile", "schedule": 600.0}
# Replica deletes run only on the worker holding the replica's delete-capable credentials: the replica
# purge, and the trash purge (it deletes a study's objects from both stores).
CELERY_TASK_ROUTES = {
    **globals().get("CELERY_TASK_ROUTES", {}),
    "studies.backup.tasks.replica_purge": {"queue": "replica-admin"},
    "studies.tasks.study_purge": {"queue": "replica-admin"},
    "billing.tasks.clinic_data_destroy": {"queue": "replica-admin"},
    "studies.backup.tasks.database_backups_prune": {"queue": "replica-admin"},
    "studies.backup.tasks.index_sidecars_compact": {"queue": "replica-admin"},
}

# Outbound DICOM (sends, migrations, routing rules): its tasks, and the sweep that resumes what a dead
# worker or a lost message left behind.
CELERY_IMPORTS = [*globals().get("CELERY_IMPORTS", []), "studies.outbound.tasks"]
# A send or migration whose worker has not reported for this long is taken to be dead and re-queued.
OUTBOUND_JOB_STALE_SECONDS = env_int("OUTBOUND_JOB_STALE_SECONDS", 180)
CELERY_BEAT_SCHEDULE["outbound-sweep"] = {"task": "outbound.outbound_sweep", "schedule": 60.0}
# Networks a DICOMweb migration source may be reached in although they are internal (loopback, private,
# link-local...), as CIDRs: a hospital's PACS over a VPN. Empty by default, so that no clinic can make the
# portal connect into the operator's own network (its stores, Redis, the cloud metadata endpoint).
DICOMWEB_SOURCE_ALLOWED_NETWORKS = env_list("DICOMWEB_SOURCE_ALLOWED_NETWORKS")
# The same for DICOM nodes (C-MOVE destinations, the nodes of sends, migrations and routing rules, storage
# commitment reports): a node's host may be, and every association we open may go to, an internal address
# only inside these networks.
DICOM_NODE_ALLOWED_NETWORKS = env_list("DICOM_NODE_ALLOWED_NETWORKS")
for _name in ("DICOMWEB_SOURCE_ALLOWED_NETWORKS", "DICOM_NODE_ALLOWED_NETWORKS"):
    for _network in globals()[_name]:
        try:
            ipaddress.ip_network(_network, strict=False)
        except ValueError as _error:
            raise ImproperlyConfigured(f"{_name}: {_error} (give CIDRs, e.g. 10.8.0.0/16).") from None

# Anonymization jobs: instances per batch message (a worker's processes take batches in parallel), and how
# long a running job may go without a finished batch before the sweep re-queues what is left of it.
ANONYMIZATION_JOB_BATCH = env_int("ANONYMIZATION_JOB_BATCH", 32)
ANONYMIZATION_JOB_STALE_SECONDS = env_int("ANONYMIZATION_JOB_STALE_SECONDS", 300)
CELERY_BEAT_SCHEDULE["anonymization-sweep"] = {"task": "studies.anonymize.tasks.anonymization_sweep", "schedule": 60.0}
