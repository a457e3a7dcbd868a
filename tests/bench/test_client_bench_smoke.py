"""A small run of the Braze client benchmark: every request of every round is answered by the
sandbox as a created batch, and the CPU figure is printed. No timing is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_request_of_every_round_is_answered_and_measured() -> None:
    printed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "client_bench.py"),
            *("--requests", "120", "--in-flight", "8", "--latency-ms", "5", "--rounds", "2"),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert printed.startswith("Braze client, 75-object bodies, 8 in flight, sandbox latency 5 ms")
    rounds = re.findall(r"- round (\d): (\d+) µs of CPU a request .* statuses (\{.*\})", printed)
    assert [number for number, _, _ in rounds] == ["1", "2"]
    assert all(int(micros) > 0 for _, micros, _ in rounds)
    assert {statuses for _, _, statuses in rounds} == {"{201: 120}"}
