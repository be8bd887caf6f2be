"""/api/v1/openapi.json: a valid OpenAPI document that names every API route, and that the live API keeps to.

Schemathesis generates requests for every operation from the document and
checks what a real gateway answers (status, content type, headers and body
schema, no 5xx). The gateway runs with the launcher off, so workspace and
prebuild operations answer 503 or 404, which the document allows.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from unittest.mock import MagicMock

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from requests.adapters import HTTPAdapter
from schemathesis.checks import CheckFunction
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from signin_client import Browser, dev_sign_in
from wsgate_testing import DOMAIN, Gateway

from gateway.app import build_app
from gateway.openapi import DOCUMENT, PATH

pytestmark = pytest.mark.slow

CONFIG = """
[auth]
dev_login = true
admins = ["dev:root"]
[launcher]
enabled = false
"""
# Routes outside /api/v1 that the document describes too.
DOCUMENTED_ELSEWHERE = {("GET", "/.well-known/jwks.json"), ("GET", "/prebuilds/{id}/logs")}
EXAMPLES = 25
BUDGET = 80.0  # seconds for all operations together
CHECKS: list[CheckFunction] = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def documented() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item}


def test_the_document_is_valid_openapi_with_unique_operation_ids() -> None:
    schema = schemathesis.openapi.from_dict(DOCUMENT)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    ops = [result.ok() for result in schema.get_all_operations()]
    ids = [op.definition.raw["operationId"] for op in ops]
    assert len(ids) == len(set(ids)) == len(documented())


def test_every_api_route_of_the_app_is_in_the_document() -> None:
    app = build_app(MagicMock())
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    api = {r for r in served if r[1].startswith("/api/")}
    assert api - documented() == set(), "routes missing from gateway/openapi.py"
    assert documented() - api - DOCUMENTED_ELSEWHERE == set(), "documented routes the app does not have"
    assert DOCUMENTED_ELSEWHERE <= served


class ToGateway(HTTPAdapter):
    """Connects to the gateway's loopback port with the TLS name (SNI and certificate check) of DOMAIN."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, server_hostname=DOMAIN, assert_hostname=DOMAIN, **kwargs)


def admin_token(gw: Gateway) -> str:
    """A bearer token with the scopes api and admin, made through the admin's signed-in session."""

    async def make() -> str:
        async with Browser(str(gw.ca)) as b:
            await dev_sign_in(b, gw.url(DOMAIN, "/auth/login"), "root")
            me = json.loads((await b.go(gw.url(DOMAIN, "/api/v1/me"))).text)
            made = await b.go(
                gw.url(DOMAIN, "/api/v1/tokens"), "POST",
                data=json.dumps({"name": "openapi", "scopes": ["api", "admin"]}),
                headers={"Content-Type": "application/json", "X-CSRF-Token": me["csrf_token"]},
            )
            assert made.status == 201, made.text
            return str(json.loads(made.text)["token"])

    return asyncio.run(make())


def test_the_live_api_keeps_to_its_document(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(CONFIG)
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise win over `verify`
    session.verify = str(gw.ca)
    session.mount("https://", ToGateway())
    base_url = f"https://127.0.0.1:{gw.port}"
    host = {"Host": f"{DOMAIN}:{gw.port}"}

    # Anyone may read the document, and it is the one in gateway/openapi.py.
    got = session.get(base_url + PATH, headers=host, timeout=10)
    assert got.status_code == 200 and got.headers["Content-Type"].startswith("application/json")
    assert got.json() == DOCUMENT
    assert "no-store" in got.headers["Cache-Control"] or "public" in got.headers["Cache-Control"]

    headers = {**host, "Authorization": f"Bearer {admin_token(gw)}"}
    schema = schemathesis.openapi.from_dict(got.json())
    failures: dict[str, str] = {}
    deadline = time.monotonic() + BUDGET
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(documented())
    for operation in operations:
        if time.monotonic() > deadline:
            pytest.fail(f"out of time before {operation.label}; lower EXAMPLES")

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=10)
            case.validate_response(response, checks=CHECKS, headers=headers)

        try:
            check()
        except Exception as e:  # every operation is tried; all failures are reported together
            failures[operation.label] = str(e)

    assert not failures, "\n\n".join(f"=== {label}\n{text}" for label, text in failures.items())
    # Nothing the checks did crashed a handler.
    assert "Traceback" not in gw.logs(), gw.logs()[-5000:]
