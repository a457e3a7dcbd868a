"""End-to-end export benchmark on this machine: Azurite, local hosts, the Braze sandbox.

Generates a segment of N profiles (realistic, messy columns; 1% invalid rows), then runs one
export three times through the real queues against a sandbox enforcing Braze's 3,000 requests
per 3 s with added latency: a first export (everything new), a delta run (1% of the profiles
changed) and an unchanged re-run (the same bytes written again: recognised, nothing read or sent).

For each run it reports wall time queued -> finished and per phase (queued: until a worker
took the run's planning job; split, which includes the plan; diff, release, deliver, finalize;
together they are the wall time), requests, profiles/s, the ratio to Braze's rate-limit
floor, requests per rate window over the delivery phase (min, median, max), 429s and the CPU
seconds each process used, in all and per phase (with the machine's idle and steal time: a
shared VM's state shows there); then each process's peak RSS and `import function_app` time
in a fresh process. Writes `<out>/<date>.json`, `<out>/<date>.md` and `<out>/<date>.png`
(requests per second against the limit). Bounded: three runs, each with a deadline.

`--host-nice N` runs the local hosts at a lower CPU priority than Azurite and the sandbox, which
stand in for Azure Storage and Braze (on machines of their own in production): they then get
the shared cores first instead of queueing requests behind the hosts' work. By default all run
at 0: at 19 a host can be starved long enough between a request's slot and its send for the
request to land in the next rate window (seen at 5M profiles).

`--source cdm` writes the same rows as Customer Insights writes a segment: a CDM folder of
partition files without headers (one per 100,000 rows by default, about 8 MB each, so each is
split by a job of its own; `--cdm-files N` writes N, a large file being cut into ranges as a
CSV file is) and a model.json naming them. `--wide` adds ten columns of a Customer Insights
unified profile that the mapping does not send (an export maps a few of a profile's columns).

With `--flame-graphs`, py-spy samples each local host through each run and writes
`<out>/<date>-<run>-worker<n>.svg`: where the CPU went.

    .venv/bin/python bench/export_bench.py --profiles 1000000 --workers 2 --latency-ms 50
    .venv/bin/python bench/export_bench.py --runs 2 --flame-graphs
    .venv/bin/python bench/export_bench.py --runs 1 --max-in-flight 64 --logs /tmp/hosts
    .venv/bin/python bench/export_bench.py --runs 1 --host-nice 10
    .venv/bin/python bench/export_bench.py --profiles 1000000 --source cdm
    .venv/bin/python bench/export_bench.py --profiles 1000000 --source cdm --cdm-files 1
    .venv/bin/python bench/export_bench.py --profiles 1000000 --wide
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devhost.host import BLOB_WATCH_SETTING  # noqa: E402
from devtools.processes import Azurite, Sandbox, start_azurite, start_sandbox  # noqa: E402
from devtools.sample import demo_definitions  # noqa: E402
from shared.adapters.run_store import RUN_ROW  # noqa: E402
from shared.adapters.services import Services  # noqa: E402
from shared.adapters.settings import load_settings  # noqa: E402
from shared.core.resource_names import RUNS_TABLE  # noqa: E402
from shared.core.runs import Run  # noqa: E402
from shared.pipeline.start import start_run  # noqa: E402

API_KEY = "bench-key"
SOURCE = "bench/segment.csv"
HEADER = "CustomerId,Email,FirstName,LoyaltyPoints,IsVip,BirthDate,Note\n"
# `--wide`: ten more columns of a Customer Insights unified profile, which the mapping does
# not send (an export maps a few of the profile's many columns).
WIDE_COLUMNS = (
    "ContactId,LastName,PrimaryPhone,StreetAddress,City,StateOrProvince,PostalCode,"
    "CountryOrRegion,Gender,JobTitle"
)
LAST_NAMES = ["Müller", "O'Neil", "García-López", "Nguyễn", '"Smith, Jr."', "Østergaard"]
STREETS = ['"12 Rue de l\'Église, Apt 3"', "221B Baker Street", '"Calle 5, nº 7"', "1 Main St"]
CITIES = ["Zürich", "São Paulo", "Kraków", "New York", "Reykjavík"]
JOBS = ["Engineer", '"Head of Sales, EMEA"', "Data Analyst", "", "Chef 👩‍🍳"]
FIRST_NAMES = ["Zoë", "José", "Ana María", "O'Brien", "Łukasz", "Søren", "李", "Amélie"]
NOTES = ["plain", '"says ""hi"", twice"', '"multi\nline, comma"', "emoji 🎉", "", "tab\tpipe|"]
INVALID = [
    "first last@example.com",  # email_invalid
    "",  # email_blank
    "no-at-sign.example.com",  # email_invalid
]
RUN_DEADLINE_SECONDS = 1800
# How often the benchmark asks whether the run has ended. Each ask is a table read that costs
# Azurite and this process CPU on the cores the run uses; the run's time ends when its entity
# became final (`record_stamps`), so asking more often only took CPU from the run (at 20 a
# second: 950 reads, a third of Azurite's requests in a 1M first export).
POLL_SECONDS = 0.5


def header(wide: bool) -> str:
    return HEADER.replace("\n", f",{WIDE_COLUMNS}\n") if wide else HEADER


def write_segment(
    path: Path, profiles: int, changed_every: int = 0, seed: int = 7, wide: bool = False
) -> int:
    """A CSV of `profiles` rows (`segment_records`). Streams to disk; returns the valid rows."""
    valid = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("\ufeff" + header(wide))
        for record, is_valid in segment_records(profiles, changed_every, seed, wide):
            out.write(record)
            valid += is_valid
    return valid


CDM_FOLDER = "bench/cdm"
CDM_ENTITY = "Segment"
CDM_ROWS_PER_FILE = 100_000  # by default; about 8 MB each: split by file, as a CSV by 8 MiB range


def cdm_files(profiles: int) -> int:
    return max(1, math.ceil(profiles / CDM_ROWS_PER_FILE))


def upload_cdm_folder(services: Services, folder: Path, files: int, wide: bool) -> None:
    """The partition files, then model.json, as Customer Insights writes a folder."""
    container = services.storage.container("segments")
    for k in range(files):
        with (folder / f"part-{k:03d}.csv").open("rb") as data:
            name = f"{CDM_FOLDER}/{CDM_ENTITY}/part-{k:03d}.csv"
            container.upload_blob(name, data, overwrite=True, max_concurrency=4)
    model = json.dumps(cdm_model(container.url, files, wide))
    container.upload_blob(f"{CDM_FOLDER}/model.json", model, overwrite=True)


def write_cdm_segment(
    folder: Path,
    profiles: int,
    files: int,
    changed_every: int = 0,
    seed: int = 7,
    wide: bool = False,
) -> int:
    """The same rows as `write_segment`, as a Customer Insights CDM folder holds them: `files`
    partition files without a header (`part-NNN.csv`, consecutive rows, as many in each but the
    last; the model naming them is `cdm_model`). Returns the valid rows."""
    folder.mkdir(parents=True, exist_ok=True)
    valid, rows_per_file = 0, math.ceil(profiles / files)
    paths = [folder / f"part-{k:03d}.csv" for k in range(files)]
    outs = [path.open("w", encoding="utf-8", newline="") for path in paths]
    try:
        records = segment_records(profiles, changed_every, seed, wide)
        for n, (record, is_valid) in enumerate(records):
            outs[n // rows_per_file].write(record)
            valid += is_valid
    finally:
        for out in outs:
            out.close()
    return valid


def cdm_model(container_url: str, files: int, wide: bool = False) -> dict[str, Any]:
    """The folder's model.json: the segment's columns as strings (the mapping types them, as it
    does a CSV's), and each partition file's URL."""
    return {
        "name": "BenchSegment",
        "version": "1.0",
        "entities": [
            {
                "$type": "LocalEntity",
                "name": CDM_ENTITY,
                "attributes": [
                    {"name": name, "dataType": "string"} for name in header(wide).strip().split(",")
                ],
                "partitions": [
                    {
                        "name": f"part-{k:03d}",
                        "location": f"{container_url}/{CDM_FOLDER}/{CDM_ENTITY}/part-{k:03d}.csv",
                    }
                    for k in range(files)
                ],
            }
        ],
    }


def segment_records(
    profiles: int, changed_every: int, seed: int, wide: bool = False
) -> Iterator[tuple[str, bool]]:
    """`profiles` CSV records and whether each is valid: 1% of them invalid (bad or blank
    emails, a bad number, a malformed row, a duplicate id); with `changed_every`, every such
    row's points change by one. `wide` adds the `WIDE_COLUMNS` (from a generator of their
    own, so the other columns are the same)."""
    rng, wide_rng = random.Random(seed), random.Random(seed + 1)
    for n in range(1, profiles + 1):
        name, note = rng.choice(FIRST_NAMES), rng.choice(NOTES)
        changed = changed_every and n % changed_every == changed_every // 2  # never an invalid row
        points = rng.randint(0, 50_000) + (1 if changed else 0)
        vip = rng.choice(["true", "false", "1", "0"])
        birth = f"19{rng.randint(50, 99)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        customer, email = f"cust-{n:08d}", f"user.{n}+tag@example{n % 7}.com"
        fields = [customer, email, name, str(points), vip, birth, note]
        if wide:
            fields += _wide_fields(wide_rng)
        if n % 100 == 0:
            kind = (n // 100) % 6
            if kind < 3:
                fields[1] = INVALID[kind]
            elif kind == 3:
                fields[3] = "12abc"  # attribute_not_number
            elif kind == 4:
                fields = fields[:3]
            else:
                fields[0] = f"cust-{n - 1:08d}"  # a duplicate: the earlier row wins
        yield ",".join(fields) + "\n", n % 100 != 0


def _wide_fields(rng: random.Random) -> list[str]:
    contact = f"{rng.getrandbits(128):032x}"
    return [
        f"{contact[:8]}-{contact[8:12]}-{contact[12:16]}-{contact[16:20]}-{contact[20:]}",
        rng.choice(LAST_NAMES),
        f"+1 555-{rng.randint(0, 9999):04d}",
        rng.choice(STREETS),
        rng.choice(CITIES),
        rng.choice(["CA", "NY", "ZH", "SP", ""]),
        f"{rng.randint(1000, 99999)}",
        rng.choice(["US", "CH", "BR", "PL", "IS"]),
        rng.choice(["female", "male", "", "nonbinary"]),
        rng.choice(JOBS),
    ]


PHASES = ("queued", "split", "diff", "release", "deliver", "finalize")


# When each partition's diff and each chunk's delivery was recorded, by number (epoch seconds,
# Azurite's clock): {"part-": {partition: epoch}, "chunk-": {chunk: epoch}}.
RecordStamps = dict[str, dict[int, float]]


def record_stamps(run: Run, services: Services) -> tuple[RecordStamps, float]:
    """The run's partition and chunk records' timestamps, read once for the phases and spans,
    and when the run became final: its entity's last write (the run's `finished_at` is stamped
    before finalizing writes the report and the run)."""
    table = services.storage.table(RUNS_TABLE)
    stamps: RecordStamps = {"part-": {}, "chunk-": {}}
    assert run.finished_at is not None
    ended = run.finished_at.timestamp()
    for entity in table.query_entities(f"PartitionKey eq '{run.run_id}'"):
        key, written = entity["RowKey"], entity.metadata["timestamp"].timestamp()
        if key == RUN_ROW:
            ended = max(ended, written)
        for prefix, found in stamps.items():
            if key.startswith(prefix):
                found[int(key.removeprefix(prefix))] = written
    return stamps, ended


def phase_bounds(
    run: Run, started: float, stamps: RecordStamps, ended: float
) -> list[tuple[str, float, float]]:
    """Each phase from when the run was started (`started`, the benchmark's clock), the run's
    own timestamps and its table entities' (Azurite's clock), the last to when the run became
    final (`record_stamps`): the first, until a worker took the planning job off the queue."""
    assert run.planning_started_at and run.finished_at
    # A run that found its source unchanged ends during planning: its later phases take 0 s.
    split_finished = (run.split_finished_at or run.finished_at).timestamp()
    planned = (run.planning_finished_at or run.finished_at).timestamp()
    diffed = max(stamps["part-"].values(), default=split_finished)
    delivered = max(stamps["chunk-"].values(), default=planned)

    epochs = [
        started,
        run.planning_started_at.timestamp(),
        split_finished,
        diffed,
        planned,
        delivered,
        ended,
    ]
    for n in range(1, len(epochs)):  # two clocks: a phase never ends before the one before it
        epochs[n] = max(epochs[n], epochs[n - 1])
    return [(name, epochs[n], epochs[n + 1]) for n, name in enumerate(PHASES)]


class CpuSampler:
    """Samples each process's CPU seconds and the machine's steal time four times a second,
    so CPU can be split by phase after the run (phase bounds are known only then)."""

    INTERVAL = 0.25

    def __init__(self, processes: dict[str, int]) -> None:
        self._processes = processes
        self.samples: list[tuple[float, dict[str, float], tuple[float, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self._sample()

    def _sample(self) -> None:
        cpu = {name: cpu_seconds(pid) for name, pid in self._processes.items()}
        self.samples.append((time.time(), cpu, machine_seconds()))

    def at(self, epoch: float) -> tuple[dict[str, float], tuple[float, float]]:
        """The last sample taken at or before `epoch` (the first one if none was)."""
        chosen = self.samples[0]
        for sample in self.samples:
            if sample[0] > epoch:
                break
            chosen = sample
        return chosen[1], chosen[2]

    def per_phase(self, bounds: list[tuple[str, float, float]]) -> dict[str, dict[str, float]]:
        """CPU seconds per process, and the machine's idle and steal, in each phase."""
        result = {}
        for name, start, end in bounds:
            (cpu0, machine0), (cpu1, machine1) = self.at(start), self.at(end)
            used = {process: round(cpu1[process] - cpu0[process], 1) for process in cpu0}
            idle, steal = (round(b - a, 1) for a, b in zip(machine0, machine1, strict=True))
            result[name] = {**used, "idle": idle, "steal": steal}
        return result


