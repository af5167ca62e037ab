"""Each scenario page's Wireshark view (#wireshark) says what Wireshark itself says of this
build's capture: checked against a fresh tshark run (another front end of the same
dissectors) on the same pcap; a missing sharkd fails the build naming its package."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from fieldguide import wireshark
from lab import artifact
from lab.artifact import ROOT
from lab.scenarios import all_slugs

SLUGS = all_slugs()
pytestmark = pytest.mark.timeout(600)


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def section(site: Path, slug: str) -> str:
    page = (site / "scenarios" / slug / "index.html").read_text()
    found = re.search(r'<h2 id="wireshark">.*?<div class="fg-wireshark">(.*?)</div>\s*<h2 id="the-exchange"',
                      page, re.DOTALL)
    assert found, f"{slug}: no Wireshark section (#wireshark) before The exchange"
    return found.group(1)


def filter_rows(shown: str) -> dict[str, list[str]]:
    """The display filters table: filter -> the packet numbers its row links to."""
    found = {}
    for row in re.findall(r"<tr>(.*?)</tr>", shown, re.DOTALL):
        cells = re.findall(r"<td>(.*?)</td>", row, re.DOTALL)
        if cells and text_of(cells[0]).startswith("tcp."):
            found[text_of(cells[0])] = re.findall(r'href="#packet-(\d+)"', cells[1])
    return found


def tshark(pcap: Path, *args: str) -> list[list[str]]:
    """tshark's fields, one list per frame, with Wireshark's default preferences; two passes (-2),
    as Wireshark's packet list and sharkd show a frame once the whole file is read (a segment
    of an HTTP request reads differently in tshark's single pass)."""
    if not shutil.which("tshark"):
        if os.environ.get("CI"):
            pytest.fail("tshark is missing (apt-get install tshark; .ci/setup installs it)")
        pytest.skip("tshark is not installed (apt-get install tshark)")
    with tempfile.TemporaryDirectory() as config:
        out = subprocess.run(["tshark", "-2", "-r", str(pcap), "-T", "fields", "-E", "separator=\t", "-E", "aggregator=\x1f",
                              *args], capture_output=True, text=True, check=True,
                             env={**os.environ, "WIRESHARK_CONFIG_DIR": config}).stdout
    return [line.split("\t") for line in out.splitlines()]


@pytest.mark.parametrize("slug", SLUGS)
def test_page_shows_what_wireshark_says_of_this_capture(built_site: Path, recorded_traces: Path, slug: str) -> None:
    shown = section(built_site, slug)
    text = text_of(shown)
    rec = artifact.load(slug, recorded_traces)
    assert rec.pcap is not None
    rows = tshark(rec.pcap, "-e", "frame.number", "-e", "_ws.col.Info", "-e", "tcp.seq", "-e", "tcp.seq_raw",
                  "-e", "_ws.expert.message", "-e", "_ws.expert.severity")
    assert [int(r[0]) for r in rows] == [p.number for p in rec.packets], "Wireshark's frames are our packets"
    fold = text.split("Every packet's Info column", 1)[1]
    for (number, info, seq, seq_raw, messages, _), p in zip(rows, rec.packets, strict=True):
        assert f"{number} {p.name or 'noise'}" in fold and info in fold, f"{slug}: packet {number}'s Info: {info}"
        assert f'href="#packet-{number}"' in shown
        if p.proto == "tcp":
            assert int(seq_raw) == p.seq  # Wireshark's frame N is our packet N
        for message in filter(None, messages.split("\x1f")):
            assert message in text, f"{slug}: expert info of packet {number}: {message}"
        if p.is_rst:  # a RST's relative and raw seq, as the dissector set them
            assert re.search(rf"seq {seq}\b", text) and re.search(rf"seq {seq_raw}\b", text), (slug, number)
    resets = [int(r[0]) for r in tshark(rec.pcap, "-Y", wireshark.RST_FILTER, "-e", "frame.number")]
    assert resets == [p.number for p in rec.resets()]
    filters = filter_rows(shown)
    assert filters[wireshark.RST_FILTER] == [str(n) for n in resets]
    for stream in {int(r[0]) for r in tshark(rec.pcap, "-Y", wireshark.RST_FILTER, "-e", "tcp.stream")}:
        members = [r[0] for r in tshark(rec.pcap, "-Y", wireshark.stream_filter(stream), "-e", "frame.number")]
        assert filters[wireshark.stream_filter(stream)] == members, (slug, stream)


