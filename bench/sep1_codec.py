"""sep1 encode+decode throughput against zigpy's own serializer, on the same frames.

The frames are a mix of Load Control Events, Publish Prices and Display Messages with varied
values. One round is: encode every message to a ZCL frame (header and payload), then decode every
frame back. sep1 does it with ``sep1.encode``/``sep1.decode``; zigpy with its ZCLHeader and the
command schemas derived from sep1's field tables (zigpy has no SE commands of its own). Both must
produce the same bytes, which is checked before timing (texts are ASCII: zigpy 2.4's
CharacterString writes the character count, not the UTF-8 byte count, as the length). Frames go
ESI to device with "disable default response" set, as zigpy's header does for that direction.
Rates are the best of several repeats.

    .venv/bin/python bench/sep1_codec.py [--frames 3000] [--repeats 5]

Last line: RESULT sep1_codec <frames/s> frames/s baseline=<zigpy frames/s> ratio=<x>
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sep1  # noqa: E402

warnings.simplefilter("ignore", DeprecationWarning)
from zigpy.zcl import foundation  # noqa: E402

from sep1 import zigpy_schemas  # noqa: E402


def sample_messages(count: int, seed: int = 1) -> list[sep1.Message]:
    """A reproducible mix of the three commands a REP sends most."""
    rng = random.Random(seed)
    messages: list[sep1.Message] = []
    texts = [
        "Peak pricing 2-6 pm today",
        "Conservation alert: please reduce use",
        "Precio alto hoy",
    ]
    for i in range(count):
        kind = i % 3
        if kind == 0:
            messages.append(
                sep1.LoadControlEvent(
                    issuer_event_id=rng.randrange(1 << 32),
                    device_class=rng.randrange(1, 0x1000),
                    utility_enrollment_group=rng.randrange(256),
                    start_time=rng.randrange(1 << 30),
                    duration_in_minutes=rng.randrange(1, 1441),
                    criticality_level=rng.randrange(1, 16),
                    cooling_temperature_offset=rng.choice([None, 20]),
                    heating_temperature_offset=None,
                    cooling_temperature_set_point=rng.choice([None, 2600]),
                    heating_temperature_set_point=None,
                    average_load_adjustment_percentage=rng.choice([None, -30]),
                    duty_cycle=rng.choice([None, 50]),
                    event_control=rng.randrange(4),
                )
            )
        elif kind == 1:
            messages.append(
                sep1.PublishPrice(
                    provider_id=rng.randrange(1 << 32),
                    rate_label=b"TOU-PEAK",
                    issuer_event_id=rng.randrange(1 << 32),
                    current_time=rng.randrange(1 << 30),
                    price_trailing_digit=3,
                    price_tier=rng.randrange(1, 7),
                    number_of_price_tiers=6,
                    register_tier=rng.randrange(1, 7),
                    duration_in_minutes=rng.randrange(1, 1441),
                    price=rng.randrange(1 << 20),
                    generation_price=rng.choice([None, 1234]),
                )
            )
        else:
            messages.append(
                sep1.DisplayMessage(
                    message_id=rng.randrange(1 << 32),
                    message_control=sep1.MessageControl.make(importance=rng.randrange(4)),
                    start_time=0,
                    duration_in_minutes=rng.randrange(1, 1441),
                    message=rng.choice(texts),
                )
            )
    return messages


def sep1_round(messages: list[sep1.Message]) -> list[bytes]:
    frames = [
        sep1.encode(m, i & 0xFF, disable_default_response=True) for i, m in enumerate(messages)
    ]
    for m, frame in zip(messages, frames, strict=True):
        sep1.decode(m.CLUSTER_ID, frame)
    return frames


def zigpy_round_factory(messages: list[sep1.Message]) -> Callable[[], list[bytes]]:
    """zigpy's serialize and parse of the same frames; kwargs are prepared outside the timing."""
    schemas = {cls: zigpy_schemas.command_def(cls).schema for cls in {type(m) for m in messages}}
    prepared: list[tuple[Any, type[sep1.Message], dict[str, Any]]] = [
        (schemas[type(m)], type(m), zigpy_schemas.to_zigpy(m)) for m in messages
    ]

    def run() -> list[bytes]:
        frames = []
        for i, (schema, cls, kwargs) in enumerate(prepared):
            header = foundation.ZCLHeader.cluster(
                tsn=i & 0xFF,
                command_id=cls.COMMAND_ID,
                direction=foundation.Direction.Server_to_Client,
            )
            frames.append(header.serialize() + schema(**kwargs).serialize())
        for (schema, _, _), frame in zip(prepared, frames, strict=True):
            header, rest = foundation.ZCLHeader.deserialize(frame)
            schema.deserialize(rest)
        return frames

    return run


def best_rate(run: Callable[[], list[bytes]], count: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    messages = sample_messages(args.frames)
    zigpy_round = zigpy_round_factory(messages)
    ours, theirs = sep1_round(messages), zigpy_round()
    mismatched = sum(1 for a, b in zip(ours, theirs, strict=True) if a != b)
    if mismatched:
        raise SystemExit(f"sep1 and zigpy disagree on {mismatched} of {len(ours)} frames")
    print(
        f"{len(messages)} frames (LCE, Publish Price, Display Message), "
        "byte-identical in sep1 and zigpy"
    )

    rate = best_rate(lambda: sep1_round(messages), len(messages), args.repeats)
    baseline = best_rate(zigpy_round, len(messages), args.repeats)
    print(f"sep1:  {rate:,.0f} frames/s (encode + decode)")
    print(f"zigpy: {baseline:,.0f} frames/s (serialize + parse)")
    print(
        f"RESULT sep1_codec {rate:.0f} frames/s baseline={baseline:.0f} frames/s "
        f"ratio={rate / baseline:.2f}"
    )


if __name__ == "__main__":
    main()
