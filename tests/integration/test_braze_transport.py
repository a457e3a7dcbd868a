"""The Braze client's connection (libcurl, `http_post`) against local servers: certificates
are checked, proxy settings in the environment are not used, an answer that never comes fails
the send, and answers are read as sent (an interim answer first, a reason phrase)."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devtools.processes import Sandbox, start_sandbox
from shared.adapters.braze_client import BrazeClient, BrazeUnavailable
from shared.core.jsonlines import dumps
from tests.key_vault_double import write_self_signed
from tests.local_server import serving

KEY = "transport-test-key"


def _objects(count: int) -> list[str]:
    return [dumps({"external_id": f"t-{n}", "tier": "gold"}) for n in range(count)]


def _refuse_to_wait(seconds: float) -> None:
    raise AssertionError(f"the client was to fail at once, not wait {seconds} s")


@contextmanager
def _tls_endpoint(directory: Path) -> Iterator[tuple[str, Path, list[str | None]]]:
    """A local HTTPS endpoint with a self-signed certificate answering 201: its URL, its
    certificate file and the Authorization header of each request it received."""
    cert, key = directory / "braze-cert.pem", directory / "braze-key.pem"
    write_self_signed(cert, key)
    received: list[str | None] = []

    class Accepting(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.headers.get("Authorization"))
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b'{"message":"success"}'
            self.send_response(201)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Accepting)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    with serving(server):
        yield f"https://127.0.0.1:{server.server_address[1]}", cert, received


def test_a_certificate_the_system_does_not_trust_fails_before_the_key_is_sent(
    tmp_path: Path,
) -> None:
    with _tls_endpoint(tmp_path) as (endpoint, _, received):
        client = BrazeClient(endpoint, lambda refresh: KEY, max_attempts=1, sleep=_refuse_to_wait)
        with pytest.raises(BrazeUnavailable, match="certificate") as failure:
            client.track(_objects(1))
    assert "libcurl error 60" in str(failure.value)
    assert received == []


def test_a_certificate_trusted_through_ssl_cert_file_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CA store is the one Python's ssl module finds, so `SSL_CERT_FILE` adds a CA as it
    does for the rest of the app."""
    with _tls_endpoint(tmp_path) as (endpoint, cert, received):
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        client = BrazeClient(endpoint, lambda refresh: KEY, max_attempts=1, sleep=_refuse_to_wait)
        assert client.track(_objects(2)).status == 201
    assert received == [f"Bearer {KEY}"]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    running = start_sandbox(KEY, "--seed", "5")
    yield running
    running.stop()


def test_proxy_settings_in_the_environment_are_not_used(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libcurl would send through a proxy named in the environment; the key goes only to the
    connection's endpoint (here the proxy named is a closed port, so using it would fail)."""
    closed = "http://127.0.0.1:9"
    for name in ("http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, closed)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    client = BrazeClient(sandbox.url, lambda refresh: KEY, max_attempts=1, sleep=_refuse_to_wait)
    assert client.track(_objects(3)).status == 201  # from the sandbox: no proxy listens at 9


@contextmanager
def _raw_endpoint(answer: bytes | None) -> Iterator[tuple[str, threading.Event]]:
    """A local endpoint that reads a request and writes `answer` as it is (None: nothing,
    until the test ends): its URL, and an event set once a request was read."""
    received, ending = threading.Event(), threading.Event()

    class Raw(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            connection: socket.socket = self.request
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += connection.recv(65536)
            received.set()
            if answer is None:
                ending.wait()
                return
            connection.sendall(answer)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Raw)
    server.daemon_threads = True
    with serving(server):
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}", received
        finally:
            ending.set()


def test_an_answer_that_never_comes_fails_the_send() -> None:
    """A request Braze took but never answers is cut after the read timeout (libcurl has
    none of its own: a transfer that stalls that long is cut) and tried again as a failure,
    instead of holding its thread for good."""
    with _raw_endpoint(None) as (endpoint, received):
        client = BrazeClient(
            endpoint,
            lambda refresh: KEY,
            max_attempts=1,
            timeout=(1.0, 1.0),
            sleep=_refuse_to_wait,
        )
        outcome: list[BaseException] = []

        def send() -> None:
            try:
                client.track(_objects(1))
            except BaseException as error:
                outcome.append(error)

        sending = threading.Thread(target=send, daemon=True)
        sending.start()
        sending.join(60)  # far past the 1 s timeout: a send without one never ends
        assert received.is_set()
        assert not sending.is_alive(), "the send waited for an answer with no timeout"
    (error,) = outcome
    assert isinstance(error, BrazeUnavailable)
    assert "libcurl error 28" in str(error)


def test_the_answer_after_an_interim_one_is_read_with_its_reason() -> None:
    """A 100 Continue before the answer is not the answer; a refusal without a body is
    described by its reason phrase."""
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    with _raw_endpoint(answer) as (endpoint, _):
        client = BrazeClient(endpoint, lambda refresh: KEY, max_attempts=1, sleep=_refuse_to_wait)
        outcome = client.track(_objects(1))
    assert outcome.status == 400
    assert outcome.failure == "Braze refused the request (HTTP 400): Bad Request"
