"""Every Python code block on every page: linted and formatted with ruff, and run when it can.

A block runs unless its fence says `test="skip"` (it needs the lab's hosts); its
`#>` comments are checked against what it prints. The examples included in the
scenario pages (`{{ example }}`) are not blocks of the Markdown source: the lab
runs them on every build, and `test_included_examples_pass_ruff` lints them
(ruff's default rules; their own layout is kept).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pytest_examples import CodeExample, EvalExample, find_examples

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
EXAMPLE_FILES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
LINE_LENGTH = 88  # the content column of a page shows about this much without scrolling


def _ruff(*args: str, source: str | None = None, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "ruff", *args]
    if path is not None:
        argv.append(str(path))
    return subprocess.run(argv, input=source, capture_output=True, text=True, check=False, cwd=ROOT)


def test_pages_have_python_blocks() -> None:
    assert any(True for _ in find_examples(*map(str, PAGES))), "no Python block found: is the finder broken?"


@pytest.mark.parametrize("example", list(find_examples(*map(str, PAGES))), ids=str)
def test_python_block(example: CodeExample, eval_example: EvalExample) -> None:
    eval_example.set_config(line_length=LINE_LENGTH, target_version="py311")
    eval_example.lint_ruff(example)
    formatted = _ruff("format", "--isolated", f"--line-length={LINE_LENGTH}", "--stdin-filename=block.py", "-", source=example.source)
    assert formatted.returncode == 0, formatted.stderr
    expected = formatted.stdout.replace("# >", "#>")  # ruff spaces out pytest-examples' `#>` output marker
    assert expected == example.source, f"{example}: not ruff-formatted; expected:\n{expected}"
    if example.prefix_settings().get("test") != "skip":
        eval_example.run_print_check(example)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_included_examples_pass_ruff(path: Path) -> None:
    # ruff's default rules (pyflakes and the serious pycodestyle ones); line length is the
    # authors' call, the page scrolls the block
    result = _ruff("check", "--no-cache", "--isolated", "--select=E4,E7,E9,F", path=path)
    assert result.returncode == 0, result.stdout


def test_notebook_passes_ruff() -> None:
    """The notebook page's cells, like every other Python on the site."""
    notebook = ROOT / "docs" / "rst-census.ipynb"
    lint = _ruff("check", "--no-cache", "--isolated", path=notebook)
    assert lint.returncode == 0, lint.stdout
    formatted = _ruff("format", "--no-cache", "--isolated", f"--line-length={LINE_LENGTH}", "--check", path=notebook)
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
