"""hangw's messaging commands: send, cancel, cancel-all, status, log, group.

All of them go over the HTTPS API with a party's certificate. ``send --wait`` and ``status
--wait`` draw a progress bar (on standard error) until every delivery of a request settled.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, TextIO
from urllib.parse import quote, urlencode

from hangw.cli_common import CommandError, output_file, read_esiids

SEND_KINDS = {"lce": "LCE", "price": "PRM", "text": "STM"}
#: Options of ``send`` that are passed as request fields, by kind (all integers unless listed).
_LCE_FIELDS = (
    "issuer_event_id",
    "device_class",
    "enrollment_group",
    "duration_minutes",
    "criticality",
    "cooling_temperature_offset",
    "heating_temperature_offset",
    "cooling_temperature_set_point",
    "heating_temperature_set_point",
    "average_load_adjustment_percentage",
    "duty_cycle",
)
_PRICE_FIELDS = (
    "issuer_event_id",
    "provider_id",
    "price",
    "price_trailing_digit",
    "price_tier",
    "currency",
    "duration_minutes",
)
_TEXT_FIELDS = ("message_id", "duration_minutes")


def add_commands(sub: Any, api_command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add the messaging commands to the ``hangw`` parser."""
    p = api_command("send", "send a price, load control event or text to ESI IDs or a group")
    p.add_argument("kind", choices=sorted(SEND_KINDS), help="lce, price or text")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--esiid", action="append", help="an ESI ID (repeat for more)")
    target.add_argument("--esiids-file", help="a file with one ESI ID per line")
    target.add_argument("--group", help="a group of yours (hangw group put)")
    for name in sorted({*_LCE_FIELDS, *_PRICE_FIELDS, *_TEXT_FIELDS}):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=int)
    p.add_argument("--start-time", help="ISO-8601 time with a zone (default: now)")
    p.add_argument("--randomize-start", action="store_true")
    p.add_argument("--randomize-end", action="store_true")
    p.add_argument("--rate-label", help="price: the rate label (up to 12 bytes)")
    p.add_argument("--message", help="text: what the display shows")
    p.add_argument("--importance", choices=["low", "medium", "high", "critical"])
    p.add_argument("--confirm", action="store_true", help="text: ask the user to confirm")
    p.add_argument("--wait", action="store_true", help="show progress until every delivery settled")
    p = api_command("cancel", "cancel a load control event (CLE) or text (CSM) you sent")
    p.add_argument("request_id")
    p.add_argument("--effective-time", help="ISO-8601 (default: now)")
    p.add_argument("--randomize-end", action="store_true")
    p = api_command("cancel-all", "cancel every load control event on an ESI ID or group (CAL)")
    p.add_argument("esiid", nargs="?")
    p.add_argument("--group")
    p = api_command("status", "a messaging request's progress: deliveries by status code")
    p.add_argument("request_id")
    p.add_argument("--wait", action="store_true", help="show progress until every delivery settled")
    p = api_command("log", "the message log (SMT columns), as a table or a CSV file")
    for name in ("request_id", "esiid", "category", "status", "from", "to"):
        p.add_argument("--" + name.replace("_", "-"), dest="filter_" + name)
    p.add_argument(
        "--csv", metavar="FILE", help="write the whole log as CSV to FILE (- for stdout)"
    )
    p.add_argument("--limit", type=int, default=100, help="table rows to show (default 100)")
    p = api_command("group", "named ESI ID groups (demand-response programs)")
    p.add_argument("action", choices=["put", "list", "show", "delete"])
    p.add_argument("name", nargs="?")
    p.add_argument("file", nargs="?", help="put: a file with one ESI ID per line")


#: ``send`` options that are not integer fields, and the kinds that take each.
_OTHER_OPTIONS = {
    "randomize_start": ("lce",),
    "randomize_end": ("lce",),
    "rate_label": ("price",),
    "message": ("text",),
    "importance": ("text",),
    "confirm": ("text",),
}


