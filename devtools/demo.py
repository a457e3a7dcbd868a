"""`make demo`: export a generated 10,000-profile segment to the local Braze sandbox.

Starts Azurite and the sandbox, uploads a messy sample segment, runs
`python -m shared export demo-vip` exactly as a user would, then reads profiles back from the
sandbox and shows a few rejected rows with their reasons.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys

import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from devtools import services
from devtools.sample import make_segment
from shared.config import AZURITE_CONNECTION_STRING, RUNS_CONTAINER, load_settings
from shared.services import Services

CONTAINER = "segments"
BLOB = "demo/vip-customers.csv"
DEFINITIONS = services.ROOT / "examples" / "exports.json"


def main() -> int:
    services.start()
    local_settings = services.ROOT / "local.settings.json"
    if not local_settings.exists():
        shutil.copy(services.ROOT / "local.settings.sample.json", local_settings)
        print(f"created {local_settings.name} from local.settings.sample.json")
    env = {
        **os.environ,
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "EXPORT_DEFINITIONS_PATH": str(DEFINITIONS),
        "BRAZE_SECRET_BRAZE_SANDBOX_KEY": services.SANDBOX_KEY,
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
    print("$ python -m shared export demo-vip", flush=True)
    export = subprocess.run(
        [sys.executable, "-m", "shared", "export", "demo-vip"], cwd=services.ROOT, env=env
    )
    print(f"(exit code {export.returncode}: 0 succeeded, 1 partially succeeded, 2 failed)\n")
    if export.returncode not in (0, 1):
        return export.returncode
    _show_profiles(list(sample.expected)[:3])
    (run,) = Services(load_settings(env)).runs.list_runs("demo-vip", limit=1)
    _show_rejected(blobs, RUNS_CONTAINER, run.rejected_blob)
    print(
        "\nAzurite and the sandbox keep running, and local.settings.json points at them: try "
        "`.venv/bin/python -m shared runs`.\n`make stop` ends them."
    )
    return 0


def _show_profiles(customer_ids: list[str]) -> None:
    print("A few profiles read back from the Braze sandbox:")
    for customer_id in customer_ids:
        user = requests.get(f"{services.SANDBOX_URL}/_sandbox/users/{customer_id}", timeout=10)
        profile = {"external_id": customer_id, **user.json()["attributes"]}
        print("  " + json.dumps(profile, ensure_ascii=False))


def _show_rejected(blobs: BlobServiceClient, container: str, name: str) -> None:
    lines = blobs.get_blob_client(container, name).download_blob().readall().decode().splitlines()
    print(f"\n{len(lines)} rejected rows are in {container}/{name}; the first five:")
    for text in lines[:5]:
        entry = json.loads(text)
        print(f"  line {entry['line']}: {'; '.join(entry['reasons'])}")


if __name__ == "__main__":
    sys.exit(main())