def machine_seconds() -> tuple[float, float]:
    """The machine's idle time and the time the hypervisor gave to other guests (a shared
    VM's noise), summed over all cores."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[4]) + int(fields[5])) / ticks, int(fields[8]) / ticks


def delivery_spans(stamps: RecordStamps) -> list[tuple[float, float]]:
    """When a run that delivered while diffing had delivery work: each partition's job from
    its diff's record (when it was queued) to its own record, overlapping spans merged."""
    queued, done = stamps["part-"], stamps["chunk-"]
    spans: list[tuple[float, float]] = []
    for start, end in sorted((queued[p], done[p]) for p in queued if p in done):
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def window_counts(timeline: dict[str, Any], spans: list[tuple[float, float]]) -> dict[str, Any]:
    """Requests per rate window of the key; "full" windows lie wholly inside one of the spans
    (when delivery had work)."""
    limit, length = timeline["rate_limit"], timeline["rate_window_seconds"]
    windows = {float(k): v for k, v in timeline["windows_per_key"].get(API_KEY, {}).items()}
    inside = {
        k: v
        for k, v in windows.items()
        if any(first <= k and k + length <= last for first, last in spans)
    }
    full = sorted(inside.values())
    return {
        "limit": limit,
        "window_seconds": length,
        "full_windows": len(full),
        "min": full[0] if full else None,
        "median": statistics.median(full) if full else None,
        "max": max(windows.values(), default=0),
        "share_of_limit_min": round(full[0] / limit, 3) if full else None,
        "over_limit": sum(1 for v in windows.values() if v > limit),
    }


