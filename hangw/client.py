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


class IdentityError(Exception):
    """The client certificate, its key or the CA cannot be used; the message names the files."""


@dataclass
class Identity:
    cert: Path
    key: Path
    ca: Path


def _reason(error: OSError) -> str:
    if isinstance(error, ssl.SSLError):
        return str(error.reason or error)
    return str(error.strerror or error)


def tls_context(identity: Identity) -> ssl.SSLContext:
    """A client TLS context trusting ``identity.ca`` and presenting ``identity.cert``."""
    try:
        context = ssl.create_default_context(cafile=str(identity.ca))
    except OSError as error:  # ssl.SSLError is one
        raise IdentityError(
            f"cannot use {identity.ca} as the CA to trust ({_reason(error)}): give --ca a PEM "
            "file of CA certificates"
        ) from None
    try:
        context.load_cert_chain(str(identity.cert), str(identity.key))
    except OSError as error:
        if isinstance(error, ssl.SSLError) and error.reason == "KEY_VALUES_MISMATCH":
            problem = "the key does not belong to the certificate"
        else:
            problem = f"{_reason(error)}; both must be PEM files"
        raise IdentityError(
            f"cannot use the client certificate {identity.cert} with the key {identity.key}: "
            f"{problem} (give --cert and --key of the same party)"
        ) from None
    return context


#: What a keep-alive connection the gateway closed while it was idle fails with: the request
#: sent on it was not read. A timeout is not one of them: the request may be running.
_GONE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
    ssl.SSLEOFError,  # closed without TLS's close_notify
)


def _may_resend(method: str, headers: dict[str, str]) -> bool:
    """Is sending the request twice harmless? Not for a POST without an Idempotency-Key: a
    connection that failed as a closed idle one does may also have been the gateway dying while
    it answered, after the POST took effect."""
    return method != "POST" or any(name.lower() == "idempotency-key" for name in headers)


class Client:
    def __init__(self, base_url: str, identity: Identity, timeout: float = 30.0) -> None:
        """ValueError for a URL that is not https://host[:port], IdentityError for unusable
        certificate files."""
        parts = urlsplit(base_url)
        try:
            port = 443 if parts.port is None else parts.port
        except ValueError:  # not a number, or above 65535
            port = 0
        if parts.scheme != "https" or not parts.hostname or not 0 < port < 65536:
            raise ValueError(
                f"the API URL must be https://host:port with a port from 1 to 65535, "
                f"got {base_url!r}"
            )
        self._connection = http.client.HTTPSConnection(
            parts.hostname, port, context=tls_context(identity), timeout=timeout
        )
        self._answered = False  # the connection is open and answered a request before

    def close(self) -> None:
        self._connection.close()

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body).encode()
        sent = {"accept": "application/json", **(headers or {})}
        if payload is not None:
            sent["content-type"] = "application/json"
        reused = self._answered  # was this connection kept alive after an earlier answer?
        try:
            self._connection.request(method, path, body=payload, headers=sent)
            response = self._connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as error:
            self._connection.close()
            self._answered = False
            if not (reused and isinstance(error, _GONE) and _may_resend(method, sent)):
                raise
            # the gateway closed the idle keep-alive connection: send it once more, anew
            self._connection.request(method, path, body=payload, headers=sent)
            response = self._connection.getresponse()
            raw = response.read()
        self._answered = not response.will_close
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


def default_api_url(host: str, port: int) -> str:
    """The API's URL from ``api.host`` and ``api.port``.

    A wildcard address (0.0.0.0, ::: every address of the machine) is reached at localhost, which
    the server certificate of ``hangw certs init`` names; an IPv6 address goes in brackets.
    """
    if host in ("0.0.0.0", "::"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


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
    parser.add_argument("--api", help="API base URL (default https://<api.host>:<api.port>)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
