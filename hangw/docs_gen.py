"""Documents drawn from the code: `python -m hangw.docs_gen` rewrites them; a test checks them."""

from __future__ import annotations

import sys
from collections.abc import Set
from pathlib import Path

from hangw import provisioning
from hangw.provisioning import DeviceStatus

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _names(statuses: Set[DeviceStatus]) -> str:
    return ", ".join(s.value for s in DeviceStatus if s in statuses)


def provisioning_states_md() -> str:
    rows = "\n".join(
        f"| {source.value} | {event.value} | {target.value} |"
        for (source, event), target in provisioning.TRANSITIONS.items()
    )
    return f"""# HAN device provisioning states

Generated from `hangw/provisioning.py` by `python -m hangw.docs_gen`; do not edit by hand.

A device enters at **{provisioning.INITIAL_STATUS.value}** when the gateway accepts the add request.
Any event not listed for a status is refused before anything is written.

```mermaid
{provisioning.to_mermaid()}```

| Status | Event | New status |
|---|---|---|
{rows}

Slot-holding statuses (at most {provisioning.MAX_SLOTS_PER_ESIID} per ESI ID): \
{_names(provisioning.SLOT_HOLDING)}.
Slot-freeing statuses: {_names(provisioning.SLOT_FREEING)}.
The join window runs in: {_names(provisioning.JOIN_WINDOW_STATUSES)}.
The command timeout runs in: {_names(provisioning.COMMAND_TIMEOUT_STATUSES)}.
"""


GENERATED = {"provisioning-states.md": provisioning_states_md}


def main() -> int:
    for name, render in GENERATED.items():
        (DOCS / name).write_text(render())
        print(f"wrote docs/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
