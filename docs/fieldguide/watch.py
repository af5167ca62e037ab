"""The "Watch your own machine" page's recorded output: what `rst-explain --live` printed in
`python -m lab live` (lab/live_record.py, build/live/), read under the folder's lock as the
catalogue's recordings are. Nothing here is typed by hand: without a recording, the page says
why (the recorder's own words).

`nox -s docs` records it last (its timers share nothing with the other runs), while the site
is built: the page's Markdown gets a marker for each block (marker()), and the blocks are
filled in as the page is built (fill(), hooks.on_page_context: the page is built after every
other but the census), so the build waits for the recording only then.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from mkdocs.utils import get_relative_url

from lab.artifact import locked
from lab.live_record import LIVE

FORMS = ([], ["json"], ["causes"])
_MARK = re.compile(r"<!-- fieldguide:live_watch ?([a-z]*) -->")


def marker(args: list[str]) -> str:
    """The place of {{ live_watch ARGS }} in the page's Markdown, filled in by fill()."""
    if args not in FORMS:
        raise ValueError("write {{ live_watch }}, {{ live_watch json }} or {{ live_watch causes }}")
    return f"\n<!-- fieldguide:live_watch {' '.join(args)} -->\n"


def has_markers(html: str) -> bool:
    return _MARK.search(html) is not None


def fill(html: str, page_url: str, to_html: Callable[[str], str]) -> str:
    """The page's HTML with each marker replaced by its block (to_html: Markdown -> HTML,
    with the site's extensions); waits for a recording under way."""
    status, text, objects = _read()
    return _MARK.sub(lambda m: to_html(_block(m.group(1).split(), status, text, objects, page_url)), html)


def _read() -> tuple[dict, str, str]:
    with locked(LIVE):  # a recording under way: wait for its end
        try:
            status = json.loads((LIVE / "status.json").read_text())
        except (OSError, ValueError):
            return {"recorded": False, "why": "build/live/ has no recording: run `python -m lab live`"
                                              " (as root; `nox -s docs` does)"}, "", ""
        text = (LIVE / "watch.txt").read_text() if status.get("recorded") else ""
        objects = (LIVE / "watch.json").read_text() if status.get("recorded") else ""
    return status, text, objects


def _block(args: list[str], status: dict, text: str, objects: str, page_url: str) -> str:
    """{{ live_watch }}: the recorded text output, with the command and where it ran;
    {{ live_watch json }}: the JSON objects of one RST and the summary; {{ live_watch causes }}:
    the causes the recording made, each with its page (a link as the built site has it).
    Each code block has an id of its own: its line anchors (__codelineno-ID-N) must not be
    those of the page's blocks, which a conversion of its own would number from 0 again."""
    if not status.get("recorded"):
        return f'!!! warning "Not recorded in this build"\n    {status.get("why", "")}\n'
    if args == ["causes"]:
        rows = ["| port | what the recording did | the page |", "|--:|---|---|"]
        for c in status["causes"]:
            link = get_relative_url(f"scenarios/{c['page']}/", page_url)
            rows.append(f"| {c['port']} | {c['name']} | [{c['page']}]({link}) |")
        return "\n".join(rows) + "\n"
    if args == ["json"]:
        return (f"```{{.console #live-json-command}}\n# {status['json_command']}\n{status['watching']}\n```\n\n"
                f"```{{.json #live-json}}\n{objects.rstrip()}\n```\n")
    return (f"Recorded by this build on Linux {status['kernel']} with {status['bpftrace']}, "
            f"{status['recorded_at']}:\n\n"
            f"```{{.console #live-text}}\n$ sudo {status['command']}\n{status['watching']}\n{text.rstrip()}\n```\n")
