"""The usage paths of the v1 API: interval, daily and monthly reports, and bulk report jobs.

Registered on the ``Api`` Klein app by ``register``; handlers get the Api instance as ``self``
and its ``usage`` (hangw.usage.jobs.UsageReports: ``reports`` and ``jobs``). A report of one
ESI ID answers JSON, or CSV (``format=csv`` or ``Accept: text/csv``) streamed piece by piece; a
job's result streams from its file. The columns are in hangw.usage.reports and docs/usage.md.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, BinaryIO

from klein import Klein
from twisted.web.iweb import IRequest

from hangw.api.kept import keeping
from hangw.api.paced import wants_csv, write_csv
from hangw.api.query import query_args
from hangw.problems import Problem
from hangw.usage.jobs import Job, JobExpired, UsageReports
from hangw.usage.reports import REPORTS

if TYPE_CHECKING:
    from hangw.api.app import Api

__all__ = ["register"]

#: Bytes read from a result file per write.
_FILE_PIECE = 256 * 1024
#: What GET /v1/usage/{report} takes.
_REPORT_PARAMETERS = ("esiid", "from", "to", "channel", "format")


class UsageUnavailable(Problem):
    status, slug, title = 503, "usage-unavailable", "Usage reports unavailable"


def _usage(api: Api) -> UsageReports:
    usage: UsageReports | None = api.usage
    if usage is None:
        raise UsageUnavailable("usage reports are not enabled on this gateway")
    return usage


async def _file_pieces(file: BinaryIO) -> AsyncIterator[bytes]:
    while piece := file.read(_FILE_PIECE):
        yield piece


def _report_route(app: Klein, report: str) -> None:
    @app.route(f"/v1/usage/{report}", methods=["GET"], endpoint=f"usage_{report}")
    async def usage_report(self: Api, request: Any) -> bytes:
        party = self._party(request)
        service = _usage(self).reports
        args = query_args(request, _REPORT_PARAMETERS)
        if not wants_csv(request, args):
            return self._json(request, 200, await service.report_json(party, report, args))
        esiid, spec = service.spec(report, args)
        await service.authorize(party, esiid, spec)
        name = f"hangw-usage-{report}-{esiid}-{spec.first}-{spec.last}.csv"
        return await write_csv(request, name, service.csv_pieces(spec, esiid))


def register(app: Klein) -> None:
    """Add the usage routes to the Api class's Klein app."""
    for report in REPORTS:
        _report_route(app, report)

    @app.route("/v1/usage/jobs", methods=["POST"], endpoint="usage_submit_job")
    async def submit_job(self: Api, request: IRequest) -> bytes:
        party = self._party(request)
        jobs = _usage(self).jobs
        body = self._body(request, limit=jobs.max_body_bytes)

        async def handle() -> bytes:
            job = await jobs.submit(party, body, also=keeping(request, 202, Job.json))
            answer: dict[str, Any] = job.json()
            request.setHeader(b"location", answer["links"]["self"].encode())
            return self._json(request, 202, answer)

        return await self._idempotent(request, party, handle, located=True)

    @app.route("/v1/usage/jobs/<job_id>", methods=["GET"], endpoint="usage_get_job")
    async def get_job(self: Api, request: IRequest, job_id: str) -> bytes:
        party = self._party(request)
        job = await _usage(self).jobs.get(party, job_id)
        return self._json(request, 200, job.json())

    @app.route("/v1/usage/jobs/<job_id>/result", methods=["GET"], endpoint="usage_job_result")
    async def job_result(self: Api, request: Any, job_id: str) -> bytes:
        party = self._party(request)
        job, path = await _usage(self).jobs.result(party, job_id)
        try:
            result = path.open("rb")
        except FileNotFoundError:  # deleted by the expiry since: the same answer as after it
            raise JobExpired(f"the result of report job {job_id} is no longer kept") from None
        with result:
            request.setHeader(b"content-length", str(os.fstat(result.fileno()).st_size).encode())
            return await write_csv(
                request, f"hangw-usage-{job.spec.report}-{job_id}.csv", _file_pieces(result)
            )