def test_closed_port_explains_wiresharks_seq_for_the_rst(built_site: Path, recorded_traces: Path) -> None:
    """Wireshark's Seq=1 for the refusing RST, where tcpdump and the page say seq 0, and why."""
    rec = artifact.load("closed-port", recorded_traces)
    rst = rec.packet("server-rst")
    assert rec.pcap is not None and rst.seq == 0
    (info,) = [r[1] for r in tshark(rec.pcap, "-e", "frame.number", "-e", "_ws.col.Info") if r[0] == str(rst.number)]
    assert "Seq=1" in info
    shown = section(built_site, "closed-port")
    text = text_of(shown)
    assert info in text
    row = re.search(rf'<tr>\s*<td><a href="#packet-{rst.number}">.*?</tr>', shown.split("tcpdump's line")[1], re.DOTALL)
    assert row, "the RST has a row in the table of numbers"
    cells = [text_of(c).strip() for c in re.findall(r"<td>(.*?)</td>", row.group(0), re.DOTALL)]
    assert cells[1].startswith("seq 0,"), cells  # tcpdump's line
    assert cells[2].startswith("seq 0,"), cells  # this page
    assert cells[3] == "seq 1, ack 1", cells  # Wireshark's tcp.seq, tcp.ack
    assert cells[4] == f"seq 0, ack {rst.ack}", cells  # tcp.seq_raw, tcp.ack_raw
    why = re.search(rf'<li><a href="#packet-{rst.number}">.*?</li>', shown, re.DOTALL)
    assert why and "server sent no SYN in this capture" in text_of(why.group(0))
    assert "dissect_tcp()" in text_of(why.group(0))  # where 4.0 sets the base (packet-tcp.c)
    assert "gitlab.com/wireshark/wireshark/-/blob/v4." in why.group(0)  # the source of the version that said it


def test_the_pcap_download_is_beside_the_trace(built_site: Path) -> None:
    for slug in SLUGS:
        page = (built_site / "scenarios" / slug / "index.html").read_text()
        trace_end = page.index(f'id="after-trace-{slug}"')
        link = page.find(f'href="../../traces/{slug}.pcap"', trace_end)
        assert 0 < link < page.index('id="wireshark"'), f"{slug}: no pcap link right after the trace"


def test_a_second_build_asks_wireshark_nothing_and_an_edited_answer_is_asked_again(
        recorded_traces: Path, tmp_path: Path) -> None:
    recordings = {slug: artifact.load(slug, recorded_traces) for slug in ("closed-port", "linger-zero")}
    traces = tmp_path / "traces"  # the cache sits beside it: tmp_path/wireshark
    secret = artifact.key(recorded_traces)
    first = wireshark.Views()
    first.start(recordings, secret, traces)
    views = {slug: first.view(slug) for slug in recordings}
    assert first.asked == 2
    again = wireshark.Views()
    again.start(recordings, secret, traces)
    assert {slug: again.view(slug) for slug in recordings} == views and again.asked == 0
    entry = next((tmp_path / "wireshark").glob("*.json"))
    data = json.loads(entry.read_text())
    data["view"]["frames"][0]["info"] = "edited by hand"
    entry.write_text(json.dumps(data))
    edited = wireshark.Views()
    edited.start(recordings, secret, traces)
    assert {slug: edited.view(slug) for slug in recordings} == views and edited.asked == 1


def test_a_missing_sharkd_fails_the_build_naming_its_package(tmp_path: Path) -> None:
    """Under CI as anywhere: no page is published without its Wireshark view."""
    bin_dir = tmp_path / "bin"  # the system's commands, but not Wireshark's
    bin_dir.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin"):
        for tool in Path(folder).iterdir():
            if tool.name not in ("sharkd", "tshark") and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": str(bin_dir), "CI": "true", "NO_MKDOCS_2_WARNING": "1"})
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "sharkd not found" in said and "Debian package tshark" in said and "apt-get install tshark" in said, said[-2000:]
    assert "Traceback" not in said
    assert not (tmp_path / "site" / "index.html").exists()


