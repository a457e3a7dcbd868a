"""A storage request that fails once is tried again within a few seconds, not after the SDK's
default 18 s (one such wait stalled a diff for 16-18 s in the benchmark): a local
server answers 503 once, then for real; the waits the clients ask for are recorded instead of
slept (no test waits on a clock)."""

from __future__ import annotations

import http.server
from collections.abc import Iterator

import pytest
from azure.core.exceptions import HttpResponseError

from devtools.processes import AZURITE_ACCOUNT_KEY
from shared.adapters.settings import StorageSettings
from shared.adapters.storage import Storage
from tests.local_server import serving


class OnceUnavailable(http.server.ThreadingHTTPServer):
    """Answers 503 to the first request, then 404 (blob) or 400 (queue), neither retried."""

    def __init__(self) -> None:
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                server.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                status = 503 if server.requests == 1 else (404 if "/blobs/" in self.path else 400)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = do_PUT = do_POST = _answer

            def log_message(self, *_: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def connection_string(self) -> str:
        base = f"http://127.0.0.1:{self.server_address[1]}/devstoreaccount1"
        return (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_ACCOUNT_KEY};"
            f"BlobEndpoint={base}/blobs;QueueEndpoint={base}/queues;TableEndpoint={base}/tables;"
        )


@pytest.fixture
def server() -> Iterator[OnceUnavailable]:
    with serving(OnceUnavailable()) as running:
        yield running


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """What the storage clients' retries ask to sleep, recorded instead of slept."""
    asked: list[float] = []
    monkeypatch.setattr("azure.core.pipeline.transport._base.time.sleep", asked.append)
    return asked


def test_a_blob_request_that_failed_once_is_tried_again_at_once(
    server: OnceUnavailable, waits: list[float]
) -> None:
    storage = Storage(StorageSettings(connection_string=server.connection_string()))
    assert storage.exists("export-runs", "some/blob") is False
    assert server.requests == 2
    assert len(waits) == 1 and waits[0] <= 3


def test_a_queue_request_that_failed_once_is_tried_again_at_once(
    server: OnceUnavailable, waits: list[float]
) -> None:
    storage = Storage(StorageSettings(connection_string=server.connection_string()))
    with pytest.raises(HttpResponseError):
        storage.queue("export-jobs").send_message("{}")
    assert server.requests == 2
    assert len(waits) == 1 and waits[0] <= 3
