"""The Braze client's connection (libcurl, `http_post`) against local servers: certificates
are checked (against certifi's store where Python finds none), proxy settings in the
environment are not used, a request dropped unanswered is sent again only by the client (with
a rate slot), an answer that never comes fails the send, answers are read as sent (an interim
answer first, a reason phrase), and the key goes without the line break it was stored with."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import certifi
import orjson
import pytest
from azure.data.tables import TableClient

from devtools.processes import Sandbox, start_sandbox
from shared.adapters.braze_client import BrazeClient, BrazeUnavailable
from shared.adapters.http_post import ca_store
from shared.adapters.rate_governor import RateGovernor
from shared.adapters.settings import ConfigurationError
from shared.core.jsonlines import dumpb
from tests.key_vault_double import write_self_signed
from tests.local_server import serving

KEY = "transport-test-key"


def _objects(count: int) -> list[bytes]:
    return [dumpb({"external_id": f"t-{n}", "tier": "gold"}) for n in range(count)]


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


Answers = Callable[[int], bytes | None]


@contextmanager
def _raw_endpoint(answer: Answers) -> Iterator[tuple[str, list[tuple[bytes, bytes]]]]:
    """A local endpoint that reads requests on keep-alive connections and writes what
    `answer(n)` returns for the n-th (from 0) as it is, or closes the connection without an
    answer on None (`answer` may wait there): its URL, and each request's head and body, in
    the order they came."""
    received: list[tuple[bytes, bytes]] = []
    lock = threading.Lock()

    class Raw(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            connection: socket.socket = self.request
            pending = b""
            while True:
                request, pending = _read_request(connection, pending)
                if request is None:
                    return  # the client closed the connection
                with lock:
                    n = len(received)
                    received.append(request)
                reply = answer(n)
                if reply is None:
                    return  # closed without an answer
                connection.sendall(reply)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Raw)
    server.daemon_threads = True
    with serving(server):
        yield f"http://127.0.0.1:{server.server_address[1]}", received


def _read_request(
    connection: socket.socket, pending: bytes
) -> tuple[tuple[bytes, bytes] | None, bytes]:
    """The head and body of the next request on the connection (None once it is closed),
    and what was read past it."""
    data = pending
    while b"\r\n\r\n" not in data:
        more = connection.recv(65536)
        if not more:
            return None, b""
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        more = connection.recv(65536)
        if not more:
            return None, b""
        rest += more
    return (head, rest[:length]), rest[length:]


def _created(text: bytes = b'{"message":"success"}') -> bytes:
    return b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)


def test_an_answer_that_never_comes_fails_the_send() -> None:
    """A request Braze took but never answers is cut after the read timeout (libcurl has
    none of its own: a transfer that stalls that long is cut) and tried again as a failure,
    instead of holding its thread for good."""
    ending = threading.Event()

    def never(n: int) -> None:
        ending.wait(120)

    outcome: list[BaseException] = []
    with _raw_endpoint(never) as (endpoint, received):
        client = BrazeClient(
            endpoint,
            lambda refresh: KEY,
            max_attempts=1,
            timeout=(1.0, 1.0),
            sleep=_refuse_to_wait,
        )

        def send() -> None:
            try:
                client.track(_objects(1))
            except BaseException as error:
                outcome.append(error)

        sending = threading.Thread(target=send, daemon=True)
        sending.start()
        sending.join(60)  # far past the timeout (1 s, and libcurl's 5 s average): else none
        still_waiting = sending.is_alive()
        ending.set()
    assert not still_waiting, "the send waited for an answer with no timeout"
    assert len(received) == 1
    (error,) = outcome
    assert isinstance(error, BrazeUnavailable)
    assert "libcurl error 28" in str(error)


def test_the_answer_after_an_interim_one_is_read_with_its_reason() -> None:
    """A 100 Continue before the answer is not the answer; a refusal without a body is
    described by its reason phrase."""
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    with _raw_endpoint(lambda n: answer) as (endpoint, _):
        client = BrazeClient(endpoint, lambda refresh: KEY, max_attempts=1, sleep=_refuse_to_wait)
        outcome = client.track(_objects(1))
    assert outcome.status == 400
    assert outcome.failure == "Braze refused the request (HTTP 400): Bad Request"


def test_a_request_dropped_unanswered_on_a_reused_connection_is_sent_again_with_a_slot(
    rate_table: TableClient,
) -> None:
    """Braze reads the second request on a kept-alive connection, then the connection drops
    without an answer. libcurl would send it again by itself, outside the rate budget; the
    client sends it again instead, after taking a slot of its own, on a fresh connection, and
    the thread's next request goes as usual."""
    waits: list[float] = []
    key = f"t-{uuid.uuid4().hex[:12]}"
    governor = RateGovernor(
        rate_table,
        key,
        requests_per_window=1000,
        window_seconds=10**9,  # no window rolls over during the test
        lease_fraction=0.001,  # one slot per lease: the table counts every slot taken
        sleep=_refuse_to_wait,
    )
    with _raw_endpoint(lambda n: None if n == 1 else _created()) as (endpoint, received):
        client = BrazeClient(
            endpoint, lambda refresh: KEY, governor=governor, max_attempts=3, sleep=waits.append
        )
        first, second, third = (
            client.track([dumpb({"external_id": name})]) for name in ("a", "b", "c")
        )
    assert (first.status, second.status, third.status) == (201, 201, 201)
    assert [orjson.loads(body)["attributes"][0]["external_id"] for _, body in received] == [
        "a",
        "b",
        "b",
        "c",
    ]
    assert len(waits) == 1  # one failure, waited out by the client
    (state,) = rate_table.query_entities(f"PartitionKey eq '{key}'")
    assert state["Granted"] == len(received) == 4


def test_a_key_stored_with_a_trailing_line_break_is_sent_without_it() -> None:
    """`az keyvault secret set --file key.txt` keeps the file's last line break."""
    with _raw_endpoint(lambda n: _created()) as (endpoint, received):
        client = BrazeClient(
            endpoint, lambda refresh: f"  {KEY}\r\n", max_attempts=1, sleep=_refuse_to_wait
        )
        assert client.track(_objects(1)).status == 201
    ((head, _),) = received
    assert f"\r\nAuthorization: Bearer {KEY}\r\n".encode() in head


def test_a_key_with_a_line_break_inside_is_refused_before_anything_is_sent() -> None:
    refused = pytest.raises(ConfigurationError, match="line break or another control character")
    with _raw_endpoint(lambda n: _created()) as (endpoint, received), refused:
        BrazeClient(endpoint, lambda refresh: "abc\ndef", sleep=_refuse_to_wait)
    assert received == []


def test_without_a_ca_store_python_finds_certifi_s_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The libcurl the wheel bundles looks for a Red Hat CA path: where Python's ssl finds no
    CA file or folder, certifi's bundle is used rather than none (every send would fail)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "missing"))
    assert ca_store() == (certifi.where(), None)
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    assert ca_store() == (None, str(tmp_path))