# -- the filters a page's prose recommends (wireshark.recommended) ---------------------------

def marked_pages() -> dict[str, list[wireshark.Recommended]]:
    return {slug: wireshark.recommended((ROOT / "docs" / "scenarios" / f"{slug}.md").read_text()) for slug in SLUGS}


UNMARKED = re.compile(r"`(?:tcp|ip|ipv6|frame|tls|udp|eth|_ws)\.[a-z_][^`]*`(?!\{)")


def test_every_wireshark_filter_or_field_in_the_prose_is_marked() -> None:
    """A filter or field in backticks is checked by the build only when marked: none is left unmarked."""
    for page in [*(ROOT / "docs").glob("*.md"), *(ROOT / "docs" / "scenarios").glob("*.md")]:
        assert not UNMARKED.findall(page.read_text()), f"{page.name}: mark it {{ .wireshark-filter shows=... }}"
    assert sum(r.kind == "filter" for marks in marked_pages().values() for r in marks) >= 19  # as converted


@pytest.mark.parametrize("slug", [slug for slug, marks in marked_pages().items() if marks])
def test_every_recommended_filter_is_shown_with_what_it_matches_here(built_site: Path, recorded_traces: Path,
                                                                      slug: str) -> None:
    """Beside each filter, the packets it showed: tshark's answer for the same filter and pcap,
    and the packets the page names; each field is rendered as inline code."""
    marks = marked_pages()[slug]
    page = (built_site / "scenarios" / slug / "index.html").read_text()
    rendered = re.findall(r'<code class="fg-wireshark-filter">(.*?)</code> <span class="fg-wireshark-shows">'
                          r"\(in this capture: (.*?)\)</span>", page, re.DOTALL)
    filters = [r for r in marks if r.kind == "filter"]
    assert [html.unescape(code) for code, _ in rendered] == [r.text for r in filters]
    rec = artifact.load(slug, recorded_traces)
    assert rec.pcap is not None
    for (_, shown), marked in zip(rendered, filters, strict=True):
        links = [int(n) for n in re.findall(r'href="#packet-(\d+)"', shown)]
        frames = [int(r[0]) for r in tshark(rec.pcap, "-Y", marked.text, "-e", "frame.number")]
        assert links == frames, (slug, marked.text)
        named = {rec.anchor(p) for p in rec.packets} | {p.name for p in rec.packets if p.name}
        assert set(marked.shows) <= named
        assert {rec.anchor(rec.packets[n - 1]) for n in links} <= {rec.anchor(p) for p in rec.packets
                                                                  if p.name in marked.shows or rec.anchor(p) in marked.shows}
        assert text_of(shown) == ("no packet" if not links else ", ".join(
            f"{n} {rec.packets[n - 1].name}" for n in links))
    fields = re.findall(r'<code class="fg-wireshark-field">(.*?)</code>', page)
    assert [html.unescape(f) for f in fields] == [r.text for r in marks if r.kind == "field"]
    assert "wireshark-filter shows" not in page and ".wireshark-field" not in page


FILTER_BREAKAGES = {  # closed-port's filter, made wrong: what the build must say
    "does-not-compile": ('`tcp.flags.rst == 1 && tcp.flags.ack == 1`{ .wireshark-filter shows="server-rst" }',
                         "Wireshark filter `tcp.flags.rst == 1 && tcp.flags.ack == 1` does not compile:"
                         ' sharkd\'s check says: Filter invalid - Left side of "==" expression must be a field'
                         " or function, not tcp.flags.rst."),
    "misses-its-rst": ('`tcp.flags.reset == 1 && tcp.flags.ack == 0`{ .wireshark-filter shows="server-rst" }',
                       "Wireshark filter `tcp.flags.reset == 1 && tcp.flags.ack == 0` shows no packet in"
                       " closed-port.pcap; the page says it shows server-rst: 2 (server-rst)"),
}


