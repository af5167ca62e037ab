"""Real client programs at the client's end (lab/clients.py): the matrix page, each
scenario's row, and a clear failure when a program's tool is missing."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from lab import clients
from lab.preflight import LabUnavailable

from own_recordings import Recorded
from test_site import _build, text_of

MIN_PROGRAMS = 6


def program_runs(traces: Path) -> dict[str, list[dict]]:
    """Each recording's client-program runs, by scenario."""
    found = {}
    for path in sorted(traces.glob("*.json")):
        data = json.loads(path.read_text())
        runs = [e for entries in data["outcomes"].values() for e in entries if "program" in e]
        if runs:
            found[data["slug"]] = runs
    return found


def test_every_client_scenario_runs_at_least_six_programs(recorded_client_traces: Path) -> None:
    runs = program_runs(recorded_client_traces)
    assert runs, "no recording holds a client program's run"
    for slug, entries in runs.items():
        names = {e["program"]["name"] for e in entries}
        assert len(names) >= MIN_PROGRAMS, f"{slug}: only {sorted(names)}"
        for e in entries:
            assert e["program"]["version"] and isinstance(e["exit_status"], int), (slug, e)
            assert e["packets"] and e["connections"] >= 1, f"{slug}: {e['call']} has no packet of its own"


def test_every_line_of_the_matrix_was_recorded_by_this_build(built_site: Path, recorded_client_traces: Path) -> None:
    page = (built_site / "clients" / "index.html").read_text()
    table = page[page.index("<table"):page.index("</table>")]
    cells = [text_of(c) for c in re.findall(r"<code>(.*?)</code>", table, re.DOTALL)]
    recorded = {line for entries in program_runs(recorded_client_traces).values() for e in entries for line in e["output"]}
    assert cells, "the matrix shows no line"
    assert set(cells) <= recorded, f"lines not in this build's recordings: {set(cells) - recorded}"
    for slug, entries in program_runs(recorded_client_traces).items():
        for e in entries:  # and every line each program printed is in its scenario's row
            assert all(html.escape(line, quote=False) in html.unescape(page) or line in text_of(page)
                       for line in e["output"]), (slug, e["output"])
            assert f"scenarios/{slug}/\"" in page


def test_each_cell_links_to_the_packet_of_its_program(built_site: Path, recorded_client_traces: Path) -> None:
    """Each cell links to the line of the packet that caused what the program printed, in the
    client session's trace shown on the scenario's page (the page's own trace, the catalogue's
    run, has no programs), and that packet is one of the program's own."""
    page = (built_site / "clients" / "index.html").read_text()
    cells = re.findall(r'<a href="\.\./scenarios/([a-z0-9-]+)/#([^"]+)">packet (\d+) \(([^)]*)\)</a> of the client', page)
    runs = program_runs(recorded_client_traces)
    assert len(cells) >= sum(len(e) for e in runs.values()) - 1
    for slug, anchor, number, _ in cells:
        target = (built_site / "scenarios" / slug / "index.html").read_text()
        line = re.search(rf'<span class="fg-packet[^"]*" id="{slug}-packet-(\d+)"><span class="fg-anchor" id="{re.escape(anchor)}">', target)
        assert line and line.group(1) == number, (slug, anchor, number)
        assert 'id="packet-1"' in target  # the page's own trace keeps its anchors beside
        mine = {n for e in runs[slug] for n in e["packets"]}
        assert int(number) in mine, (slug, number)
        data = json.loads((recorded_client_traces / f"{slug}.json").read_text())
        assert any(p["number"] == int(number) for p in data["packets"]), (slug, number)


def test_without_the_programs_the_pages_say_so() -> None:
    """A build made without the programs shows no program line: the matrix page says so and how
    to record them, a client scenario's row points there, another scenario says nothing."""
    from fieldguide import programs

    without = programs.Clients()
    assert not without.shown
    matrix = programs.client_matrix(without, lambda target: target)
    assert "made without the real client programs" in matrix and "`nox -s docs`" in matrix and "|" not in matrix
    row = programs.program_row(SimpleNamespace(slug="closed-port", packets=[]), without, lambda target: target)
    assert "made without the real client programs" in row and "(clients.md)" in row and "|" not in row
    assert programs.program_row(SimpleNamespace(slug="graceful-close"), without, lambda target: target) == ""


