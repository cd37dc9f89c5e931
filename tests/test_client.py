"""The CLI's API client sends a request again only when that cannot do it twice."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangw.certs import init_dev_identity
from hangw.client import Client, Identity


class ScriptedServer:
    """A TLS server on loopback that answers each connection's first request, then either
    closes the connection (as an idle keep-alive connection is closed) or, with ``hang``, reads
    requests and never answers. ``seen`` holds (method, path, Idempotency-Key) as they came."""

    def __init__(self, cert_dir: Path, hang: bool = False) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert_dir / "server.pem", cert_dir / "server-key.pem")
        self.hang = hang
        self.seen: list[tuple[str, str, str | None]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read_request(self, conn: ssl.SSLSocket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = conn.recv(65536)
            if not piece:
                return False
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += conn.recv(65536)
        method, path, _ = lines[0].split(" ")
        self.seen.append((method, path, headers.get("idempotency-key")))
        return True

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    if not self._read_request(conn):
                        continue
                    if self.hang:
                        while self._read_request(conn):
                            pass
                        continue
                    body = json.dumps({"ok": True}).encode()
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(body), body)
                    )
            except (OSError, ssl.SSLError):
                continue

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    certs = tmp_path / "certs"
    init_dev_identity(certs, now=time.time())
    return certs


@pytest.fixture
def server(cert_dir: Path) -> Iterator[ScriptedServer]:
    running = ScriptedServer(cert_dir)
    yield running
    running.close()


def client_for(cert_dir: Path, port: int, timeout: float = 10.0) -> Client:
    identity = Identity(
        cert_dir / "demo-rep-a.pem", cert_dir / "demo-rep-a-key.pem", cert_dir / "ca.pem"
    )
    return Client(f"https://localhost:{port}", identity, timeout=timeout)


def test_a_get_on_a_connection_closed_while_idle_is_sent_again(
    cert_dir: Path, server: ScriptedServer
) -> None:
    """A GET on a keep-alive connection the server closed goes again on a new one, once."""
    client = client_for(cert_dir, server.port)
    assert client.request("GET", "/first") == (200, {"ok": True})
    time.sleep(0.2)  # the server has closed the connection the client keeps
    assert client.request("GET", "/second") == (200, {"ok": True})
    assert [path for _, path, _ in server.seen] == ["/first", "/second"]
    client.close()


def test_a_post_with_an_idempotency_key_is_sent_again(
    cert_dir: Path, server: ScriptedServer
) -> None:
    """A keyed POST on a connection closed while idle is sent again: the key makes it once."""
    client = client_for(cert_dir, server.port)
    client.request("GET", "/first")
    time.sleep(0.2)
    assert client.post("/v1/messages", {"category": "STM"}, "key-1") == {"ok": True}
    assert server.seen[-1] == ("POST", "/v1/messages", "key-1")
    client.close()


def test_a_post_without_a_key_is_never_sent_twice(cert_dir: Path, server: ScriptedServer) -> None:
    """A POST without an Idempotency-Key whose connection fails is not sent again."""
    client = client_for(cert_dir, server.port)
    client.request("GET", "/first")
    time.sleep(0.2)
    with pytest.raises((OSError, ConnectionError)):
        client.post("/v1/esiids/E/grants", {"hsp_party_id": "H"})
    assert [m for m, _, _ in server.seen].count("POST") <= 1
    # the client is usable afterwards, on a new connection
    assert client.request("GET", "/after") == (200, {"ok": True})
    client.close()


def test_a_request_that_timed_out_is_not_sent_again(cert_dir: Path) -> None:
    """A request the server read but did not answer in time fails; it is not sent a second time."""
    hanging = ScriptedServer(cert_dir, hang=True)
    client = client_for(cert_dir, hanging.port, timeout=0.5)
    with pytest.raises(TimeoutError):
        client.post("/v1/messages", {"category": "STM"}, "key-2")
    time.sleep(0.3)
    assert hanging.seen == [("POST", "/v1/messages", "key-2")]
    client.close()
    hanging.close()
