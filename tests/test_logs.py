"""The logging pipeline's helpers."""

from __future__ import annotations

import logging

import structlog

from hangw import logs


def test_is_enabled_answers_for_both_kinds_of_logger() -> None:
    """The level check works for the configured stdlib logger and structlog's default one."""
    assert logs.is_enabled(structlog.get_logger("default"), logging.INFO)
    logs.configure("warning", "json")
    try:
        configured = structlog.get_logger("configured")
        assert not logs.is_enabled(configured, logging.INFO)
        assert logs.is_enabled(configured, logging.WARNING)
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
