"""The LSE parser: exact values, DST days in UTC, strict rejections with their lines, VEE flags."""

from __future__ import annotations

import calendar
import struct
from collections.abc import Callable

import pytest

from hangw.usage import lse
from hangw.usage.vee import Flag

SENDER = "666666666"


def header(
    esiid: str,
    day: str,
    *,
    channel: int = 4,
    tran: str = "T1",
    created: str = "20260101000000",
    invalid: str = "N",
) -> list[str]:
    return [
        f"00000001,{esiid},{channel},{day}000000,{day}235900,Y,{invalid}",
        "00000002,0,0,0,,0,,900,01,1,-1,0.0,0.0,CST",
        f"00000003,{tran}",
        f"00000004,{created},M",
        f"00000030,ATTRIBUTE_VALUE_PAIRS,MRE=666666666,Sender={SENDER},Receiver=183529049,REP=111111111",
    ]


def details(values: list[str], statuses: list[str] | None = None) -> list[str]:
    statuses = statuses or ["A"] * len(values)
    rows = []
    for r in range(0, len(values), 4):
        cells = "".join(
            f"{v},{s},," for v, s in zip(values[r : r + 4], statuses[r : r + 4], strict=False)
        )
        rows.append(f"{10000000 + r // 4},{cells}")
    return rows


def record(
    esiid: str, day: str, values: list[str], statuses: list[str] | None = None, **kw: object
) -> list[str]:
    return header(esiid, day, **kw) + details(values, statuses)  # type: ignore[arg-type]


def wh(row: lse.Row) -> list[int]:
    data = row[6]
    return list(struct.unpack(f"<{len(data) // 4}i", data))


def utc(*parts: int) -> int:
    return calendar.timegm((*(*parts, 0, 0, 0, 0)[:6], 0, 0, 0))


def test_sample_record_parses_to_exact_values() -> None:
    """The sample record of lse-format.md gives its ESI ID, version, Sender, Wh and E mask."""
    sample = [
        "00000001,1000000000000000,4,20080510000000,20080510235900,Y,N",
        "00000002,0,0,0,,0,,900,01,1,-1,0.0,0.0,CST",
        "00000003,UNIQUETRANID0123456789",
        "00000004,20080519112825,M",
        "00000030,ATTRIBUTE_VALUE_PAIRS,MRE=666666666,Sender=666666666,Receiver=183529049,REP=111111111",
        "10000000,68.29,A,,69.17,A,,67.99,A,,67.99,A,,",
        "10000001,66.81,E,,66.52,E,,67.11,E,,67.11,E,,",
    ]
    rest = [f"{10000002 + r},1.000,A,,2.000,A,,3.000,A,,4.000,A,," for r in range(22)]
    parsed = lse.parse("\n".join(sample + rest) + "\n")
    assert parsed.rejections == []
    [row] = parsed.rows
    assert row[0:4] == ("1000000000000000", 20080510, 4, "666666666")
    assert row[4] == utc(2008, 5, 10, 5, 0, 0)  # local midnight, CDT (UTC-5)
    assert row[5] == 96
    values = wh(row)
    assert values[:8] == [68290, 69170, 67990, 67990, 66810, 66520, 67110, 67110]
    assert values[8:12] == [1000, 2000, 3000, 4000]
    assert row[7] is None  # nothing missing
    assert row[8] == bytes([0b11110000]) + bytes(11)  # intervals 5-8 estimated
    assert row[9] == sum(values)
    assert row[10:12] == (0, 4)
    assert row[13] == "20080519112825:UNIQUETRANID0123456789"
    assert row[14] == 1


