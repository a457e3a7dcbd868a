"""`make demo`: export a generated 10,000-profile segment to the local Braze sandbox.

Starts Azurite, the sandbox and the local Functions host, uploads a messy sample segment, runs
`python -m shared export demo-vip` exactly as a user would, reads profiles back from the
sandbox and shows rejected rows with their reasons; then starts the same export the two other
ways, an HTTP call and a file dropped into storage, and lists the export with its schedule.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from devtools import services
from devtools.sample import make_segment
from shared.adapters.services import Services
from shared.adapters.settings import AZURITE_CONNECTION_STRING, load_settings
from shared.core.resource_names import RUNS_CONTAINER

CONTAINER = "segments"
BLOB = "demo/vip-customers.csv"
DEFINITIONS = services.ROOT / "examples" / "exports.json"


def main() -> int:
    local_settings = services.ROOT / "local.settings.json"
    if not local_settings.exists():
        shutil.copy(services.ROOT / "local.settings.sample.json", local_settings)
        print(f"created {local_settings.name} from local.settings.sample.json")
    services.start()
    env = {
        **os.environ,
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "EXPORT_DEFINITIONS_PATH": str(DEFINITIONS),
        "BRAZE_SECRET_BRAZE_SANDBOX_KEY": services.SANDBOX_KEY,
        "EXPORT_ALLOW_LOOPBACK_ENDPOINTS": "true",  # the sandbox is on this machine
    }
    sample = make_segment(10_000, segment="VIP Customers")
    blobs = BlobServiceClient.from_connection_string(AZURITE_CONNECTION_STRING)
    with contextlib.suppress(ResourceExistsError):
        blobs.create_container(CONTAINER)
    blobs.get_blob_client(CONTAINER, BLOB).upload_blob(sample.data, overwrite=True)
    print(
        f"uploaded {CONTAINER}/{BLOB}: {sample.rows} rows, {len(sample.invalid_lines)} of them "
        "deliberately invalid\n"
    )
    command = ["export", "demo-vip", "--host", "none"]
    if _sandbox_forgot_earlier_demo(env, sample.expected):
        # Azurite's data persists in .local, the sandbox's does not: the export's snapshot says
        # Braze holds these profiles, so a plain run would send nothing.
        print("(the sandbox restarted empty since an earlier demo: sending everything again)")
        command.append("--full-refresh")
    print(f"$ python -m shared {' '.join(command)}   # the local host runs already")
    sys.stdout.flush()
    export = subprocess.run(
        [sys.executable, "-m", "shared", *command],
        cwd=services.ROOT,
        env=env,
    )
    print(
        f"(exit code {export.returncode}: 0 succeeded, 1 partially succeeded, 2 failed, "
        "3 stopped by a safety valve)\n"
    )
    if export.returncode not in (0, 1):
        return export.returncode
    _show_profiles(list(sample.expected)[:3])
    (run,) = Services(load_settings(env)).runs.list_runs("demo-vip", limit=1)
    _show_rejected(blobs, RUNS_CONTAINER, run.rejected_blob)
    _start_over_http()
    _start_by_dropping_a_file(blobs)
    _show_exports()
    print(
        "\nAzurite, the sandbox and the local host (http://localhost:7071) keep running, and "
        "local.settings.json points at them: try `.venv/bin/python -m shared runs`, or open "
        "the status page, http://localhost:7071/api/dashboard, in a browser.\n"
        "`make stop` ends them."
    )
    return 0


def _follow(location: str) -> dict[str, Any]:
    """Poll a run's status URL until it is final (bounded)."""
    for _ in range(1200):
        run = requests.get(services.HOST_URL + location, timeout=10).json()
        if run["status"] in ("succeeded", "partially_succeeded", "failed", "stopped"):
            return run
        time.sleep(0.25)
    raise SystemExit(f"{location} did not finish")


def _start_over_http() -> None:
    print("\n$ curl -X POST http://localhost:7071/api/exports/demo-vip/runs   # same file again")
    response = requests.post(f"{services.HOST_URL}/api/exports/demo-vip/runs", timeout=30)
    location = response.headers["Location"]
    print(f"  {response.status_code}, Location: {location}")
    run = _follow(location)
    print(f"  {run['run_id']}: {run['status']}: {run['message']}")


def _start_by_dropping_a_file(blobs: BlobServiceClient) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = f"drops/vip/vip-customers-{stamp}.csv"
    # The same generator, 100 rows longer: the first 10,000 rows are the ones already sent.
    refresh = make_segment(10_100, segment="VIP Customers")
    print(
        f"\n$ upload segments/{name}   # matches the export's drop pattern drops/vip/*.csv; "
        "the same segment plus 100 rows"
    )
    blobs.get_blob_client(CONTAINER, name).upload_blob(refresh.data, overwrite=True)
    for _ in range(1200):
        history = requests.get(
            f"{services.HOST_URL}/api/exports/demo-vip/runs?limit=1", timeout=10
        ).json()["runs"]
        if history and history[0]["trigger"] == "blob":
            run = _follow(history[0]["links"]["self"])
            print(f"  {run['run_id']} (trigger blob, source {run['source']}): {run['status']}")
            print(f"  {run['message']}")
            return
        time.sleep(0.25)
    raise SystemExit("the drop did not start a run")


def _show_exports() -> None:
    print("\n$ curl http://localhost:7071/api/exports")
    for export in requests.get(f"{services.HOST_URL}/api/exports", timeout=10).json()["exports"]:
        print(
            f"  {export['name']}: schedule {export['schedule']} (next {export['next_due']}), "
            f"drop {export['drop']['path'] if export['drop'] else None}, last run "
            f"{export['last_run']['run_id']} ({export['last_run']['status']})"
        )


def _sandbox_forgot_earlier_demo(env: dict[str, str], expected: dict[str, Any]) -> bool:
    """Whether an earlier demo's snapshot is in Azurite while the sandbox holds none of it."""
    if Services(load_settings(env)).snapshots.current("demo-vip", "sandbox") is None:
        return False
    first = next(iter(expected))
    user = requests.get(f"{services.SANDBOX_URL}/_sandbox/users/{first}", timeout=10)
    return user.status_code == 404


def _show_profiles(customer_ids: list[str]) -> None:
    print("A few profiles read back from the Braze sandbox:")
    for customer_id in customer_ids:
        user = requests.get(f"{services.SANDBOX_URL}/_sandbox/users/{customer_id}", timeout=10)
        profile = {"external_id": customer_id, **user.json()["attributes"]}
        print("  " + json.dumps(profile, ensure_ascii=False))


def _show_rejected(blobs: BlobServiceClient, container: str, name: str) -> None:
    text = blobs.get_blob_client(container, name).download_blob().readall().decode()
    lines = [line for line in text.split("\n") if line]  # not splitlines: JSON keeps U+2028
    print(f"\n{len(lines)} rejected rows are in {container}/{name}; the first five:")
    for text in lines[:5]:
        entry = json.loads(text)
        print(f"  line {entry['line']}: {'; '.join(entry['reasons'])}")


if __name__ == "__main__":
    sys.exit(main())