@pytest.mark.parametrize("breakage", FILTER_BREAKAGES)
def test_a_wrong_recommended_filter_fails_the_build_naming_page_and_filter(recorded_traces: Path, tmp_path: Path,
                                                                          breakage: str) -> None:
    from test_site import _build  # the build of a copy of docs/, as a reader's edit would be built

    bad, message = FILTER_BREAKAGES[breakage]
    docs = tmp_path / "copy" / "docs"
    shutil.copytree(ROOT / "docs", docs)
    page = docs / "scenarios" / "closed-port.md"
    source = page.read_text()
    (good,) = [source[r.start:r.end] for r in wireshark.recommended(source) if r.kind == "filter"]
    line = source[: source.index(good)].count("\n") + 1
    page.write_text(source.replace(good, bad, 1))
    proc = _build(tmp_path, docs)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"the build passed with {bad}"
    assert f"scenario closed-port: docs/scenarios/closed-port.md, line {line}: {message}" in said, said[-3000:]
    assert "Traceback" not in said
    assert not (tmp_path / "site" / "index.html").exists()


@pytest.fixture(scope="module")
def closed_port_view(recorded_traces: Path, tmp_path_factory: pytest.TempPathFactory) -> wireshark.View:
    """closed-port's view, asked of sharkd with filters that show more, and a field that is not Wireshark's
    (kept in a cache of its own, beside a traces folder of its own)."""
    rec = artifact.load("closed-port", recorded_traces)
    views = wireshark.Views()
    views.start({"closed-port": rec}, artifact.key(recorded_traces), tmp_path_factory.mktemp("asked") / "traces",
                {"closed-port": wireshark.Asked(("tcp.flags.reset == 1 || tcp.flags.syn == 1", "tcp"), ("ip.tll",))})
    return views.view("closed-port")


def test_a_filter_that_shows_packets_it_claims_to_exclude_fails_and_so_does_an_unknown_field(
        recorded_traces: Path, closed_port_view: wireshark.View) -> None:
    from fieldguide.placeholders import REQUIRED, Context, PageError, expand_page

    rec = artifact.load("closed-port", recorded_traces)
    ctx = Context("scenarios/closed-port.md", "closed-port", {"closed-port": rec}, [],
                  wireshark=lambda slug: closed_port_view)
    fix = "## Fix or avoid\n\n**In short:** Open the port.\n"  # every scenario page's (placeholders.py)
    page = "".join("{{ " + name + " }}\n" for name in REQUIRED) + "## The exchange\n" + fix
    fine = page + '`tcp.flags.reset == 1 || tcp.flags.syn == 1`{ .wireshark-filter shows="client-syn server-rst" }\n'
    assert "(in this capture: [1](#packet-1) client&#45;syn, [2](#packet-2) server&#45;rst)" in expand_page(fine, ctx)
    wrong = {
        '`tcp.flags.reset == 1 || tcp.flags.syn == 1`{ .wireshark-filter shows="server-rst" }':
            "shows 1 (client-syn), 2 (server-rst) in closed-port.pcap; the page says it shows server-rst: 2 (server-rst)",
        '`tcp`{ .wireshark-filter shows="client-rst" }': "closed-port has no packet named 'client-rst'",
        "`ip.tll`{ .wireshark-field }": "Wireshark field `ip.tll` is not one of Wireshark's: sharkd's check says:"
                                        " Field ip.tll not found",
        "`tcp`{ .wireshark-filter }": "a recommended filter names the packets it shows, in quotes",
        "`tcp`{.wireshark-filter shows=server-rst}": "a recommended filter names the packets it shows, in quotes",
        '`tcp` { .wireshark-filter shows="server-rst" }': "a Wireshark marker not in the form",
        '`tcp.flags.reset == 1`{ .wireshark-filter shows="server-rst" }': "was not asked of Wireshark",
    }
    for marker, message in wrong.items():
        with pytest.raises(PageError, match=re.escape(f"closed-port.md, line {len(REQUIRED) + 3 + fix.count(chr(10))}: ") + ".*"
                           + re.escape(message)):
            expand_page(page + "\n" + marker + "\n", ctx)
    with pytest.raises(PageError, match=re.escape("docs/symptoms.md, line 1: `tcp`: a marked Wireshark filter")):
        expand_page('`tcp`{ .wireshark-filter shows="" }\n', Context("symptoms.md", None, {}, []))
