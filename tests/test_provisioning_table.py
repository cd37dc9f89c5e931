"""The provisioning transition table: its shape and its refusals."""

from hangw.provisioning import (
    INITIAL_STATUS,
    SLOT_FREEING,
    TRANSITIONS,
    DeviceStatus,
    Event,
    IllegalTransition,
    next_status,
)


def test_every_status_is_reachable_from_the_initial_status():
    """Every one of the eleven statuses can be reached from Add Acknowledged."""
    seen = {INITIAL_STATUS}
    frontier = [INITIAL_STATUS]
    while frontier:
        status = frontier.pop()
        for (source, _event), target in TRANSITIONS.items():
            if source is status and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(DeviceStatus)
    assert len(seen) == 11


def test_slot_freeing_statuses_are_the_markets_three():
    """Add Rejected, Add Failed and Device Removed free a slot, nothing else does."""
    assert {s.value for s in SLOT_FREEING} == {"Add Rejected", "Add Failed", "Device Removed"}


def test_missing_key_is_illegal():
    """An event with no entry for the status raises IllegalTransition naming both."""
    try:
        next_status(DeviceStatus.DEVICE_REMOVED, Event.DEVICE_JOINED)
    except IllegalTransition as refusal:
        assert "Device Removed" in str(refusal) and "device joined" in str(refusal)
    else:
        raise AssertionError("Device Removed accepted a join")
