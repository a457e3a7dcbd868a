"""host.json with the host's defaults, bounds and app-setting overrides.

The host layers `AzureFunctionsJobHost__<path>` app settings over host.json and binds the result
case-insensitively. Queue defaults and limits mirror the Storage Queues extension's
`QueuesOptions` (they also drive the blob trigger's internal queue); `extensions.http` gives the
HTTP route prefix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

HOST_OVERRIDE_PREFIX = "AzureFunctionsJobHost__"
MAX_BATCH_SIZE = 32
DEFAULT_ROUTE_PREFIX = "api"
MIN_POLLING_INTERVAL = timedelta(milliseconds=100)

# .NET TimeSpan.Parse: either a whole number of days, or [d.]hh:mm[:ss[.fffffff]].
_TIMESPAN = re.compile(
    r"^(?:(?P<only_days>\d+)|(?:(?P<days>\d+)\.)?(?P<hours>\d{1,2}):(?P<minutes>\d{1,2})"
    r"(?::(?P<seconds>\d{1,2})(?:\.(?P<fraction>\d{1,7}))?)?)$"
)


class HostConfigError(Exception):
    """host.json (or an override of it) holds a value the host would refuse."""


class MessageEncoding(StrEnum):
    BASE64 = "base64"
    NONE = "none"


@dataclass(frozen=True)
class QueueOptions:
    """The queue trigger settings that change how messages are fetched, retried and poisoned."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_dequeue_count: int = 5
    visibility_timeout: timedelta = timedelta(0)
    max_polling_interval: timedelta = timedelta(minutes=1)
    message_encoding: MessageEncoding = MessageEncoding.BASE64

    @property
    def max_concurrency(self) -> int:
        """In-flight invocations per queue function: a full batch on top of the threshold."""
        return self.batch_size + self.new_batch_threshold


def load_host_config(app_dir: Path, settings: Mapping[str, str]) -> dict[str, Any]:
    """The app's host.json, keys case-folded, after app-setting overrides."""
    return apply_overrides(read_host_json(app_dir / "host.json"), settings)


def read_host_json(path: Path) -> dict[str, Any]:
    """host.json with every key case-folded, or nothing when the file is absent."""
    if not path.exists():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError as error:
        raise HostConfigError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise HostConfigError(f"{path} must hold a JSON object")
    return _casefold_keys(document)


def apply_overrides(config: dict[str, Any], settings: Mapping[str, str]) -> dict[str, Any]:
    """host.json with `AzureFunctionsJobHost__a__b` settings written over `a.b`."""
    prefix = HOST_OVERRIDE_PREFIX.casefold()
    for name, value in settings.items():
        if not name.casefold().startswith(prefix):
            continue
        *parents, leaf = name[len(prefix) :].casefold().split("__")
        section = config
        for parent in parents:
            if not isinstance(section.get(parent), dict):
                section[parent] = {}
            section = section[parent]
        section[leaf] = value
    return config


def queue_options(config: Mapping[str, Any]) -> QueueOptions:
    """Validated queue options from a case-folded host configuration."""
    queues = _section(config, "queues")
    defaults = QueueOptions()

    batch_size = _integer(queues, "batchSize", defaults.batch_size)
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise HostConfigError(f"batchSize must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")
    # The host multiplies this default by the processor count: 1 on Consumption and on a
    # 1-vCPU Flex instance, but every local CPU under Core Tools. devhost uses 1, like Azure.
    new_batch_threshold = _integer(queues, "newBatchThreshold", batch_size // 2)
    if new_batch_threshold < 0:
        raise HostConfigError(f"newBatchThreshold must not be negative, got {new_batch_threshold}")
    max_dequeue_count = _integer(queues, "maxDequeueCount", defaults.max_dequeue_count)
    if max_dequeue_count < 1:
        raise HostConfigError(f"maxDequeueCount must not be less than 1, got {max_dequeue_count}")
    max_polling_interval = _timespan(queues, "maxPollingInterval", defaults.max_polling_interval)
    if max_polling_interval < MIN_POLLING_INTERVAL:
        raise HostConfigError("maxPollingInterval must not be less than 00:00:00.100")
    encoding = str(queues.get("messageencoding", defaults.message_encoding))
    try:
        message_encoding = MessageEncoding(encoding.casefold())
    except ValueError:
        raise HostConfigError(
            f"messageEncoding must be 'base64' or 'none', got {encoding!r}"
        ) from None

    return QueueOptions(
        batch_size=batch_size,
        new_batch_threshold=new_batch_threshold,
        max_dequeue_count=max_dequeue_count,
        visibility_timeout=_timespan(queues, "visibilityTimeout", defaults.visibility_timeout),
        max_polling_interval=max_polling_interval,
        message_encoding=message_encoding,
    )


def http_route_prefix(config: Mapping[str, Any]) -> str:
    """`extensions.http.routePrefix`: "api" unless set; "" puts routes at the root."""
    http = _section(config, "http")
    prefix = http.get("routeprefix", DEFAULT_ROUTE_PREFIX)
    if not isinstance(prefix, str):
        raise HostConfigError(f"extensions.http.routePrefix must be a string, got {prefix!r}")
    return prefix.strip("/")


def parse_timespan(text: str) -> timedelta:
    """A .NET TimeSpan string: `00:00:30`, `00:00:00.500`, `1.02:00:00` or `2` (days)."""
    match = _TIMESPAN.match(text.strip())
    if not match:
        raise HostConfigError(f"{text!r} is not a TimeSpan such as 00:00:30")
    if match["only_days"] is not None:
        return timedelta(days=int(match["only_days"]))
    hours, minutes, seconds = int(match["hours"]), int(match["minutes"]), int(match["seconds"] or 0)
    if hours > 23 or minutes > 59 or seconds > 59:
        raise HostConfigError(f"{text!r} is not a TimeSpan: hours, minutes or seconds out of range")
    fraction = match["fraction"] or "0"
    return timedelta(
        days=int(match["days"] or 0),
        hours=hours,
        minutes=minutes,
        seconds=seconds,
        microseconds=round(int(fraction) * 10 ** (6 - len(fraction))),
    )


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """`extensions.<name>` of a case-folded configuration, empty if absent."""
    extensions = config.get("extensions") or {}
    if not isinstance(extensions, dict):
        raise HostConfigError("extensions must be an object")
    section = extensions.get(name) or {}
    if not isinstance(section, dict):
        raise HostConfigError(f"extensions.{name} must be an object")
    return section


def _integer(section: Mapping[str, Any], key: str, default: int) -> int:
    value = section.get(key.casefold(), default)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise HostConfigError(f"extensions.queues.{key} must be a whole number, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise HostConfigError(
            f"extensions.queues.{key} must be a whole number, got {value!r}"
        ) from None


def _timespan(section: Mapping[str, Any], key: str, default: timedelta) -> timedelta:
    value = section.get(key.casefold())
    if value is None:
        return default
    # The host's configuration binder sees JSON numbers as text, so 30 means thirty days.
    return parse_timespan(str(value))


def _casefold_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key).casefold(): _casefold_keys(item) for key, item in value.items()}
    return value
