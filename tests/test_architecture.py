"""The dependency rule, checked on every import statement of the app (at any depth).

    entry points (`functions/`, `shared/entrypoints/`) -> pipeline -> adapters -> core

- `shared/core/` is pure: it imports only the standard library, pydantic, orjson, croniter,
  numpy, xxhash and zstandard, and no other layer; no Azure SDK, no HTTP.
- `shared/adapters/` import core and the adapters listed after them in ADAPTERS.
- `shared/pipeline/` stages import adapters, core and the stages listed after them in STAGES.
- Nothing under `shared/` imports `azure.functions` or `functions/`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "shared"

# Each stage may import only those after it: the stall sweep restarts any stage; finalize hands
# the export to its deferred start; every stage reads and writes the run's files.
STAGES = [
    "stall_sweep",
    "replay",
    "plan_export",
    "split_source",
    "diff_partition",
    "raw_source",
    "run_source",
    "release",
    "deliver_chunk",
    "finalize",
    "start",
    "run_files",
]
ADAPTERS = [
    "services",
    "snapshot_store",
    "run_store",
    "braze_client",
    "http_post",
    "telemetry",
    "rate_governor",
    "key_vault",
    "storage",
    "settings",
]
CORE_THIRD_PARTY = {"pydantic", "orjson", "croniter", "numpy", "xxhash", "zstandard"}
# Standard-library modules that do I/O of their own: core takes streams and callbacks instead.
CORE_DENIED = {"os", "socket", "subprocess", "urllib.request", "http", "shutil", "tempfile"}
LAYERS = ("core", "adapters", "pipeline", "entrypoints")


def imported_modules(path: Path) -> list[str]:
    """Every module a file imports, at module level or inside a function."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports would hide the layer: refuse them
                modules.append(f"relative import from {'.' * node.level}{node.module or ''}")
            elif node.module in {"shared", *(f"shared.{layer}" for layer in LAYERS)}:
                # from shared.pipeline import release: `release` is the module imported
                modules += [f"{node.module}.{alias.name}" for alias in node.names]
            elif node.module:
                modules.append(node.module)
    return modules


def layer_of(module: str) -> tuple[str, str]:
    """('core' | 'adapters' | 'pipeline' | 'entrypoints' | 'shared' | 'functions' | 'other',
    the module's own name within its layer)."""
    parts = module.split(".")
    if parts[0] == "functions":
        return "functions", ".".join(parts[1:])
    if parts[0] != "shared":
        return "other", module
    if len(parts) >= 2 and parts[1] in {"core", "adapters", "pipeline", "entrypoints"}:
        return parts[1], parts[2] if len(parts) > 2 else ""
    return "shared", ".".join(parts[1:])


def violations(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None when the rule allows it."""
    layer, name = layer_of(importer)
    target_layer, target = layer_of(imported)
    top = imported.split(".")[0]
    shared_layer = layer in {"core", "adapters", "pipeline", "entrypoints", "shared"}
    if shared_layer and imported.startswith("relative import"):
        return "use absolute imports: a relative one hides the layer"
    if shared_layer and (imported.startswith("azure.functions") or target_layer == "functions"):
        return "shared/ never imports azure.functions or functions/"
    if layer == "core":
        if target_layer == "other":
            if top in CORE_DENIED or imported in CORE_DENIED or imported.startswith("relative"):
                return f"core does no I/O of its own: no {imported}"
            stdlib = top in sys.stdlib_module_names
            return None if stdlib or top in CORE_THIRD_PARTY else f"core is pure: no {top}"
        return None if target_layer == "core" else f"core may not import {target_layer}"
    if layer == "adapters":
        if target_layer == "adapters":
            later = ADAPTERS[ADAPTERS.index(name) + 1 :]
            return None if target in later or not target else f"{target} is not after {name}"
        return (
            None if target_layer in {"core", "other"} else f"adapters may not import {target_layer}"
        )
    if layer == "pipeline":
        if target_layer == "pipeline":
            later = STAGES[STAGES.index(name) + 1 :]
            return None if target in later or not target else f"{target} is not after {name}"
        allowed = {"core", "adapters", "other"}
        return None if target_layer in allowed else f"pipeline may not import {target_layer}"
    return None


def app_modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted([*SHARED.rglob("*.py"), *(ROOT / "functions").glob("*.py")]):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def test_every_module_is_in_a_layer_and_listed():
    """A new module has to be placed: a stage or adapter missing from the lists fails here."""
    for module, _ in app_modules():
        layer, name = layer_of(module)
        if layer == "pipeline" and name:
            assert name in STAGES, f"{module}: add it to STAGES"
        if layer == "adapters" and name:
            assert name in ADAPTERS, f"{module}: add it to ADAPTERS"
        if layer == "shared":
            assert name in {"", "__main__"}, f"{module}: put it in core, adapters or pipeline"


@pytest.mark.parametrize(("module", "path"), app_modules(), ids=lambda value: str(value))
def test_imports_follow_the_dependency_rule(module: str, path: Path):
    broken = [
        f"{module} imports {imported}: {why}"
        for imported in imported_modules(path)
        if (why := violations(module, imported))
    ]
    assert broken == []


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("shared.core.validation", "shared.core.definitions", True),
        ("shared.core.validation", "requests", False),
        ("shared.core.report", "shared.adapters.storage", False),
        ("shared.core.runs", "azure.data.tables", False),
        ("shared.core.cdm", "os", False),
        ("shared.core.cdm", "urllib.parse", True),
        ("shared.core.cdm", "urllib.request", False),
        ("shared.pipeline.finalize", "shared.pipeline.release", False),
        ("shared.adapters.storage", "shared.adapters.settings", True),
        ("shared.adapters.settings", "shared.adapters.storage", False),
        ("shared.adapters.storage", "shared.pipeline.finalize", False),
        ("shared.pipeline.release", "shared.pipeline.finalize", True),
        ("shared.pipeline.finalize", "shared.pipeline.release", False),
        ("shared.pipeline.start", "shared.entrypoints.cli", False),
        ("shared.pipeline.start", "azure.functions", False),
        ("shared.entrypoints.cli", "shared.pipeline.start", True),
        ("functions.delivery", "shared.pipeline.deliver_chunk", True),
    ],
)
def test_the_rule_itself(importer: str, imported: str, allowed: bool):
    """The checker catches what it is for: without this, a checker that allows everything passes."""
    assert (violations(importer, imported) is None) is allowed


def test_package_and_relative_imports_are_seen_as_what_they_import(tmp_path: Path):
    source = tmp_path / "module.py"
    source.write_text("from shared.pipeline import release\nfrom . import sibling\n")
    modules = imported_modules(source)
    assert modules[0] == "shared.pipeline.release"
    assert violations("shared.pipeline.finalize", modules[0]) is not None
    assert violations("shared.pipeline.finalize", modules[1]) is not None
