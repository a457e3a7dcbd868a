"""The storage clients skip `requests`' per-call environment lookups unless the environment names
a proxy: a proxy it names is still used (a local proxy that records what it is asked, and
Azurite), and a CA bundle it names is the one TLS connections are verified with (a local HTTPS
server whose self-signed certificate only that bundle holds)."""

from __future__ import annotations

import http.server
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import AzureError, HttpResponseError, ServiceRequestError

from devtools.processes import Azurite
from shared.adapters import storage as storage_module
from shared.adapters.settings import StorageSettings
from shared.adapters.storage import BlobNotFound, Storage, transport_settings
from tests.key_vault_double import write_self_signed
from tests.local_server import serving

HTTP_VARIABLES = [
    name
    for name in os.environ
    if name.lower().endswith("_proxy") or name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
]


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy or CA bundle variable, whatever the machine running the tests sets."""
    for name in HTTP_VARIABLES:
        monkeypatch.delenv(name)
    return monkeypatch


def recording_handler(
    requests: list[str], status: int, headers: dict[str, str]
) -> type[http.server.BaseHTTPRequestHandler]:
    """A handler that records each request line in `requests` and answers `status` with
    `headers` and no body (403 and 404 are not retried by the SDK)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.requestline)
            self.send_response(status)
            for name, value in {**headers, "Content-Length": "0"}.items():
                self.send_header(name, value)
            self.end_headers()

        do_PUT = do_HEAD = do_GET

        def log_message(self, *_: object) -> None:
            pass

    return Handler


