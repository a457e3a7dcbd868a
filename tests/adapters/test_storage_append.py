"""Rejected rows appended to a chunk's blob are written once, though the storage SDK sends an
append again after a dropped connection: each block is appended at the position its writer
expects, so a repeat of one that had landed is refused (412) instead of writing its lines
twice. A local Blob endpoint keeps one append blob and closes the first append's connection
without an answer, having applied it or not (Azurite now and then closes an idle keep-alive
connection as the client reuses it); the waits the client asks for are recorded instead of
slept (no test waits on a clock)."""

from __future__ import annotations

import http.server

import pytest
from azure.core.exceptions import HttpResponseError

from devtools.processes import AZURITE_ACCOUNT_KEY
from shared.adapters import storage as storage_module
from shared.adapters.settings import StorageSettings
from shared.adapters.storage import Storage
from tests.local_server import QuietHandler, serving

CONTAINER, NAME = "export-runs", "run-1/rejected/chunk-000001.jsonl"
ETAG = '"0x8DD000000000001"'


class DropsFirstAppend(http.server.ThreadingHTTPServer):
    """One append blob: `PUT ?comp=appendblock` appends (412 when
    x-ms-blob-condition-appendpos is not its length), HEAD gives its length. The connection of
    the append numbered `drop` is closed unanswered, after applying it when `lands` (or, with
    `refuse`, answered 412 with that error code)."""

    def __init__(self, *, lands: bool, drop: int = 1, refuse: str = "") -> None:
        self.content = b""
        self.appends: list[tuple[str | None, bytes]] = []
        server = self

        class Handler(QuietHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "comp=appendblock" not in self.path:
                    self.reply(400)
                    return
                position = self.headers.get("x-ms-blob-condition-appendpos")
                server.appends.append((position, body))
                if position is not None and int(position) != len(server.content):
                    self.reply(412, headers={"x-ms-error-code": "AppendPositionConditionNotMet"})
                    return
                if len(server.appends) == drop:
                    if lands:
                        server.content += body
                    if refuse:  # applied, yet answered 412 with another condition's code
                        self.reply(412, headers={"x-ms-error-code": refuse})
                        return
                    self.close_connection = True  # no status line: the answer is lost
                    return
                server.content += body
                self.reply(
                    201,
                    headers={
                        "ETag": ETAG,
                        "x-ms-blob-append-offset": str(len(server.content) - len(body)),
                        "x-ms-blob-committed-block-count": str(len(server.appends)),
                    },
                )

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.content)))
                self.send_header("x-ms-blob-type", "AppendBlob")
                self.send_header("ETag", ETAG)
                self.end_headers()

        super().__init__(("127.0.0.1", 0), Handler)

    def storage(self) -> Storage:
        base = f"http://127.0.0.1:{self.server_address[1]}/devstoreaccount1"
        return Storage(
            StorageSettings(
                connection_string="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                f"AccountKey={AZURITE_ACCOUNT_KEY};BlobEndpoint={base};"
            )
        )


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """What the storage client's retries ask to sleep, recorded instead of slept."""
    asked: list[float] = []
    monkeypatch.setattr("azure.core.pipeline.transport._base.time.sleep", asked.append)
    return asked


LINES = '{"row": 1, "reason": "email, \\"quoted\\""}\n{"row": 2, "note": "Zoë 🎉"}\n'


@pytest.mark.parametrize("lands", [False, True], ids=["lost-before-landing", "landed-answer-lost"])
def test_an_append_whose_connection_dropped_is_written_once(
    lands: bool, waits: list[float]
) -> None:
    with serving(DropsFirstAppend(lands=lands)) as server:
        end = server.storage().append_block(CONTAINER, NAME, LINES, at=0)
    assert server.content == LINES.encode()
    assert end == len(LINES.encode())
    assert len(server.appends) == 2  # sent again once, at the same position
    assert {position for position, _ in server.appends} == {"0"}


def test_blocks_after_the_first_go_at_the_positions_the_earlier_ones_left(
    monkeypatch: pytest.MonkeyPatch, waits: list[float]
) -> None:
    """Three blocks, the second's answer lost after it landed: each block once, in order."""
    monkeypatch.setattr(storage_module, "APPEND_BLOCK_BYTES", 60)
    lines = "".join(f'{{"row": {n}, "values": "{"x" * 30}"}}\n' for n in range(3))
    with serving(DropsFirstAppend(lands=True, drop=2)) as server:
        end = server.storage().append_block(CONTAINER, NAME, lines, at=0)
    assert server.content == lines.encode()
    assert end == len(lines.encode())
    sizes = [len(line.encode()) for line in lines.splitlines(keepends=True)]
    assert [p for p, _ in server.appends] == [
        "0",
        str(sizes[0]),
        str(sizes[0]),
        str(sum(sizes[:2])),
    ]


@pytest.mark.parametrize("written", [b'{"row": 0}\n', LINES.encode() * 2], ids=["less", "more"])
def test_an_append_at_another_position_than_the_blobs_length_is_refused(written: bytes) -> None:
    """A writer whose count is off (another wrote meanwhile, or the blob was cut) is told so,
    and nothing is written: only a blob that ends exactly where the block would shows that
    the block landed."""
    with serving(DropsFirstAppend(lands=True, drop=0)) as server:
        server.content = written
        with pytest.raises(HttpResponseError) as refused:
            server.storage().append_block(CONTAINER, NAME, LINES, at=0)
    assert refused.value.error_code == "AppendPositionConditionNotMet"
    assert server.content == written


def test_another_refused_condition_is_not_taken_for_a_landed_block() -> None:
    """A 412 for another condition than the position, though the blob's length happens to fit,
    is raised."""
    with (
        serving(DropsFirstAppend(lands=True, refuse="ConditionNotMet")) as server,
        pytest.raises(HttpResponseError) as refused,
    ):
        server.storage().append_block(CONTAINER, NAME, LINES, at=0)
    assert refused.value.error_code == "ConditionNotMet"
    assert len(server.appends) == 1


def test_blocks_end_at_line_ends_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rejected row's values may hold U+2028 or U+0085, which JSON keeps as they are: no
    block ends there, so a block that never lands leaves no row cut in two."""
    monkeypatch.setattr(storage_module, "APPEND_BLOCK_BYTES", 40)
    lines = '{"note": "a\u2028b\u0085c"}\n' * 3
    assert len(lines.splitlines()) == 9
    with serving(DropsFirstAppend(lands=False, drop=0)) as server:
        end = server.storage().append_block(CONTAINER, NAME, lines, at=0)
    assert server.content == lines.encode() and end == len(lines.encode())
    assert [body.decode() for _, body in server.appends] == ['{"note": "a\u2028b\u0085c"}\n'] * 3
