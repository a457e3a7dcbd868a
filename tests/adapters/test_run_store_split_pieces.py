"""Where a run's pieces are, read as Azure Table storage answers the query: a property the
query selects and an entity lacks comes back as null there (Azurite leaves it out, so the
integration tests do not see this). A split recorded by the version before has no pieces blob,
and must read as one without, not as `None`. A local Table endpoint answers as Azure does."""

from __future__ import annotations

import http.server
import json
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.core.runs import SplitPieces
from tests.local_server import QuietHandler, run_store_at, serving


class SplitRecords(http.server.ThreadingHTTPServer):
    """Answers a query with two split records, as Azure does for `$select`: the second, of the
    version before, with null for the properties it lacks. Keeps the queries asked."""

    def __init__(self) -> None:
        self.queries: list[dict[str, list[str]]] = []
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                server.queries.append(parse_qs(urlsplit(self.path).query))
                records = [
                    {"split": 1, "pieces_blob": None, "piece_ends": None},
                    {
                        "split": 0,
                        "pieces_blob": "runs/r/partitions/s0000-a.bin",
                        "piece_ends": "[10, 10, 25]",
                    },
                ]
                payload = json.dumps({"value": records}).encode()
                self.reply(200, payload, {"Content-Type": "application/json;odata=minimalmetadata"})

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def server() -> Iterator[SplitRecords]:
    with serving(SplitRecords()) as running:
        yield running


def test_a_split_recorded_without_pieces_reads_as_one_without(server: SplitRecords) -> None:
    pieces = run_store_at(server).split_pieces("r")

    assert pieces == [
        SplitPieces(0, "runs/r/partitions/s0000-a.bin", [10, 10, 25]),
        SplitPieces(1),  # pieces_blob "", piece_ends []: read a blob a piece
    ]
    (query,) = server.queries
    assert query["$select"] == ["split,pieces_blob,piece_ends"]  # not the counts and reasons
