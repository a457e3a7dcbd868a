"""A run record's insert whose connection drops is sent again at once, not left to fail its job
(whose queue message then came back 30 s later): a local Table endpoint closes the first
insert's connection without an answer, having stored it or not. The waits the client asks for
are recorded instead of slept (no test waits on a clock)."""

from __future__ import annotations

import http.server
import json
from collections.abc import Iterator

import pytest

from shared.core.runs import Run, RunConflict, SplitResult
from tests.local_server import QuietHandler, run_store_at, serving


class DropsFirstInsert(http.server.ThreadingHTTPServer):
    """Table inserts: the first connection is closed unanswered (after storing the entity when
    `lands`); later ones are answered as Table storage would, 409 for an entity it holds."""

    def __init__(self, *, lands: bool) -> None:
        self.lands = lands
        self.inserts: list[dict[str, object]] = []
        self.stored: set[tuple[str, str]] = set()
        server = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.inserts.append(body)
                key = (body["PartitionKey"], body["RowKey"])
                if len(server.inserts) == 1:
                    if lands:
                        server.stored.add(key)
                    self.close_connection = True  # no status line: the answer is lost
                    return
                exists = key in server.stored
                server.stored.add(key)
                if not exists:
                    self.reply(204, headers={"ETag": "W/\"datetime'2026-12-06T21%3A00%3A00Z'\""})
                    return
                error = {
                    "odata.error": {"code": "EntityAlreadyExists", "message": {"value": "exists"}}
                }
                headers = {
                    "Content-Type": "application/json",
                    "x-ms-error-code": "EntityAlreadyExists",
                }
                self.reply(409, json.dumps(error).encode(), headers)

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture(params=[False, True], ids=["lost-before-landing", "landed-answer-lost"])
def server(request: pytest.FixtureRequest) -> Iterator[DropsFirstInsert]:
    with serving(DropsFirstInsert(lands=request.param)) as running:
        yield running


def test_an_insert_whose_connection_dropped_is_sent_again_once(
    server: DropsFirstInsert, retry_waits: list[float]
) -> None:
    recorded = run_store_at(server).record_split("run-1", SplitResult(3, rows_read=7))
    first, again = server.inserts
    assert first == again and (first["RowKey"], first["rows_read"]) == ("split-0003", 7)
    # An insert that had landed is found there: a duplicate's answer (every caller handles
    # it), the entity the same either way.
    assert retry_waits == []  # the SDK sends its first retry at once
    assert server.stored == {("run-1", "split-0003")}
    assert recorded is not server.lands


def test_a_runs_insert_sent_again_says_so_when_the_first_had_landed(
    server: DropsFirstInsert, retry_waits: list[float]
) -> None:
    """`start_run` tells its own run from a duplicate trigger's by the run's creation time."""
    run = Run("run-2", "export", "segment", "sandbox", "segments/a.csv", "test")
    if server.lands:
        with pytest.raises(RunConflict):
            run_store_at(server).create(run)
    else:
        run_store_at(server).create(run)
    first, again = server.inserts
    assert first == again and first["created_at"] == run.created_at.isoformat()