def _options_not_taken(args: argparse.Namespace) -> list[str]:
    """The options given that this kind of message does not take, each with the kinds that do:
    the API refuses such a field (422), and left out here they would vanish in silence."""
    fields = {"lce": _LCE_FIELDS, "price": _PRICE_FIELDS, "text": _TEXT_FIELDS}
    taken_by = {
        name: tuple(kind for kind, names in fields.items() if name in names)
        for name in {*_LCE_FIELDS, *_PRICE_FIELDS, *_TEXT_FIELDS}
    }
    taken_by.update(_OTHER_OPTIONS)
    wrong = []
    for name, kinds in sorted(taken_by.items()):
        value = getattr(args, name, None)
        if value not in (None, False) and args.kind not in kinds:
            wrong.append(f"--{name.replace('_', '-')} ({', '.join(kinds)} only)")
    return wrong


def send_body(args: argparse.Namespace) -> dict[str, Any]:
    kind = SEND_KINDS[args.kind]
    wrong = _options_not_taken(args)
    if wrong:
        raise CommandError(
            f"send {args.kind} does not take {', '.join(wrong)}; leave "
            f"{'it' if len(wrong) == 1 else 'them'} out"
        )
    body: dict[str, Any] = {"category": kind}
    if args.group:
        body["group"] = args.group
    elif args.esiids_file:
        body["esiids"] = read_esiids(args.esiids_file)
    else:
        body["esiids"] = args.esiid
    names = {"LCE": _LCE_FIELDS, "PRM": _PRICE_FIELDS, "STM": _TEXT_FIELDS}[kind]
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            body[name] = value
    if args.start_time:
        body["start_time"] = args.start_time
    if kind == "LCE":
        body["randomize_start"] = args.randomize_start
        body["randomize_end"] = args.randomize_end
    if kind == "PRM" and args.rate_label is not None:
        body["rate_label"] = args.rate_label
    if kind == "STM":
        body["message"] = args.message or ""
        body["confirmation_required"] = args.confirm
        if args.importance:
            body["importance"] = args.importance
    return body


