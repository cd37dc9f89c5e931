"""The `hangw` messaging commands over the real API: group, send --wait, status, cancel, log."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import pytest_twisted

from hangw.cli_messaging import progress_bar, wait_settled
from tests.gateway_harness import E_OWN, Harness
from tests.test_cli import assert_refused_offline, cli_config, offline_cli, run_cli


def test_progress_bar_shows_share_and_counts() -> None:
    """The bar fills in proportion and says how many of how many."""
    assert progress_bar(5, 10, width=10) == "[#####.....]  50.0%  5/10"
    assert progress_bar(0, 0, width=4) == "[####] 100.0%  0/0"


@pytest_twisted.ensureDeferred
async def test_group_send_wait_status_cancel_and_log(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A REP puts a group from a file, sends an LCE to it and waits with a progress bar, cancels
    it, and writes the message log as CSV; a customer's send is refused with the reason."""
    config = str(cli_config(harness, tmp_path))
    api = ["--api", f"https://localhost:{harness.api_port}", "--as", "demo-rep-a"]
    members = tmp_path / "group.txt"
    members.write_text(f"# summer program\n{E_OWN}\n")
    assert await run_cli("--config", config, "group", "put", "summer", str(members), *api) == 0
    assert "group summer: 1 ESI IDs" in capsys.readouterr().out
    code = await run_cli(
        "--config", config, "send", "lce", "--group", "summer", "--device-class", "1",
        "--duration-minutes", "30", "--criticality", "3", "--issuer-event-id", "881", "--wait",
        *api,
    )  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    request_id = captured.out.split("LCE request ", 1)[1].split(":", 1)[0]
    assert "100.0%  1/1" in captured.err  # the progress bar reached the end
    assert "CON 1" in captured.out
    assert await run_cli("--config", config, "status", request_id, *api) == 0
    assert f"LCE request {request_id}" in capsys.readouterr().out
    assert await run_cli("--config", config, "cancel", request_id, *api) == 0
    assert "CLE request" in capsys.readouterr().out
    out_file = tmp_path / "log.csv"
    code = await run_cli(
        "--config", config, "log", "--request-id", request_id, "--csv", str(out_file), *api
    )
    assert code == 0
    rows = list(csv.DictReader(out_file.open()))
    assert {r["RequestID"] for r in rows} == {request_id}
    assert {r["EventCategoryID"] for r in rows} == {"LCE", "CLE"}
    assert [r["StatusCode"] for r in rows if r["EventCategoryID"] == "LCE"][:3] == [
        "RQA",
        "ACK",
        "CON",
    ]
    customer = ["--api", f"https://localhost:{harness.api_port}", "--as", "demo-customer"]
    code = await run_cli(
        "--config", config, "send", "text", "--esiid", E_OWN, "--message", "hi", *customer
    )
    assert code == 1
    assert "customers cannot send HAN messages" in capsys.readouterr().err


def test_local_files_are_read_and_opened_before_the_api_is_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing or binary ESI ID file, or a CSV that cannot be written, is said as such (exit 1)
    before anything is sent: not as an API that cannot be reached."""
    config, api = offline_cli(tmp_path)
    missing, binary = tmp_path / "nofile", tmp_path / "esiids.bin"
    binary.write_bytes(b"\xff\xfe\x00\x9c\x80 not text")
    cases = [
        (["send", "lce", "--esiids-file", str(missing), "--duration-minutes", "30"],
         f"hangw: cannot read {missing}: No such file or directory"),
        (["send", "text", "--esiids-file", str(binary), "--message", "hi"],
         f"hangw: {binary} is not a text file of ESI IDs (one per line, UTF-8)"),
        (["group", "put", "g", str(missing)], f"hangw: cannot read {missing}"),
        (["log", "--csv", "/nonexistent/x.csv"],
         "hangw: cannot write /nonexistent/x.csv: No such file or directory"),
    ]  # fmt: skip
    assert_refused_offline(capsys, config, api, cases)


def test_send_refuses_options_its_kind_does_not_take(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An option of another kind of message (--message on an LCE, --criticality on a text) is
    refused naming it and who takes it, before anything is sent, instead of vanishing."""
    config, api = offline_cli(tmp_path)
    lce = ["send", "lce", "--esiid", E_OWN, "--device-class", "1", "--duration-minutes", "10"]
    text = ["send", "text", "--esiid", E_OWN, "--message", "hi"]
    cases = [
        ([*lce, "--message", "hi"],
         "hangw: send lce does not take --message (text only); leave it out"),
        ([*text, "--device-class", "1", "--criticality", "3"],
         "hangw: send text does not take --criticality (lce only), --device-class (lce only); "
         "leave them out"),
        ([*text, "--price", "5", "--randomize-end"],
         "--price (price only), --randomize-end (lce only)"),
    ]  # fmt: skip
    assert_refused_offline(capsys, config, api, cases)


class _Polls:
    """A request that settles one delivery per poll, out of ``total``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.settled = 0

    def get(self, path: str) -> dict[str, object]:
        self.settled = min(self.total, self.settled + 1)
        return {
            "settled": self.settled,
            "deliveries": self.total,
            "statuses": {"CON": self.settled, "ACK": self.total - self.settled},
            "complete": self.settled == self.total,
        }


def test_wait_progress_to_a_file_writes_a_line_every_so_often_and_the_end() -> None:
    """Without a terminal, --wait writes a progress line at most every 10 s and the last one,
    not one per half-second poll."""
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    out = io.StringIO()
    summary = wait_settled(_Polls(100), "R1", out, clock=lambda: now[0], sleep=sleep)
    lines = out.getvalue().splitlines()
    assert summary["complete"]
    # 100 polls half a second apart: 49.5 s, so a line at 0, 10, 20, 30, 40 s and the end
    assert len(lines) == 6, lines
    assert lines[0].startswith("[") and "1/100" in lines[0]
    assert "100.0%  100/100" in lines[-1] and "CON=100" in lines[-1]