class FlameGraphs:
    """py-spy sampling each local host for the length of one run, written as SVG flame graphs
    (py-spy reads the process from outside: nothing in the app changes)."""

    def __init__(self, workers: dict[str, int], prefix: Path | None) -> None:
        self._targets = workers if prefix else {}
        self._prefix = prefix
        self._spies: list[subprocess.Popen[bytes]] = []
        self.written: list[Path] = []

    def __enter__(self) -> FlameGraphs:
        py_spy = Path(sys.executable).with_name("py-spy")
        for name, pid in self._targets.items():
            assert self._prefix is not None
            path = self._prefix.with_name(f"{self._prefix.name}-{name.replace(' ', '')}.svg")
            command = [str(py_spy), "record", "--pid", str(pid), "--rate", "97", "--nonblocking"]
            self._spies.append(
                subprocess.Popen(
                    [*command, "--format", "flamegraph", "--output", str(path)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            self.written.append(path)
        return self

    def __exit__(self, *_: object) -> None:
        for spy in self._spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes the graph when interrupted
        for spy in self._spies:
            spy.wait(timeout=120)


def run_once(
    services: Services,
    sandbox: Sandbox,
    label: str,
    processes: dict[str, int],
    flame_prefix: Path | None = None,
) -> dict[str, Any]:
    requests.post(f"{sandbox.url}/_sandbox/reset", timeout=30).raise_for_status()
    workers = {name: pid for name, pid in processes.items() if name.startswith("worker")}
    with FlameGraphs(workers, flame_prefix) as flames, CpuSampler(processes) as sampler:
        started = time.time()
        run_id = start_run(services, "demo-vip", "bench").run.run_id
        deadline = time.monotonic() + RUN_DEADLINE_SECONDS
        while not (run := services.runs.get(run_id)) or not run.is_final:
            if time.monotonic() > deadline:
                raise SystemExit(f"{label}: run {run_id} did not finish: {run}")
            time.sleep(POLL_SECONDS)
    stamps, ended = record_stamps(run, services)
    wall = ended - started
    bounds = phase_bounds(run, started, stamps, ended)
    # A run's CPU up to its end, not up to when the benchmark next asked whether it had ended.
    (cpu0, machine0), (cpu1, machine1) = sampler.at(started), sampler.at(ended)
    stats = requests.get(f"{sandbox.url}/_sandbox/stats", timeout=30).json()
    timeline = requests.get(f"{sandbox.url}/_sandbox/timeline", timeout=30).json()
    arrivals = {int(k): v for k, v in timeline["arrivals_per_second"].items()}
    rate = timeline["rate_limit"] / timeline["rate_window_seconds"]
    floor = math.ceil(run.objects_planned / 75) / rate
    # The delivery phase from the release to the last chunk's record, to the millisecond: a
    # window the release fell inside is not a full window of delivery. A run that delivered
    # each partition as it was diffed had work only while a diffed partition waited or was
    # being sent (`delivery_spans`): a window while every job was done and the next partition
    # still being diffed measures the diffs, not delivery.
    delivery = next((start, end) for name, start, end in bounds if name == "deliver")
    spans = [delivery]
    if run.delivers_while_diffing:
        spans = delivery_spans(stamps) or [delivery]
        delivery = (spans[0][0], delivery[1])
    return {
        "label": label,
        "run_id": run_id,
        "flame_graphs": [path.name for path in flames.written],
        "status": run.status,
        "wall_seconds": round(wall, 2),
        "phases_seconds": {name: round(end - start, 3) for name, start, end in bounds},
        "cpu_seconds": {name: round(cpu1[name] - cpu0[name], 1) for name in processes},
        "cpu_seconds_per_phase": sampler.per_phase(bounds),
        "idle_seconds": round(machine1[0] - machine0[0], 1),
        "steal_seconds": round(machine1[1] - machine0[1], 1),
        "rows_read": run.rows_read,
        "source_read": run.source,
        "splits": run.splits,
        "rows_valid": run.rows_valid,
        "profiles_new": run.profiles_new,
        "profiles_changed": run.profiles_changed,
        "profiles_unchanged": run.profiles_unchanged,
        "profiles_sent": run.objects_planned,
        "profiles_accepted": run.profiles_accepted,
        "requests_sent": run.requests_sent,
        "requests_received_by_sandbox": stats["requests_total"],
        "throttled_429": stats["throttled_total"],
        "data_points_used": run.data_points_used,
        "profiles_per_second": round(run.rows_valid / wall) if wall else None,
        "floor_seconds": round(floor, 2),
        "ratio_to_floor": round(wall / floor, 2) if floor else None,
        "windows": window_counts(timeline, spans),
        "delivered_while_diffing": run.delivers_while_diffing,
        "delivery_span_seconds": [round(delivery[0] - started, 1), round(delivery[1] - started, 1)],
        "delivery_busy_seconds": round(sum(end - start for start, end in spans), 1),
        "timeline": {
            "started_epoch": started,
            "arrivals_per_second": arrivals,
            "throttled_per_second": {
                int(k): v for k, v in timeline["throttled_per_second"].items()
            },
            "rate_per_second": rate,
        },
    }


def cold_start_seconds() -> float:
    """`import function_app` in a fresh process, the best of three, with the packages only
    development installs (`development_only_modules`) out of reach, as deployed."""
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({development_only_modules()!r})); "
        "import time; t = time.perf_counter(); import function_app; print(time.perf_counter() - t)"
    )
    times = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
            ).stdout
        )
        for _ in range(3)
    ]
    return round(min(times), 3)


