"""Reading Braze's rate-limit headers, which arrive in two Reset forms and in any case."""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
from requests.structures import CaseInsensitiveDict

from shared.adapters.braze_client import VERSION, user_agent
from shared.adapters.rate_governor import (
    MAX_RESET_WAIT_SECONDS,
    header,
    remaining_requests,
    reset_wait_seconds,
    throttle_wait_seconds,
)

NOW = 1_764_324_000.5


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1764324003", 2.5), ("1764324003.5", 3.0), ("2", 2.0), ("2.5", 2.5), ("0", 0.0),
     ("1764323000", 0.0), ("-3", 0.0), ("999999999", MAX_RESET_WAIT_SECONDS),
     ("99999999999", MAX_RESET_WAIT_SECONDS), (None, None), ("", None), ("soon", None),
     ("nan", None), ("inf", None)],
    ids=["epoch", "epoch-fraction", "seconds", "seconds-fraction", "zero", "epoch-past",
         "negative", "seconds-just-below-epoch", "epoch-far-future", "missing", "empty",
         "garbage", "nan", "infinity"],
)  # fmt: skip
def test_reset_is_epoch_seconds_or_seconds_remaining(
    value: str | None, expected: float | None
) -> None:
    assert reset_wait_seconds(value, NOW) == expected


@pytest.mark.parametrize(
    "headers",
    [{"X-RateLimit-Remaining": "7"}, {"x-ratelimit-remaining": "7"},
     {"X-RATELIMIT-REMAINING": "7"}, CaseInsensitiveDict({"x-ratelimit-remaining": "7"})],
    ids=["canonical", "http2-lowercase", "uppercase", "requests-headers"],
)  # fmt: skip
def test_header_names_match_in_any_case(headers: Mapping[str, str]) -> None:
    assert header(headers, "X-RateLimit-Remaining") == "7"
    assert remaining_requests(headers) == 7


def test_a_missing_header_is_none() -> None:
    assert header({"Content-Type": "application/json"}, "X-RateLimit-Remaining") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("2999", 2999), (" 12 ", 12), ("12.0", 12), ("-1", None), ("lots", None),
     ("", None), ("nan", None), ("inf", None)],
)  # fmt: skip
def test_remaining_is_a_count_or_nothing(value: str, expected: int | None) -> None:
    assert remaining_requests({"X-RateLimit-Remaining": value}) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"X-Ratelimit-Retry-After": "4", "X-RateLimit-Reset": "1764324010"}, 4.0),
     ({"x-ratelimit-retry-after": "4", "x-ratelimit-reset": "1764324010"}, 4.0),
     ({"X-Ratelimit-Retry-After": "later", "X-RateLimit-Reset": "1764324010"}, 9.5),
     ({"X-RateLimit-Reset": "1764324010"}, 9.5),
     ({"x-ratelimit-reset": "3"}, 3.0),
     ({}, None)],
    ids=["retry-after-preferred", "lowercase", "garbage-retry-after-falls-back",
         "reset-only", "reset-seconds-lowercase", "neither"],
)  # fmt: skip
def test_a_429_says_how_long_to_wait(headers: dict[str, str], expected: float | None) -> None:
    assert throttle_wait_seconds(headers, NOW) == expected


def test_user_agent_names_the_azure_instance_and_the_worker_process() -> None:
    agent = user_agent({"WEBSITE_INSTANCE_ID": "a1b2c3"})
    assert agent == f"braze-segment-exporter/{VERSION} (a1b2c3-{os.getpid()})"


def test_user_agent_names_host_and_process_outside_azure() -> None:
    agent = user_agent({})
    assert agent == f"braze-segment-exporter/{VERSION} ({socket.gethostname()}-{os.getpid()})"


def test_user_agent_version_is_the_project_version() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert tomllib.loads(pyproject.read_text())["project"]["version"] == VERSION