def progress_bar(done: int, total: int, width: int = 30) -> str:
    """``[#####.....]  50.0%  5/10``: how far a request got."""
    share = done / total if total else 1.0
    filled = round(share * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {share * 100:5.1f}%  {done}/{total}"


def wait_settled(
    client: Any,
    request_id: str,
    out: TextIO,
    interval: float = 0.5,
    *,
    every_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Poll the request until every delivery settled, drawing a progress bar on ``out``.

    On a terminal the bar is redrawn in place at every poll; to a file or pipe a line is
    written when the progress changed and ``every_s`` passed since the last one, and at the end.
    """
    tty = out.isatty()
    last_text, last_at = "", -every_s
    while True:
        summary = client.get(f"/v1/messages/{quote(request_id, safe='')}")
        line = progress_bar(summary["settled"], summary["deliveries"])
        codes = " ".join(f"{c}={n}" for c, n in summary["statuses"].items() if n)
        text = f"{line}  {codes}"
        if tty:
            out.write(f"\r{text}\033[K")
        elif summary["complete"] or (text != last_text and clock() - last_at >= every_s):
            out.write(f"{text}\n")
            last_text, last_at = text, clock()
        out.flush()
        if summary["complete"]:
            if tty:
                out.write("\n")
            return summary
        sleep(interval)


def _print_summary(summary: dict[str, Any]) -> None:
    extra = f" cancellation {summary['cancellation_id']}" if summary.get("cancellation_id") else ""
    print(
        f"{summary['category']} request {summary['request_id']}{extra}: "
        f"{summary['targets']} ESI ID(s), {summary['deliveries']} deliveries, "
        f"{summary['settled']} settled"
    )
    codes = ", ".join(f"{c} {n}" for c, n in summary["statuses"].items() if n)
    if codes:
        print(f"  {codes}")
    for warning in summary.get("warnings", ()):
        print(f"  warning: {warning}")


def _shown(summary: dict[str, Any], args: argparse.Namespace) -> Any | None:
    """The summary for ``--json`` to print, or None after printing it as text."""
    if args.json:
        return summary
    _print_summary(summary)
    return None


def run(client: Any, args: argparse.Namespace) -> Any | None:
    """Do one messaging command; returns what to print (None when it printed already)."""
    command = args.command
    if command == "send":
        summary = client.post("/v1/messages", send_body(args), str(uuid.uuid4()))
        if args.json and not args.wait:
            return summary
        _print_summary(summary)
        if args.wait:
            summary = wait_settled(client, summary["request_id"], sys.stderr)
            _print_summary(summary)
        return None
    if command == "cancel":
        body: dict[str, Any] = {"randomize_end": args.randomize_end}
        if args.effective_time:
            body["effective_time"] = args.effective_time
        path = f"/v1/messages/{quote(args.request_id, safe='')}/cancel"
        summary = client.post(path, body, str(uuid.uuid4()))
        return _shown(summary, args)
    if command == "cancel-all":
        if bool(args.esiid) == bool(args.group):
            raise SystemExit("hangw cancel-all: give an ESI ID or --group NAME")
        where = f"groups/{quote(args.group, safe='')}" if args.group else f"esiids/{args.esiid}"
        summary = client.post(f"/v1/{where}/load-control/cancel-all", {}, str(uuid.uuid4()))
        return _shown(summary, args)
    if command == "status":
        if args.wait:
            summary = wait_settled(client, args.request_id, sys.stderr)
        else:
            summary = client.get(f"/v1/messages/{quote(args.request_id, safe='')}")
        return _shown(summary, args)
    if command == "log":
        query = {
            name.removeprefix("filter_"): value
            for name, value in vars(args).items()
            if name.startswith("filter_") and value
        }
        if args.csv:
            path = "/v1/message-log?" + urlencode({**query, "format": "csv"})
            with output_file(args.csv) as out:
                written = client.download(path, out)
            if args.csv != "-":
                print(f"wrote {written} bytes of message log to {args.csv}", file=sys.stderr)
            return None
        page = client.get("/v1/message-log?" + urlencode({**query, "limit": args.limit}))
        if args.json:
            return page
        for e in page["entries"]:
            print(
                f"{e['StatusTimestamp']}  {e['RequestID']}  {e['MessageStatusID']:>8}  "
                f"{e['ESIID']}  {e['DeviceMACAddr'] or '-':<16}  {e['EventCategoryID']}  "
                f"{e['StatusCode']}  {e['StatusDesc']}"
            )
        if page["next"]:
            print("(more: use --csv FILE for the whole log)", file=sys.stderr)
        return None
    if command == "group":
        if args.action == "list":
            groups = client.get("/v1/groups")
            if args.json:
                return groups
            for g in groups["groups"]:
                print(f"{g['name']:<24} {g['size']:>8} ESI IDs  updated {g['updated_at']}")
            return None
        if not args.name:
            raise SystemExit(f"hangw group {args.action}: give the group's name")
        path = f"/v1/groups/{quote(args.name, safe='')}"
        if args.action == "put":
            if not args.file:
                raise SystemExit("hangw group put: give a file with one ESI ID per line")
            group = client.request("PUT", path, {"esiids": read_esiids(args.file)})[1]
            if args.json:
                return group
            print(f"group {group['name']}: {group['size']} ESI IDs")
            return None
        if args.action == "show":
            group = client.get(path)
            if args.json:
                return group
            print("\n".join(group["esiids"]))
            return None
        client.delete(path)
        print(f"group {args.name} deleted")
        return None
    raise AssertionError(command)


COMMANDS = frozenset({"send", "cancel", "cancel-all", "status", "log", "group"})


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))
