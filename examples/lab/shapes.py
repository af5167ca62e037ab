"""Each scenario's shape, committed beside the examples: `examples/shapes/SLUG.txt`, and for
the client session's run of it (the real client programs after its steps, lab/clients.py)
`examples/shapes/clients/SLUG.txt`.

A shape is what must not change without a reviewer seeing it: who sent which flags, in
order, with data or not, and each packet's name. A recording whose shape differs from the
committed one fails, printing the difference, until `nox -s examples -- --update SLUG`
accepts it: kernel drift then arrives as a diff in review, never as a silent page change.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from . import scenarios

HEADER = ("# {slug}: who sends which flags, in order; data or not; the packet's name.\n"
          "# Written by `{command}`; a recording that differs fails.\n")


def path_of(slug: str, programs: bool = False) -> Path:
    """The one definition of where a run's committed shape lives (programs: the client session's)."""
    return scenarios.EXAMPLES / "shapes" / ("clients" if programs else "") / f"{slug}.txt"


def update_command(slug: str, programs: bool = False) -> str:
    return f"nox -s {'clients' if programs else 'examples'} -- --update {slug}"


def as_text(slug: str, shape: list[list[Any]], programs: bool = False) -> str:
    width = max([len(sender) for sender, *_ in shape] or [0])
    lines = [f"{sender:<{width}}  {'[' + flags + ']':<6} {'data' if data else '-':<4}  {name}"
             for sender, flags, data, name in shape]
    return HEADER.format(slug=slug, command=update_command(slug, programs)) + "".join(line.rstrip() + "\n" for line in lines)


def difference(slug: str, shape: list[list[Any]], programs: bool = False) -> str:
    """'' if the committed shape is this one; else what differs, and how to accept it."""
    committed = path_of(slug, programs)
    fresh = as_text(slug, shape, programs)
    accept = f"accept it after review with `{update_command(slug, programs)}`"
    if not committed.is_file():
        return f"no committed shape {_shown(committed)}; this run's shape:\n{fresh}{accept}"
    old = committed.read_text()
    if old == fresh:
        return ""
    diff = difflib.unified_diff(old.splitlines(keepends=True), fresh.splitlines(keepends=True),
                                f"{_shown(committed)} (committed)", "this run")
    return "the shape differs from the committed one:\n" + "".join(diff) + accept


def accept(slug: str, shape: list[list[Any]], programs: bool = False) -> bool:
    """Commit this shape (in the working tree); True if it changed."""
    committed = path_of(slug, programs)
    fresh = as_text(slug, shape, programs)
    if committed.is_file() and committed.read_text() == fresh:
        return False
    committed.parent.mkdir(parents=True, exist_ok=True)
    committed.write_text(fresh)
    return True


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(scenarios.EXAMPLES.parent))
    except ValueError:
        return str(path)
