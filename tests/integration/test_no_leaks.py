"""No leaks: a whole export, with its key read from Key Vault, rejected rows, a row Braze
refuses, an array-cap warning and an unchanged re-run, is scanned afterwards. The API key is in
no log line (captured at DEBUG, every library included), no blob, no queue message and no run
record; no customer email or id is in any log line, queue message or run summary (they stay in
the blobs that must hold them: the source, chunks, snapshots, rejected rows and report.json's
array-cap examples)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from urllib.parse import quote

import pytest

from shared.adapters.storage import Storage
from shared.core.resource_names import RUNS_TABLE
from shared.core.runs import Status
from tests.integration.conftest import (
    BLOCKLISTED,
    SANDBOX_KEY,
    App,
    export_definition,
    opened,
    run_in_process,
)
from tests.integration.test_key_vault_runs import SECRET, vault_secrets
from tests.key_vault_double import KeyVaultDouble

HEADER = "\ufeffCustomerId,Email,FirstName,LoyaltyPoints,IsVip,BirthDate,Note"
PROFILES = [
    ("cust-Ωmega-001", "renée.leak+vip@example.com", '"Zoë, ""the"" boss"', '"line one\nline 2"'),
    ("cust-Ωmega-002", "second.leak@example.org", "José", "🎉"),
    ("cust-Ωmega-003", "broken leak@example.org", "Ann", ""),  # rejected: whitespace
    ("cust-Ωmega-001", "dup.leak@example.net", "Dup", ""),  # rejected: duplicate id
    (BLOCKLISTED, "blocked.leak@example.com", "Bo", ""),  # refused by Braze
]


def _segment() -> bytes:
    rows = [f"{cid},{email},{name},5,true,1980-01-31,{note}" for cid, email, name, note in PROFILES]
    return ("\n".join([HEADER, *rows]) + "\n").encode()


def _blobs(storage: Storage) -> Iterable[tuple[str, bytes]]:
    for container in storage.blobs.list_containers():
        client = storage.container(container.name)
        for blob in client.list_blobs():
            yield f"{container.name}/{blob.name}", opened(client.download_blob(blob.name).readall())


def test_an_export_leaks_no_key_and_logs_no_personal_data(
    quiet_app: App,
    vault: KeyVaultDouble,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    vault.set_secret(SECRET, SANDBOX_KEY)
    monkeypatch.setattr(quiet_app.services, "secrets", vault_secrets(vault, quiet_app.env))
    storage = quiet_app.services.storage
    messages: list[str] = []
    send = storage.send_messages

    def recording(queue_name: str, texts: Iterable[str]) -> None:
        listed = list(texts)
        messages.extend(listed)
        send(queue_name, listed)

    monkeypatch.setattr(storage, "send_messages", recording)
    quiet_app.upload("leaks/segment.csv", _segment())
    quiet_app.define(
        [export_definition(f"leak-{n}", "leaks/segment.csv", f"Leak {n}") for n in "ab"],
        array_element_cap=1,
    )
    caplog.set_level(logging.DEBUG)

    first = run_in_process(quiet_app, "leak-a")
    second = run_in_process(quiet_app, "leak-b")  # past the array cap: a warning is logged
    quiet_app.upload("leaks/segment.csv", _segment())
    third = run_in_process(quiet_app, "leak-a")  # Braze refused a row: the source is read again

    assert (first.status, second.status) == (Status.PARTIALLY_SUCCEEDED,) * 2
    assert (third.status, third.objects_planned) == (Status.FAILED, 1)  # refused once more
    assert (first.rows_rejected, first.profiles_rejected_by_braze) == (2, 1)
    assert second.array_cap_warnings == 2
    assert vault.secret_reads(SECRET) >= 1  # the key really came from the vault
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    lines = [formatter.format(record) for record in caplog.records]
    assert any("array cap" in line for line in lines)  # the path that used to log ids ran
    assert len(lines) > 50  # the SDKs' DEBUG lines were captured too

    plain = {cid for cid, *_ in PROFILES} | {email for _, email, *_ in PROFILES}
    # As written, and as JSON with ASCII escapes, URL-encoded or as a bytes repr would show it.
    personal = plain | {
        form
        for value in plain
        for form in (json.dumps(value)[1:-1], quote(value), repr(value.encode())[2:-1])
    }
    for line in lines:
        assert SANDBOX_KEY not in line, line
        assert not [value for value in personal if value in line], line
    for text in messages:
        assert SANDBOX_KEY not in text and not [v for v in personal if v in text], text
    assert messages, "no queue message was seen"
    scanned, summaries = 0, 0
    for name, data in _blobs(storage):
        scanned += 1
        assert SANDBOX_KEY.encode() not in data, name
        if name.endswith("/report.md"):  # the run summaries are meant to be shared
            summaries += 1
            assert not [v for v in personal if v in data.decode()], name
    assert scanned > 10 and summaries >= 3  # other tests may share the storage
    for entity in storage.table(RUNS_TABLE).list_entities():
        assert SANDBOX_KEY not in json.dumps(dict(entity), default=str), entity["RowKey"]
