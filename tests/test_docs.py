"""Documents generated from the code are in step with it."""

from hangw.docs_gen import DOCS, GENERATED


def test_generated_docs_are_current() -> None:
    """docs/ holds exactly what `python -m hangw.docs_gen` would write now."""
    for name, render in GENERATED.items():
        assert (DOCS / name).read_text() == render(), f"run python -m hangw.docs_gen ({name})"
