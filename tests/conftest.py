"""Shared fixtures. Sections are owned by different parts of the project; keep them apart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

from lab.runner import TRACES, LabUnavailable, Result, Runner  # noqa: E402
from lab.scenarios import all_slugs  # noqa: E402


# -- lab -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def recorded() -> dict[str, Result]:
    """Every scenario recorded fresh by this session into build/traces/."""
    try:
        runner = Runner(out=TRACES)
    except LabUnavailable as exc:
        pytest.fail(f"the lab cannot run here: {exc}")
    return {r.slug: r for r in runner.run(all_slugs())}


# -- site ------------------------------------------------------------------------------
# The site's tests read the HTML of a site built from traces recorded by the same test
# run: first every example is recorded fresh, then `mkdocs build --strict` runs into a
# temporary folder (site/ of a developer's `nox -s docs` is left alone).


def _run(argv: list[str], cwd: Path, what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1", **(env or {})})
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}",
                    pytrace=False)


@pytest.fixture(scope="session")
def recorded_traces() -> Path:
    """build/traces/, freshly recorded for every example by `python -m lab run`."""
    _run([sys.executable, "-m", "lab", "run"], ROOT / "examples", "recording the examples")
    return TRACES


@pytest.fixture(scope="session")
def built_site(recorded_traces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built with `mkdocs build --strict` from those traces; returns its folder."""
    out = tmp_path_factory.mktemp("site")
    _run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], ROOT, "mkdocs build")
    return out
