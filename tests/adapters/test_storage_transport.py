"""The storage clients skip `requests`' per-call environment lookups only where the environment
names no proxy or CA bundle: a proxy the environment names is still used (a local proxy that
records what it is asked, and Azurite)."""

from __future__ import annotations

import http.server
import os
from collections.abc import Iterator

import pytest
from azure.core.exceptions import AzureError

from devtools.processes import Azurite
from shared.adapters.settings import StorageSettings
from shared.adapters.storage import Storage, environment_configures_http
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


class RecordingProxy(http.server.ThreadingHTTPServer):
    """A forward proxy that forwards nothing: it records each request line and answers 403
    (which the SDK does not retry)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.requests.append(self.requestline)
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_HEAD = do_GET

            def log_message(self, *_: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    with serving(RecordingProxy()) as server:
        yield server


@pytest.mark.parametrize(
    ("variable", "value", "configures"),
    [
        (None, None, False),
        ("HTTPS_PROXY", "http://127.0.0.1:3128", True),
        ("http_proxy", "http://127.0.0.1:3128", True),
        ("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt", True),
        ("CURL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt", True),
    ],
)
def test_only_a_proxy_or_ca_bundle_in_the_environment_counts(
    bare_environment: pytest.MonkeyPatch, variable: str | None, value: str, configures: bool
) -> None:
    if variable:
        bare_environment.setenv(variable, value)
    assert environment_configures_http() is configures


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
