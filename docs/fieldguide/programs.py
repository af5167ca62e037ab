"""What real client programs printed (lab/clients.py): the matrix, and each scenario's row.

Every line comes from SLUG.json's outcomes: an entry with `program` (name, version) is one
program's run, with what it printed (`output`), its exit status, how many connections it
opened and its packets' numbers. Each cell links to the packet that caused what the
program printed: for a failure, the packet symptoms.py's rule picks among the program's
own packets (the RST it received for ECONNRESET...); for a response, the last segment
with data the client received.

    {{ client_matrix }}   (docs/clients.md) scenarios down, programs across
    {{ outcomes }}        a scenario page's calls, then its programs' row (program_row())
"""

from __future__ import annotations

from typing import Any

from lab.artifact import Packet, Recording

from .render import literal, name_id, plain
from .symptoms import explaining_packets, program_key


def runs(rec: Recording) -> list[tuple[str, dict[str, Any]]]:
    """Each program's run in the recording, with the host it ran on, in the order they ran."""
    return [(host, e) for host, entries in rec.outcomes.items() for e in entries if "program" in e]


def caused_by(rec: Recording, host: str, entry: dict[str, Any]) -> Packet | None:
    """The packet that caused what the program printed (see the module's docstring)."""
    mine = set(entry["packets"])
    if "raised" in entry:
        found, _ = explaining_packets(rec, host, program_key(rec, host, entry), among=mine)
        if found:
            return found[-1]
    received = [p for p in rec.packets if p.number in mine and p.receiver == host]
    with_data = [p for p in received if p.payload > 0]
    return (with_data or received or [None])[-1]


def cell(rec: Recording, host: str, entry: dict[str, Any], link: str) -> str:
    """One program's result: its first line, the rest of what it printed, exit status,
    connections, and the packet that caused it (link: the scenario page, "" on its own page)."""
    lines = entry["output"] or ["(printed nothing)"]
    rest = "<br>".join(literal(line) for line in lines[1:])
    out = literal(lines[0]) + (f"<br><small>{rest}</small>" if rest else "")
    out += f"<br>exit status {plain(entry['exit_status'])}"
    if entry["connections"] != 1:
        out += f", **{entry['connections']} connections**" + (" (it tried again by itself)" if entry["connections"] > 1 else "")
    packet = caused_by(rec, host, entry)
    if packet is not None:
        anchor = name_id(rec, packet, own_page=not link)
        target = f"{link}#{name_id(rec, packet)}" if link else f"#{anchor}"
        out += f"<br>[packet {packet.number} ({plain(rec.anchor(packet))})]({target})"
    return out


def program_row(rec: Recording) -> str:
    """A scenario page's programs: one row a program (a table down the page reads on a phone)."""
    found = runs(rec)
    if not found:
        return ""
    out = ["", "The same request from real client programs, run on the same client host after the"
           " example's own steps (each one's packets are named after it in the trace above):", "",
           "| program | version | what it printed |", "|---|---|---|"]
    for host, entry in found:
        request = entry["call"].split(": ", 1)[-1]
        out.append(f"| {plain(entry['program']['name'])}<br><small>{literal(request)}</small>"
                   f" | {plain(entry['program']['version'])} | {cell(rec, host, entry, '')} |")
    return "\n".join(out)


def client_matrix(recordings: dict[str, Recording], link: Any) -> str:
    """Scenarios down, programs across; each cell the recorded line, linked to its packet.
    link(target): a relative link from the page that shows it."""
    having = [rec for rec in recordings.values() if runs(rec)]
    if not having:
        raise ValueError("no recording holds a client program's run; run `nox -s examples`")
    names: dict[str, str] = {}  # program -> version, in the order they ran
    for rec in having:
        for _, entry in runs(rec):
            names.setdefault(entry["program"]["name"], entry["program"]["version"])
    out = ["| scenario | " + " | ".join(f"{plain(n)}<br><small>{plain(v)}</small>" for n, v in names.items()) + " |",
           "|---|" + "---|" * len(names)]
    for rec in having:
        page = link(f"scenarios/{rec.slug}.md")
        by_name = {e["program"]["name"]: (host, e) for host, e in runs(rec)}
        cells = [cell(rec, *by_name[n], page) if n in by_name else "not run" for n in names]
        out.append(f"| [{plain(rec.title)}]({page}) | " + " | ".join(cells) + " |")
    return "\n".join(out)
