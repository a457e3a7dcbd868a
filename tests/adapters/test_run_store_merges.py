"""A merge whose connection drops is sent again at once when a repeat leaves what the first
would have whenever it lands (a flag set once, the schedule's own slot), and a run's fields are
not (their job is retried instead): a local Table endpoint closes the first merge's connection
without an answer, having applied it or not (Azurite now and then closes an idle keep-alive
connection as the client reuses it). The waits the client asks for are recorded instead of
slept (no test waits on a clock)."""

from __future__ import annotations

import http.server
import json
from collections.abc import Callable, Iterator

import pytest
from azure.core.exceptions import ServiceResponseError

from shared.adapters.run_store import RunStore
from shared.core.runs import Run, Status, utcnow
from tests.local_server import QuietHandler, run_store_at, serving

ETAG = "W/\"datetime'2026-12-07T15%3A00%3A00Z'\""


class DropsFirstMerge(http.server.ThreadingHTTPServer):
    """Table merges (PATCH): the first connection is closed unanswered (after applying the
    merge when `lands`); later ones are answered 204, or 412 when their If-Match names another
    version than the entity's."""

    def __init__(self, *, lands: bool) -> None:
        self.merges: list[tuple[str, dict[str, object]]] = []
        self.entities: dict[str, dict[str, object]] = {}
        self.version = 0
        server = self

        class Handler(QuietHandler):
            def do_PATCH(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.merges.append((self.path, body))
                if_match = self.headers.get("If-Match")
                if len(server.merges) == 1:
                    if lands:
                        server.apply(self.path, body)
                    self.close_connection = True  # no status line: the answer is lost
                    return
                if if_match not in (None, "*", server.etag):
                    self.reply(412, b"", {"x-ms-error-code": "UpdateConditionNotSatisfied"})
                    return
                server.apply(self.path, body)
                self.reply(204, headers={"ETag": server.etag})

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def etag(self) -> str:
        return ETAG.replace("00Z", f"{self.version:02d}Z")

    def apply(self, path: str, body: dict[str, object]) -> None:
        self.entities.setdefault(path.split("?")[0], {}).update(body)
        self.version += 1


@pytest.fixture(params=[False, True], ids=["lost-before-landing", "landed-answer-lost"])
def server(request: pytest.FixtureRequest) -> Iterator[DropsFirstMerge]:
    with serving(DropsFirstMerge(lands=request.param)) as running:
        yield running


def _run() -> Run:
    return Run("run-1", "e", "segment", "c", "segments/e.csv", "cli", status=Status.PLANNING)


MERGES: dict[str, Callable[[RunStore], None]] = {
    "a partition's delivery queued": lambda store: store.mark_delivery_queued("run-1", 3),
    "the last schedule slot": lambda store: store.set_last_slot("e", utcnow()),
}


@pytest.mark.parametrize("merge", MERGES.values(), ids=MERGES.keys())
def test_a_merge_whose_connection_dropped_is_sent_again_once(
    server: DropsFirstMerge, retry_waits: list[float], merge: Callable[[RunStore], None]
) -> None:
    merge(run_store_at(server))
    (first_path, first), (again_path, again) = server.merges
    assert (first_path, first) == (again_path, again)
    assert retry_waits == []  # the SDK sends its first retry at once
    assert server.entities == {first_path.split("?")[0]: first}


@pytest.mark.parametrize("conditional", [False, True], ids=["as-is", "if-unchanged"])
def test_a_runs_fields_whose_connection_dropped_are_not_sent_again(
    server: DropsFirstMerge, conditional: bool
) -> None:
    """Sent again after it landed, a run's merge could put back this job's copy over another
    job's write made meanwhile (a finalizer's, once the release had queued the chunks), or,
    conditional, find its own write and take it for another's (a RunConflict: another split
    went on, so none queues the partitions); its job is retried instead, which reads the run
    again."""
    run = _run()
    run.etag = server.etag
    with pytest.raises(ServiceResponseError):
        run_store_at(server).update(run, if_unchanged=conditional)
    assert len(server.merges) == 1
