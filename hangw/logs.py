"""Structured logs: structlog JSON (or readable lines on a terminal), one pipeline for everything.

Twisted's and the standard library's log records go through the same processors. Install codes,
link keys and private keys are never logged; as a second line of defence any event key named like
a secret is replaced with ``"<redacted>"``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_KEYS = frozenset({"install_code", "link_key", "private_key", "key", "secret", "password"})


def redact_secrets(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for name in list(event):
        if name.lower() in SECRET_KEYS:
            event[name] = "<redacted>"
    return event


def is_enabled(logger: Any, level: int) -> bool:
    """Would ``logger`` emit at ``level``? Lets a hot loop skip building events nobody keeps.

    A stdlib logger says ``isEnabledFor``, structlog's filtering loggers (what ``configure`` sets
    up) ``is_enabled_for``; a logger that says neither is taken to emit everything.
    """
    check = getattr(logger, "isEnabledFor", None) or getattr(logger, "is_enabled_for", None)
    return True if check is None else bool(check(level))


class LineWriter(structlog.WriteLogger):
    """structlog's ``WriteLogger``, except that a line the stream refuses (closed, disk full) is
    never an error of the code that logged it: the line is dropped and the failure told once on
    the process's own stderr, as the standard library's handlers do."""

    _told = False

    def msg(self, message: str) -> None:
        try:
            super().msg(message)
        except (OSError, ValueError) as error:
            if not LineWriter._told:
                LineWriter._told = True
                try:
                    print(f"hangw: a log line could not be written: {error}", file=sys.__stderr__)
                except (OSError, ValueError, AttributeError):
                    pass

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Set up structlog and route stdlib logging (Twisted, zigpy, SQLAlchemy) through it.

    hangw's own events go the short way: a logger that drops events below ``level`` before any
    work, the processors, and a write of the rendered line (about 8 us an event, against 22 us
    through the standard library's records, handlers and formatter). Other libraries' records
    are rendered by the same processors as they pass the standard library's root handler.
    """
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and hasattr(stream, "isatty") and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    # JSON lines carry the traceback as text; the console renderer draws its own
    tracebacks: list[Any] = [] if console else [structlog.processors.format_exc_info]
    threshold = getattr(logging, level.upper())
    structlog.configure(
        processors=[*shared, *tracebacks, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *_: LineWriter(stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # a record's extra fields first, so that redact_secrets sees them too
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tracebacks,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(threshold)
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)


def route_twisted_logs() -> None:
    """Send Twisted's own log events into the stdlib pipeline configured above."""
    from twisted.logger import STDLibLogObserver, globalLogBeginner

    globalLogBeginner.beginLoggingTo([STDLibLogObserver(name="twisted")], redirectStandardIO=False)