class RecordingProxy(http.server.ThreadingHTTPServer):
    """A forward proxy that forwards nothing: it records each request line and answers 403."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), recording_handler(self.requests, 403, {}))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    with serving(RecordingProxy()) as server:
        yield server


@pytest.mark.parametrize(
    ("variables", "settings"),
    [
        ({}, {"use_env_settings": False}),
        ({"NO_PROXY": "127.0.0.1,.internal"}, {"use_env_settings": False}),
        ({"HTTPS_PROXY": "http://127.0.0.1:3128"}, {"use_env_settings": True}),
        ({"http_proxy": "http://127.0.0.1:3128"}, {"use_env_settings": True}),
        (
            {"http_proxy": "http://127.0.0.1:3128", "REQUESTS_CA_BUNDLE": "/ca.pem"},
            {"use_env_settings": True},
        ),
        (
            {"REQUESTS_CA_BUNDLE": "/ca.pem"},
            {"use_env_settings": False, "connection_verify": "/ca.pem"},
        ),
        (
            {"CURL_CA_BUNDLE": "/curl.pem"},
            {"use_env_settings": False, "connection_verify": "/curl.pem"},
        ),
        (
            {"REQUESTS_CA_BUNDLE": "/ca.pem", "CURL_CA_BUNDLE": "/curl.pem"},
            {"use_env_settings": False, "connection_verify": "/ca.pem"},
        ),
    ],
)
def test_only_a_proxy_keeps_the_per_call_lookups_and_a_ca_bundle_is_passed_once(
    bare_environment: pytest.MonkeyPatch, variables: dict[str, str], settings: dict[str, object]
) -> None:
    for name, value in variables.items():
        bare_environment.setenv(name, value)
    assert transport_settings() == settings


class RecordingTlsServer(http.server.ThreadingHTTPServer):
    """An HTTPS server with a self-signed certificate for 127.0.0.1 that records each request
    line and answers 404 (a blob not found)."""

    def __init__(self, directory: Path) -> None:
        self.requests: list[str] = []
        self.cert_path, key_path = directory / "cert.pem", directory / "key.pem"
        write_self_signed(self.cert_path, key_path)
        not_found = recording_handler(self.requests, 404, {"x-ms-error-code": "BlobNotFound"})
        super().__init__(("127.0.0.1", 0), not_found)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, key_path)
        self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def connection_string(self) -> str:
        """Blobs, queues and tables all at this server."""
        endpoint = f"https://127.0.0.1:{self.server_address[1]}/devstoreaccount1"
        services = (f"{kind}Endpoint={endpoint}" for kind in ("Blob", "Queue", "Table"))
        return f"{_AZURITE_ACCOUNT};{';'.join(services)};"


_AZURITE_ACCOUNT = (  # Azurite's well-known development account (not a secret)
    "DefaultEndpointsProtocol=https;AccountName=devstoreaccount1;AccountKey="
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UUamSLz2FyrNF9fY0mqkpeJK+kHD8uWdzPSyA=="
)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[RecordingTlsServer]:
    with serving(RecordingTlsServer(tmp_path)) as server:
        yield server


@pytest.fixture
def no_retries(bare_environment: pytest.MonkeyPatch) -> None:
    """An answer or a refusal at once: a failing test fails in seconds."""
    retry = {**storage_module.STORAGE_RETRY, "retry_total": 0}
    bare_environment.setattr(storage_module, "STORAGE_RETRY", retry)


def _call_each_client(storage: Storage) -> list[type[Exception]]:
    """A read through the blob, queue and table clients; the error each one raised."""
    calls = [
        lambda: storage.read_bytes("export-runs", "over-tls.txt"),
        lambda: storage.queue("export-jobs").peek_messages(),
        lambda: storage.table("exportruns").get_entity("run", "over-tls"),
    ]
    raised: list[type[Exception]] = []
    for call in calls:
        with pytest.raises(Exception) as error:  # each kind is asserted by the caller
            call()
        raised.append(type(error.value))
    return raised


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
@pytest.mark.usefixtures("no_retries")
def test_the_ca_bundle_the_environment_names_verifies_the_storage_calls(
    bare_environment: pytest.MonkeyPatch, tls_server: RecordingTlsServer, variable: str
) -> None:
    bare_environment.setenv(variable, str(tls_server.cert_path))
    storage = Storage(StorageSettings(connection_string=tls_server.connection_string))
    raised = _call_each_client(storage)
    assert raised[0] is BlobNotFound and all(issubclass(e, HttpResponseError) for e in raised[1:])
    paths = [line.split()[1] for line in tls_server.requests]
    assert [path.split("?")[0] for path in paths] == [
        "/devstoreaccount1/export-runs/over-tls.txt",
        "/devstoreaccount1/export-jobs/messages",
        "/devstoreaccount1/exportruns(PartitionKey='run',RowKey='over-tls')",
    ]


@pytest.mark.usefixtures("no_retries")
def test_without_the_bundle_a_certificate_it_alone_holds_is_refused(
    bare_environment: pytest.MonkeyPatch, tls_server: RecordingTlsServer
) -> None:
    storage = Storage(StorageSettings(connection_string=tls_server.connection_string))
    assert _call_each_client(storage) == [ServiceRequestError] * 3
    assert tls_server.requests == []


def test_a_proxy_the_environment_names_carries_the_storage_calls(
    bare_environment: pytest.MonkeyPatch, proxy: RecordingProxy, azurite: Azurite
) -> None:
    bare_environment.setenv("HTTP_PROXY", proxy.url)
    storage = Storage(StorageSettings(connection_string=azurite.connection_string))
    with pytest.raises(AzureError):
        storage.read_bytes("export-runs", "through-the-proxy.txt")
    assert proxy.requests, "the proxy saw no request"
    port = azurite.blob_port
    assert all(f"http://127.0.0.1:{port}/devstoreaccount1/" in line for line in proxy.requests)


def test_without_one_the_calls_go_straight_to_the_service(
    bare_environment: pytest.MonkeyPatch, azurite: Azurite
) -> None:
    storage = Storage(StorageSettings(connection_string=azurite.connection_string))
    storage.ensure_resources()
    storage.write_bytes("export-runs", "straight.txt", "café 🎉".encode(), "text/plain")
    assert storage.read_bytes("export-runs", "straight.txt").decode() == "café 🎉"
    assert storage.container("export-runs") is storage.container("export-runs")
