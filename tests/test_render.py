"""The renderer (docs/fieldguide/render.py) and the placeholders, on a small hand-made recording."""

from __future__ import annotations

import html
import re

import pytest
from fieldguide import render
from fieldguide.placeholders import Context, expand_page
from lab.artifact import Packet, Recording

CLIENT, SERVER = "192.0.2.1", "192.0.2.2"
ISN_C, ISN_S = 4_294_967_000, 1000  # the client's sequence numbers wrap around 2**32


def packet(number: int, sender: str, flags: str, seq: int, ack: int, name: str, payload: int = 0,
           win: int = 502, ttl: int = 64) -> Packet:
    client = sender == "client"
    return Packet(number, number * 0.001, sender, "server" if client else "client",
                  CLIENT if client else SERVER, SERVER if client else CLIENT,
                  40000 if client else 80, 80 if client else 40000, flags, seq % 2**32, ack % 2**32,
                  win, payload, ttl, 0, name=name)


PACKETS = [
    packet(1, "client", "S", ISN_C, 0, "handshake", win=64240),
    packet(2, "server", "S.", ISN_S, ISN_C + 1, "handshake", win=65160),
    packet(3, "client", ".", ISN_C + 1, ISN_S + 1, "handshake", win=63),
    packet(4, "client", "P.", ISN_C + 1, ISN_S + 1, "request", payload=5, win=63),
    packet(5, "server", "R.", ISN_S + 1, ISN_C + 6, "server-rst", win=0, ttl=63),
]
TEXT = "".join(f"00:00:00.00000{i} IP line {i} wscale 10\n" if i < 3 else f"00:00:00.00000{i} IP line {i}\n"
               for i in range(1, 6))
HOSTILE = "x` <img src=x onerror=alert(2)> `y | *b* {{ packet 1 }} :material-close:"


def recording(**changes: object) -> Recording:
    fields = dict(
        slug="made-up", title="Made up", phase="closing", summary="A made-up reset.", recorded_at="2026-12-01",
        kernel="6.18", tcpdump_version="4.99.3", hosts={"client": CLIENT, "server": SERVER},
        addresses={"client": [CLIENT], "server": [SERVER]}, captured_on="client eth0",
        outcomes={"client": [{"call": "recv(1024)", "raised": "ConnectionResetError", "errno": "ECONNRESET",
                              "message": HOSTILE, "t_ms": 1.0}],
                  "server": [{"call": HOSTILE, "returned": HOSTILE, "t_ms": 2.0}]},
        counters={"client": {"TcpEstabResets": 1}, "server": {"TcpOutRsts": 1, "IpInReceives": 3}},
        claims=[{"claim": "server sends [R.]", "passed": True, "packet": 5, "name": "server-rst"}],
        packets=PACKETS, shape=[], pcap_sha256="0" * 64, seconds=0.1, timings={}, text=TEXT)
    fields.update(changes)
    return Recording(**fields)  # type: ignore[arg-type]


def test_sequence_numbers_are_relative_to_each_side_and_wrap() -> None:
    rec = recording()
    assert render.relative(rec, PACKETS[3]) == (1, 1)
    assert render.describe_packet(rec, PACKETS[3]) == "[P.] seq 1, ack 1, win 63, 5 bytes"
    assert render.describe_packet(rec, PACKETS[4]) == "[R.] seq 1, ack 6, win 0"
    assert render.describe_packet(rec, PACKETS[0]) == "[S] seq 0, win 64240"  # no ACK flag, no ack


def test_the_trace_is_tcpdumps_text_with_each_line_anchored_by_number_and_name() -> None:
    rec = recording()
    block = render.trace_html(rec)
    assert html.unescape(re.sub(r"<[^>]+>", "", block)) == TEXT  # names and numbers are CSS only
    for anchor in ("packet-1", "handshake-1", "handshake-3", "request", "server-rst"):
        assert block.count(f'id="{anchor}"') == 1
    assert block.count("fg-rst") == 1 and 'data-name="server&#45;rst"' in block
    assert 'id="made-up-server-rst"' in render.trace_html(rec, own_page=False)


def test_a_name_that_looks_like_another_anchor_is_refused() -> None:
    clash = [*PACKETS[:4], packet(5, "server", "R.", ISN_S + 1, ISN_C + 6, "handshake-2")]
    with pytest.raises(ValueError, match="would share the anchor #handshake-2"):
        render.check_anchors(recording(packets=clash))


