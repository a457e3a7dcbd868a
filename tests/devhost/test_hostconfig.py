"""host.json queue options: defaults, TimeSpans, bounds and app-setting overrides."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from devhost.hostconfig import (
    HostConfigError,
    MessageEncoding,
    QueueOptions,
    http_route_prefix,
    load_host_config,
    parse_timespan,
    queue_options,
)


def load_queue_options(app_dir: Path, settings: dict[str, str]) -> QueueOptions:
    return queue_options(load_host_config(app_dir, settings))


def write_host_json(directory: Path, queues: dict[str, object]) -> Path:
    host_json = {"version": "2.0", "extensions": {"queues": queues}}
    (directory / "host.json").write_text(json.dumps(host_json))
    return directory


def test_defaults_match_the_extension_on_consumption_and_flex(tmp_path: Path) -> None:
    options = load_queue_options(tmp_path, {})

    assert options == QueueOptions(
        batch_size=16,
        new_batch_threshold=8,
        max_dequeue_count=5,
        visibility_timeout=timedelta(0),
        max_polling_interval=timedelta(minutes=1),
        message_encoding=MessageEncoding.BASE64,
    )
    assert options.max_concurrency == 24


def test_host_json_values_are_read_and_the_threshold_defaults_to_half_the_batch(
    tmp_path: Path,
) -> None:
    write_host_json(
        tmp_path,
        {
            "batchSize": 5,
            "maxDequeueCount": 3,
            "visibilityTimeout": "00:00:30",
            "maxPollingInterval": "00:00:00.500",
            "messageEncoding": "None",
        },
    )

    options = load_queue_options(tmp_path, {})

    assert options.batch_size == 5
    assert options.new_batch_threshold == 2
    assert options.max_dequeue_count == 3
    assert options.visibility_timeout == timedelta(seconds=30)
    assert options.max_polling_interval == timedelta(milliseconds=500)
    assert options.message_encoding is MessageEncoding.NONE


def test_app_settings_override_host_json_whatever_the_case(tmp_path: Path) -> None:
    write_host_json(tmp_path, {"batchSize": 4, "newBatchThreshold": 2})
    settings = {
        "AzureFunctionsJobHost__extensions__queues__batchSize": "1",
        "azurefunctionsjobhost__Extensions__Queues__NEWBATCHTHRESHOLD": "0",
        "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:01:00",
    }

    options = load_queue_options(tmp_path, settings)

    assert (options.batch_size, options.new_batch_threshold) == (1, 0)
    assert options.visibility_timeout == timedelta(minutes=1)


@pytest.mark.parametrize(
    ("queues", "complaint"),
    [
        ({"batchSize": 33}, "batchSize must be between 1 and 32"),
        ({"batchSize": 0}, "batchSize must be between 1 and 32"),
        ({"newBatchThreshold": -1}, "newBatchThreshold must not be negative"),
        ({"maxDequeueCount": 0}, "maxDequeueCount must not be less than 1"),
        ({"maxPollingInterval": "00:00:00.050"}, "maxPollingInterval must not be less than"),
        ({"messageEncoding": "utf8"}, "messageEncoding must be 'base64' or 'none'"),
        ({"batchSize": "many"}, "must be a whole number"),
    ],
)
def test_values_the_host_would_refuse_are_refused(
    tmp_path: Path, queues: dict[str, object], complaint: str
) -> None:
    write_host_json(tmp_path, queues)

    with pytest.raises(HostConfigError, match=complaint):
        load_queue_options(tmp_path, {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:00:30", timedelta(seconds=30)),
        ("00:00:00.500", timedelta(milliseconds=500)),
        ("00:01", timedelta(minutes=1)),
        ("1.02:03:04.1234567", timedelta(days=1, hours=2, minutes=3, seconds=4.123457)),
        ("2", timedelta(days=2)),
    ],
)
def test_timespans_parse_like_dotnet(text: str, expected: timedelta) -> None:
    assert parse_timespan(text) == expected


@pytest.mark.parametrize("text", ["30s", "00:60:00", "-00:00:01", "1:2:3:4", ""])
def test_malformed_timespans_are_refused(text: str) -> None:
    with pytest.raises(HostConfigError):
        parse_timespan(text)


def test_route_prefix_defaults_to_api_and_can_be_empty_or_overridden(tmp_path: Path) -> None:
    assert http_route_prefix(load_host_config(tmp_path, {})) == "api"
    (tmp_path / "host.json").write_text(json.dumps({"extensions": {"http": {"routePrefix": ""}}}))
    assert http_route_prefix(load_host_config(tmp_path, {})) == ""
    override = {"AzureFunctionsJobHost__extensions__http__routePrefix": "/v1/"}
    assert http_route_prefix(load_host_config(tmp_path, override)) == "v1"
