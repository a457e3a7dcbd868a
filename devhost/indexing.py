"""Loading a v2 app the way the Python worker indexes it.

The worker imports `function_app.py` with the app directory first on `sys.path`, takes the one
top-level `FunctionRegister` (a `FunctionApp`) in it, calls `get_functions()` once and hands the
host each function's `get_function_json()`. Doing the same here means an app devhost can serve
is an app the real host can index.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import azure.functions as func

SCRIPT_FILE_NAME = "function_app.py"
_INSTALL_DIRS = {
    Path(prefix).resolve() for prefix in (sys.prefix, sys.base_prefix, sys.exec_prefix)
}


class IndexingError(Exception):
    """The app cannot be indexed, so the real host would find no functions either."""


@dataclass(frozen=True)
class FunctionInfo:
    """One indexed function: its name, its bindings as the host receives them, its code."""

    name: str
    bindings: tuple[Mapping[str, Any], ...]
    trigger: Mapping[str, Any]
    user_function: Callable[..., Any]

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])


def load_functions(app_dir: Path) -> list[FunctionInfo]:
    """Index the app in `app_dir` without leaving its modules imported.

    The returned functions stay callable, but imports they make lazily (inside the function
    body) from the app directory need the app imported: use `imported_app` for that.
    """
    with imported_app(app_dir) as module:
        return index_module(module)


def index_module(module: ModuleType) -> list[FunctionInfo]:
    """The functions of the single `FunctionApp` defined at the top level of `module`."""
    app = find_function_app(module)
    try:
        functions = app.get_functions()
    except ValueError as error:
        raise IndexingError(f"indexing {SCRIPT_FILE_NAME} failed: {error}") from error
    return [_function_info(function) for function in functions]


def find_function_app(module: ModuleType) -> func.FunctionRegister:
    """The one top-level function app instance, as the worker requires."""
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionRegister)]
    if not apps:
        raise IndexingError(f"no top-level FunctionApp instance found in {SCRIPT_FILE_NAME}")
    if len(apps) > 1:
        raise IndexingError(f"more than one top-level FunctionApp instance in {SCRIPT_FILE_NAME}")
    return apps[0]


@contextmanager
def imported_app(app_dir: Path) -> Iterator[ModuleType]:
    """Import `function_app.py` from `app_dir` first on sys.path; undo both on exit.

    `function_app` is always imported afresh, so `get_functions()` runs on a new app object
    (a second call on the same one fails). Same-named modules loaded from another directory
    (another app) are set aside meanwhile and restored afterwards, so several apps can be
    hosted one after another in one process, as tests do.
    """
    app_dir = app_dir.resolve()
    if not (app_dir / SCRIPT_FILE_NAME).is_file():
        raise IndexingError(f"{app_dir / SCRIPT_FILE_NAME} does not exist")
    set_aside = _modules_shadowed_by(app_dir)
    for name in set_aside:
        del sys.modules[name]
    modules_before = set(sys.modules)
    sys.path.insert(0, str(app_dir))
    importlib.invalidate_caches()
    try:
        yield importlib.import_module(Path(SCRIPT_FILE_NAME).stem)
    finally:
        sys.path.remove(str(app_dir))
        for name in set(sys.modules) - modules_before:
            if _is_app_module(sys.modules[name], app_dir):
                del sys.modules[name]
        sys.modules.update(set_aside)


def _function_info(function: func.Function) -> FunctionInfo:
    name = function.get_function_name()
    bindings = tuple(json.loads(function.get_function_json())["bindings"])
    trigger = function.get_trigger()
    if name is None or trigger is None:
        raise IndexingError(f"function {name!r} has no name or no trigger")
    trigger_binding = next(
        binding
        for binding in bindings
        if binding["name"] == trigger.name and binding["direction"] == "IN"
    )
    return FunctionInfo(name, bindings, trigger_binding, function.get_user_function())


def _modules_shadowed_by(app_dir: Path) -> dict[str, ModuleType]:
    """`function_app`, and app modules that `app_dir` also provides but were loaded elsewhere."""
    provided = {path.stem for path in app_dir.glob("*.py")} | {
        path.parent.name for path in app_dir.glob("*/__init__.py")
    }
    script_module = Path(SCRIPT_FILE_NAME).stem
    return {
        name: module
        for name, module in list(sys.modules.items())
        if name == script_module
        or (
            name.partition(".")[0] in provided
            and _is_app_module(module)
            and not _is_app_module(module, app_dir)
        )
    }


def _is_app_module(module: ModuleType, app_dir: Path | None = None) -> bool:
    """Whether `module` is app code (under `app_dir`, if given), not installed or built in."""
    locations = [Path(path).resolve() for path in _locations(module)]
    return (
        bool(locations)
        and all(
            not location.is_relative_to(prefix)
            for location in locations
            for prefix in _INSTALL_DIRS
        )
        and (app_dir is None or any(location.is_relative_to(app_dir) for location in locations))
    )


def _locations(module: ModuleType) -> list[str]:
    file = getattr(module, "__file__", None)
    return [file] if file else list(getattr(module, "__path__", []))
