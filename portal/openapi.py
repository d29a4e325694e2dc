"""OpenAPI schema generation (drf-spectacular) fitted to the project's conventions.

- API token authentication is documented as an HTTP bearer scheme.
- Views nest their ``InputSerializer`` / ``OutputSerializer`` (STYLE.md); without help every one of those
  would become a component called "Input" or "Output" and collide. A nested serializer's component is
  named after its view instead: ``UsageApi.OutputSerializer`` becomes ``UsageOutput``.
"""

from __future__ import annotations

import inspect
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema


class ClinicTokenScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.api_auth.ClinicTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A clinic API token: `Authorization: Bearer pacs_...`. Create one under the "
            "clinic's API tokens page or with `manage.py create_api_token`; its role limits what it may do.",
        }


class PortalAutoSchema(AutoSchema):
    def get_serializer_name(self, serializer: Any, direction: str) -> str:
        name = super().get_serializer_name(serializer, direction)
        cls = serializer if inspect.isclass(serializer) else type(serializer)
        parts = cls.__qualname__.split(".")
        if len(parts) > 1 and "<locals>" not in parts:
            outer = parts[-2].removesuffix("Api").removesuffix("View")
            name = outer + name.removesuffix("Serializer")
        return name
