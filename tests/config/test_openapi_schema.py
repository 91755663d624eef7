"""The OpenAPI schema: generated without a warning, every answer typed, every error status listed."""

from __future__ import annotations

import re
from typing import Any

import pytest
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

from deployments.services.deployments import MAX_VARIANTS
from registry.models import SLUG_PATTERN, slug_refusal


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    GENERATOR_STATS.reset()
    generator = SchemaGenerator()  # type: ignore[no-untyped-call]
    generated: dict[str, Any] = generator.get_schema(request=None, public=True)  # type: ignore[no-untyped-call]
    warnings = dict(GENERATOR_STATS._warn_cache) | dict(GENERATOR_STATS._error_cache)
    assert warnings == {}, f"drf-spectacular warned: {list(warnings)}"
    validate_schema(generated)  # type: ignore[no-untyped-call]
    return generated


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def loose_objects(node: Any, path: str = "") -> list[str]:
    """Where a schema is an object that says nothing about its properties."""
    found = []
    if isinstance(node, dict):
        if node.get("type") == "object" and not {"properties", "additionalProperties", "$ref"} & set(node):
            found.append(path)
        if node.get("additionalProperties") in ({}, True):
            found.append(path)
        for key, value in node.items():
            found.extend(loose_objects(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(loose_objects(value, f"{path}[{index}]"))
    return found


def test_the_schema_is_generated_without_warnings_and_is_valid_openapi(schema: dict[str, Any]) -> None:
    assert len(operations(schema)) >= 44


def test_every_response_body_is_typed(schema: dict[str, Any]) -> None:
    responses = [op["responses"] for _, _, op in operations(schema)]
    loose = loose_objects(responses) + loose_objects(
        {k: v for k, v in schema["components"]["schemas"].items() if not k.endswith("Request")}
    )
    # The error body's "extra" carries details of any shape (fields, limit): the one free-form object.
    assert loose == ["/ErrorOutput/properties/extra"]


def test_every_operation_lists_its_error_answers_with_the_error_body(schema: dict[str, Any]) -> None:
    for method, path, op in operations(schema):
        statuses = set(op["responses"])
        assert {"401", "414"} <= statuses, (method, path)
        if any(p["in"] == "path" for p in op.get("parameters", [])):
            assert "404" in statuses, (method, path)
        if "requestBody" in op:
            assert {"400", "413", "415"} <= statuses, (method, path)
        if method != "GET":
            assert "409" in statuses, (method, path)
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                body = response["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/ErrorOutput"}, (method, path, status)


def test_accepted_answers_are_documented_as_202(schema: dict[str, Any]) -> None:
    accepted = {(method, path) for method, path, op in operations(schema) if "202" in op["responses"]}
    for suffix in ("scale/", "version/", "batching/", "rebuild-image/"):
        assert (
            "POST" if suffix in ("scale/", "rebuild-image/") else "PUT",
            f"/api/v1/deployments/{{name}}/variants/{{variant}}/{suffix}",
        ) in accepted
    assert ("DELETE", "/api/v1/deployments/{name}/") in accepted
    assert ("POST", "/api/v1/deployments/{name}/stop/") in accepted
    for method, path in accepted:
        assert "200" not in schema["paths"][path][method.lower()]["responses"], (method, path)


def test_nullable_fields_are_marked_and_prometheus_targets_is_a_list(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    assert components["ModelOutput"]["properties"]["team"]["nullable"] is True
    assert components["AuditEventOutput"]["properties"]["model"]["nullable"] is True
    assert components["VariantOutput"]["properties"]["pinned_version"]["nullable"] is True
    targets = schema["paths"]["/api/v1/prometheus/targets/"]["get"]["responses"]["200"]
    assert targets["content"]["application/json"]["schema"]["type"] == "array"


def test_the_token_schemes_are_in_the_schema(schema: dict[str, Any]) -> None:
    schemes = schema["components"]["securitySchemes"]
    assert schemes["apiToken"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "kiln_<prefix>_<secret>",
        "description": schemes["apiToken"]["description"],
    }
    models = schema["paths"]["/api/v1/models/"]["get"]
    assert {"apiToken": []} in models["security"]
    report = schema["paths"]["/api/v1/workers/{worker_id}/reports/"]["post"]
    assert report["security"] == [{"workerToken": []}]


def test_names_publish_the_pattern_the_services_check(schema: dict[str, Any]) -> None:
    """A client generated from the schema can check a name before it sends it, by the server's rule."""
    components = schema["components"]["schemas"]
    for component in ("ModelCreateInputRequest", "DeploymentCreateInputRequest", "VariantInputRequest"):
        name = components[component]["properties"]["name"]
        assert name["pattern"] == SLUG_PATTERN, component
        assert (name["minLength"], name["maxLength"]) == (1, 64), component
        pattern = re.compile(name["pattern"])
        for value in ("cnn", "a", "fraud-detector-2", "c" * 64):
            assert pattern.fullmatch(value), value
            assert slug_refusal("name", value) is None, value
        for value in ("-cnn", "cnn-", "Cnn", "c_nn", "c" * 65):
            assert not pattern.fullmatch(value), value
            assert slug_refusal("name", value), value


def test_page_parameters_publish_their_bounds(schema: dict[str, Any]) -> None:
    lists = 0
    for _, path, op in operations(schema):
        parameters = {p["name"]: p["schema"] for p in op.get("parameters", []) if p["in"] == "query"}
        if "page_size" in parameters:
            lists += 1
            assert (parameters["page_size"]["minimum"], parameters["page_size"]["maximum"]) == (1, 500), path
            assert parameters["page"]["minimum"] == 1, path
    assert lists >= 5


def test_the_variants_count_and_the_webhook_url_scheme_publish_the_rules_the_services_check(
    schema: dict[str, Any],
) -> None:
    components = schema["components"]["schemas"]
    variants = components["DeploymentCreateInputRequest"]["properties"]["variants"]
    assert (variants["minItems"], variants["maxItems"]) == (1, MAX_VARIANTS)
    url = components["WebhookInputRequest"]["properties"]["url"]
    pattern = re.compile(url["pattern"])
    for value in ("https://hooks.example.com/kiln", "http://ci.example.com:8080/x", "HTTPS://example.com/"):
        assert pattern.match(value), value
    for value in ("ftp://example.com/", "file:///etc/passwd", "example.com/hook", "javascript:alert(1)"):
        assert not pattern.match(value), value
