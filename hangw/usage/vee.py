"""VEE flags: what validation found in a stored ESI ID-day (the TDSP did the estimation).

Flags are stored with the day and reported with it; hangw never changes a value because of one.
A record that cannot be stored at all (wrong interval count, sort codes out of order, a value
that is not a number, a duplicate ESI ID-day in one file) is rejected instead, with its line.
"""

from __future__ import annotations

import enum


class Flag(enum.IntFlag):
    #: At least one interval was blank.
    MISSING = 1
    #: A negative value on the consumption channel (4).
    NEGATIVE = 2
    #: The highest interval exceeds ``spike_ratio`` times the third-highest.
    SPIKE = 4
    #: ``zero_run`` or more consecutive intervals of exactly zero.
    ZEROS = 8
    #: The day total differs from the difference of the midnight register reads.
    SUM_CHECK = 16
    #: The TDSP marked the record invalid (header row 00000001, last field Y).
    INVALID = 32


def names(flags: int) -> list[str]:
    """The flags' names, lowest bit first (``["MISSING", "SPIKE"]``)."""
    return [flag.name or "" for flag in Flag if flags & flag]