def test_a_packet_reference_says_what_the_packet_is() -> None:
    rec = recording()
    assert render.packet_ref(rec, "server-rst") == (
        "[server&#45;rst](#server-rst){ .fg-packet-ref } (server → client"
        " <code>&#91;R&#46;&#93; seq 1&#44; ack 6&#44; win 0</code>)")
    assert "(packets 1–3: " in render.packet_ref(rec, "handshake")
    with pytest.raises(LookupError, match="its names: handshake, request, server-rst"):
        render.packet_ref(rec, "client-fin")


def test_the_diagram_has_an_arrow_per_packet_and_crosses_resets() -> None:
    lines = render.mermaid(recording()).splitlines()
    arrows = [line for line in lines if re.match(r"\s+\w+(->>|-x)\w+: ", line)]
    assert len(arrows) == len(PACKETS)
    assert arrows[-1].strip().startswith("h1-xh0: RST [R.] seq 1, ack 6, win 0")  # a RST says so in words
    band = lines.index(arrows[-1])
    assert lines[band - 1].strip().startswith("rect ") and "    end" in lines[band + 1:band + 3]  # and is tinted
    assert "    participant h1 as server 192.0.2.2" in lines
    assert arrows[-1].endswith("(server-rst)")


def test_recorded_text_never_becomes_markup() -> None:
    """Every renderer that shows recorded text escapes it: no tag, backtick, pipe or brace survives."""
    rec = recording()
    for block in (render.outcomes_table(rec), render.short_answer(rec, ""), render.apps_in_short(rec)):
        for dangerous in ("<img", "`", "{{", "*b*", ":material-close:"):
            assert dangerous not in block, (dangerous, block)
    for block in (render.outcomes_table(rec), render.short_answer(rec, "")):
        assert HOSTILE in html.unescape(block)
    table = render.outcomes_table(rec)
    assert all(row.count(" | ") == 3 for row in table.splitlines()[2:]), "a recorded pipe split a cell"


def test_an_http_error_status_read_back_is_shown_as_that_status_not_as_success() -> None:
    """A proxy's 502 raises nothing in the client: what it got is the status, not "no error"."""
    calls = [{"call": "getresponse()", "returned": "<HTTPResponse>", "t_ms": 1.0},
             {"call": "status line", "returned": "'HTTP/1.1 200 OK'", "t_ms": 2.0},
             {"call": "status line", "returned": "'HTTP/1.1 502 Bad Gateway'", "t_ms": 3.0}]
    client = render.what_apps_get(recording(outcomes={"client": calls}))
    assert client == [f"**client**: {render.literal('status line')}: {render.literal('HTTP/1.1 502 Bad Gateway')}"
                      " (an HTTP error status)"]
    ok = render.what_apps_get(recording(outcomes={"client": calls[:2]}))
    assert ok == ["**client**: no call raised an error"]
    reads = [{"call": "recv(4096)", "returned": "b'GET / HTTP/1.1'", "t_ms": 1.0},
             {"call": "recv(4096)", "returned": "b''", "t_ms": 2.0}]
    assert render.what_apps_get(recording(outcomes={"server": reads[:1]})) == ["**server**: no call raised an error"]
    assert render.what_apps_get(recording(outcomes={"server": reads})) == [
        f"**server**: {render.literal('recv(4096)')} returned {render.literal(chr(98) + chr(39) * 2)}"]
    assert render.http_error_status({"returned": "HTTP 404"}) == 404  # Node's form
    assert render.http_error_status({"returned": "'HTTP/1.1 301 Moved Permanently'"}) is None


def test_counters_put_tcp_first_and_fold_the_rest() -> None:
    table = render.counters_table(recording())
    assert table.index("TcpEstabResets") < table.index('??? note "IP counters (1)"') < table.index("IpInReceives")


def test_a_line_of_tcpdump_shows_the_window_scaled_by_its_syns_wscale() -> None:
    rec = recording()
    ctx = Context("reading-tcpdump.md", None, {"made-up": rec}, [])
    out = expand_page("{{ tcpdump_line made-up request }}\n", ctx)
    assert "| window in bytes | 63 × 2^10 = 64512 (wscale from handshake) |" in out
    assert "[made-up](scenarios/made-up.md#request)" in out
