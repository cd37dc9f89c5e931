"""A small synchronous API client for the CLI and the demo (stdlib only: ssl + http.client)."""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit


class ApiError(Exception):
    """The API answered with a problem+json (or could not be reached)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}")


@dataclass
class Identity:
    cert: Path
    key: Path
    ca: Path


class Client:
    def __init__(self, base_url: str, identity: Identity, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"the API URL must be https://host:port, got {base_url!r}")
        context = ssl.create_default_context(cafile=str(identity.ca))
        context.load_cert_chain(str(identity.cert), str(identity.key))
        self._connection = http.client.HTTPSConnection(
            parts.hostname, parts.port or 443, context=context, timeout=timeout
        )

    def close(self) -> None:
        self._connection.close()

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body).encode()
        sent = {"accept": "application/json", **(headers or {})}
        if payload is not None:
            sent["content-type"] = "application/json"
        try:
            self._connection.request(method, path, body=payload, headers=sent)
            response = self._connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            self._connection.close()  # reconnect once: the keep-alive connection may have gone
            self._connection.request(method, path, body=payload, headers=sent)
            response = self._connection.getresponse()
            raw = response.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:  # not the gateway answering (a proxy's error page, say)
            text = raw[:200].decode("utf-8", "replace")
            raise ApiError(
                response.status, {"title": "not a JSON answer", "detail": text}
            ) from None
        if response.status >= 400:
            raise ApiError(
                response.status, data if isinstance(data, dict) else {"detail": str(data)}
            )
        return response.status, data

    def download(self, path: str, out: BinaryIO, accept: str = "text/csv") -> int:
        """Stream a long answer (the CSV message log) into ``out``; returns the bytes written."""
        self._connection.request("GET", path, headers={"accept": accept})
        response = self._connection.getresponse()
        if response.status >= 400:
            raw = response.read()
            try:
                problem = json.loads(raw)
            except ValueError:
                problem = {"detail": raw[:200].decode("utf-8", "replace")}
            raise ApiError(response.status, problem)
        written = 0
        while chunk := response.read(65536):
            out.write(chunk)
            written += len(chunk)
        return written

    def get(self, path: str) -> Any:
        return self.request("GET", path)[1]

    def post(self, path: str, body: Any, idempotency_key: str | None = None) -> Any:
        headers = {"idempotency-key": idempotency_key} if idempotency_key else None
        return self.request("POST", path, body, headers)[1]

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)[1]


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """The options every ``hangw`` command that calls the API takes: who to be, and where."""
    parser.add_argument(
        "--as",
        dest="as_party",
        default="demo-rep-a",
        help="party name of a certificate in the cert dir (default demo-rep-a)",
    )
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--ca")
    parser.add_argument("--api", help="API base URL (default https://localhost:<api.port>)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
