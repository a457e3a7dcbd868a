"""Every Bicep file parses, everything is declared here (no registry modules), and checkov finds
no failed check in infra/; each skipped check carries its reason inline."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.infra.bicep_model import BICEP_FILES, INFRA, ROOT, parsed

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
OFFLINE_JSON = ["--skip-download", "--output", "json"]  # no call to Prisma Cloud for guidelines


def test_infra_has_the_modules_azd_deploys() -> None:
    names = {path.relative_to(INFRA).as_posix() for path in BICEP_FILES}
    assert {"main.bicep", "postdeploy/eventgrid-subscription.bicep"} <= names
    assert len(names) >= 10, names


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_file_parses(path: Path) -> None:
    tree = parsed(path)
    assert tree["parameters"] or tree["resources"] or tree.get("modules"), path


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_modules_are_local_files_offline_checks_can_read(path: Path) -> None:
    for name, module in parsed(path).get("modules", {}).items():
        assert module["type"] == "local", f"{path.name}: module {name} is {module['detail']}"
        assert (path.parent / module["detail"]["path"]).is_file(), (name, module["detail"])


@pytest.fixture(scope="module")
def checkov_report() -> dict:
    assert CHECKOV.exists(), "checkov is missing: run `make install` (it makes .venv-checkov)"
    scan = subprocess.run(
        [str(CHECKOV), "--directory", str(INFRA), "--framework", "bicep", *OFFLINE_JSON],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert scan.stdout, scan.stderr[-2000:]
    return json.loads(scan.stdout)


def test_checkov_finds_no_failed_check(checkov_report: dict) -> None:
    summary = checkov_report["summary"]
    failed = [
        f"{c['check_id']} {c['check_name']} at {c['file_path']}:{c['resource']}"
        for c in checkov_report["results"]["failed_checks"]
    ]
    assert failed == []
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0


def test_checkov_sees_the_resources_it_has_checks_for(checkov_report: dict) -> None:
    """Storage, Key Vault, the plan and the app: a module checkov could not read would drop out."""
    results = checkov_report["results"]
    seen = {
        (c["file_path"].lstrip("/"), c["resource"])
        for c in results["passed_checks"] + results["skipped_checks"]
    }
    assert {
        ("app/storage.bicep", "Microsoft.Storage/storageAccounts.storage"),
        ("app/keyvault.bicep", "Microsoft.KeyVault/vaults.keyVault"),
        ("app/plan.bicep", "Microsoft.Web/serverfarms.plan"),
        ("app/api.bicep", "Microsoft.Web/sites.functionApp"),
    } <= seen


def test_every_skipped_check_says_why(checkov_report: dict) -> None:
    for check in checkov_report["results"]["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason.split()) >= 5, f"{check['check_id']} in {check['file_path']}: {reason!r}"
