"""The Bicep in infra/, parsed with pycep (the parser checkov uses), and what tests need from it.

pycep gives a reference to a variable as its bare name and an interpolation as the raw
`'${name}-x'` text; `resolve` turns both into the deployed value where only variables are
involved (anything that depends on a deployment output stays as pycep's tree).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@cache
def parsed(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


def main() -> dict[str, Any]:
    return parsed(INFRA / "main.bicep")


def module_params(module: str) -> dict[str, Any]:
    return main()["modules"][module]["config"]["params"]


def resolve(value: Any, variables: dict[str, Any] | None = None) -> Any:
    """`'exportJobsQueueName'` -> `'export-jobs'`; `'${exportJobsQueueName}-poison'` ->
    `'export-jobs-poison'`; lists and objects element by element."""
    variables = main()["variables"] if variables is None else variables
    if isinstance(value, list):
        return [resolve(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: resolve(item, variables) for key, item in value.items()}
    if not isinstance(value, str):
        return value
    if value in variables:
        return resolve(variables[value]["value"], variables)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        return str(resolve(name, variables)) if name in variables else match.group(0)

    return _INTERPOLATION.sub(substitute, value)


def variable(name: str) -> Any:
    return resolve(name)
