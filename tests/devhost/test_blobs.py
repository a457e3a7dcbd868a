"""Event Grid blob triggers on a real Azurite: the webhook, the watcher, SDK types, poison."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests
from azure.storage.blob import BlobServiceClient, ContainerClient
from devhost_testkit import Azurite, RecordingApp, host_env, message_count, queue_client, wait_until

from devhost import LocalHost
from devhost.blobs import BlobPathError, blob_created_event, parse_blob_path

BLOB_FUNCTIONS = """

import azurefunctions.extensions.bindings.blob as blob_sdk


@bp.blob_trigger(
    arg_name="blob",
    path="%DROP_CONTAINER%/incoming/{stem}.csv",
    connection="AzureWebJobsStorage",
    source=func.BlobSource.EVENT_GRID,
)
def on_drop(blob: func.InputStream) -> None:
    content = blob.read().decode()
    record_call("on_drop", name=blob.name, length=blob.length, uri=blob.uri, content=content)
    if content.startswith("fail"):
        raise RuntimeError("failing on purpose")


@bp.blob_trigger(
    arg_name="client",
    path="%DROP_CONTAINER%/sdk/{name}",
    connection="AzureWebJobsStorage",
    source="EventGrid",
)
def on_drop_sdk(client: blob_sdk.BlobClient) -> None:
    record_call(
        "on_drop_sdk",
        type=f"{type(client).__module__}.{type(client).__qualname__}",
        container=client.container_name,
        blob=client.blob_name,
        content=client.download_blob().readall().decode(),
    )


@bp.blob_trigger(arg_name="blob", path="%DROP_CONTAINER%/{name}", connection="AzureWebJobsStorage")
def polled(blob: func.InputStream) -> None:
    pass
