"""The OpenAPI document: valid 3.1, complete for every route the application serves."""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from gateway.http.app import create_app
from gateway.http.openapi import UNDOCUMENTED_ROUTES, build_document
from gateway.settings import Settings

Client = TestClient[web.Request, web.Application]
_METHODS = {"get", "put", "post", "patch", "delete", "options", "head"}


def registered_operations(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route in the router, HEAD-for-GET aside."""
    operations = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method == "HEAD" or route.method == "*":
            continue
        operations.add((route.method, resource.canonical))
    return operations


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in _METHODS
    }


def test_the_document_is_valid_openapi_3_1() -> None:
    document = build_document()

    validate(document, cls=OpenAPIV31SpecValidator)

    assert document["openapi"] == "3.1.0"


def test_every_route_the_app_registers_is_documented_and_nothing_else(
    settings: Settings,
) -> None:
    app = create_app(settings)
    served = {op for op in registered_operations(app) if op[1] not in UNDOCUMENTED_ROUTES}

    documented = documented_operations(build_document())

    assert served - documented == set(), "routes missing from gateway/http/openapi/"
    assert documented - served == set(), "documented routes the app does not serve"


def test_every_operation_has_an_id_a_success_and_error_rows_with_json_bodies() -> None:
    document = build_document()
    ids = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            ids.append(operation["operationId"])
            statuses = set(operation["responses"])
            assert any(s.startswith("2") for s in statuses), (method, path)
            if operation.get("security"):
                # Authenticated routes document how authentication fails.
                assert "401" in statuses, (method, path)
            for status, response in operation["responses"].items():
                assert response["description"], (method, path, status)
                assert "X-Request-Id" in response["headers"], (method, path, status)
                if status.startswith(("4", "5")) and path.startswith(("/api", "/admin")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}
    assert len(ids) == len(set(ids))


async def test_the_gateway_serves_the_document_and_a_reference_page(gateway: Client) -> None:
    resp = await gateway.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == build_document()

    page = await gateway.get("/docs")
    assert page.status == 200
    assert page.content_type == "text/html"
    text = await page.text()
    for path, item in build_document()["paths"].items():
        assert html.escape(path) in text
        for method, operation in item.items():
            if method in _METHODS:
                assert f'id="{operation["operationId"]}"' in text
    assert "<script" not in text
