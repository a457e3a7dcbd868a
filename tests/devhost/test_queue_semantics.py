"""host.json queue semantics on a real Azurite: encoding, retries, poison, concurrency, lease."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from datetime import timedelta

import pytest
from devhost_testkit import (
    Azurite,
    RecordingApp,
    host_env,
    message_count,
    queue_client,
    wait_until,
)

from devhost import LocalHost


def test_base64_message_arrives_decoded_and_is_deleted_after_success(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> None:
    app = make_app()
    work_queue = queue_name("work")
    with LocalHost(app.app_dir, env=host_env(azurite, app, work_queue)):
        queue = queue_client(azurite, work_queue)
        queue.send_message("héllo wörld")

        (success,) = wait_until(app.successes, "the message was processed")
        assert success["body"] == "héllo wörld"
        assert success["dequeue_count"] == 1
        wait_until(lambda: message_count(queue) == 0, "the message was deleted")


def test_message_encoding_none_passes_the_stored_text_through(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> None:
    app = make_app({"messageEncoding": "none"})
    work_queue = queue_name("plain")
    with LocalHost(app.app_dir, env=host_env(azurite, app, work_queue)):
        queue = queue_client(azurite, work_queue, base64=False)
        queue.send_message("plain text, not base64")

        (success,) = wait_until(app.successes, "the message was processed")
        assert success["body"] == "plain text, not base64"
        wait_until(lambda: message_count(queue) == 0, "the message was deleted")


def test_text_that_is_not_base64_goes_straight_to_the_poison_queue(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> None:
    app = make_app()
    work_queue = queue_name("undecodable")
    with LocalHost(app.app_dir, env=host_env(azurite, app, work_queue)):
        queue_client(azurite, work_queue, base64=False).send_message("not base64!")
        poison = queue_client(azurite, f"{work_queue}-poison", base64=False)

        wait_until(lambda: message_count(poison) == 1, "the message was poisoned")
        assert poison.receive_message().content == "not base64!"
        assert app.attempts() == []


def test_always_failing_message_is_tried_max_dequeue_count_times_then_poisoned(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> None:
    app = make_app({"maxDequeueCount": 3})
    work_queue = queue_name("failing")
    body = json.dumps({"fail_attempts": "always"})
    with LocalHost(app.app_dir, env=host_env(azurite, app, work_queue)):
        queue = queue_client(azurite, work_queue)
        queue.send_message(body)
        poison = queue_client(azurite, f"{work_queue}-poison", base64=False)

        wait_until(lambda: message_count(poison) == 1, "the message was poisoned")
        assert [attempt["dequeue_count"] for attempt in app.attempts()] == [1, 2, 3]
        assert app.successes() == []
        # The copy to the poison queue lands before the original is deleted.
        wait_until(lambda: message_count(queue) == 0, "the original was deleted")
        # The original stored text, still base64, so the same app could read it back.
        assert base64.b64decode(poison.receive_message().content) == body.encode()


def test_message_that_fails_once_is_retried_and_not_poisoned(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> None:
    app = make_app({"maxDequeueCount": 3})
    work_queue = queue_name("flaky")
    with LocalHost(app.app_dir, env=host_env(azurite, app, work_queue)):
        queue = queue_client(azurite, work_queue)
        queue.send_message(json.dumps({"fail_attempts": 1}))

        (success,) = wait_until(app.successes, "the retry succeeded")
        assert success["dequeue_count"] == 2
        assert [attempt["dequeue_count"] for attempt in app.attempts()] == [1, 2]
        wait_until(lambda: message_count(queue) == 0, "the message was deleted")
        assert message_count(queue_client(azurite, f"{work_queue}-poison")) == 0


def test_app_setting_overrides_max_dequeue_count_from_host_json(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> None:
    app = make_app({"maxDequeueCount": 5})
    work_queue = queue_name("override")
    override = {"AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "2"}
    with LocalHost(app.app_dir, env=host_env(azurite, app, work_queue, **override)) as host:
        assert host.queue_options.max_dequeue_count == 2
        queue_client(azurite, work_queue).send_message(json.dumps({"fail_attempts": "always"}))
        poison = queue_client(azurite, f"{work_queue}-poison")

        wait_until(lambda: message_count(poison) == 1, "the message was poisoned")
        assert [attempt["dequeue_count"] for attempt in app.attempts()] == [1, 2]


def test_in_flight_invocations_never_exceed_batch_size_plus_new_batch_threshold(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> None:
    app = make_app({"batchSize": 4, "newBatchThreshold": 2})
    work_queue = queue_name("concurrency")
    queue = queue_client(azurite, work_queue)
    queue.create_queue()
    for _ in range(10):
        queue.send_message(json.dumps({"hold": True}))
    # Enough worker threads that the host's limit, not the thread pool, is what binds.
    env = host_env(azurite, app, work_queue, PYTHON_THREADPOOL_THREAD_COUNT="16")
    with LocalHost(app.app_dir, env=env):
        first_batch = wait_until(lambda: len(app.in_flight()) == 4 and app.in_flight(), "4 run")
        for message_id in first_batch[:2]:
            app.release(message_id)
        # Down to the threshold of 2, the host fetches another batch of 4.
        wait_until(lambda: len(app.in_flight()) == 6, "6 invocations run at once")
        app.release()
        wait_until(lambda: len(app.successes()) == 10, "all messages were processed")

    assert max(attempt["concurrent"] for attempt in app.attempts()) == 6


def test_lease_is_renewed_while_a_function_runs_longer_than_half_of_it(
    azurite: Azurite,
    make_app: Callable[..., RecordingApp],
    queue_name: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="devhost.queues")
    app = make_app()
    work_queue = queue_name("lease")
    # A short lease stands in for the real 10 minutes; renewal comes at half of it.
    lease = timedelta(seconds=4)
    with LocalHost(app.app_dir, env=host_env(azurite, app, work_queue), message_lease=lease):
        queue_client(azurite, work_queue).send_message(json.dumps({"hold": True}))
        wait_until(
            lambda: caplog.text.count("Renewed the lease") >= 2, "the lease was renewed twice"
        )
        app.release()
        wait_until(app.successes, "the message was processed")

    assert [attempt["dequeue_count"] for attempt in app.attempts()] == [1]
