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


def test_json_logs_carry_the_traceback_of_a_logged_exception() -> None:
    """log.exception in JSON output includes the traceback text, not just exc_info: true."""
    import io
    import json

    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    try:
        try:
            raise ValueError("the outbox could not be read")
        except ValueError:
            structlog.get_logger("t").exception("router.read_failed", tdsp="1")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["event"] == "router.read_failed"
    assert "Traceback" in line["exception"] and "the outbox could not be read" in line["exception"]


def test_hangw_events_and_library_records_come_out_alike() -> None:
    """hangw's events and stdlib records are alike JSON lines, redacted, filtered by level."""
    import io
    import json

    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    try:
        ours = structlog.get_logger("hangw.devices")
        ours.debug("device.detail", device="dev_1")
        ours.info("device.status", device="dev_1", install_code="83FED3407A939723A5C639B26916D505")
        library = logging.getLogger("zigpy.application")
        library.debug("frame details")
        library.warning("coordinator %s did not answer", "ember", extra={"link_key": "66b69009"})
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("device.status", "info"),
        ("coordinator ember did not answer", "warning"),
    ]
    assert lines[0]["install_code"] == lines[1]["link_key"] == "<redacted>"
    assert all(line["timestamp"].endswith("Z") for line in lines)


def test_a_log_line_the_stream_refuses_is_dropped_not_raised() -> None:
    """Logging to a closed stream neither raises into the caller nor stops later lines elsewhere."""
    import io

    closed = io.StringIO()
    logs.configure("info", "json", stream=closed)
    try:
        closed.close()
        structlog.get_logger("hangw.simulators").info("simulator.started", tdsp_duns="1")
        logging.getLogger("twisted").warning("a library's record")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
    again = io.StringIO()
    logs.configure("info", "json", stream=again)
    try:
        structlog.get_logger("hangw.simulators").info("simulator.stopped")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
    assert '"event": "simulator.stopped"' in again.getvalue()
