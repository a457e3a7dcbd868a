"""Indexing the app like the worker, and the start-up listing built from it."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from azure.core.exceptions import ResourceNotFoundError
from devhost_testkit import Azurite, RecordingApp, host_env, queue_client, wait_until

from devhost import LocalHost, load_functions
from devhost.host import HostStartError
from devhost.indexing import IndexingError

MORE_FUNCTIONS = """

@bp.queue_trigger(arg_name="text", queue_name="%FORWARD_QUEUE%", connection="AzureWebJobsStorage")
@bp.queue_output(
    arg_name="forwarded", queue_name="%FORWARDED_QUEUE%", connection="AzureWebJobsStorage"
)
def forward(text: str, forwarded: func.Out[list[str]]) -> None:
    forwarded.set([text.upper(), text.lower()])


@bp.queue_trigger(arg_name="msg", queue_name="%ASYNC_QUEUE%", connection="AzureWebJobsStorage")
@bp.queue_output(
    arg_name="$return", queue_name="%FORWARDED_QUEUE%", connection="AzureWebJobsStorage"
)
async def forward_async(msg: func.QueueMessage) -> str:
    return "async:" + msg.get_body().decode()


@bp.queue_trigger(arg_name="msg", queue_name="blob-names", connection="AzureWebJobsStorage")
@bp.blob_input(arg_name="blob", path="uploads/{queueTrigger}", connection="AzureWebJobsStorage")
def read_blob(msg: func.QueueMessage, blob: func.InputStream) -> None:
    pass


@bp.queue_trigger(arg_name="msg", queue_name="wrongly-typed", connection="AzureWebJobsStorage")
def wrongly_typed(msg: int) -> None:
    pass


@bp.queue_trigger(arg_name="msg", queue_name="other-storage", connection="OtherStorage")
def elsewhere(msg: func.QueueMessage) -> None:
    pass
"""


def test_load_functions_reads_bindings_as_the_host_receives_them(
    make_app: Callable[..., RecordingApp],
) -> None:
    app = make_app()

    functions = {function.name: function for function in load_functions(app.app_dir)}

    assert sorted(functions) == ["ping", "record_work", "tick"]
    record_work = functions["record_work"]
    assert record_work.trigger_type == "queueTrigger"
    assert record_work.trigger["name"] == "msg"
    assert record_work.trigger["queueName"] == "%WORK_QUEUE%"
    assert record_work.trigger["connection"] == "AzureWebJobsStorage"
    assert functions["tick"].trigger_type == "timerTrigger"
    assert functions["ping"].trigger_type == "httpTrigger"
    app_modules = [m for m in list(sys.modules.values()) if _is_under(m, app.app_dir)]
    assert app_modules == [], "the app is not left imported"


def test_load_functions_explains_an_app_without_a_function_app(tmp_path: Path) -> None:
    with pytest.raises(IndexingError, match=r"function_app\.py does not exist"):
        load_functions(tmp_path)


def test_listing_resolves_settings_and_says_what_is_not_served(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> None:
    app = make_app(extra_functions=MORE_FUNCTIONS)
    work_queue = queue_name("listed")
    # FORWARD_QUEUE is deliberately missing, and OtherStorage is identity-based.
    env = host_env(
        azurite,
        app,
        work_queue,
        ASYNC_QUEUE=queue_name("async"),
        FORWARDED_QUEUE=queue_name("forwarded"),
        OtherStorage__queueServiceUri="https://account.queue.core.windows.net",
    )
    with LocalHost(app.app_dir, env=env) as host:
        listing = {function.name: function for function in host.functions}

    assert listing["record_work"].describe() == f"record_work: queueTrigger (queue={work_queue})"
    assert listing["record_work"].connection == "AzureWebJobsStorage"
    assert listing["tick"].describe() == "tick: timerTrigger (schedule=0 */5 * * * *)"
    assert listing["ping"].describe() == "ping: httpTrigger (* /api/ping)"
    assert listing["forward_async"].served
    assert "'%FORWARD_QUEUE%' does not resolve to a value" in listing["forward"].describe()
    assert listing["read_blob"].describe() == (
        "read_blob: queueTrigger (not served by devhost yet: binding 'blob' of type 'blob')"
    )
    assert 'does not match its Python annotation "int"' in listing["wrongly_typed"].describe()
    assert "identity-based" in listing["elsewhere"].describe()


def test_queue_outputs_str_trigger_and_async_functions(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> None:
    app = make_app(extra_functions=MORE_FUNCTIONS)
    forward_queue, async_queue, forwarded_queue = (
        queue_name("forward"),
        queue_name("async"),
        queue_name("forwarded"),
    )
    env = host_env(
        azurite,
        app,
        queue_name("idle"),
        FORWARD_QUEUE=forward_queue,
        ASYNC_QUEUE=async_queue,
        FORWARDED_QUEUE=forwarded_queue,
    )
    with LocalHost(app.app_dir, env=env, functions=["forward", "forward_async"]) as host:
        assert [function.name for function in host.functions] == ["forward", "forward_async"]
        queue_client(azurite, forward_queue).send_message("Hello")
        queue_client(azurite, async_queue).send_message("hi")
        forwarded = queue_client(azurite, forwarded_queue)
        received: list[str] = []

        def three_forwarded() -> bool:
            # The host creates an output queue when it first writes to it.
            with contextlib.suppress(ResourceNotFoundError):
                received.extend(message.content for message in forwarded.receive_messages())
            return len(received) == 3

        wait_until(three_forwarded, "both functions wrote their outputs")

    assert sorted(received) == ["HELLO", "async:hi", "hello"]


def test_functions_option_rejects_unknown_names(make_app: Callable[..., RecordingApp]) -> None:
    app = make_app()
    with pytest.raises(HostStartError, match="no function named missing"):
        LocalHost(app.app_dir, functions=["missing"]).start()


def test_local_settings_apply_unless_the_environment_already_has_them(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> None:
    app = make_app()
    from_file, from_env = queue_name("from-file"), queue_name("from-env")
    settings = {
        "IsEncrypted": False,
        "Values": {
            "AzureWebJobsStorage": azurite.connection_string,
            "WORK_QUEUE": from_file,
            "RECORD_DIR": str(app.records),
            "ONLY_IN_FILE": "yes",
        },
    }
    (app.app_dir / "local.settings.json").write_text(json.dumps(settings))

    with LocalHost(app.app_dir) as host:
        assert _queue_of(host, "record_work") == from_file
        assert os.environ["ONLY_IN_FILE"] == "yes"
    with LocalHost(app.app_dir, env={"WORK_QUEUE": from_env}) as host:
        assert _queue_of(host, "record_work") == from_env
    assert "ONLY_IN_FILE" not in os.environ, "settings are withdrawn when the host stops"


def _queue_of(host: LocalHost, function_name: str) -> str | None:
    return next(f.queue_name for f in host.functions if f.name == function_name)


def _is_under(module: ModuleType, directory: Path) -> bool:
    return str(getattr(module, "__file__", None) or "").startswith(str(directory))
