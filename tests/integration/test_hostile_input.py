"""Hostile and broken input, in process on Azurite with the Braze sandbox: a broken source,
broken definitions or a queue message that is not ours gets an error saying what and where, a
run ends with the right status, nothing is sent, and Braze and the export's snapshot stay as the
last good run left them. (Ragged rows, bad UTF-8, missing columns, JSON Lines lines that are not
objects and over-long rows have their tests beside the features they exercise.)"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
from azure.functions.queue import QueueMessage

from devtools.sample import make_segment
from functions.delivery import deliver
from functions.planning import plan_export
from shared.core.definitions import DefinitionsError
from shared.core.messages import ChunkJob, ExportJob, MessageError, PartitionJob, SplitJob
from shared.core.resource_names import JOBS_QUEUE
from shared.core.runs import Status
from shared.pipeline.plan_export import plan_run
from shared.pipeline.start import start_run
from tests.integration.conftest import App, export_definition, run_in_process, take

GOOD = make_segment(300, segment="Hostile", invalid_every=10**6, bom=False, id_prefix="h")
BROKEN_LINE = GOOD.data.count(b"\n") + 1  # the line after the good rows


def _rows(count: int) -> bytes:
    return b"".join(b"t-%d,t%d@example.com,T,1,true,1990-01-01,\n" % (n, n) for n in range(count))


def _unclosed_quote(rows_after: int) -> bytes:
    """The good rows, a row whose quote is never closed, and more rows it swallows."""
    return (
        GOOD.data + b'h-open,o@example.com,"Never closed,1,true,1990-01-01,\n' + _rows(rows_after)
    )


UNCLOSED = (
    f"planning failed: CSV syntax error in the record starting at line {BROKEN_LINE}: "
    "unexpected end of data (a quote is opened and never closed)"
)


@pytest.mark.parametrize(
    ("path", "broken", "message"),
    [
        ("hostile/quote.csv", _unclosed_quote(10), re.escape(UNCLOSED)),
        # what the quote swallows passes the 1 MiB a record may have: the same error
        ("hostile/quote-long.csv", _unclosed_quote(30_000), re.escape(UNCLOSED)),
        (
            "hostile/truncated.csv.gz",
            gzip.compress(GOOD.data + _rows(1_000))[:-30],
            r"planning failed: the file cannot be decompressed after line \d+: Compressed file "
            r"ended before the end-of-stream marker was reached",
        ),
        (
            "hostile/empty.csv",
            b"",
            re.escape("planning failed: the file is empty: a CSV segment needs a header row"),
        ),
    ],
    ids=["unbalanced-quote", "unbalanced-quote-over-1-mib", "truncated-gzip", "empty-file"],
)
def test_a_broken_source_fails_the_run_and_corrupts_nothing(
    quiet_app: App, path: str, broken: bytes, message: str
) -> None:
    name = path.split("/")[1].split(".")[0]
    quiet_app.upload(path, gzip.compress(GOOD.data) if path.endswith(".gz") else GOOD.data)
    quiet_app.define([export_definition(name, path, "Hostile")])
    good = run_in_process(quiet_app, name)
    assert good.status == Status.SUCCEEDED and quiet_app.braze_users() == GOOD.expected
    quiet_app.upload(path, broken)
    quiet_app.mark_sandbox_requests()

    failed = run_in_process(quiet_app, name)

    assert failed.status == Status.FAILED
    assert re.fullmatch(message, failed.message), failed.message
    assert quiet_app.sandbox_requests() == []
    assert quiet_app.braze_users() == GOOD.expected
    snapshot = quiet_app.services.snapshots.current(name, "sandbox")
    assert snapshot is not None and snapshot.run_id == good.run_id


@pytest.mark.parametrize(
    ("name", "break_it", "problem"),
    [
        ("defs-json", lambda text: text[:-1], "not valid JSON: "),
        (
            "defs-connection",
            lambda text: text.replace('"connection": "sandbox"', '"connection": "nowhere"'),
            "exports[0] (defs-connection).connection: 'nowhere' is not a defined connection",
        ),
    ],
)
def test_broken_definitions_refuse_a_start_and_fail_a_queued_run_naming_the_problem(
    quiet_app: App, name: str, break_it: Callable[[str], str], problem: str
) -> None:
    quiet_app.upload("hostile/defs.csv", GOOD.data)
    quiet_app.define([export_definition(name, "hostile/defs.csv", "Hostile")])
    queued = start_run(quiet_app.services, name, "test").run
    take(quiet_app, JOBS_QUEUE, ExportJob, queued.run_id)
    definitions = quiet_app.definitions_path
    definitions.write_text(break_it(definitions.read_text()))
    expected = f"{definitions} has 1 problem(s):\n  - {problem}"

    with pytest.raises(DefinitionsError) as refused:
        start_run(quiet_app.services, name, "test")
    plan_run(ExportJob(queued.run_id, name), quiet_app.services)

    assert str(refused.value).startswith(expected)
    final = quiet_app.services.runs.get(queued.run_id)
    assert final is not None and final.status == Status.FAILED
    assert final.message.startswith(f"planning failed: {expected}")
    assert [r.run_id for r in quiet_app.services.runs.list_runs(name)] == [queued.run_id]
    assert quiet_app.sandbox_requests() == []


TRIGGERS: list[tuple[Callable[[QueueMessage], None], str]] = [
    (plan_export, "export-job"),  # the planning queue carries the three planning steps
    (plan_export, "split-job"),
    (plan_export, "partition-job"),
    (deliver, "chunk-job"),
]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"hello", "not JSON: "),
        (b'{"eventType": "Microsoft.Storage.BlobCreated", "subject": "/x"}', "{expected}"),
        (b'{"kind": "%s", "version": 9, "run_id": "r"}', "message version 9 is not supported"),
    ],
    ids=["not-json", "someone-elses-json", "another-version"],
)
def test_a_queue_message_that_is_not_ours_is_refused_and_touches_nothing(
    triggers_on: App, body: bytes, words: str
) -> None:
    """Refused (the host retries it, then moves it to the poison queue, where it can be read),
    even on its last attempt: no run is touched and nothing is sent."""
    app = triggers_on
    runs_before = app.services.runs.list_runs(limit=100)
    last = app.services.settings.max_dequeue_count
    for trigger, kind in TRIGGERS:
        text = body.replace(b"%s", kind.encode())
        expected = "expected a 'chunk-job'" if kind == "chunk-job" else "expected a planning job"
        with pytest.raises(MessageError, match=re.escape(words.format(expected=expected))):
            trigger(QueueMessage(id="foreign", body=text, dequeue_count=last))
    assert app.services.runs.list_runs(limit=100) == runs_before
    assert app.sandbox_requests() == []


def test_a_job_for_a_run_that_is_not_here_is_dropped(
    triggers_on: App, caplog: pytest.LogCaptureFixture
) -> None:
    """A well-formed job of another deployment's run (or one long gone) is dropped with a log
    line: no run is created or failed, and the message is not retried."""
    app = triggers_on
    runs_before = app.services.runs.list_runs(limit=100)
    jobs: list[Any] = [
        ExportJob("elsewhere-1", "vip"),
        SplitJob("elsewhere-1", "vip", 0, 2, 4, 0, 100, 1),
        PartitionJob("elsewhere-1", "vip", 0, 4),
        ChunkJob("elsewhere-1", "vip", 0, ["runs/elsewhere-1/chunks/x.tsv"], 75, [0]),
    ]
    with caplog.at_level(logging.INFO, logger="shared"):
        for (trigger, _), job in zip(TRIGGERS, jobs, strict=True):
            trigger(QueueMessage(id="stray", body=job.to_json().encode(), dequeue_count=1))

    dropped = [r.getMessage() for r in caplog.records if r.name.startswith("shared.")]
    assert len(dropped) == 4 and all("dropping" in line for line in dropped), dropped
    assert app.services.runs.get("elsewhere-1") is None
    assert app.services.runs.list_runs(limit=100) == runs_before
    assert app.sandbox_requests() == []
