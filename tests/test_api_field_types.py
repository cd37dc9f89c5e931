"""Every body field of every path, sent with a value of the wrong JSON type: a 4xx, never a 500.

A handler that looks a value up in a table (``value in TABLE``) or compares it before checking
its type turns a list or an object into a TypeError, which the API can only answer with 500 ("may
or may not have taken effect"). Here each field of a valid body is replaced, one at a time, by
values of every JSON type and some edge values; each answer must be a problem the sender can act
on (4xx) or an acceptance (2xx), and the gateway must go on answering.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted

from tests.gateway_harness import E_OWN, HSP, INSTALL_CODE, Harness

#: Values of every JSON type, and edge values of the common ones.
WRONG_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**70,
    1.5,
    "",
    "x" * 300,
    "\u00b2",
    [],
    [1],
    ["a", "b"],
    {},
    {"a": 1},
]


def bodies() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(caller, method, path, a valid body) for every path that reads a JSON body."""
    day = "2026-11-01"
    return [
        (
            "demo-rep-a",
            "POST",
            f"/v1/esiids/{E_OWN}/han-devices",
            {
                "mac": "000D6F0400000001",
                "install_code": INSTALL_CODE,
                "device_type": "thermostat",
                "description": "hall",
            },
        ),
        ("demo-customer", "POST", f"/v1/esiids/{E_OWN}/grants", {"hsp_party_id": HSP}),
        (
            "demo-rep-a",
            "POST",
            "/v1/messages",
            {
                "category": "LCE",
                "esiids": [E_OWN],
                "issuer_event_id": 7,
                "device_class": 1,
                "duration_minutes": 30,
                "criticality": 3,
                "cooling_temperature_offset": 20,
                "randomize_start": False,
            },
        ),
        (
            "demo-rep-a",
            "POST",
            "/v1/messages",
            {
                "category": "PRM",
                "esiids": [E_OWN],
                "provider_id": 42,
                "rate_label": "PEAK",
                "price": 2150,
                "price_trailing_digit": 4,
                "duration_minutes": 120,
            },
        ),
        (
            "demo-rep-a",
            "POST",
            "/v1/messages",
            {
                "category": "STM",
                "group": "field-types",
                "message": "hello",
                "importance": "high",
                "confirmation_required": True,
                "duration_minutes": 10,
            },
        ),
        ("demo-rep-a", "POST", "/v1/messages/RDOESNOTEXIST/cancel", {"randomize_end": True}),
        (
            "demo-rep-a",
            "POST",
            f"/v1/esiids/{E_OWN}/load-control/cancel-all",
            {"randomize_end": False},
        ),
        ("demo-rep-a", "PUT", "/v1/groups/field-types", {"esiids": [E_OWN]}),
        (
            "demo-rep-a",
            "POST",
            "/v1/webhooks",
            {"url": "https://127.0.0.1:9/hook", "secret": "s" * 32},
        ),
        (
            "demo-rep-a",
            "POST",
            "/v1/usage/jobs",
            {"report": "daily", "esiids": [E_OWN], "from": day, "to": day, "channel": 4},
        ),
    ]


@pytest_twisted.ensureDeferred
async def test_no_field_of_the_wrong_type_makes_a_500(harness: Harness) -> None:
    """Each body field replaced by each JSON type (and edge values) is answered 2xx or 4xx."""
    rep = harness.caller("demo-rep-a")
    status, _ = await rep.call("PUT", "/v1/groups/field-types", {"esiids": [E_OWN]})
    assert status in (200, 201), status
    failures = []
    for name, method, path, valid in bodies():
        caller = harness.caller(name)
        # the valid body passes every check, so each replaced field meets its own
        status, answer = await caller.call(method, path, valid)
        assert status < 300 or (status == 404 and "RDOESNOTEXIST" in path), (path, answer)
        for field in valid:
            for value in WRONG_VALUES:
                body = {**valid, field: value}
                status, answer = await caller.call(method, path, body)
                if status >= 500:
                    failures.append((method, path, field, value, answer.get("detail")))
                elif status >= 400:
                    assert isinstance(answer, dict) and answer.get("status") == status, answer
        # and the body as a whole of the wrong type
        for value in ([valid], "text", 3):
            status, answer = await caller.call(method, path, value)
            if status >= 500:
                failures.append((method, path, "(body)", value, answer.get("detail")))
    assert not failures, json.dumps(failures, indent=1, default=str)[:4000]
    status, _ = await rep.call("GET", f"/v1/esiids/{E_OWN}/han-devices")
    assert status == 200
