"""hangw's usage report commands: reports of one ESI ID, bulk report jobs, a daily usage chart.

``hangw usage interval|daily|monthly ESIID --from --to`` prints a table, or with ``--csv FILE``
writes the CSV (docs/usage.md lists its columns). ``hangw usage job submit|status|fetch`` runs a
bulk report job for up to 50,000 ESI IDs; ``--wait`` draws a progress bar on standard error until
it is done. ``hangw usage plot`` draws the daily usage into a PNG (the ``plot`` extra:
matplotlib). All of them go over the HTTPS API with a party's certificate.

The ``hangw usage`` group also holds the commands that work on the store directly
(hangw.cli_usage_store); ``add_commands`` returns the group's subparsers for them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import uuid
from typing import Any, BinaryIO, TextIO
from urllib.parse import quote, urlencode

from hangw.cli_common import output_file, read_esiids
from hangw.cli_messaging import progress_bar
from hangw.client import add_api_options

REPORTS = ("interval", "daily", "monthly")
#: The actions of ``hangw usage`` that go over the API.
ACTIONS = frozenset({*REPORTS, "job", "plot"})
_FINISHED = ("done", "failed", "expired")


def _range_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="first", required=True, help="first local day, YYYY-MM-DD")
    p.add_argument("--to", dest="last", required=True, help="last local day (included)")
    p.add_argument("--channel", type=int, choices=[4, 1], default=4, help="4 usage, 1 generation")


def add_commands(sub: Any) -> Any:
    """Add ``hangw usage`` to the ``hangw`` parser; returns its subparsers (for more actions)."""
    usage = sub.add_parser("usage", help="the usage store: LSE files, register reads, reports")
    actions = usage.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str, parent: Any = actions) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_text)
        add_api_options(p)
        return p

    for report, what in (
        ("interval", "15-minute intervals (UTC and local times, Wh, estimated or actual)"),
        ("daily", "day totals, counts, VEE flags and midnight register reads"),
        ("monthly", "month totals and the days with data and with flags"),
    ):
        p = action(report, f"{report} usage of an ESI ID: {what}")
        p.add_argument("esiid")
        _range_options(p)
        p.add_argument("--csv", metavar="FILE", help="write the CSV to FILE (- for stdout)")

    job = actions.add_parser("job", help="bulk report jobs (up to 50,000 ESI IDs)")
    jobs = job.add_subparsers(dest="job_action", required=True)
    p = action("submit", "submit a report job for the ESI IDs in a file", jobs)
    p.add_argument("report", choices=REPORTS)
    p.add_argument("--esiids-file", required=True, help="one ESI ID per line (- for stdin)")
    _range_options(p)
    p.add_argument("--wait", action="store_true", help="show progress until the job is done")
    p = action("status", "a report job's state and progress", jobs)
    p.add_argument("job_id")
    p.add_argument("--wait", action="store_true", help="show progress until the job is done")
    p = action("fetch", "download a finished report job's CSV", jobs)
    p.add_argument("job_id")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="where (- for stdout)")

    p = action("plot", "draw the daily usage of an ESI ID into a PNG (needs hangw[plot])")
    p.add_argument("esiid")
    _range_options(p)
    p.add_argument("-o", "--out", required=True, metavar="PNG", help="the chart file to write")
    return actions


def _kwh(wh: int | None) -> str:
    return "-" if wh is None else f"{wh / 1000:.3f}"


def _report_path(report: str, args: argparse.Namespace, **extra: str) -> str:
    query = {"esiid": args.esiid, "from": args.first, "to": args.last, "channel": args.channel}
    return f"/v1/usage/{report}?" + urlencode({**query, **extra})


def _download(client: Any, path: str, target: str, what: str) -> None:
    with output_file(target) as out:
        written = client.download(path, out)
    if target != "-":
        print(f"wrote {written} bytes of {what} to {target}", file=sys.stderr)


def print_report(report: str, data: dict[str, Any]) -> None:
    """A report answer as a table on standard output."""
    print(
        f"{report} usage of ESI ID {data['esiid']}, {data['from']} to {data['to']}, "
        f"channel {data['channel']} (kWh)"
    )
    if report == "interval":
        print(f"{'local start':<26} {'UTC start':<21} {'kWh':>9}  status")
        for i in data["intervals"]:
            print(f"{i['local_start']:<26} {i['start']:<21} {_kwh(i['wh']):>9}  {i['status']}")
        return
    if report == "daily":
        print(
            f"{'date':<10} {'kWh':>10} {'int':>4} {'miss':>4} {'est':>4} "
            f"{'start read':>12} {'end read':>12}  flags"
        )
        for d in data["days"]:
            print(
                f"{d['date']:<10} {_kwh(d['wh']):>10} {d['intervals']:>4} {d['missing']:>4} "
                f"{d['estimated']:>4} {_kwh(d['start_reading_wh']):>12} "
                f"{_kwh(d['end_reading_wh']):>12}  {' '.join(d['flags'])}"
            )
        return
    print(f"{'month':<7} {'kWh':>12} {'days':>5} {'flagged':>8}")
    for m in data["months"]:
        print(f"{m['month']:<7} {_kwh(m['wh']):>12} {m['days']:>5} {m['days_flagged']:>8}")


def _print_job(job: dict[str, Any]) -> None:
    print(
        f"report job {job['id']}: {job['state']}, {job['report']} {job['from']} to {job['to']} "
        f"channel {job['channel']}, {job['esiids_done']}/{job['esiids']} ESI IDs, "
        f"{job['rows']} rows"
    )
    if job["state"] == "done":
        print(f"  result: {job['links']['result']} (kept until {job['expires_at']})")
    if job.get("error"):
        print(f"  error: {job['error']}")


def wait_done(client: Any, job_id: str, out: TextIO, interval: float = 0.5) -> Any:
    """Poll the job until it finished, drawing a progress bar on ``out``."""
    while True:
        job = client.get(f"/v1/usage/jobs/{quote(job_id, safe='')}")
        line = f"{progress_bar(job['esiids_done'], job['esiids'])}  {job['rows']} rows"
        if out.isatty():
            out.write(f"\r{line}  {job['state']}\033[K")
        else:
            out.write(f"{line}  {job['state']}\n")
        out.flush()
        if job["state"] in _FINISHED:
            if out.isatty():
                out.write("\n")
            return job
        time.sleep(interval)


def _run_job(client: Any, args: argparse.Namespace) -> Any | None:
    if args.job_action == "submit":
        body = {
            "report": args.report,
            "esiids": read_esiids(args.esiids_file),
            "from": args.first,
            "to": args.last,
            "channel": args.channel,
        }
        job = client.post("/v1/usage/jobs", body, str(uuid.uuid4()))
        if args.json and not args.wait:
            return job
        _print_job(job)
        if args.wait:
            job = wait_done(client, job["id"], sys.stderr)
            if args.json:
                return job
            _print_job(job)
        return None
    path = f"/v1/usage/jobs/{quote(args.job_id, safe='')}"
    if args.job_action == "status":
        job = wait_done(client, args.job_id, sys.stderr) if args.wait else client.get(path)
        if args.json:
            return job
        _print_job(job)
        return None
    _download(client, f"{path}/result", args.out, f"report job {args.job_id}")
    return None


def _plot(client: Any, args: argparse.Namespace) -> None:
    try:
        import matplotlib  # noqa: F401 - the plot extra, which _draw uses
    except ImportError:
        print("hangw: install hangw[plot] to draw charts", file=sys.stderr)
        raise SystemExit(2) from None
    with output_file(args.out) as out:  # before the API is asked: a bad path is said as such
        _draw(client.get(_report_path("daily", args)), args, out)


def _draw(data: dict[str, Any], args: argparse.Namespace, out: BinaryIO) -> None:
    """The daily usage chart into ``out`` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import date2num
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    days = data["days"]
    if not days:
        raise SystemExit(
            f"hangw usage plot: no daily usage of {args.esiid} from {args.first} to {args.last}; "
            "nothing drawn"
        )
    dates = date2num([dt.date.fromisoformat(d["date"]) for d in days])
    kwh = [d["wh"] / 1000 for d in days]
    actual, estimated, flagged = "#4878a8", "#e0a040", "#c03030"
    figure = Figure(figsize=(max(6.0, min(16.0, 0.25 * len(days) + 4)), 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    bars = axes.bar(
        dates, kwh, width=0.8, color=[estimated if d["estimated"] else actual for d in days]
    )
    for bar, day in zip(bars, days, strict=True):
        if day["flags"]:
            bar.set_edgecolor(flagged)
            bar.set_linewidth(2)
            bar.set_hatch("//")
    axes.xaxis_date()
    axes.set_ylabel("kWh")
    axes.set_title(f"Daily usage of ESI ID {args.esiid}, {args.first} to {args.last}")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(
        handles=[
            Patch(color=actual, label="actual"),
            Patch(color=estimated, label="with estimated intervals"),
            Patch(facecolor="white", edgecolor=flagged, hatch="//", label="VEE flagged"),
        ],
        loc="upper left",
        ncols=3,
        fontsize="small",
        frameon=False,
    )
    axes.set_ylim(min(0.0, *kwh), max(0.0, *kwh) * 1.18 or 1.0)  # room for the legend
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(out, format="png")
    total = sum(d["wh"] for d in days) / 1000
    print(f"wrote {args.out}: {len(days)} days, {total:.3f} kWh", file=sys.stderr)


def run(client: Any, args: argparse.Namespace) -> Any | None:
    """Do one ``hangw usage`` API action; returns what to print (None when it printed already)."""
    if args.action in REPORTS:
        if args.csv:
            path = _report_path(args.action, args, format="csv")
            _download(client, path, args.csv, f"{args.action} usage")
            return None
        data = client.get(_report_path(args.action, args))
        if args.json:
            return data
        print_report(args.action, data)
        return None
    if args.action == "job":
        return _run_job(client, args)
    if args.action == "plot":
        _plot(client, args)
        return None
    raise AssertionError(args.action)
