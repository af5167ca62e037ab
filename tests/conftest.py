"""Shared fixtures: the lab on the path, and one fresh recording per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

from lab.runner import TRACES, LabUnavailable, Result, Runner  # noqa: E402
from lab.scenarios import all_slugs  # noqa: E402


@pytest.fixture(scope="session")
def recorded() -> dict[str, Result]:
    """Every scenario recorded fresh by this session into build/traces/."""
    try:
        runner = Runner(out=TRACES)
    except LabUnavailable as exc:
        pytest.fail(f"the lab cannot run here: {exc}")
    return {r.slug: r for r in runner.run(all_slugs())}


# -- built site -----------------------------------------------------------------------------

SITE = ROOT / "site"


@pytest.fixture(scope="session")
def built_site(recorded: dict[str, Result]) -> Path:
    """The site, built with `mkdocs build --strict` into site/ from this session's recordings."""
    import os
    import subprocess

    failed = sorted(slug for slug, result in recorded.items() if not result.ok)
    if failed:
        pytest.fail(f"no site from failed recordings: {', '.join(failed)}")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(SITE)],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return SITE
