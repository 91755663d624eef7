"""The API token scheme in the OpenAPI schema (drf-spectacular finds it through this extension)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class HashedTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """``Authorization: Bearer kiln_…`` (``Token kiln_…`` is accepted too), as ``create_api_token`` prints."""

    target_class = "accounts.authentication.HashedTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "kiln_<prefix>_<secret>",
            "description": "An API token: `manage.py create_api_token <user>` or the web UI's token page.",
        }