def test_prose_about_the_programs_rows_follows_the_builds_one_decision() -> None:
    """{{ if_programs }}...{{ end_if_programs }} is kept where the build shows the programs and left
    out where it does not, a paragraph or part of a sentence; the lines of later errors stay true,
    and a block left open (or closed twice) fails, naming the page and the line."""
    from fieldguide import programs
    from fieldguide.placeholders import Context, PageError, expand_page

    page = ("Intro.\n{{ if_programs }}\nThe table above.\n{{ end_if_programs }}\n"
            "Three runs{{ if_programs }}, each shown{{ end_if_programs }}.\n")
    shown = programs.Clients({"closed-port": SimpleNamespace()})  # only whether there are any is read
    for decided, text in ((shown, "The table above."), (programs.Clients(), "")):
        ctx = Context("clients.md", None, {}, [], clients=decided)
        out = expand_page(page, ctx)
        assert ("The table above." in out) == bool(text) and ("each shown" in out) == bool(text)
        assert "if_programs" not in out and ("Three runs, each shown." if text else "Three runs.") in out
        with pytest.raises(PageError, match=r"docs/clients.md, line 7: \{\{ nope \}\}"):
            expand_page(page + "\n{{ nope }}", ctx)
    ctx = Context("clients.md", None, {}, [])
    with pytest.raises(PageError, match=r"line 2: \{\{ if_programs \}\} again before"):
        expand_page("a\n{{ if_programs }} b {{ if_programs }}\n", ctx)
    with pytest.raises(PageError, match=r"line 3: \{\{ end_if_programs \}\} without its"):
        expand_page("a\n\n{{ end_if_programs }}\n", ctx)
    with pytest.raises(PageError, match=r"line 1: \{\{ if_programs \}\} without its"):
        expand_page("{{ if_programs }} b\n", ctx)


def test_the_decision_is_one_setting_with_two_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from fieldguide import PROGRAMS_ENV
    from fieldguide.hooks import _programs_shown
    from mkdocs.exceptions import PluginError

    monkeypatch.delenv(PROGRAMS_ENV, raising=False)
    assert _programs_shown()
    monkeypatch.setenv(PROGRAMS_ENV, "0")
    assert not _programs_shown()
    monkeypatch.setenv(PROGRAMS_ENV, "no")
    with pytest.raises(PluginError, match="not 'no'"):
        _programs_shown()


# What a page says of the programs' rows or lines: true only in a build that shows them.
POINTS_AT_ROWS = re.compile(r"(?:program|first request).*(?:table above|rows? (?:are|is) (?:above|under|below))"
                            r"|programs \(below\)|every line here|the row shows|the programs' rows", re.IGNORECASE)


def rows_referred_to(site: Path) -> dict[str, list[str]]:
    """Each page's sentences that refer to the programs' rows or lines (POINTS_AT_ROWS)."""
    found = {}
    for path in sorted(site.rglob("index.html")):
        page = path.read_text()
        article = page[page.find("<article"):page.find("</article>")]
        sentences = re.split(r"(?<=[.!?])\s+", " ".join(text_of(article).split()))
        hits = [s for s in sentences if POINTS_AT_ROWS.search(s)]
        if hits:
            found[str(path.parent.relative_to(site))] = hits
    return found


