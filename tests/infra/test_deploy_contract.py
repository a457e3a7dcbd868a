"""What the Bicep deploys agrees with what the code expects: app settings, resource names, the
Python version, the run-end alert, and the azd hooks' scripts and template."""

from __future__ import annotations

import ast
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.core import resource_names
from shared.core.report import RUN_ENDED, run_ended
from shared.core.runs import Run, Status
from tests.infra.bicep_model import INFRA, ROOT, module_params, parsed, resolve, variable

# Read by the code but deliberately not set in Azure.
LOCAL_ONLY = {
    "AzureWebJobsStorage": "a connection string; Azure uses the identity-based __ settings",
    "EXPORT_DEFINITIONS_PATH": "a local definitions file; Azure reads EXPORT_DEFINITIONS_BLOB",
    "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "optional host.json override",
    "WEBSITE_INSTANCE_ID": "set by the platform on every instance",
    "WEBSITE_AUTH_ENABLED": "set by the platform when App Service Authentication is on",
    "BRAZE_SECRET_<NAME>": "local API keys; Azure reads them from Key Vault (KEY_VAULT_URL)",
    "REQUESTS_CA_BUNDLE": "requests' own; the storage clients honour it where it is set",
    "CURL_CA_BUNDLE": "requests' own; the storage clients honour it where it is set",
}
# Set in Azure but read by the Functions host or the C runtime, not by the app's code.
READ_BY_PLATFORM = {
    "AzureWebJobsStorage__credential": "the Functions host's storage connection",
    "MALLOC_ARENA_MAX": "glibc's allocator",
}


def _constants() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(resource_names).items()
        if name.isupper() and isinstance(value, str)
    }


def _setting_name(node: ast.expr, names: dict[str, str]) -> str | None:
    """A literal, a module constant, or `prefix + "literal"` with prefix = `<constant>__`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "secret_env_name":
        return "BRAZE_SECRET_<NAME>"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _setting_name(node.left, names), _setting_name(node.right, names)
        return left + right if left is not None and right is not None else None
    return None


def settings_the_code_reads() -> set[str]:
    """Every `<environ>.get(NAME)` in shared/ whose name can be read off the source."""
    found: set[str] = set()
    for path in (ROOT / "shared").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {**_constants(), "prefix": f"{resource_names.STORAGE_CONNECTION}__"}
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and node.args
            ):
                continue
            target = node.func.value
            holder = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if holder in {"env", "environ"}:
                name = _setting_name(node.args[0], names)
                assert name is not None, f"{path}:{node.lineno}: a setting name the test can't read"
                found.add(name)
    return found


def settings_the_bicep_sets() -> set[str]:
    platform = parsed(INFRA / "app" / "api.bicep")["variables"]["platformAppSettings"]["value"]
    return set(platform) | set(module_params("api")["appSettings"])


def test_the_scan_finds_the_settings_it_should() -> None:
    """Guards the scan itself: these are read in shared/adapters/settings.py."""
    assert {
        "KEY_VAULT_URL",
        "EXPORT_STALL_MINUTES",
        "AzureWebJobsStorage__queueServiceUri",
        "AzureWebJobsStorage",
    } <= settings_the_code_reads()


def test_azure_sets_every_setting_the_code_reads_and_no_stray_one() -> None:
    code, bicep = settings_the_code_reads(), settings_the_bicep_sets()
    assert code - bicep == set(LOCAL_ONLY), "read by the code, not set in infra/app/api.bicep"
    assert bicep - code == set(READ_BY_PLATFORM), "set in Bicep, read by nothing"


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name in settings_the_code_reads() if f"`{name}`" not in readme]
    assert missing == []


def test_resource_names_match_the_code() -> None:
    assert variable("exportJobsQueueName") == resource_names.JOBS_QUEUE
    assert variable("exportChunksQueueName") == resource_names.CHUNKS_QUEUE
    assert variable("exportRunsContainerName") == resource_names.RUNS_CONTAINER
    assert variable("exportSnapshotsContainerName") == resource_names.SNAPSHOTS_CONTAINER
    assert variable("segmentsContainerName") == resource_names.DROPS_CONTAINER
    assert variable("exportRunsTableName") == resource_names.RUNS_TABLE
    assert variable("rateLimitsTableName") == resource_names.RATE_TABLE


def test_storage_declares_every_queue_container_and_table_the_code_uses() -> None:
    storage = resolve(module_params("storage"))
    queues = {
        resource_names.JOBS_QUEUE,
        resource_names.CHUNKS_QUEUE,
    }
    assert set(storage["queues"]) == queues | {f"{q}-poison" for q in queues}
    containers = {c["name"] for c in storage["containers"]}
    definitions_container = variable("exportDefinitionsBlob").split("/")[0]
    assert {
        resource_names.RUNS_CONTAINER,
        resource_names.SNAPSHOTS_CONTAINER,
        resource_names.DROPS_CONTAINER,
        definitions_container,
        variable("eventGridDeadLetterContainerName"),
    } <= containers
    assert any(name.startswith("app-package-") for name in containers)
    assert set(storage["tables"]) == {resource_names.RUNS_TABLE, resource_names.RATE_TABLE}


def test_the_lifecycle_rule_covers_run_files_and_spares_snapshots() -> None:
    from shared.pipeline.run_files import run_prefix

    (prefix,) = resolve(module_params("storage"))["runFilesPrefixes"]
    assert f"{resource_names.RUNS_CONTAINER}/{run_prefix('x')}".startswith(prefix)
    assert not prefix.startswith(resource_names.SNAPSHOTS_CONTAINER)


def test_blob_drop_function_name_matches_the_event_subscription() -> None:
    source = (ROOT / "functions" / "blob_drop.py").read_text(encoding="utf-8")
    assert f'@bp.function_name("{variable("segmentDropFunctionName")}")' in source


def test_python_version_is_the_same_in_azure_in_make_and_here() -> None:
    deployed = variable("pythonVersion")
    api_allowed = parsed(INFRA / "app" / "api.bicep")["parameters"]["runtimeVersion"]
    assert deployed in api_allowed["decorators"][0]["argument"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(rf"^PYTHON \?= python{re.escape(deployed)}$", makefile, re.M)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == deployed
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'target-version = "py{deployed.replace(".", "")}"' in pyproject
    assert f"python{deployed}" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_app_waits_for_its_role_assignments() -> None:
    assert "rbac" in parsed(INFRA / "main.bicep")["modules"]["api"]["config"]["dependsOn"]


def test_every_role_assignment_says_why() -> None:
    for path in INFRA.rglob("*.bicep"):
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if "'Microsoft.Authorization/roleAssignments@" in line:
                assert lines[number - 1].startswith("//"), f"{path.name}:{number + 1}"


def test_instance_memory_and_scale_are_parameters() -> None:
    params = module_params("api")
    assert params["instanceMemoryMB"] == "instanceMemoryMB"
    assert params["maximumInstanceCount"] == "maximumInstanceCount"
    assert {"instanceMemoryMB", "maximumInstanceCount"} <= set(main_parameters())


def main_parameters() -> dict[str, object]:
    return parsed(INFRA / "main.bicep")["parameters"]


@pytest.mark.parametrize(
    "status", [Status.FAILED, Status.STOPPED, Status.PARTIALLY_SUCCEEDED, Status.SUCCEEDED]
)
def test_the_alert_rules_fire_on_the_line_a_bad_run_logs(status: Status) -> None:
    """The rule's query is `Message startswith "<prefix>: status=<status> "`: the line the code
    writes at a run's end must start so for exactly the statuses the rules cover."""
    monitoring = parsed(INFRA / "app" / "monitoring.bicep")
    alerted = {a["status"] for a in monitoring["variables"]["runEndAlerts"]["value"]}
    (criterion,) = monitoring["resources"]["runEndAlertRules"]["config"]["config"]["properties"][
        "criteria"
    ]["allOf"]
    assert variable("runEndedLogPrefix") == RUN_ENDED
    assert module_params("monitoring")["runEndedLogPrefix"] == "runEndedLogPrefix"
    match = re.fullmatch(r'AppTraces \| where Message startswith "(.*)"', criterion["query"])
    assert match, criterion["query"]
    run = Run("orders-20261204T000000Z-abc", "orders", "Orders", "braze-eu", "a.csv", "http")
    run.status = status
    run.message = "3 rows rejected"
    level, line = run_ended(run)
    fires = any(
        line.startswith(
            match.group(1)
            .replace("${runEndedLogPrefix}", RUN_ENDED)
            .replace("${alert.status}", alert)
        )
        for alert in alerted
    )
    assert fires == (status != Status.SUCCEEDED)
    assert level >= (logging.WARNING if fires else logging.INFO)


