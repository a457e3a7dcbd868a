"""Names of the app's queues, containers and tables.

Fixed constants: the trigger bindings in `functions/` and the Bicep in `infra/` use the same
literals, and a constant cannot be mis-set per instance.
"""

from __future__ import annotations

JOBS_QUEUE = "export-jobs"
CHUNKS_QUEUE = "export-chunks"
PARTITIONS_QUEUE = "export-partitions"
SPLITS_QUEUE = "export-splits"
RUNS_CONTAINER = "export-runs"
SNAPSHOTS_CONTAINER = "export-snapshots"
RUNS_TABLE = "exportruns"
RATE_TABLE = "ratelimits"
DROPS_CONTAINER = "segments"
STORAGE_CONNECTION = "AzureWebJobsStorage"
