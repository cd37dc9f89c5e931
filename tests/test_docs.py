"""Documents are in step with the code: those generated from it, and the configuration table."""

import re
from dataclasses import fields
from pathlib import Path

import pytest

from hangw import config
from hangw.config import DEFAULT_CONFIG_PATH, from_mapping, load
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


def configuration_table() -> str:
    """The table under docs/operations.md's "## Configuration": its rows up to the first line
    that is not one (a blank line ends a Markdown table; rows after it render as loose text)."""
    text = (DOCS / "operations.md").read_text()
    lines = text.split("## Configuration\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def test_operations_configuration_table_names_every_key() -> None:
    """Every configuration key of hangw.config is a row of the one configuration table."""
    table = configuration_table()
    defaults = config.Config()
    for section in (f.name for f in fields(defaults) if f.name not in ("adapters", "source")):
        for key in (f.name for f in fields(getattr(defaults, section))):
            assert f"`{section}.{key}`" in table or f"`[{section}.{key}]`" in table, (
                f"{section}.{key} is not in the configuration table of docs/operations.md"
            )


def test_operations_says_where_the_default_drop_directories_come_from() -> None:
    """The code has no drop directory; the docs say the embedded default file's come from it."""
    assert from_mapping({}).usage.drop_dirs == {}
    row = next(r for r in configuration_table().splitlines() if "`[usage.drop_dirs]`" in r)
    default = row.split("|")[2]
    assert default.strip().startswith("none") and "`config/hangw.toml`" in default, row
    for path in load(DEFAULT_CONFIG_PATH).usage.drop_dirs.values():
        assert f"`{path}`" in default
