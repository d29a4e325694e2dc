"""WSGI entry point: `gunicorn portal.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

application = get_wsgi_application()

# Import every view module behind the URL patterns now, while the worker starts, rather than in the
# first request it serves: about half a second of CPU (DRF, drf-spectacular, every app's views) that a
# fresh worker's first client, often a STOW-RS sender, used to wait for.
get_resolver().resolve("/healthz")