def code_measured() -> str:
    """The commit measured, marked when the working tree differs from it: results of
    different versions are compared run against run, so each says which it is."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as error:
        return f"unknown (git: {error})"
    return f"{commit} with uncommitted changes" if changes else commit


def development_only_modules() -> list[str]:
    """The top-level modules of the packages `requirements-dev.txt` adds to the deployed ones.
    The Azure SDK imports aiohttp (here for the Braze sandbox) whenever it is installed: 0.1-0.2
    s of a cold start here that the deployed app, without it, does not pay (measured against a
    virtual environment of `requirements.txt` alone, 2026-12-06)."""
    from importlib.metadata import packages_distributions

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = (ROOT / "requirements-dev.txt").read_text().splitlines()
    added = {canonicalize_name(Requirement(line).name) for line in lines if line[:1].isalnum()}
    return sorted(
        module
        for module, distributions in packages_distributions().items()
        if any(canonicalize_name(name) in added for name in distributions)
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (from /proc, so no extra dependency)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def start_workers(
    count: int, env: dict[str, str], workdir: Path, nice: int
) -> list[subprocess.Popen[bytes]]:
    """Local hosts at CPU priority `nice` (`nice` execs the host, so the pid is the host's)."""
    workers = []
    arguments = ["--app-dir", str(ROOT), "--port", "0"]
    for number in range(count):
        log_path = workdir / f"devhost-{number}.log"
        with log_path.open("wb") as log:
            workers.append(
                subprocess.Popen(
                    ["nice", "-n", str(nice), sys.executable, "-m", "devhost", *arguments],
                    # MALLOC_ARENA_MAX as infra/app/api.bicep sets it in Azure.
                    env={"MALLOC_ARENA_MAX": "2", **os.environ, **env, "PYTHONUNBUFFERED": "1"},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
            )
    for number, worker in enumerate(workers):
        log_path = workdir / f"devhost-{number}.log"
        while b"devhost ready" not in log_path.read_bytes():
            if worker.poll() is not None:
                raise SystemExit(f"devhost exited:\n{log_path.read_text()}")
            time.sleep(0.1)
    return workers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000, help="up to 5,000,000")
    parser.add_argument("--workers", type=int, default=2, help="local host processes")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="sandbox latency")
    parser.add_argument(
        "--host-nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="0-19",
        help="added to the local hosts' CPU niceness (Azurite and the sandbox keep the "
        "benchmark's): above 0 the stand-ins for services that run elsewhere get the cores first",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="profiles per chunk (default: the app's)"
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="requests in flight per worker, fixed (default: follow the measured latency)",
    )
    parser.add_argument("--changed-every", type=int, default=100, help="delta run: 1 in N")
    parser.add_argument(
        "--source",
        choices=("csv", "cdm"),
        default="csv",
        help="one CSV file, or a Customer Insights CDM folder (model.json and partition files "
        "without headers)",
    )
    parser.add_argument(
        "--cdm-files",
        type=int,
        default=None,
        help="partition files of a CDM folder (default: one per 100,000 rows)",
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help="ten more columns of a Customer Insights profile, not mapped (WIDE_COLUMNS)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        choices=(1, 2, 3),
        default=3,
        help="first export, delta, unchanged re-run",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--logs", type=Path, default=None, help="copy the local hosts' logs into this folder"
    )
    parser.add_argument(
        "--flame-graphs",
        action="store_true",
        help="sample each local host with py-spy and write a flame graph per run and host",
    )
    args = parser.parse_args()
    if args.cdm_files is not None and (args.cdm_files < 1 or args.source != "cdm"):
        parser.error("--cdm-files takes a count of 1 or more, with --source cdm")

    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    code = code_measured()  # before the hosts start: the code they import
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / stamp
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        results = measure(args, workdir, base if args.flame_graphs else None)
    results["cold_start_import_seconds"] = cold_start_seconds()
    results["code"] = code
    base.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    base.with_suffix(".md").write_text(summary(results))
    plot(results, base.with_suffix(".png"))
    print(summary(results))
    print(f"written: {base}.json, .md, .png")
    ok = all(r["status"] in ("succeeded", "partially_succeeded") for r in results["runs"])
    return 0 if ok else 1


