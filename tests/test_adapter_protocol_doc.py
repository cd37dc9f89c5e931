"""docs/adapter-protocol.md and adapters/wire/protocol.py describe the same messages."""

import re
from pathlib import Path

from adapters.commands import HeadEndStatus
from adapters.wire import protocol

DOC = Path(__file__).resolve().parent.parent / "docs" / "adapter-protocol.md"

DIRECTIONS = {
    "Messages from the head-end to the gateway": protocol.HEADEND_TO_GATEWAY,
    "Messages from the gateway to the head-end": protocol.GATEWAY_TO_HEADEND,
}
_MESSAGE_HEADING = re.compile(r"### `([a-z_]+)`")
_FIRST_CELL = re.compile(r"\| `([a-z_-]+)` \|")
_ITEM_ROW = re.compile(r"\| `([a-z_]+)\[\]\.([a-z_]+)` \|")


def _section(text: str, heading: str) -> str:
    """The lines under ``## heading``, up to the next ``## `` heading."""
    lines = text.splitlines()
    assert lines.count(f"## {heading}") == 1, f"the doc needs exactly one '## {heading}'"
    start = lines.index(f"## {heading}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end])


def _first_cells(lines: list[str]) -> list[str]:
    """The backquoted names in the first column of table rows."""
    return [m.group(1) for m in map(_FIRST_CELL.match, lines) if m is not None]


def _message_fields(section: str) -> dict[str, set[str]]:
    """Message type -> its field names (without ``type``), from ``### `name` `` and its table."""
    messages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in section.splitlines():
        heading = _MESSAGE_HEADING.fullmatch(line.strip())
        if heading is not None:
            assert heading.group(1) not in messages, f"{heading.group(1)} is documented twice"
            current = messages[heading.group(1)] = []
        elif current is not None:
            current.extend(_first_cells([line]))
    fields = {}
    for kind, names in messages.items():
        assert len(names) == len(set(names)), f"{kind}: a field is listed twice"
        assert "type" in names, f"{kind}: the table has no 'type' row"
        fields[kind] = set(names) - {"type"}
    return fields


def test_message_tables_match_the_protocol_tables() -> None:
    """Each direction's message types and their fields in the doc are exactly protocol.py's."""
    text = DOC.read_text()
    for heading, table in DIRECTIONS.items():
        documented = _message_fields(_section(text, heading))
        assert documented == {kind: set(fields) for kind, fields in table.items()}, heading


def _item_rows(section: str) -> dict[str, dict[str, set[str]]]:
    """Message type -> list field -> the fields of its objects, from ``list[].field`` rows."""
    rows: dict[str, dict[str, set[str]]] = {}
    current = None
    for line in section.splitlines():
        heading = _MESSAGE_HEADING.fullmatch(line.strip())
        if heading is not None:
            current = rows.setdefault(heading.group(1), {})
        elif current is not None and (row := _ITEM_ROW.match(line)) is not None:
            current.setdefault(row.group(1), set()).add(row.group(2))
    return rows


def test_batch_items_are_documented_as_their_single_events() -> None:
    """Each batch event's item rows are exactly the fields of its single event, without id."""
    rows = _item_rows(_section(DOC.read_text(), "Messages from the head-end to the gateway"))
    singles = {"delivery_statuses": "delivery_status", "inbound_frames": "inbound_frame"}
    assert set(singles) == protocol.BATCH_TYPES
    for batch, single in singles.items():
        fields = set(protocol.HEADEND_TO_GATEWAY[single]) - {"id"}
        assert rows[batch] == {protocol.BATCH_FIELDS[batch]: fields}, batch


def test_every_head_end_status_is_documented() -> None:
    """The provisioning statuses table lists exactly the HeadEndStatus values."""
    text = DOC.read_text()
    rows = _first_cells(_section(text, "Provisioning statuses").splitlines())
    assert sorted(rows) == sorted(status.value for status in HeadEndStatus)
    for status in HeadEndStatus:
        assert f"`{status.value}`" in text
