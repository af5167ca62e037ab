"""What real client programs printed (lab/clients.py): the matrix, and each scenario's row.

The programs run in their own session (`nox -s clients`, build/client-traces/SLUG.json,
lab/clients.py), not in the catalogue's run the rest of the page is built from: their
start-up would stretch it. Every line comes from those recordings' outcomes: an entry with
`program` (name, version) is one program's run, with what it printed (`output`), its exit
status, how many connections it opened and its packets' numbers. Each cell links to the packet
that caused what the program printed, on the scenario's page, which shows the client session's
trace folded under its programs' rows (the capture is published as traces/clients/SLUG.pcap
and .txt): for a failure, the packet symptoms.py's rule picks among
the program's own packets (the RST it received for ECONNRESET...); for a response, the last
segment with data the client received. A build made without the programs (`--no-programs`)
says so on the matrix page, and how to record them; each scenario's row points there, and
the pages' prose about the rows is left out ({{ if_programs }}, placeholders.py).

    {{ client_matrix }}   (docs/clients.md) scenarios down, programs across
    {{ outcomes }}        a scenario page's calls, then its programs' row (program_row())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from lab.artifact import Packet, Recording
from lab.scenarios import runs_clients

from . import NO_PROGRAMS
from .recordings import CLIENTS_COMMAND
from .render import capture_of, literal, name_id, packet_id, plain, trace_html
from .symptoms import explaining_packets, program_key


@dataclass
class Clients:
    """The client session's recordings the build shows (recordings.load_clients()): one for
    every scenario with a client, or none in a build made without the programs."""

    recordings: dict[str, Recording] = field(default_factory=dict)

    @property
    def shown(self) -> bool:
        """The build's one decision, as hooks.py took it: without the programs it loads none,
        with them every one (or the build has failed, naming what is missing)."""
        return bool(self.recordings)


def made_without() -> str:
    """What the matrix page says, once, in a build made without the programs."""
    return (f"**This build was made without the real client programs** (`nox -s docs -- {NO_PROGRAMS}`):"
            " this page shows none of their lines. `nox -s docs` records them, in the client session"
            f" (`{CLIENTS_COMMAND}` records it alone, into `build/client-traces/`), and shows what each one"
            " printed.")


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


def cell(rec: Recording, host: str, entry: dict[str, Any], page: str) -> str:
    """One program's result: its first line, the rest of what it printed, exit status,
    connections, and the packet that caused it, linked to its line in the client session's
    trace on the scenario's page (page: that page's link from the one that shows the cell,
    "" on the page itself)."""
    lines = entry["output"] or ["(printed nothing)"]
    rest = "<br>".join(literal(line) for line in lines[1:])
    out = literal(lines[0]) + (f"<br><small>{rest}</small>" if rest else "")
    out += f"<br>exit status {plain(entry['exit_status'])}"
    if entry["connections"] != 1:
        out += f", **{entry['connections']} connections**" + (" (it opened another by itself)" if entry["connections"] > 1 else "")
    packet = caused_by(rec, host, entry)
    if packet is not None:
        out += (f"<br>[packet {packet.number} ({plain(rec.anchor(packet))})]({page}#{session_id(rec, packet)})"
                " of the client session's trace")
    return out


def session_id(rec: Recording, p: Packet) -> str:
    """The anchor of a packet's line in the client session's trace, on the scenario's page:
    the slug in front keeps it apart from the page's own trace (packet-N, its names)."""
    return name_id(rec, p, own_page=False)


def session_trace(own: Recording, rec: Recording) -> str:
    """The client session's trace, folded, on the scenario's page: what each cell links to.
    Its anchors must not meet the page's own trace's."""
    mine = {a for p in own.packets for a in (packet_id(own.slug, p.number), name_id(own, p))}
    theirs = {a for p in rec.packets for a in (packet_id(rec.slug, p.number, False), session_id(rec, p))}
    if mine & theirs:
        raise ValueError(f"{own.slug}: the client session's trace would reuse the anchors {sorted(mine & theirs)}")
    # raw HTML, not an admonition: Markdown would wrap the trace's <div> in a <p> inside one
    # (and lose its end tag); not searched: the page's own trace is what a search should find
    return "\n".join([
        '<details class="note" data-search-exclude>',
        f"<summary>The client session's trace ({len(rec.packets)} packets)</summary>",
        f"<p>Captured on the {plain(rec.captured_on)} by tcpdump {plain(rec.tcpdump_version)}, in the"
        " client session's run of this scenario: the example's own packets (named as above),"
        " then each program's, named after it (its capture is linked above the rows).</p>",
        trace_html(rec, own_page=False), "</details>"])


