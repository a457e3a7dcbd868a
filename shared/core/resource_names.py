"""Names of the app's queues, containers and tables.

Fixed constants: the trigger bindings in `functions/` and the Bicep in `infra/` use the same
literals, and a constant cannot be mis-set per instance.
"""

from __future__ import annotations

# Every planning job of a run (plan, split, diff) goes on this one queue: a worker that has
# just finished one step's job asks for more at once and picks up the next step's, where a
# queue of its own would wait out an idle listener's back-off (up to `maxPollingInterval`).
JOBS_QUEUE = "export-jobs"
CHUNKS_QUEUE = "export-chunks"
RUNS_CONTAINER = "export-runs"
SNAPSHOTS_CONTAINER = "export-snapshots"
RUNS_TABLE = "exportruns"
RATE_TABLE = "ratelimits"
DROPS_CONTAINER = "segments"
STORAGE_CONNECTION = "AzureWebJobsStorage"