# --- azd hooks ------------------------------------------------------------------------------


def _hooks() -> dict[str, dict[str, str]]:
    azure = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    return azure["hooks"]["postdeploy"]


@pytest.mark.parametrize("platform", ["posix", "windows"])
def test_hook_scripts_exist_and_are_executable(platform: str) -> None:
    script = ROOT / _hooks()[platform]["run"]
    assert script.is_file(), script
    assert os.access(script, os.X_OK), f"{script} is not executable"


def test_posix_hook_is_valid_shell() -> None:
    script = ROOT / _hooks()["posix"]["run"]
    subprocess.run(["sh", "-n", str(script)], check=True)


def _template_params(script: Path) -> tuple[Path, set[str], set[str]]:
    text = script.read_text(encoding="utf-8")
    (template,) = set(re.findall(r"infra[/' ]+postdeploy[/' ]+([\w-]+\.bicep)", text))
    block = text.split("--parameters", 1)[1].split("--only-show-errors", 1)[0]
    passed = set(re.findall(r'^\s*"?(\w+)="?\$', block, re.M))
    required = set(re.findall(r"(?:require_value |Get-RequiredValue ')(\w+)", text))
    return INFRA / "postdeploy" / template, passed, required


@pytest.mark.parametrize("platform", ["posix", "windows"])
def test_hook_passes_exactly_the_template_parameters(platform: str) -> None:
    template, passed, _ = _template_params(ROOT / _hooks()[platform]["run"])
    params = parsed(template)["parameters"]  # also: the template parses
    needed = {name for name, param in params.items() if param.get("default") is None}
    assert needed <= passed <= set(params)


@pytest.mark.parametrize("platform", ["posix", "windows"])
def test_hook_reads_only_values_azd_provides(platform: str) -> None:
    _, _, required = _template_params(ROOT / _hooks()[platform]["run"])
    outputs = set(parsed(INFRA / "main.bicep")["outputs"])
    azd_own = {"AZURE_SUBSCRIPTION_ID", "AZURE_ENV_NAME"}
    assert required, "the hook reads no azd values: the pattern is out of date"
    assert required <= outputs | azd_own, required - outputs - azd_own
