"""The "Watch your own machine" page's recorded output: what `rst-explain --live` printed in
`python -m lab live` (lab/live_record.py, build/live/), read under the folder's lock as the
catalogue's recordings are. Nothing here is typed by hand: without a recording, the page says
why (the recorder's own words)."""

from __future__ import annotations

import json

from lab.artifact import locked
from lab.live_record import LIVE


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


def live_watch(args: list[str]) -> str:
    """{{ live_watch }}: the recorded text output, with the command and where it ran;
    {{ live_watch json }}: the JSON objects of one RST and the summary; {{ live_watch causes }}:
    the causes the recording made, each with its page."""
    status, text, objects = _read()
    if not status.get("recorded"):
        return f'!!! warning "Not recorded in this build"\n    {status.get("why", "")}\n'
    if args == ["causes"]:
        rows = ["| port | what the recording did | the page |", "|--:|---|---|"]
        rows += [f"| {c['port']} | {c['name']} | [{c['page']}](scenarios/{c['page']}.md) |" for c in status["causes"]]
        return "\n".join(rows) + "\n"
    if args == ["json"]:
        return (f"```console\n# {status['json_command']}\n{status['watching']}\n```\n\n"
                f"```json\n{objects.rstrip()}\n```\n")
    if args:
        raise ValueError("write {{ live_watch }}, {{ live_watch json }} or {{ live_watch causes }}")
    return (f"Recorded by this build on Linux {status['kernel']} with {status['bpftrace']}, "
            f"{status['recorded_at']}:\n\n"
            f"```console\n$ sudo {status['command']}\n{status['watching']}\n{text.rstrip()}\n```\n")
