"""The host imports `function_app` to index the functions at every cold start: that import
leaves the pipeline and its heavy packages to the first invocation (functions/__init__.py).

Checked by what a fresh process has imported, not by timing it (the figure is the export
benchmark's, `cold_start_import_seconds`)."""

import json
import subprocess
import sys

from devtools.processes import ROOT

# What a trigger needs only once it runs: each took tens to hundreds of milliseconds.
DEFERRED = (
    "shared.adapters.services",
    "shared.core.definitions",
    "shared.entrypoints",
    "shared.pipeline",
    "pydantic",
    "azure.data.tables",
    "azure.storage.queue",
)


def _imported_by(statement: str) -> list[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout)


def _deferred_among(modules: list[str]) -> list[str]:
    return [
        name for name in modules if any(name == d or name.startswith(d + ".") for d in DEFERRED)
    ]


def test_indexing_the_app_imports_none_of_the_pipeline() -> None:
    modules = _imported_by("import function_app; function_app.app.get_functions()")
    assert "function_app" in modules and "functions.planning" in modules
    assert _deferred_among(modules) == []


def test_the_check_sees_each_of_them_once_the_triggers_import_what_they_run() -> None:
    """The check above is not blind: the handlers' own imports bring in every one."""
    modules = _imported_by(
        "import function_app; import shared.adapters.services, shared.pipeline.plan_export, "
        "shared.pipeline.split_source, shared.pipeline.diff_partition, "
        "shared.pipeline.deliver_chunk, shared.entrypoints.http_api"
    )
    found = _deferred_among(modules)
    assert [d for d in DEFERRED if not any(n == d or n.startswith(d + ".") for n in found)] == []