def test_spring_day_has_92_intervals_from_local_midnight_in_utc() -> None:
    """2026-03-08 (spring forward) is 92 intervals from 06:00Z to the next local midnight 05:00Z."""
    parsed = lse.parse("\n".join(record("E1", "20260308", ["0.500"] * 92)))
    [row] = parsed.rows
    start, count = row[4], row[5]
    assert (start, count) == (utc(2026, 3, 8, 6, 0, 0), 92)
    assert start + 8 * 900 == utc(2026, 3, 8, 8, 0, 0)  # 03:00 CDT follows 01:45 CST
    assert start + 92 * 900 == utc(2026, 3, 9, 5, 0, 0)


def test_fall_day_has_100_intervals_and_the_repeated_hour_is_distinct_in_utc() -> None:
    """2026-11-01 (fall back) is 100 intervals from 05:00Z; the two 01:00 hours are 1 h apart."""
    parsed = lse.parse("\n".join(record("E1", "20261101", [f"{k / 1000:.3f}" for k in range(100)])))
    [row] = parsed.rows
    start, count = row[4], row[5]
    assert (start, count) == (utc(2026, 11, 1, 5, 0, 0), 100)
    assert start + 4 * 900 == utc(2026, 11, 1, 6, 0, 0)  # first 01:00 (CDT)
    assert start + 8 * 900 == utc(2026, 11, 1, 7, 0, 0)  # second 01:00 (CST)
    assert start + 100 * 900 == utc(2026, 11, 2, 6, 0, 0)
    assert wh(row) == list(range(100))


def test_95_intervals_on_a_96_day_is_rejected_with_its_line() -> None:
    """A record one interval short is rejected at its 00000001 line; the next record loads."""
    short = header("E1", "20260510") + details(["1.0"] * 95)
    good = record("E2", "20260510", ["1.0"] * 96)
    parsed = lse.parse("\n".join(short + good))
    assert [r[0] for r in parsed.rows] == ["E2"]
    [rejection] = parsed.rejections
    assert rejection.line == 1
    assert "95 intervals" in rejection.reason and "96" in rejection.reason
    assert (rejection.esiid, rejection.day) == ("E1", 20260510)


def test_a_96_record_on_the_spring_day_is_rejected() -> None:
    """The count is judged by the local day: 96 intervals on 2026-03-08 is wrong (92)."""
    parsed = lse.parse("\n".join(record("E1", "20260308", ["1.0"] * 96)))
    assert parsed.rows == []
    assert "92" in parsed.rejections[0].reason


def test_blank_value_is_missing_not_zero() -> None:
    """A blank value is stored as missing (mask bit, not in the total) and flagged MISSING."""
    values = ["1.000"] * 96
    statuses = ["A"] * 96
    values[5], statuses[5] = "", ""
    parsed = lse.parse("\n".join(record("E1", "20260510", values, statuses)))
    [row] = parsed.rows
    assert parsed.rejections == []
    assert row[7] == bytes([0b00100000]) + bytes(11)
    assert row[9] == 95 * 1000 and row[10] == 1
    assert row[12] & Flag.MISSING


@pytest.mark.parametrize("position", [0, 1, 95])
def test_blank_value_with_a_status_is_missing_wherever_it_is(position: int) -> None:
    """A blank value is missing even with status A, in the first interval as in any other."""
    values = ["1.000"] * 96
    values[position] = ""
    parsed = lse.parse("\n".join(record("E1", "20260510", values)))
    assert parsed.rejections == []
    [row] = parsed.rows
    assert row[9] == 95 * 1000 and row[10] == 1
    assert row[12] & Flag.MISSING


def test_a_value_padded_with_spaces_or_tabs_is_read() -> None:
    """A value with ASCII spaces or tabs around it is read as the number it holds."""
    values = ["1.000"] * 96
    values[0], values[1] = " 2.000", "3.000\t"
    parsed = lse.parse("\n".join(record("E1", "20260510", values)))
    assert parsed.rejections == []
    [row] = parsed.rows
    assert row[9] == 94 * 1000 + 2000 + 3000