def program_row(own: Recording, clients: Clients, link: Any) -> str:
    """A scenario page's programs: one row a program (a table down the page reads on a phone),
    then the client session's trace the rows link into. own: the page's recording;
    link(target): a relative link from the page."""
    slug = own.slug
    if not runs_clients(slug):
        return ""
    if not clients.shown:
        return (f"\nThis build was made without the real client programs ([What real clients print]"
                f"({link('clients.md')}) says how to record them).\n")
    rec = clients.recordings[slug]
    found = runs(rec)
    capture = link(capture_of(slug))
    # not searched here: the matrix page (clients.md, boosted) and the symptom index are where a
    # search for a program's line should land; the rows would only weigh on every reader's index
    out = ["", '<div data-search-exclude markdown>', "", "The same request from real client programs, run on the same client host after the"
           " example's own steps, in the client session (`nox -s clients`): its own run of this"
           f" scenario, whose [capture]({capture}) and [trace]({capture.removesuffix('.pcap')}.txt)"
           " name each program's packets after it:", "",
           "| program | version | what it printed |", "|---|---|---|"]
    for host, entry in found:
        request = entry["call"].split(": ", 1)[-1]
        out.append(f"| {plain(entry['program']['name'])}<br><small>{literal(request)}</small>"
                   f" | {plain(entry['program']['version'])} | {cell(rec, host, entry, '')} |")
    return "\n".join([*out, "", "</div>", "", session_trace(own, rec), ""])


def runs_cell(rec: Recording, found: list[tuple[str, dict[str, Any]]], page: str) -> str:
    """A program's cell: its one run, or each of its runs after its request (method and path:
    a scenario that runs it again sends a request that meets what the earlier one left)."""
    if len(found) == 1:
        return cell(rec, *found[0], page)
    return "<br>".join(f"**{plain(request_of(e))}**: " + cell(rec, host, e, page) for host, e in found)


def request_of(entry: dict[str, Any]) -> str:
    """"POST /order" from the run's call ("curl: POST http://192.0.2.254:8080/order with a 6-byte body")."""
    method, url = entry["call"].split(": ", 1)[-1].split()[:2]
    return f"{method} {urlsplit(url).path or '/'}"


def client_matrix(clients: Clients, link: Any) -> str:
    """Scenarios down, programs across; each cell the recorded line and its packet.
    link(target): a relative link from the page that shows it."""
    if not clients.shown:
        return made_without()
    having = [rec for rec in clients.recordings.values() if runs(rec)]
    if not having:
        raise ValueError("no recording of the client session holds a client program's run")
    names: dict[str, str] = {}  # program -> version, in the order they ran
    for rec in having:
        for _, entry in runs(rec):
            names.setdefault(entry["program"]["name"], entry["program"]["version"])
    out = ["| scenario | " + " | ".join(f"{plain(n)}<br><small>{plain(v)}</small>" for n, v in names.items()) + " |",
           "|---|" + "---|" * len(names)]
    for rec in having:
        page = link(f"scenarios/{rec.slug}.md")
        by_name: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # a program may run more than once
        for host, e in runs(rec):
            by_name.setdefault(e["program"]["name"], []).append((host, e))
        cells = [runs_cell(rec, by_name[n], page) if n in by_name else "not run" for n in names]
        # the title is its page's to be found by ("ClientHello" finds tls-clienthello-reset): not searched here
        out.append(f"| <span data-search-exclude>[{plain(rec.title)}]({page})</span> | " + " | ".join(cells) + " |")
    return "\n".join(out)