def measure(args: argparse.Namespace, workdir: Path, flame_base: Path | None) -> dict[str, Any]:
    azurite: Azurite = start_azurite(workdir)
    sandbox = start_sandbox(API_KEY, "--latency-ms", str(args.latency_ms))
    workers: list[subprocess.Popen[bytes]] = []
    try:
        definitions = workdir / "exports.json"
        files = (args.cdm_files or cdm_files(args.profiles)) if args.source == "cdm" else 0
        source = f"{CDM_FOLDER}/model.json" if files else SOURCE
        document = demo_definitions(sandbox.url, "segments", source, "Bench")
        if args.chunk_size:
            document["exports"][0]["chunk_size"] = args.chunk_size
        # About 6 data points per profile: past 1.6M profiles the default valve (10M) would stop
        # the run before sending, as it should for a user who did not raise it.
        document["exports"][0]["max_data_points"] = max(10_000_000, 10 * args.profiles)
        document["connections"][0]["expected_latency_ms"] = max(1, round(args.latency_ms))
        if args.max_in_flight:
            document["connections"][0]["max_in_flight"] = args.max_in_flight
        definitions.write_text(json.dumps(document))
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "EXPORT_DEFINITIONS_PATH": str(definitions),
            "BRAZE_SECRET_BRAZE_SANDBOX_KEY": API_KEY,
            "EXPORT_ALLOW_LOOPBACK_ENDPOINTS": "true",  # the sandbox is on this machine
            # The runs are started here, not by a dropped blob: the hosts' stand-in for Event
            # Grid (it lists the watched containers every second, each host) would only take CPU.
            BLOB_WATCH_SETTING: "0",
        }
        services = Services(load_settings(env))
        services.ensure_resources()
        services.storage.blobs.create_container("segments")
        workers = start_workers(args.workers, env, workdir, args.host_nice)
        runs = []
        path, folder, valid = workdir / "segment.csv", workdir / "cdm", 0
        processes = {
            **{f"worker {n}": w.pid for n, w in enumerate(workers)},
            "sandbox": sandbox.process.pid,
            "azurite": azurite.process.pid,
        }
        for label, changed_every, upload in (
            ("first export", 0, True),
            ("delta (1% changed)", args.changed_every, True),
            # The delta's bytes written again: a new ETag, so the run reads and diffs them (the
            # segment has invalid rows, so no run is clean and an untouched file is read too).
            ("unchanged re-run", None, True),
        )[: args.runs]:
            if changed_every is not None and files:
                valid = write_cdm_segment(
                    folder, args.profiles, files, changed_every, wide=args.wide
                )
            elif changed_every is not None:
                valid = write_segment(path, args.profiles, changed_every, wide=args.wide)
            if upload and files:
                upload_cdm_folder(services, folder, files, args.wide)
            elif upload:
                with path.open("rb") as data:
                    services.storage.blobs.get_blob_client("segments", SOURCE).upload_blob(
                        data, overwrite=True, max_concurrency=4
                    )
            slug = label.split(" (")[0].replace(" ", "-")
            flame_prefix = flame_base.with_name(f"{flame_base.name}-{slug}") if flame_base else None
            result = run_once(services, sandbox, label, processes, flame_prefix)
            result["valid_rows_generated"] = valid
            runs.append(result)
            print(
                f"{label}: {result['wall_seconds']} s, {result['requests_sent']} requests",
                flush=True,
            )
        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
            "profiles": args.profiles,
            "source": (f"CDM folder of {files} partition files" if files else "CSV file")
            + (", ten unmapped profile columns more (--wide)" if args.wide else ""),
            "workers": args.workers,
            "sandbox_latency_ms": args.latency_ms,
            "chunk_size": services.definitions().exports[0].chunk_size,
            # Read back from every process (`nice` adds to the benchmark's own niceness), so the
            # summary states what ran.
            "nice": {name: os.getpriority(os.PRIO_PROCESS, pid) for name, pid in processes.items()},
            "in_flight_per_worker": services.definitions().connections[0].in_flight_per_worker(),
            # How a run was timed: earlier results were timed otherwise (bench/HISTORY.md).
            "run_timed": f"to its entity's final write; polled every {POLL_SECONDS} s",
            "runs": runs,
            "peak_rss_mb": {
                **{f"worker {n}": peak_rss_mb(w.pid) for n, w in enumerate(workers)},
                "sandbox": peak_rss_mb(sandbox.process.pid),
                "azurite": peak_rss_mb(azurite.process.pid),
            },
        }
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in workdir.glob("devhost-*.log"):
                shutil.copy(log, args.logs / log.name)
        sandbox.stop()
        azurite.stop()


