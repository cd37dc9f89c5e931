"""What operators and clients read besides the API: health, metrics, the OpenAPI document."""

from __future__ import annotations

import ast
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread

from hangw.api.app import Api, openapi_document
from hangw.messaging.requests import FIELDS
from tests.gateway_harness import E_OWN, Harness
from tests.test_api_provisioning import add_body

HANGW = Path(__file__).resolve().parent.parent / "hangw"


def fetch(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers["content-type"], response.read()


@pytest_twisted.ensureDeferred
async def test_healthz_reports_the_store_and_adapters(harness: Harness) -> None:
    """/healthz answers 200 with the store reachable and the configured TDSP adapters."""
    status, media, body = await deferToThread(fetch, f"http://127.0.0.1:{harness.ops_port}/healthz")
    report = json.loads(body)
    assert status == 200 and media == "application/json"
    assert report["status"] == "ok" and report["store"] == "ok"
    assert report["adapters"] == ["1039940674000"] and report["parties"] == 5


@pytest_twisted.ensureDeferred
async def test_metrics_count_requests_transitions_and_store_batches(harness: Harness) -> None:
    """/metrics is Prometheus text that counts an accepted provisioning request and its commit."""

    def sample(text: str, name: str, labels: str = "") -> float:
        found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    url = f"http://127.0.0.1:{harness.ops_port}/metrics"
    _, media, before = await deferToThread(fetch, url)
    status, _ = await harness.caller("demo-rep-a").call(
        "POST", f"/v1/esiids/{E_OWN}/han-devices", add_body()
    )
    assert status == 202
    _, _, after = await deferToThread(fetch, url)
    assert media.startswith("text/plain")
    text_before, text_after = before.decode(), after.decode()
    requests = 'hangw_api_requests_total{method="POST",status="202"}'
    assert sample(text_after, requests) == sample(text_before, requests) + 1
    added = 'hangw_device_transitions_total{status="Add Acknowledged"}'
    assert sample(text_after, added) >= sample(text_before, added) + 1
    assert sample(text_after, "hangw_store_jobs_total") > sample(
        text_before, "hangw_store_jobs_total"
    )


@pytest_twisted.ensureDeferred
async def test_openapi_document_is_served_to_parties(harness: Harness) -> None:
    """GET /v1/openapi.json over mutual TLS returns the document kept in the package."""
    status, served = await harness.caller("demo-customer").call("GET", "/v1/openapi.json")
    assert status == 200
    assert served == json.loads(openapi_document())


def test_openapi_document_describes_every_route() -> None:
    """Every route of the API app is in the OpenAPI document with its methods, and no more."""
    served: dict[str, set[str]] = {}
    for rule in Api.app.url_map.iter_rules():
        path = re.sub(r"<(\w+)>", r"{\1}", rule.rule)
        served.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD"})
    document: dict[str, Any] = json.loads(openapi_document())
    described = {
        path: {m for m in item if m in {"get", "post", "put", "patch", "delete"}}
        for path, item in document["paths"].items()
    }
    assert described == served


def test_openapi_problem_names_every_extension_member_the_code_sends() -> None:
    """Every keyword a Problem is raised with in hangw/ (an extension member of its body) is a
    property of the OpenAPI Problem schema, and the schema names no member nothing sends."""
    trees = [ast.parse(path.read_text()) for path in HANGW.rglob("*.py")]
    bases = {
        node.name: {base.id for base in node.bases if isinstance(base, ast.Name)}
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    }
    problems = {"Problem"}
    while grown := {name for name, of in bases.items() if of & problems} - problems:
        problems |= grown
    sent = {"field"}  # InvalidField's constructor adds it
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name in problems:
                    sent.update(k.arg for k in node.keywords if k.arg is not None)
    document: dict[str, Any] = json.loads(openapi_document())
    schema = document["components"]["schemas"]["Problem"]["properties"]
    standard = {"type", "title", "status", "detail", "instance"}
    assert set(schema) - standard == sent


def test_openapi_message_request_names_every_field_a_message_takes() -> None:
    """MessageRequest has a property for every field POST /v1/messages takes in some category
    (a generated client can send no field its schema leaves out), and for no other."""
    document: dict[str, Any] = json.loads(openapi_document())
    properties = document["components"]["schemas"]["MessageRequest"]["properties"]
    assert set(properties) == set().union(*FIELDS.values())


@pytest_twisted.ensureDeferred
async def test_a_failed_party_refresh_does_not_stop_later_ones(harness: Harness) -> None:
    """When reloading the parties fails once, the error is logged and the next reload works."""
    registry = harness.gateway.registry
    real_refresh = registry.refresh
    calls: list[str] = []

    async def failing_once() -> None:
        calls.append("x")
        if len(calls) == 1:
            raise ConnectionError("database restarting")
        await real_refresh()

    registry.refresh = failing_once  # type: ignore[method-assign]
    assert await harness.gateway._refresh_parties() is None  # logged, not raised
    await harness.gateway._refresh_parties()
    assert calls == ["x", "x"] and registry.is_registered(harness.issued["demo-rep-a"].fingerprint)
