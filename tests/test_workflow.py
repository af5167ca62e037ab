"""The GitHub Pages workflow cannot run here: check its syntax and what it promises.

Syntax: check-jsonschema with the GitHub Actions workflow schema it ships (no network).
Promises: it records the traces fresh as root, builds with the same nox session as a
developer, and deploys the built site with the official Pages actions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from lab.preflight import TOOLS

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "pages.yml"


def schema_errors(path: Path) -> str:
    """check-jsonschema's verdict on a workflow file: '' when valid."""
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.github-workflows", str(path)], capture_output=True, text=True)
    return "" if proc.returncode == 0 else proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(workflow: dict[Any, Any], job: str) -> list[dict[str, Any]]:
    return workflow["jobs"][job]["steps"]


def test_workflow_matches_the_github_actions_schema() -> None:
    assert schema_errors(WORKFLOW) == ""


def test_the_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-24.04", "run-on: ubuntu-24.04", 1))
    assert "runs-on" in schema_errors(broken)


def test_it_records_fresh_as_root_and_builds_with_nox(workflow: dict[Any, Any]) -> None:
    runs = [step.get("run", "").strip() for step in steps(workflow, "build")]
    assert "./.ci/setup" in runs, "the runner is not set up with the project's package list"
    listed = subprocess.run(["sh", str(ROOT / ".ci" / "setup"), "--list"], capture_output=True, text=True,
                            check=True).stdout.split()
    for package in sorted(set(TOOLS.values())):  # every Debian package the lab's preflight asks for
        assert package in listed, f"the runner lacks {package}"
    build = next(step["run"] for step in steps(workflow, "build") if "nox -s site" in step.get("run", ""))
    assert build.startswith("sudo"), "the lab needs root on GitHub's Ubuntu runners"
    uses = [step.get("uses", "") for step in steps(workflow, "build")]
    assert not any("cache" in u for u in uses), "a cached build/ could publish old traces"


def test_it_publishes_only_what_passed_the_tests_ci_runs(workflow: dict[Any, Any]) -> None:
    """The weekly run on a new runner kernel must not publish what CI's tests would refuse."""
    runs = [s.get("run", "") for s in workflow["jobs"]["build"]["steps"]]
    tests = next(i for i, run in enumerate(runs) if "./.ci/run" in run)
    build = next(i for i, run in enumerate(runs) if "nox -s site" in run)
    assert tests < build, "the site is built before the tests ran"
    assert "CI=true" in runs[tests] and runs[tests].startswith("sudo")
    assert not any("nox -s docs" in run or "nox -s examples" in run for run in runs), (
        "recording again after the tests would publish a recording nobody checked")


class _MkDocsLoader(yaml.SafeLoader):
    """mkdocs.yml's `!ENV [NAME, default]` read as its list (the test reads settings, not values)."""


_MkDocsLoader.add_constructor("!ENV", lambda loader, node: loader.construct_sequence(node))


def test_the_sites_address_is_one_setting_the_workflow_gives(workflow: dict[Any, Any]) -> None:
    mkdocs = yaml.load((ROOT / "mkdocs.yml").read_text().split("\nmarkdown_extensions:")[0], _MkDocsLoader)
    assert mkdocs["site_url"] == ["FIELDGUIDE_SITE_URL", None], "unset, no page may name a placeholder host"
    build = steps(workflow, "build")
    pages = next(s for s in build if s.get("uses", "").startswith("actions/configure-pages@"))
    site = next(s for s in build if "nox -s site" in s.get("run", ""))
    assert site["env"]["FIELDGUIDE_SITE_URL"] == "${{ steps.%s.outputs.base_url }}" % pages["id"]
    assert build.index(pages) < build.index(site)


def test_it_deploys_the_built_site_to_pages(workflow: dict[Any, Any]) -> None:
    mkdocs = yaml.load((ROOT / "mkdocs.yml").read_text().split("\nmarkdown_extensions:")[0], _MkDocsLoader)
    site_dir = mkdocs.get("site_dir", "site").rstrip("/") + "/"
    upload = next(s for s in steps(workflow, "build") if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == site_dir
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in deploy["steps"])
    assert workflow["permissions"] == {"contents": "read"}, "the build job needs no write access"