"""


def blob_env(azurite: Azurite, app: RecordingApp, container: str, **extra: str) -> dict[str, str]:
    return host_env(azurite, app, "unused-work-queue", DROP_CONTAINER=container, **extra)


def drop_container(azurite: Azurite) -> ContainerClient:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    return service.create_container(f"drops-{uuid.uuid4().hex[:12]}")


def post_events(host: LocalHost, function_name: str, events: list[dict[str, Any]]) -> int:
    response = requests.post(
        f"{host.http_url}/runtime/webhooks/blobs",
        params={"functionName": f"Host.Functions.{function_name}"},
        headers={"aeg-event-type": "Notification"},
        json=events,
        timeout=30,
    )
    return response.status_code


def created_event(container: ContainerClient, blob_name: str) -> dict[str, Any]:
    blob = container.get_blob_client(blob_name)
    return blob_created_event(blob.url, blob.get_blob_properties())


def test_blob_paths_capture_names_like_the_host() -> None:
    path = parse_blob_path("drops/incoming/{stem}.{ext}")

    assert path.match("drops", "incoming/2024/05/a.b.csv") == {"stem": "2024/05/a.b", "ext": "csv"}
    assert path.match("drops", "other/a.csv") is None
    assert path.match("elsewhere", "incoming/a.csv") is None
    assert parse_blob_path("drops/{{literal}}").match("drops", "{literal}") == {}
    with pytest.raises(BlobPathError, match="container/blob"):
        parse_blob_path("drops")
    with pytest.raises(BlobPathError, match="not a valid container name"):
        parse_blob_path("{container}/x")


def test_listing_shows_event_grid_blob_triggers_and_refuses_polling_ones(
    azurite: Azurite, make_app: Callable[..., RecordingApp]
) -> None:
    app = make_app(extra_functions=BLOB_FUNCTIONS)
    env = blob_env(azurite, app, "listing")

    with LocalHost(app.app_dir, env=env, functions=["on_drop", "polled"]) as host:
        listing = {function.name: function.describe() for function in host.functions}

    assert (
        listing["on_drop"] == "on_drop: blobTrigger (EventGrid, path=listing/incoming/{stem}.csv)"
    )
    assert "only source=EventGrid" in listing["polled"]


def test_the_webhook_answers_the_validation_handshake(
    azurite: Azurite, make_app: Callable[..., RecordingApp]
) -> None:
    app = make_app(extra_functions=BLOB_FUNCTIONS)
    env = blob_env(azurite, app, "handshake")

    with LocalHost(app.app_dir, env=env, functions=["on_drop"]) as host:
        response = requests.post(
            f"{host.http_url}/runtime/webhooks/blobs?functionName=Host.Functions.on_drop",
            headers={"aeg-event-type": "SubscriptionValidation"},
            json=[
                {
                    "id": str(uuid.uuid4()),
                    "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                    "subject": "",
                    "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},
                }
            ],
            timeout=30,
        )
        without_header = requests.post(
            f"{host.http_url}/runtime/webhooks/blobs?functionName=Host.Functions.on_drop",
            json=[],
            timeout=30,
        )

    assert response.status_code == 200
    assert response.json() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    assert without_header.status_code == 400


def test_a_blob_created_event_invokes_the_function_with_an_input_stream(
    azurite: Azurite, make_app: Callable[..., RecordingApp]
) -> None:
    app = make_app(extra_functions=BLOB_FUNCTIONS)
    container = drop_container(azurite)
    container.upload_blob("incoming/2024/report.csv", b"id,email\n1,a@example.com\n")
    # The watcher is off: only the posted event may trigger the function.
    env = blob_env(azurite, app, container.container_name, DEVHOST_BLOB_WATCH_SECONDS="0")

    with LocalHost(app.app_dir, env=env, functions=["on_drop"]) as host:
        event = created_event(container, "incoming/2024/report.csv")
        assert post_events(host, "on_drop", [event]) == 202
        (call,) = wait_until(lambda: app.calls("on_drop"), "the function ran")

    assert call["name"] == f"{container.container_name}/incoming/2024/report.csv"
    assert call["content"] == "id,email\n1,a@example.com\n"
    assert call["length"] == len(call["content"])
    assert call["uri"] == container.get_blob_client("incoming/2024/report.csv").url


def test_an_sdk_type_parameter_gets_a_blob_client_without_a_download(
    azurite: Azurite, make_app: Callable[..., RecordingApp]
) -> None:
    app = make_app(extra_functions=BLOB_FUNCTIONS)
    container = drop_container(azurite)
    container.upload_blob("sdk/profile.json", b'{"id": 1}')
    env = blob_env(azurite, app, container.container_name, DEVHOST_BLOB_WATCH_SECONDS="0")

    with LocalHost(app.app_dir, env=env, functions=["on_drop_sdk"]) as host:
        assert post_events(host, "on_drop_sdk", [created_event(container, "sdk/profile.json")])
        (call,) = wait_until(lambda: app.calls("on_drop_sdk"), "the function ran")

    # The blob extension's converter hands over the Azure SDK's own client.
    assert call["type"] == "azure.storage.blob._blob_client.BlobClient"
    assert (call["container"], call["blob"]) == (container.container_name, "sdk/profile.json")
    assert call["content"] == '{"id": 1}'


def test_events_for_blobs_outside_the_path_are_ignored(
    azurite: Azurite, make_app: Callable[..., RecordingApp]
) -> None:
    app = make_app(extra_functions=BLOB_FUNCTIONS)
    container = drop_container(azurite)
    container.upload_blob("incoming/notes.txt", b"not a csv")
    container.upload_blob("elsewhere/data.csv", b"wrong folder")
    env = blob_env(azurite, app, container.container_name, DEVHOST_BLOB_WATCH_SECONDS="0")

    with LocalHost(app.app_dir, env=env, functions=["on_drop"]) as host:
        events = [
            created_event(container, "incoming/notes.txt"),
            created_event(container, "elsewhere/data.csv"),
            {**created_event(container, "incoming/notes.txt"), "eventType": "Other.Event"},
        ]
        assert post_events(host, "on_drop", events) == 202
        host_queue = queue_client(azurite, f"azure-webjobs-blobtrigger-{host.host_id}")
        # Events are checked before anything is queued, so nothing is pending now.
        assert message_count(host_queue) == 0

    assert app.calls("on_drop") == []


def test_the_watcher_raises_one_event_per_new_blob_version_and_none_for_old_blobs(
    azurite: Azurite, make_app: Callable[..., RecordingApp]
) -> None:
    app = make_app(extra_functions=BLOB_FUNCTIONS)
    container = drop_container(azurite)
    container.upload_blob("incoming/old.csv", b"there before devhost")
    env = blob_env(azurite, app, container.container_name, DEVHOST_BLOB_WATCH_SECONDS="0.2")

    with LocalHost(app.app_dir, env=env, functions=["on_drop"]) as host:
        container.upload_blob("incoming/new.csv", b"first version")
        wait_until(lambda: app.calls("on_drop"), "the new blob was noticed")
        container.upload_blob("incoming/new.csv", b"second version", overwrite=True)
        wait_until(lambda: len(app.calls("on_drop")) == 2, "the overwrite was noticed")
        # A last blob, then an empty trigger queue: every event raised so far has run.
        container.upload_blob("incoming/sentinel.csv", b"last")
        wait_until(lambda: len(app.calls("on_drop")) == 3, "the sentinel was noticed")
        host_queue = queue_client(azurite, f"azure-webjobs-blobtrigger-{host.host_id}")
        wait_until(lambda: message_count(host_queue) == 0, "the trigger queue is empty")

    contents = [call["content"] for call in app.calls("on_drop")]
    assert contents == ["first version", "second version", "last"]


def test_a_failing_blob_ends_in_the_poison_queue_after_max_dequeue_count(
    azurite: Azurite, make_app: Callable[..., RecordingApp]
) -> None:
    app = make_app({"maxDequeueCount": 2}, extra_functions=BLOB_FUNCTIONS)
    container = drop_container(azurite)
    env = blob_env(azurite, app, container.container_name, DEVHOST_BLOB_WATCH_SECONDS="0.2")
    poison = queue_client(azurite, "webjobs-blobtrigger-poison", base64=False)

    def poisoned() -> dict[str, Any] | None:
        for message in poison.peek_messages(max_messages=32):
            body = json.loads(base64.b64decode(message.content))
            if body["ContainerName"] == container.container_name:
                return body
        return None

    with LocalHost(app.app_dir, env=env, functions=["on_drop"]):
        etag = container.upload_blob("incoming/bad.csv", b"fail, please").get_blob_properties().etag
        poison_message = wait_until(
            lambda: message_count(poison) and poisoned(), "the blob was poisoned"
        )

    assert poison_message == {
        "Type": "BlobTrigger",
        "FunctionId": "Host.Functions.on_drop",
        "BlobType": "BlockBlob",
        "ContainerName": container.container_name,
        "BlobName": "incoming/bad.csv",
        "ETag": etag,
    }
    assert len(app.calls("on_drop")) == 2


def test_admin_invoke_runs_a_blob_function_on_a_named_blob(
    azurite: Azurite, make_app: Callable[..., RecordingApp]
) -> None:
    app = make_app(extra_functions=BLOB_FUNCTIONS)
    container = drop_container(azurite)
    container.upload_blob("incoming/manual.csv", b"by hand")
    env = blob_env(azurite, app, container.container_name, DEVHOST_BLOB_WATCH_SECONDS="0")

    with LocalHost(app.app_dir, env=env, functions=["on_drop"]) as host:
        response = requests.post(
            f"{host.http_url}/admin/functions/on_drop",
            json={"input": f"{container.container_name}/incoming/manual.csv"},
            timeout=30,
        )
        assert response.status_code == 202
        (call,) = wait_until(lambda: app.calls("on_drop"), "the function ran")

    assert call["content"] == "by hand"
