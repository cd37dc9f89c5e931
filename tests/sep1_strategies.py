"""Hypothesis strategies for every sep1 message type, drawn from the SE 1.0 ranges.

The ranges come from each command's field table; tests elsewhere check the table against the
spec's limits one by one (test_sep1_ranges.py), so a wrong limit there cannot hide here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st

import sep1
from sep1.wire import FieldSpec

ALL_TYPES: list[type[sep1.Message]] = sorted(sep1.MESSAGE_TYPES.values(), key=lambda c: c.__name__)


def field_strategy(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Any valid value of one field."""
    form = spec.wire.form
    if form in ("int", "high_nibble", "low_nibble"):
        values = st.integers(spec.lo, spec.hi)
        if spec.not_used is not None:
            sentinel = spec.not_used
            values = values.filter(lambda v: v != sentinel)
            # Edges and the sentinel's neighbours are where codecs go wrong.
            edges = [
                v
                for v in (spec.lo, spec.hi, sentinel - 1, sentinel + 1)
                if spec.lo <= v <= spec.hi and v != sentinel
            ]
            return st.one_of(st.none(), st.sampled_from(edges), values)
        return st.one_of(st.sampled_from([spec.lo, spec.hi]), values)
    if form == "octets":
        return st.binary(max_size=spec.max_length or 254)
    if form == "fixed_octets":
        assert spec.wire.size is not None
        return st.binary(min_size=spec.wire.size, max_size=spec.wire.size)
    if form == "text":
        limit = spec.max_length or 254
        return st.text(alphabet=st.characters(codec="utf-8"), max_size=limit).filter(
            lambda s: len(s.encode("utf-8")) <= limit
        )
    if form == "uint24_counted_list":
        return st.lists(st.integers(0, 0xFFFFFF), max_size=spec.max_length or 255).map(tuple)
    if form == "uint16_list":
        return st.lists(st.integers(0, 0xFFFF), max_size=40).map(tuple)
    if form == "attribute_records":
        return st.lists(attribute_records(), max_size=12).map(tuple)
    raise AssertionError(form)


@st.composite
def attribute_records(draw: st.DrawFn) -> sep1.AttributeRecord:
    """A successful reading of a known Metering attribute, or a failure record for any id."""
    if draw(st.booleans()):
        attribute = draw(
            st.sampled_from(sorted(sep1.METERING_ATTRIBUTES.values(), key=lambda a: a.attribute_id))
        )
        wire_type = attribute.wire
        value = draw(
            st.one_of(
                st.sampled_from([wire_type.lo, wire_type.hi, 0]),
                st.integers(wire_type.lo, wire_type.hi),
            )
        )
        return sep1.AttributeRecord(attribute.attribute_id, 0, value)
    return sep1.AttributeRecord(draw(st.integers(0, 0xFFFF)), draw(st.integers(1, 0xFF)), None)


@st.composite
def messages_of(draw: st.DrawFn, cls: type[sep1.Message]) -> sep1.Message:
    """A valid message of ``cls``."""
    values = {spec.name: draw(field_strategy(spec)) for spec in cls.FIELDS}
    if cls is sep1.PublishPrice:
        sent = draw(st.integers(0, 6))
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for spec in cls.FIELDS[len(cls.FIELDS) - 6 + sent :]:
            values[spec.name] = defaults[spec.name]
        values["optional_fields"] = sent
    return cls(**values)


def any_message() -> st.SearchStrategy[sep1.Message]:
    """A valid message of any type."""
    return st.one_of([messages_of(cls) for cls in ALL_TYPES])
