"""Documents generated from the code are in step with it."""

import re
from pathlib import Path

import pytest

from hangw.docs_gen import DOCS, GENERATED


def test_generated_docs_are_current() -> None:
    """docs/ holds exactly what `python -m hangw.docs_gen` would write now."""
    for name, render in GENERATED.items():
        assert (DOCS / name).read_text() == render(), f"run python -m hangw.docs_gen ({name})"


def test_sep1_guide_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python examples in docs/sep1.md run as written against the current sep1."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "sep1.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)

    class Clock:
        def seconds(self) -> float:
            return 1_795_000_000.0

    namespace: dict[str, object] = {"clock": Clock()}
    exec(blocks[0], namespace)  # defines event and frame
    import sep1

    namespace["reply_frame"] = sep1.encode(
        sep1.ReportEventStatus(1001, sep1.EventStatus.COMMAND_RECEIVED, 800_000_000, 3), 7
    )
    exec(blocks[1], namespace)
    capture = (tmp_path / "sent.pcap").read_bytes()
    assert capture[:4] == bytes.fromhex("d4c3b2a1") and len(capture) > 24 + 2 * 16