def summary(results: dict[str, Any]) -> str:
    """The Markdown summary: one row per run, then the processes' peak memory."""
    lines = [
        f"# Export benchmark, {results['date']}",
        "",
        f"Code: {results.get('code', 'not recorded')}.",
        "",
        f"{results['profiles']:,} profiles ({results.get('source', 'CSV file')}); "
        f"{results['workers']} local host process(es), "
        f"{results['in_flight_per_worker']} requests in flight each to start with (then as latency "
        "measured asks); sandbox latency "
        f"{results['sandbox_latency_ms']:g} ms; chunk size {results['chunk_size']:,}; "
        f"{results['machine']['cores']} cores shared by everything; CPU niceness: "
        f"{', '.join(f'{name} {value}' for name, value in results['nice'].items())}. "
        f"Each run is timed from its start {results['run_timed']}.",
        "",
        "| run | wall s | queued | split | diff | release | deliver | finalize | requests "
        "| profiles/s | floor s | × floor | per window min / median / max (limit) | 429s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        p, w = run["phases_seconds"], run["windows"]
        spread = (
            f"{w['min']} / {w['median']:g} / {w['max']} ({w['limit']})"
            if w["full_windows"]
            else f"no full window; max {w['max']} ({w['limit']})"
        )
        lines.append(
            f"| {run['label']} | {run['wall_seconds']:.1f} | {p['queued']:.1f} "
            f"| {p['split']:.1f} | {p['diff']:.1f} "
            f"| {p['release']:.1f} | {p['deliver']:.1f} | {p['finalize']:.1f} "
            f"| {run['requests_sent']:,} | {run['profiles_per_second']:,} "
            f"| {run['floor_seconds']:.1f} | {run['ratio_to_floor'] or '–'} | {spread} "
            f"| {run['throttled_429']} |"
        )
    lines += [
        "",
        *(
            f"{run['label'].capitalize()}: each partition went to Braze as it was diffed; "
            f"delivery ran from {run['delivery_span_seconds'][0]:g} s to "
            f"{run['delivery_span_seconds'][1]:g} s of the run and had work (a diffed partition "
            f"waiting or being sent) for {run['delivery_busy_seconds']:g} s of it; the windows "
            "above are those wholly inside that time (the deliver column is what was left "
            "after the release)."
            for run in results["runs"]
            if run.get("delivered_while_diffing")
        ),
        "",
        f"CPU seconds used per run (the machine has {results['machine']['cores']} cores):",
        "",
    ]
    for run in results["runs"]:
        used = ", ".join(f"{name} {sec:g}" for name, sec in run["cpu_seconds"].items())
        total = sum(run["cpu_seconds"].values())
        wall = run["wall_seconds"]
        lines.append(
            f"- {run['label']}: {used}; total {total:.1f} over {wall:.1f} s "
            f"(machine idle {run['idle_seconds']:g} s, steal {run['steal_seconds']:g} s)"
        )
    for run in results["runs"]:
        if run["requests_sent"]:
            lines += phase_cpu_table(run)
    graphs = [name for run in results["runs"] for name in run["flame_graphs"]]
    if graphs:
        lines += ["", "Flame graphs (py-spy): " + ", ".join(f"[{n}]({n})" for n in graphs) + "."]
    rss = ", ".join(f"{name} {mb:.0f} MB" for name, mb in results["peak_rss_mb"].items())
    lines += [
        "",
        f"Peak RSS: {rss}.",
        f"`import function_app` in a fresh process: {results['cold_start_import_seconds']} s.",
        "",
    ]
    return "\n".join(lines)


def phase_cpu_table(run: dict[str, Any]) -> list[str]:
    """Where a run's CPU went, phase by phase: which process was busy, and how idle the
    machine was (a phase with idle cores waits on something else than CPU)."""
    names = list(run["cpu_seconds"])
    lines = [
        "",
        f"CPU seconds per phase, {run['label']} (idle and steal: the machine's, all cores; "
        "steal is time the hypervisor gave to other guests):",
        "",
        "| phase | s | " + " | ".join(names) + " | total | idle | steal |",
        "|---|---|" + "---|" * (len(names) + 3),
    ]
    for phase, used in run["cpu_seconds_per_phase"].items():
        total = sum(used[name] for name in names)
        cells = " | ".join(f"{used[name]:g}" for name in names)
        seconds = run["phases_seconds"][phase]
        lines.append(
            f"| {phase} | {seconds:.1f} | {cells} | {total:.1f} | {used['idle']:g} "
            f"| {used['steal']:g} |"
        )
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    """Requests per second over each run against the rate limit: the first picture to look at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    figure, axes = plt.subplots(len(runs), 1, figsize=(10, 3.2 * len(runs)), squeeze=False)
    for axis, run in zip(axes[:, 0], runs, strict=True):
        line = run["timeline"]
        start = line["started_epoch"]
        seconds = sorted(line["arrivals_per_second"])
        axis.bar(
            [s - start for s in seconds],
            [line["arrivals_per_second"][s] for s in seconds],
            width=1.0,
            align="edge",
            color="#4878d0",
            label="requests/s",
        )
        throttled = line["throttled_per_second"]
        if throttled:
            axis.bar(
                [s - start for s in throttled],
                list(throttled.values()),
                width=1.0,
                align="edge",
                color="#d65f5f",
                label="429s",
            )
        rate = line["rate_per_second"]
        axis.axhline(rate, color="black", linestyle="--", linewidth=1, label="Braze limit")
        axis.axhline(0.9 * rate, color="grey", linestyle=":", linewidth=1, label="90%")
        axis.set_xlim(0, max(run["wall_seconds"], 1))
        axis.set_ylim(0, rate * 1.25)
        axis.set_ylabel("requests / s")
        axis.set_title(
            f"{run['label']}: {run['wall_seconds']:.1f} s queued→finished, "
            f"{run['requests_sent']:,} requests, {run['ratio_to_floor'] or '–'}× the floor"
        )
        axis.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("seconds since the run was queued")
    figure.suptitle(f"{results['profiles']:,} profiles, {results['workers']} worker(s)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