def test_unknown_header_rows_are_skipped() -> None:
    """An unknown 0000xxxx row inside a record's headers is skipped, not rejected."""
    lines = record("E1", "20260510", ["1.0"] * 96)
    lines.insert(4, "00000042,SOMETHING,NEW")
    parsed = lse.parse("\n".join(lines))
    assert parsed.rejections == [] and len(parsed.rows) == 1


def test_crlf_line_ends_parse_like_lf() -> None:
    """Files written with CRLF give the same rows as LF ones."""
    lines = record("E1", "20260510", ["1.250"] * 96)
    assert lse.parse("\r\n".join(lines)).rows == lse.parse("\n".join(lines)).rows


@pytest.mark.parametrize(
    ("mutate", "line", "words"),
    [
        (
            lambda ls: ls.__setitem__(7, ls[7].replace("10000002", "10000003")),
            8,
            "sort code 10000003",
        ),
        (lambda ls: ls.__setitem__(6, ls[6].replace("1.0,A", "1.0,X", 1)), 7, "status 'X'"),
        (
            lambda ls: ls.__setitem__(6, ls[6].replace("1.0,A", "abc,A", 1)),
            7,
            "'abc' is not a number",
        ),
        (
            lambda ls: ls.__setitem__(6, ls[6].replace("1.0,A", "nan,A", 1)),
            7,
            "interval 5 value is not finite",
        ),
        (
            lambda ls: ls.__setitem__(7, ls[7].replace("1.0,A", "1e30,A", 1)),
            8,
            "interval 9 value is not finite or larger than 2,147,483 kWh",
        ),
        (lambda ls: ls.__setitem__(6, ls[6] + "9.9,"), 7, "14 fields"),
        (lambda ls: ls.__setitem__(6, ls[6] + "5"), 7, "13 fields"),
        (
            lambda ls: ls.__setitem__(7, "10000002,1.0,A,,A,,1.0,A,,1.0,A,,"),
            8,
            "interval 10 has its status A where its value belongs",
        ),
        (
            lambda ls: ls.__setitem__(7, "10000002,1.0,A,,A,,1.0,A,,1.0,A,,9.9,"),
            8,
            "interval 10 has its status A where its value belongs",
        ),
        (
            lambda ls: ls.__setitem__(6, ls[6].replace("1.0,A", "1_000,A", 1)),
            7,
            "'1_000' is not a number",
        ),
        (
            lambda ls: ls.__setitem__(6, ls[6].replace("1.0,A", "\u0661.0,A", 1)),
            7,
            "'\u0661.0' is not a number",
        ),
        (lambda ls: ls.__setitem__(2, "00000003," + "T" * 82), 3, "longer than 81 characters"),
        (
            lambda ls: ls.__setitem__(2, "00000003,T\x001"),
            3,
            "has a character that is not printable",
        ),
        (
            lambda ls: ls.__setitem__(4, ls[4].replace("Sender=666666666", "Sender=6\x0066")),
            5,
            "has a character that is not printable",
        ),
        (
            lambda ls: ls.__setitem__(4, ls[4].replace("Sender=666666666", "Sender=" + "6" * 17)),
            5,
            "longer than 16 characters",
        ),
        (lambda ls: ls.__setitem__(6, ls[6].replace("1.0,A", "1.0,", 1)), 7, "no status"),
        (lambda ls: ls.__setitem__(1, ls[1].replace(",900,", ",300,")), 2, "seconds per interval"),
        (lambda ls: ls.__setitem__(1, ls[1].replace(",01,", ",02,")), 2, "unit of measure"),
        (lambda ls: ls.__setitem__(0, ls[0].replace(",4,", ",7,")), 1, "channel '7'"),
        (
            lambda ls: ls.__setitem__(0, ls[0].replace("20260510000000", "20260532000000")),
            1,
            "not a real date",
        ),
        (
            lambda ls: ls.__setitem__(0, ls[0].replace("20260510", "99991231")),
            1,
            "start time '99991231000000' is not in the years 2000 to 2199",
        ),
        (
            lambda ls: ls.__setitem__(3, ls[3].replace("20260101000000", "99990101000000")),
            4,
            "creation timestamp (row 00000004) '99990101000000' is not in the years",
        ),
        (lambda ls: ls.__delitem__(2), 1, "transaction id"),
        (lambda ls: ls.__delitem__(3), 1, "creation timestamp"),
        (lambda ls: ls.insert(10, "garbage, not LSE"), 11, "not an LSE row"),
    ],
)
def test_malformed_record_is_rejected_with_line_and_reason(
    mutate: Callable[[list[str]], None], line: int, words: str
) -> None:
    """Each malformed record is rejected with the line at fault; the record after it still loads."""
    bad = record("E1", "20260510", ["1.0"] * 96)
    mutate(bad)
    good = record("E2", "20260510", ["1.0"] * 96)
    parsed = lse.parse("\n".join(bad + good))
    assert [r[0] for r in parsed.rows] == ["E2"]
    assert len(parsed.rejections) == 1, parsed.rejections
    assert parsed.rejections[0].line == line
    assert words in parsed.rejections[0].reason


