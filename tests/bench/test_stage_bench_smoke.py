"""Small runs of the stage CPU benchmark (20,000 profiles, ranges of 0.3 MiB), of a first export
and of a delta: the figures are produced and add up, and the run measured is the one asked for.
No timing is asserted; the benchmark measures speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROFILES = 20_000


@pytest.mark.parametrize(
    ("delta", "wide"), [(False, False), (True, True)], ids=["first-export", "delta-wide"]
)
def test_every_split_and_the_diffs_asked_for_are_measured_each_round(
    tmp_path: Path, delta: bool, wide: bool
) -> None:
    out = tmp_path / "stage.json"
    printed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "stage_bench.py"),
            "--profiles",
            str(PROFILES),
            "--diffs",
            "2",
            "--rounds",
            "2",
            "--split-mib",
            "0.3",
            "--out",
            str(out),
            *(["--delta"] if delta else []),
            *(["--wide"] if wide else []),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    figures = json.loads(out.read_text())
    split, diff = figures["split"], figures["diff"]
    # Every row of every range; a delta's ranges are three times as large (INDEXED_RANGE_FACTOR).
    assert split["jobs"] >= (2 if delta else 4) and split["rows"] == PROFILES
    assert 1 <= diff["jobs"] <= 2 and 0 < diff["rows"] <= PROFILES
    for stage in (split, diff):
        assert len(stage["cpu_seconds_per_round"]) == 2
        assert all(seconds > 0 for seconds in stage["cpu_seconds_per_round"])
        assert stage["us_per_row"] > 0
    run = "delta (1% changed)" if delta else "first export"
    wider = " (ten unmapped columns more)" if wide else ""
    assert printed.startswith(f"Stage CPU, {run} of {PROFILES:,} profiles{wider}, 2 rounds")
    assert figures["wide"] is wide
    found = diff["profiles"]
    if delta:  # 1 row in 100 changed: the rest are the snapshot's, filed by its index
        assert found["new"] == 0 and 0 < found["changed"] < found["unchanged"] / 50
        assert split["rows_matched"] > 0.95 * PROFILES
    else:
        assert found["new"] > 0.9 * diff["rows"] and found["changed"] == found["unchanged"] == 0
        assert split["rows_matched"] == 0
    assert split["storage_requests_per_round"] > 0 and diff["storage_requests_per_round"] > 0