@pytest.fixture(scope="module")
def site_without_programs(recorded_traces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built as `nox -s docs -- --no-programs` builds it, from this session's catalogue;
    its client-session folder is an empty one: such a build reads none."""
    from fieldguide import PROGRAMS_ENV

    base = tmp_path_factory.mktemp("without-programs")
    proc = _build(base, **{PROGRAMS_ENV: "0", "FIELDGUIDE_CLIENT_TRACES": str(base / "no-client-traces")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return base / "site"


def test_a_build_without_the_programs_refers_to_no_row_it_lacks(site_without_programs: Path, built_site: Path) -> None:
    """The scan finds what the pages say of the rows where they are shown (so it can fail), and
    nothing where they are not."""
    shown = rows_referred_to(built_site)
    assert "clients" in shown and sum(page.startswith("scenarios/") for page in shown) >= 5, shown
    assert rows_referred_to(site_without_programs) == {}


def test_a_build_without_the_programs_says_so_once_and_shows_none(site_without_programs: Path) -> None:
    from lab.scenarios import client_slugs

    said = "made without the real client programs"
    matrix = text_of((site_without_programs / "clients" / "index.html").read_text())
    assert matrix.count(said) == 1 and "nox -s docs" in matrix
    assert not (site_without_programs / "traces" / "clients").exists(), "the client session's captures were published"
    for slug in client_slugs():
        page = (site_without_programs / "scenarios" / slug / "index.html").read_text()
        assert text_of(page).count(said) == 1 and 'href="../../clients/"' in page, slug
        assert "The client session's trace" not in page, slug


CLIENT_BREAKAGES = {
    "missing": lambda d: (d / "keepalive-race.json").unlink(),
    "edited": lambda d: (d / "keepalive-race.json").write_text(
        (d / "keepalive-race.json").read_text().replace('"exit_status": 0', '"exit_status": 1', 1)),
    "not-recorded": lambda d: [p.unlink() for p in d.iterdir()],
}


@pytest.mark.parametrize("breakage", CLIENT_BREAKAGES)
def test_a_default_build_fails_naming_a_missing_or_broken_client_recording(
        recorded_traces: Path, recorded_client_traces: Path, tmp_path: Path, breakage: str) -> None:
    """No silent fall-back: a build that shows the programs fails when it cannot, by name."""
    traces = tmp_path / "client-traces"
    shutil.copytree(recorded_client_traces, traces, ignore=shutil.ignore_patterns(".run-*"))
    CLIENT_BREAKAGES[breakage](traces)
    proc = _build(tmp_path, FIELDGUIDE_CLIENT_TRACES=str(traces))
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"the build passed with a {breakage} client recording"
    assert ("no key in" if breakage == "not-recorded" else "scenario keepalive-race: ") in said, said[-2000:]
    assert "--no-programs" in said and "Traceback" not in said, said[-3000:]


def test_a_missing_program_fails_naming_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = clients.shutil.which
    monkeypatch.setattr(clients.shutil, "which", lambda tool: None if tool == "go" else real(tool))
    with pytest.raises(LabUnavailable, match=r"Go net/http \(golang-go \(Debian\)\).*apt-get install"):
        clients.prepare(tmp_path)
    assert not any(tmp_path.iterdir()), "nothing is built when a tool is missing"


def test_a_printed_errno_is_named() -> None:
    assert clients._errno_named(["Error: read ECONNRESET", "code: ECONNRESET"]) == "ECONNRESET"
    assert clients._errno_named(["dial tcp: connect: connection refused", "errno: 111"]) == "ECONNREFUSED"
    assert clients._errno_named(["TypeError: fetch failed", "code: UND_ERR_SOCKET"]) is None


def _packet(number: int, time: float, sender: str, flags: str, port: int, seq: int = 0):
    from lab.artifact import Packet
    ips = {"client": "192.0.2.1", "server": "192.0.2.2"}
    receiver = "server" if sender == "client" else "client"
    sport, dport = (port, 80) if sender == "client" else (80, port)
    return Packet(number, time, sender, receiver, ips[sender], ips[receiver], sport, dport, flags, seq, 0, 0, 0, 64, 0)


def test_a_reused_port_opens_a_new_connection_of_the_program_that_reused_it() -> None:
    """The kernel may give a program the port of a connection a RST just closed: its
    packets are its own, not the earlier program's."""
    packets = [_packet(1, 0.0, "client", "S", 40000, seq=100), _packet(2, 0.001, "server", "R.", 40000),
               _packet(3, 1.0, "client", "S", 40000, seq=900), _packet(4, 1.001, "server", "R.", 40000)]
    first = {"host": "client", "program": {"id": "a"}, "window": [10.0, 10.5]}
    second = {"host": "client", "program": {"id": "b"}, "window": [10.9, 11.5]}
    runs = clients.attribute([first, second], packets, [], 10.0)
    assert [(e["packets"], e["connections"]) for e, _ in runs] == [([1, 2], 1), ([3, 4], 1)]


def test_a_proxys_connection_to_its_backend_is_the_programs_packets_not_its_connection() -> None:
    """Through a proxy, the proxy's connection to the backend opened while the program ran is
    the program's (both legs are captured), but the program opened one connection, not two."""
    from lab.artifact import Packet
    ips = {"client": "192.0.2.1", "proxy": "198.51.100.1", "backend": "198.51.100.2"}

    def packet(number, sender, receiver, flags, sport, dport):
        return Packet(number, 0.1 * number, sender, receiver, ips[sender], ips[receiver], sport, dport, flags,
                      0, 0, 0, 0, 64, 0)
    packets = [packet(1, "client", "proxy", "S", 40000, 8080), packet(2, "proxy", "client", "S.", 8080, 40000),
               packet(3, "proxy", "backend", "S", 50000, 8080), packet(4, "backend", "proxy", "S.", 8080, 50000),
               packet(5, "backend", "proxy", "R.", 8080, 50000), packet(6, "proxy", "client", "F.", 8080, 40000)]
    entry = {"host": "client", "program": {"id": "curl"}, "window": [10.0, 11.0]}
    ((entry, mine),) = clients.attribute([entry], packets, [], 10.0)
    assert (entry["packets"], entry["connections"]) == ([1, 2, 3, 4, 5, 6], 1)


def test_each_client_scenario_page_shows_its_programs_row(built_site: Path, recorded_client_traces: Path) -> None:
    """The scenario's page (built from the catalogue's run) shows the client session's row of it."""
    for slug, entries in program_runs(recorded_client_traces).items():
        text = text_of((built_site / "scenarios" / slug / "index.html").read_text())
        assert "made without the real client programs" not in text, slug
        for e in entries:
            assert all(line in text for line in [e["program"]["name"], e["program"]["version"], *e["output"]]), (slug, e)


def test_a_second_request_waits_for_standard_input_with_the_same_client(tmp_path: Path) -> None:
    """--then: every program gets the second URL; curl shares its pool across three transfers,
    the middle one reading standard input (the pause the lab ends with Run.proceed())."""
    first, second = "http://192.0.2.2:8080/first", "http://192.0.2.2:8080/second"
    for program in clients.PROGRAMS:
        argv = program.argv(tmp_path, "GET", first, None, second)
        if program.name == "curl":
            assert argv.count("--next") == 2 and argv.index(first) < argv.index("file:///dev/stdin") < argv.index(second)
            assert clients.FIRST in argv[argv.index("-w") + 1] and "-w" not in argv[argv.index("--next"):]
        else:
            assert argv[-2:] == ["--then", second] and first in argv, program.name
        assert second not in program.argv(tmp_path, "GET", first, None), program.name


def test_keepalive_race_programs_meet_a_fin_still_on_its_way(recorded_clients: Recorded) -> None:
    """Each program's second request reaches a connection the server has closed whose FIN the
    client never received: the server's kernel resets it from FIN-WAIT-1 (TCP_ABORT_ON_DATA)."""
    from lab.artifact import connections

    rec = recorded_clients.load("keepalive-race")
    connection = connections(rec.packets)
    by_number = {p.number: p for p in rec.packets}
    held = [o["returned"] for o in rec.outcomes["server"] if o.get("call") == "FIN segments held back (nftables counter)"]
    runs = [e for e in rec.outcomes["client"] if "program" in e]
    assert len(runs) == len(clients.PROGRAMS) and len(held) == len(runs)
    for entry, fins_held in zip(runs, held):
        name = entry["program"]["id"]
        assert entry["first_request"].endswith("200") or entry["first_request"].endswith("200 OK"), (name, entry)
        assert int(fins_held) >= 1, (name, fins_held)
        mine = [by_number[n] for n in entry["packets"]]
        first = [p for p in mine if connection.get(p.number) == connection[mine[0].number]]
        assert not any("F" in p.flags for p in first if p.sender == "server"), f"{name}: the server's FIN arrived"
        (rst,) = [p for p in first if "R" in p.flags]
        assert rst.sender == "server" and rst.kernel and rst.kernel["reason"] == "TCP_ABORT_ON_DATA", (name, rst)


def test_write_after_peer_close_programs_request_again_after_the_fin(recorded_clients: Recorded) -> None:
    """Each program's second request comes after the server's FIN reached the client: on the
    first connection, nothing of the client's with data follows the FIN but a write on it."""
    from lab.artifact import connections

    rec = recorded_clients.load("write-after-peer-close")
    connection = connections(rec.packets)
    by_number = {p.number: p for p in rec.packets}
    runs = [e for e in rec.outcomes["client"] if "program" in e]
    assert len(runs) == len(clients.PROGRAMS)
    for entry in runs:
        name = entry["program"]["id"]
        mine = [by_number[n] for n in entry["packets"]]
        first = [p for p in mine if connection.get(p.number) == connection[mine[0].number]]
        fin = next(i for i, p in enumerate(first) if p.sender == "server" and "F" in p.flags)
        requests = [i for i, p in enumerate(first) if p.sender == "client" and p.payload > 0]
        assert requests[0] < fin and all(i > fin for i in requests[1:]), (name, requests, fin)
        if len(requests) > 1:  # it wrote on the closed connection: the server's kernel resets it
            (rst,) = [p for p in first[fin:] if "R" in p.flags]
            assert rst.sender == "server" and rst.kernel["reason"] == "TCP_TIMEWAIT_SOCKET", (name, rst)
        else:
            assert entry["connections"] == 2 and entry["exit_status"] == 0, (name, entry)


def test_lb_idle_reset_both_programs_request_again_after_the_reset(recorded_clients: Recorded) -> None:
    """Each program's first connection is reset by the load balancer (no TCP stack sent that
    RST) before its second request; a program that did not open another connection failed."""
    from lab.artifact import connections

    rec = recorded_clients.load("lb-idle-reset-both")
    connection = connections(rec.packets)
    by_number = {p.number: p for p in rec.packets}
    runs = [e for e in rec.outcomes["client"] if "program" in e]
    assert len(runs) == len(clients.PROGRAMS)
    for entry in runs:
        name = entry["program"]["id"]
        mine = [by_number[n] for n in entry["packets"]]
        first = [p for p in mine if connection.get(p.number) == connection[mine[0].number]]
        (rst,) = [p for p in first if "R" in p.flags]
        assert rst.sender == "server" and rst.kernel is None and rst.ttl == 64, (name, rst)
        requests = [p for p in first if p.sender == "client" and p.payload > 0]
        assert requests[0].time < rst.time and all(p.time > rst.time for p in requests[1:]), name
        assert entry["connections"] == 2 or entry["exit_status"] != 0, (name, entry)


def test_peer_lost_state_programs_request_again_after_the_silent_reboot(recorded_clients: Recorded) -> None:
    """Each program's second request goes on its pooled connection, of which the server said
    nothing (no FIN), and the new listener's kernel resets it; a program that did not open
    another connection failed."""
    from lab.artifact import connections

    rec = recorded_clients.load("peer-lost-state")
    connection = connections(rec.packets)
    by_number = {p.number: p for p in rec.packets}
    runs = [e for e in rec.outcomes["client"] if "program" in e]
    assert len(runs) == len(clients.PROGRAMS)
    for entry in runs:
        name = entry["program"]["id"]
        assert entry["first_request"].endswith(("200", "200 OK")), (name, entry)
        mine = [by_number[n] for n in entry["packets"]]
        first = [p for p in mine if connection.get(p.number) == connection[mine[0].number]]
        assert not any("F" in p.flags for p in first), f"{name}: a FIN on the first connection"
        requests = [p for p in first if p.sender == "client" and p.payload > 0]
        assert len(requests) == 2, (name, requests)
        rst = first[-1]
        assert rst.sender == "server" and rst.flags == "R" and rst.seq == requests[1].ack, (name, rst)
        assert rst.kernel and rst.kernel["reason"] == "TCP_FLAGS", (name, rst)
        assert entry["connections"] == 2 or entry["exit_status"] != 0, (name, entry)


def test_conntrack_invalid_programs_request_again_after_the_escaped_segment(recorded_clients: Recorded) -> None:
    """Each program's pooled connection meets run()'s out-of-window segment: it arrives from the
    server's own address, the client's kernel resets the server's end (NO_SOCKET), and the
    program's second request on that connection draws a RST through the service address while
    its kernel still held the connection as established; a program that did not open another
    connection failed."""

    rec = recorded_clients.load("conntrack-invalid")
    by_number = {p.number: p for p in rec.packets}
    runs = [e for e in rec.outcomes["client"] if "program" in e]
    views = [o["returned"] for o in rec.outcomes["client"] if o.get("call") == "the program's connection (ss -tn)"]
    assert len(runs) == len(clients.PROGRAMS) == len(views)
    for entry, view in zip(runs, views):
        name = entry["program"]["id"]
        assert entry["first_request"].endswith(("200", "200 OK")), (name, entry)
        assert view.startswith("'ESTAB") and "192.0.2.254:80" in view, (name, view)
        mine = [by_number[n] for n in entry["packets"]]
        stray = next(i for i, p in enumerate(mine) if p.src == "198.51.100.2")
        reset, request, answer = mine[stray + 1:stray + 4]
        assert (reset.sender, reset.flags, reset.dst) == ("client", "R", "198.51.100.2"), (name, reset)
        assert reset.kernel and reset.kernel["reason"] == "NO_SOCKET", (name, reset)
        assert request.sender == "client" and request.payload > 0 and request.dst == "192.0.2.254", (name, request)
        assert (answer.src, answer.flags, answer.seq) == ("192.0.2.254", "R", request.ack), (name, answer)
        assert entry["connections"] == 2 or entry["exit_status"] != 0, (name, entry)


def test_the_matrix_page_names_each_scenario_that_does_not_run_the_programs() -> None:
    """docs/clients.md's "Which scenarios run them" names exactly the scenarios without
    each_program(): one given programs leaves the list, one added without them joins it."""
    from lab.scenarios import all_slugs, client_slugs

    text = (Path(__file__).parent.parent / "docs" / "clients.md").read_text()
    section = text.split("## Which scenarios run them", 1)[1].split("\n## ", 1)[0]
    section = section[section.index("\n- "):]  # the list; the paragraph before it names some that do
    named = set(re.findall(r"\(scenarios/([a-z0-9-]+)\.md\)", section))
    without = set(all_slugs()) - set(client_slugs())
    assert named == without, f"named but running programs: {sorted(named - without)};" \
                             f" not running programs, not named: {sorted(without - named)}"


def test_a_program_finds_a_name_in_its_own_hosts_file_and_nobody_else_does(tmp_path: Path, monkeypatch) -> None:
    """with_names(): the program resolves the name its normal way (getaddrinfo() here, as
    curl, Node.js, Java and Python do); the machine's /etc/hosts and mounts never see it."""
    monkeypatch.chdir(tmp_path)
    name, address = "blocked.example", "198.51.100.2"
    argv = clients.with_names(["getent", "ahostsv4", name], {name: address})
    assert address not in argv and argv[-3:] == ["getent", "ahostsv4", name]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split()[0] == address, done
    assert name not in Path("/etc/hosts").read_text()
    assert subprocess.run(["getent", "-s", "files", "hosts", name]).returncode == 2  # not found, here
    assert clients.with_names(["true"], {}) == ["true"]