def test_faults_that_cancel_out_across_records_shift_no_value() -> None:
    """A stray field in one record and a left-out value in the next reject both, at their lines."""
    stray = record("E1", "20260510", ["1.0"] * 96)
    stray[5] += "9.0,"
    left_out = record("E2", "20260510", ["2.0"] * 96, ["A"] * 96)
    left_out[5] = left_out[5].replace("2.0,A,,2.0,A,,2.0,A,,", "2.0,A,,2.0,A,,A,,", 1)
    good = record("E3", "20260510", ["3.0"] * 96)
    parsed = lse.parse("\n".join(stray + left_out + good))
    assert [(r.line, r.esiid) for r in parsed.rejections] == [(6, "E1"), (len(stray) + 6, "E2")]
    (row,) = parsed.rows
    assert (row[0], wh(row)) == ("E3", [3000] * 96)


@pytest.mark.parametrize(
    ("value", "status", "words"),
    [
        ("nan", "A", "interval 81 value is not finite"),
        ("abc", "A", "interval 81 value 'abc' is not a number"),
        ("1.0", "X", "interval 81 has status 'X'"),
    ],
)
def test_a_fault_in_rows_of_eight_intervals_is_named_at_its_own_line(
    value: str, status: str, words: str
) -> None:
    """With eight intervals a row, a bad interval is named at its row, not a line of the next."""
    values, statuses = ["1.0"] * 96, ["A"] * 96
    values[80], statuses[80] = value, status
    rows = [
        f"{10000000 + r},"
        + "".join(
            f"{v},{s},,"
            for v, s in zip(values[8 * r : 8 * r + 8], statuses[8 * r : 8 * r + 8], strict=True)
        )
        for r in range(12)
    ]
    bad = header("E1", "20260510") + rows
    parsed = lse.parse("\n".join(bad + record("E2", "20260510", ["1.0"] * 96)))
    assert [r[0] for r in parsed.rows] == ["E2"]
    ((line, reason),) = [(r.line, r.reason) for r in parsed.rejections]
    assert (line, bad[line - 1][:8]) == (16, "10000010")
    assert words in reason


def test_a_character_run_on_from_one_row_into_the_next_is_rejected() -> None:
    """A row ending in a stray character is rejected, not read into the next row's first value."""
    bad = record("E1", "20260510", ["0.375"] * 4 + ["0.327"] * 92)
    bad[5] += "5"  # would read 50.327 kWh for interval 5 if the rows were read as one text
    parsed = lse.parse("\n".join(bad))
    assert parsed.rows == []
    assert [(r.line, r.esiid) for r in parsed.rejections] == [(6, "E1")]


