"""Starting and stopping: the in-process API's graceful stop, and the CLI under SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from devhost_testkit import Azurite, RecordingApp, host_env, message_count, queue_client, wait_until

from devhost import LocalHost
from devhost.host import HostStartError

ROOT = Path(__file__).resolve().parents[2]


def test_stop_waits_for_in_flight_invocations_then_stops_receiving(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> None:
    app = make_app()
    work_queue = queue_name("graceful")
    queue = queue_client(azurite, work_queue)
    host = LocalHost(app.app_dir, env=host_env(azurite, app, work_queue))
    host.start()
    queue.send_message(json.dumps({"hold": True}))
    wait_until(app.in_flight, "the invocation is running")

    results: list[bool] = []
    stopping = threading.Thread(target=lambda: results.append(host.stop()))
    stopping.start()
    # The function holds until released, so a stop that waits for it cannot have returned.
    stopping.join(timeout=0.5)
    assert stopping.is_alive()
    app.release()
    stopping.join(timeout=60)

    assert results == [True]
    assert len(app.successes()) == 1
    assert message_count(queue) == 0, "the completed message was deleted before stop returned"
    queue.send_message("after stop")
    assert message_count(queue) == 1
    assert len(app.attempts()) == 1, "a stopped host receives nothing"


def test_start_fails_clearly_when_queue_storage_is_unreachable(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> None:
    app = make_app()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    unreachable = azurite.connection_string.replace(
        azurite.connection_string.split("QueueEndpoint=")[1].split(";")[0],
        f"http://127.0.0.1:{closed_port}/devstoreaccount1",
    )
    env = host_env(azurite, app, queue_name("unreachable"), AzureWebJobsStorage=unreachable)

    with pytest.raises(HostStartError, match="cannot reach storage"):
        LocalHost(app.app_dir, env=env).start()


def test_cli_lists_functions_serves_queues_and_exits_cleanly_on_sigterm(
    azurite: Azurite, make_app: Callable[..., RecordingApp], queue_name: Callable[[str], str]
) -> None:
    app = make_app()
    work_queue = queue_name("cli")
    settings = app.app_dir / "dev.settings.json"
    values = host_env(azurite, app, work_queue)
    settings.write_text(json.dumps({"Values": values}))
    command = ["--app-dir", str(app.app_dir), "--settings", str(settings), "--port", "0"]
    process = subprocess.Popen(
        [sys.executable, "-m", "devhost", *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Variables already set would win over the settings file, as under Core Tools.
        env={key: value for key, value in os.environ.items() if key not in values},
    )
    lines = _lines_of(process)
    try:
        before_ready = _read_until(lines, "devhost ready")
        assert "Functions:" in before_ready
        assert f"  record_work: queueTrigger (queue={work_queue})" in before_ready
        assert "  tick: timerTrigger (schedule=0 */5 * * * *)" in before_ready
        assert "  ping: httpTrigger (* /api/ping)" in before_ready
        assert before_ready[-1].startswith("devhost http listening on http://127.0.0.1:")

        queue_client(azurite, work_queue).send_message("from the cli test")
        (success,) = wait_until(app.successes, "the CLI host processed the message")
        assert success["body"] == "from the cli test"

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_exits_with_an_error_when_the_app_cannot_be_indexed(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devhost", "--app-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert "function_app.py does not exist" in result.stdout


def _lines_of(process: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The child's output lines, read on a thread so waiting for one can have a deadline."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _read_until(lines: queue.Queue[str | None], wanted: str, timeout: float = 60.0) -> list[str]:
    seen: list[str] = []
    while (line := lines.get(timeout=timeout)) != wanted:
        if line is None:
            raise AssertionError("devhost exited before it was ready:\n" + "\n".join(seen))
        seen.append(line)
    return seen
