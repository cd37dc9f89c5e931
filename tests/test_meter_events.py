"""Meter events from a TDSP applied to the meter registry, each event id once across crashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.commands import MeterEvent, MeterEventKind
from hangw.domain import Meter
from hangw.meters import MeterEventOutcome, apply_meter_event_thd, upsert_meters_thd
from hangw.store.db import Store
from tests.gateway_harness import E_OTHER_TDSP, E_OWN, TDSP
from tests.service_harness import make_service

K = MeterEventKind


@pytest.fixture
def store(tmp_path: Path) -> Store:
    service, _ = make_service(tmp_path / "s.sqlite")
    return service.store


def apply(store: Store, event: MeterEvent) -> MeterEventOutcome:
    return store.transaction(apply_meter_event_thd, event, 1_790_000_000.0)


def test_exchange_removal_and_firmware_change(store: Store) -> None:
    """A removal makes the meter inactive, an exchange active with the new serial and firmware,
    and a firmware change sets whether it can serve a HAN."""
    removed = apply(store, MeterEvent(E_OWN, K.METER_REMOVED, tdsp_duns=TDSP, event_id="e1"))
    assert removed.meter is not None and not removed.meter.active
    exchanged = apply(
        store,
        MeterEvent(E_OWN, K.METER_EXCHANGED, "NEW-7", "5.9.0", True, tdsp_duns=TDSP, event_id="e2"),
    )
    meter = exchanged.meter
    assert meter is not None
    assert (meter.meter_serial, meter.firmware_version, meter.active) == ("NEW-7", "5.9.0", True)
    downgraded = apply(
        store,
        MeterEvent(
            E_OWN,
            K.FIRMWARE_CHANGED,
            firmware_version="4.0.0",
            han_capable=False,
            tdsp_duns=TDSP,
            event_id="e3",
        ),
    )
    assert downgraded.meter is not None and not downgraded.meter.han_capable


def test_a_resent_event_is_not_applied_again(store: Store) -> None:
    """The same event id again is a duplicate: the meter is not changed a second time."""
    apply(store, MeterEvent(E_OWN, K.METER_REMOVED, tdsp_duns=TDSP, event_id="e1"))
    apply(store, MeterEvent(E_OWN, K.METER_EXCHANGED, tdsp_duns=TDSP, event_id="e2"))
    again = apply(store, MeterEvent(E_OWN, K.METER_REMOVED, tdsp_duns=TDSP, event_id="e1"))
    assert again.duplicate and again.meter is not None and again.meter.active


def test_a_refusal_is_remembered_even_after_the_meter_appears(store: Store) -> None:
    """An event refused for an unknown ESI ID is refused again under its id, though the meter
    was loaded meanwhile; another TDSP's meter is refused and left as it was."""
    unknown = "10443720999999999"
    first = apply(store, MeterEvent(unknown, K.METER_REMOVED, tdsp_duns=TDSP, event_id="e9"))
    assert first.refusal is not None and "not in the meter registry" in first.refusal
    store.transaction(
        upsert_meters_thd,
        [Meter(unknown, "S9", TDSP, "0000000000001", None, "GE-I210+c", "5.2.1", True, True)],
    )
    again = apply(store, MeterEvent(unknown, K.METER_REMOVED, tdsp_duns=TDSP, event_id="e9"))
    assert again.duplicate and again.refusal == first.refusal
    other = apply(store, MeterEvent(E_OTHER_TDSP, K.METER_REMOVED, tdsp_duns=TDSP, event_id="e10"))
    assert other.refusal is not None and "another TDSP" in other.refusal
