"""End-to-end export benchmark on this machine: Azurite, the local host, the Braze sandbox.

Generates a segment of N profiles, runs one export through the real queues and prints
throughput, planning time, requests and the local host's peak memory. Bounded: one run.

    .venv/bin/python bench/export_bench.py --profiles 100000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.processes import ROOT, start_azurite, start_sandbox
from devtools.sample import demo_definitions, make_segment
from shared.config import load_settings
from shared.services import Services
from shared.triggers import start_run

API_KEY = "bench-key"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=3000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        azurite = start_azurite(Path(workdir))
        sandbox = start_sandbox(API_KEY)
        host = None
        try:
            definitions = Path(workdir) / "exports.json"
            document = demo_definitions(sandbox.url, "segments", "bench/segment.csv", "Bench")
            document["exports"][0]["chunk_size"] = args.chunk_size
            definitions.write_text(json.dumps(document))
            env = {
                "AzureWebJobsStorage": azurite.connection_string,
                "EXPORT_DEFINITIONS_PATH": str(definitions),
                "BRAZE_SECRET_BRAZE_SANDBOX_KEY": API_KEY,
                "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.100",
            }
            services = Services(load_settings(env))
            services.ensure_resources()
            sample = make_segment(args.profiles, invalid_every=100)
            services.storage.blobs.create_container("segments")
            services.storage.blobs.get_blob_client("segments", "bench/segment.csv").upload_blob(
                sample.data
            )
            log_path = Path(workdir) / "devhost.log"
            with log_path.open("wb") as log:
                host = subprocess.Popen(
                    [sys.executable, "-m", "devhost", "--app-dir", str(ROOT), "--port", "0"],
                    env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            while b"devhost ready" not in log_path.read_bytes():
                if host.poll() is not None:
                    raise SystemExit(f"devhost exited:\n{log_path.read_text()}")
                time.sleep(0.1)
            started = time.perf_counter()
            run_id = start_run(services, "demo-vip", "bench").run.run_id
            while not (run := services.runs.get(run_id)) or not run.is_final:
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            peak_rss_mb = _peak_rss_mb(host.pid)
            stats = requests.get(f"{sandbox.url}/_sandbox/stats", timeout=30).json()
        finally:
            if host:
                host.terminate()
                host.wait(timeout=60)
            sandbox.stop()
            azurite.stop()
    print(f"profiles in file        {sample.rows:>12,}")
    print(f"status                  {run.status:>12}")
    print(f"accepted by Braze       {run.profiles_accepted:>12,}")
    print(f"rejected (validation)   {run.rows_rejected:>12,}")
    print(f"requests sent           {run.requests_sent:>12,}")
    print(f"wall time, queued->done {elapsed:>11.2f}s")
    print(f"profiles/s end to end   {run.rows_valid / elapsed:>12,.0f}")
    planning = (run.planning_finished_at - run.planning_started_at).total_seconds()  # type: ignore[operator]
    print(f"planning time           {planning:>11.2f}s")
    print(f"local host peak RSS     {peak_rss_mb:>10.0f}MB")
    print(f"sandbox 429s sent       {stats['throttled_total']:>12,}")
    return 0 if run.status in ("succeeded", "partially_succeeded") else 1


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())
