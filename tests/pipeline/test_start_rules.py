"""Pure trigger rules: schedule slots, drop filtering, and deterministic run ids."""

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from shared.adapters.settings import load_settings
from shared.core.definitions import is_valid_name
from shared.core.schedule import is_valid, latest_slot, next_slot, slot_run_id
from shared.entrypoints import http_api as api
from shared.pipeline.start import drop_ignored_because, drop_run_id

NOW = datetime(2026, 11, 28, 12, 0, 30, 500_000, tzinfo=UTC)


def _at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "latest", "following"),
    [
        ("0 0 2 * * *", _at(28, 2), _at(29, 2)),
        ("30 0 12 * * *", _at(28, 12, 0, 30), _at(29, 12, 0, 30)),
        ("0 */15 * * * *", _at(28, 12), _at(28, 12, 15)),
        ("0 0 6 * * 1", _at(23, 6), _at(30, 6)),
    ],
)
def test_slots(expression: str, latest: datetime, following: datetime) -> None:
    assert latest_slot(expression, NOW) == latest
    assert next_slot(expression, NOW) == following


def test_a_slot_at_exactly_now_is_the_latest() -> None:
    assert latest_slot("30 0 12 * * *", NOW.replace(microsecond=0)) == NOW.replace(microsecond=0)


@pytest.mark.parametrize(
    ("expression", "valid"),
    [("0 0 2 * * *", True), ("*/10 * * * * *", True), ("0 0 2 * *", False),
     ("0 0 25 * * *", False), ("every day", False), ("0 0 2 1 * MON", False),
     ("0 0 2 L * *", False), ("0 0 2 ? * *", False), ("0 30 6 * * 1-5", True),
     ("0 0 6 * JAN MON-FRI", True), ("0 0 6 * * 5L", False)],
)  # fmt: skip
def test_schedule_validation(expression: str, valid: bool) -> None:
    assert is_valid(expression) is valid


def test_slot_run_ids_are_deterministic_and_readable() -> None:
    slot = datetime(2026, 11, 28, 2, tzinfo=UTC)
    assert slot_run_id("weekly-vip", slot) == "weekly-vip-s20261128T020000Z"


@pytest.mark.parametrize(
    ("name", "size", "reason"),
    [
        ("drops/vip.csv", 0, "empty"),
        ("drops/.vip.csv.swp", 10, "temporary or hidden"),
        ("drops/vip.csv.tmp", 10, "temporary or hidden"),
        ("drops/~$vip.csv", 10, "temporary or hidden"),
        ("drops/vip.csv._COPYING_", 10, "temporary or hidden"),
        ("drops/_SUCCESS", 10, "temporary or hidden"),
        ("drops/_temporary/0/part-0000.csv", 10, "_temporary folder"),
    ],
)
def test_drops_that_never_start_anything(name: str, size: int, reason: str) -> None:
    assert reason in (drop_ignored_because(name, size) or "")


@pytest.mark.parametrize("name", ["drops/vip.csv", "ci/VIP/model.json", "drops/Zoë 🎉.csv.gz"])
def test_real_drops_are_not_ignored(name: str) -> None:
    assert drop_ignored_because(name, 1) is None


def test_drop_run_id_depends_on_export_blob_and_content_version() -> None:
    first = drop_run_id("vip", "segments", "drops/a.csv", "md5-1")
    assert first == drop_run_id("vip", "segments", "drops/a.csv", "md5-1")
    assert first.startswith("vip-d") and len(first) == len("vip-d") + 16
    others = {
        drop_run_id("vip", "segments", "drops/a.csv", "md5-2"),
        drop_run_id("vip", "segments", "drops/b.csv", "md5-1"),
        drop_run_id("vip2", "segments", "drops/a.csv", "md5-1"),
    }
    assert first not in others and len(others) == 3


@pytest.mark.parametrize("name", ["vip\n", "vip\r", "../vip", "Vip", "vip-", ""])
def test_names_are_checked_before_any_storage_is_touched(name: str) -> None:
    """The API refuses these without needing storage at all (the services have settings only:
    touching storage would be an error, a 500)."""
    assert is_valid_name(name) is False
    services: Any = SimpleNamespace(settings=load_settings({"AzureWebJobsStorage": "x"}))
    assert api.start_export_run(services, name, b"", headers={}).status == 400
    assert api.list_export_runs(services, name, None, headers={}).status == 400
    assert api.get_run(services, name + "\n", headers={}).status == 400
