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
            pytest.fail("tshark is missing (apt-get install tshark; .ci/run installs it)")
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
    assert "tcp_analyze_sequence_number()" in text_of(why.group(0))
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
