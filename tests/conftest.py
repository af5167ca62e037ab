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