def test_record_created_in_the_future_is_rejected() -> None:
    """A creation timestamp after ``latest_created`` is rejected at its line, the next loads."""
    ahead = record("E1", "20260510", ["1.0"] * 96, created="20261124120001")
    now = record("E2", "20260510", ["1.0"] * 96, created="20261124120000")
    parsed = lse.parse("\n".join(ahead + now), latest_created="20261124120000")
    assert [r[0] for r in parsed.rows] == ["E2"]
    [rejection] = parsed.rejections
    assert rejection.line == 4 and "20261124120001 is in the future" in rejection.reason


def test_garbage_outside_records_is_reported_and_records_load() -> None:
    """Lines before the first record are rejected one by one; the records are kept."""
    lines = ["\x00\x01 binary junk", "hello", *record("E1", "20260510", ["1.0"] * 96)]
    parsed = lse.parse("\n".join(lines))
    assert [r.line for r in parsed.rejections] == [1, 2]
    assert len(parsed.rows) == 1 and parsed.rows[0][14] == 3


def test_sender_must_match_the_tdsp_delivering() -> None:
    """A record whose Sender is not the TDSP whose drop directory it came in is rejected."""
    parsed = lse.parse("\n".join(record("E1", "20260510", ["1.0"] * 96)), tdsp_duns="1039940674000")
    assert parsed.rows == []
    assert "Sender is '666666666'" in parsed.rejections[0].reason


def test_vee_flags_negative_spike_zeros_invalid() -> None:
    """Negative load, a spike, a zero run and the TDSP's invalid mark are flagged; values kept."""
    base = ["1.000"] * 96
    negative = list(base)
    negative[3] = "-0.500"
    spike = list(base)
    spike[40] = "9.000"
    zeros = list(base)
    zeros[10:22] = ["0.000"] * 12
    eleven = list(base)
    eleven[10:21] = ["0.000"] * 11
    lines = (
        record("NEG", "20260510", negative)
        + record("SPIKE", "20260510", spike)
        + record("ZEROS", "20260510", zeros)
        + record("ELEVEN", "20260510", eleven)
        + record("INVALID", "20260510", base, invalid="Y")
        + record("GEN", "20260510", negative, channel=1)
        + record("CLEAN", "20260510", base)
    )
    parsed = lse.parse("\n".join(lines), vee=lse.VeeSettings(spike_ratio=1.5, zero_run=12))
    flags = {row[0]: row[12] for row in parsed.rows}
    assert flags == {
        "NEG": Flag.NEGATIVE,
        "SPIKE": Flag.SPIKE,
        "ZEROS": Flag.ZEROS,
        "ELEVEN": 0,
        "INVALID": Flag.INVALID,
        "GEN": 0,  # generation may be negative
        "CLEAN": 0,
    }
    assert wh(next(r for r in parsed.rows if r[0] == "SPIKE"))[40] == 9000


def test_pieces_parse_like_the_whole() -> None:
    """Cutting a file at record boundaries and parsing the pieces gives the same rows and lines."""
    lines: list[str] = []
    for n in range(400):
        lines += record(f"E{n}", "20260510", [f"{(n * 7 + k) % 900 / 1000:.3f}" for k in range(96)])
        if n == 123:
            lines.append("garbage")
    data = ("\n".join(lines) + "\n").encode()
    whole = lse.parse(data.decode())
    pieces = lse.split_records(data * 4, 4)  # big enough to be cut
    assert len(pieces) > 1 and b"".join(pieces) == data * 4
    rows: list[tuple[object, ...]] = []
    rejected: list[int] = []
    offset = 0
    for piece in pieces:
        part, count = lse.parse_piece(piece, None, lse.VeeSettings())
        rows += [(*row[:-1], row[-1] + offset) for row in part.rows]
        rejected += [r.line + offset for r in part.rejections]
        offset += count
    assert rows[: len(whole.rows)] == whole.rows
    assert rejected[: len(whole.rejections)] == [r.line for r in whole.rejections]
    assert rows[len(whole.rows)][14] == len(lines) + 1  # line numbers run on across pieces
