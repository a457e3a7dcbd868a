"""A local HTTP server a test talks to, served from a thread for as long as the test needs it;
the run store of a Table endpoint served so."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from socketserver import BaseServer
from typing import TypeVar

from devtools.processes import AZURITE_ACCOUNT_KEY
from shared.adapters.run_store import RunStore
from shared.adapters.settings import StorageSettings
from shared.adapters.storage import Storage
from shared.core.resource_names import RUNS_TABLE

S = TypeVar("S", bound=BaseServer)


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A keep-alive request handler that logs nothing (a test's output stays its own)."""

    protocol_version = "HTTP/1.1"

    def reply(self, status: int, payload: bytes = b"", headers: Mapping[str, str] = {}) -> None:
        """Answer with `status`, `headers` and `payload` (its length said)."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: object) -> None:
        pass


@contextmanager
def serving(server: S) -> Iterator[S]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def run_store_at(server: BaseServer) -> RunStore:
    """The run store of a Table endpoint `server` serves on loopback, built from a connection
    string as the app builds its own."""
    port = server.server_address[1]  # type: ignore[index]  # an address of (host, port)
    connection = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={AZURITE_ACCOUNT_KEY};TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )
    return RunStore(Storage(StorageSettings(connection_string=connection)).table(RUNS_TABLE))
