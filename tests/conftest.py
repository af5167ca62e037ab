"""Shared fixtures: one fresh recording per test session, and the site built from it.

The lab (examples/lab/) and the site's build (docs/fieldguide/) are installed packages
(`pip install -e .`, as nox does).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from lab.artifact import ROOT, TRACES
from lab.preflight import LabUnavailable
from lab.runner import Result, Runner
from lab.scenarios import all_slugs


@pytest.fixture(scope="session")
def recorded() -> dict[str, Result]:
    """Every scenario recorded fresh by this session into build/traces/."""
    try:
        runner = Runner(out=TRACES)
    except LabUnavailable as exc:
        pytest.fail(f"the lab cannot run here: {exc}")
    return {r.slug: r for r in runner.run(all_slugs())}


# -- site ------------------------------------------------------------------------------
# The site's tests read the HTML of a site built from the traces recorded by this same
# test session (`recorded` above), with `mkdocs build --strict` into a temporary folder
# (a developer's site/ from `nox -s docs` is left alone).


@pytest.fixture(scope="session")
def recorded_traces(recorded: dict[str, Result]) -> Path:
    """build/traces/ after this session's recording (a failed scenario fails the site's build)."""
    return TRACES


@pytest.fixture(scope="session")
def built_site(recorded_traces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built with `mkdocs build --strict` from those traces; returns its folder."""
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}",
                    pytrace=False)
    return out
