"""Fuzzing the decoder: random and mutated frames raise only sep1.DecodeError.

100,000 cases by default (a few seconds); set HANGW_FUZZ_CASES to run more or fewer. bin/test
runs fewer under CI. Cases are seeded, and a failure prints the seed and the frame to replay.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sep1
from tests.sep1_strategies import any_message

CASES = int(os.environ.get("HANGW_FUZZ_CASES", "100000"))
SEED = int(os.environ.get("HANGW_FUZZ_SEED", "20261123"))
CLUSTERS = [sep1.PRICE, sep1.DRLC, sep1.METERING, sep1.MESSAGING]


def corpus(rng: random.Random, size: int) -> list[tuple[int, bytes]]:
    """Valid frames of every type to mutate, from the Hypothesis strategies."""
    frames: list[tuple[int, bytes]] = []

    @settings(
        max_examples=size, database=None, deadline=None, suppress_health_check=list(HealthCheck)
    )
    @given(message=any_message(), tsn=st.integers(0, 255))
    def collect(message: sep1.Message, tsn: int) -> None:
        frames.append((message.CLUSTER_ID, sep1.encode(message, tsn)))

    collect()
    rng.shuffle(frames)
    return frames


def mutate(rng: random.Random, frame: bytes) -> bytes:
    """One of the mutations real links produce: truncation, bit flips, bad lengths, junk."""
    data = bytearray(frame)
    choice = rng.randrange(7)
    if choice == 0 and data:  # truncate
        return bytes(data[: rng.randrange(len(data))])
    if choice == 1 and data:  # flip one to three bits
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data)
    if choice == 2 and len(data) > 3:  # a wrong length byte somewhere in the payload
        data[rng.randrange(3, len(data))] = rng.choice(
            [0x00, 0x01, 0x0C, 0x0D, 0x3B, 0xFE, 0xFF, rng.randrange(256)]
        )
        return bytes(data)
    if choice == 3:  # extend with junk
        return bytes(data) + rng.randbytes(rng.randrange(1, 40))
    if choice == 4 and len(data) > 4:  # drop a byte from the middle
        del data[rng.randrange(3, len(data))]
        return bytes(data)
    if choice == 5:  # a different header on the same payload
        return bytes([rng.randrange(256), rng.randrange(256), rng.randrange(256)]) + bytes(data[3:])
    return rng.randbytes(rng.randrange(0, 64))  # plain noise


@pytest.mark.fuzz
def test_random_and_mutated_frames_raise_only_decode_error() -> None:
    """Random, truncated, bit-flipped and mis-length frames raise DecodeError and nothing else."""
    rng = random.Random(SEED)
    frames = corpus(rng, 400)
    decoded = rejected = 0
    for case in range(CASES):
        cluster, frame = frames[case % len(frames)]
        if rng.random() < 0.1:
            cluster = rng.choice([*CLUSTERS, 0x0006, 0xFFFF, -1])
        bad = mutate(rng, frame)
        try:
            message = sep1.decode(cluster, bad)
        except sep1.DecodeError as error:
            assert str(error), "a DecodeError must say why"
            rejected += 1
        except Exception as error:  # pragma: no cover - this is the failure being hunted
            pytest.fail(
                f"case {case} (seed {SEED}): {type(error).__name__}: {error} "
                f"for cluster {cluster} frame {bad.hex()}"
            )
        else:
            assert isinstance(message, sep1.Message)
            decoded += 1
    # Both outcomes must occur, or the mutations are not exercising the decoder.
    assert rejected > CASES // 10 and decoded > CASES // 100, (decoded, rejected)


def test_decode_refuses_non_bytes_with_decode_error() -> None:
    """Input that is not bytes at all is still only a DecodeError."""
    for junk in (None, "0901", 12, [9, 1, 0]):
        with pytest.raises(sep1.DecodeError):
            sep1.decode(sep1.DRLC, junk)  # type: ignore[arg-type]
    with pytest.raises(sep1.DecodeError):
        sep1.decode("0x0701", b"\x09\x01\x00")  # type: ignore[arg-type]
