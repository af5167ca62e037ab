"""rst-explain (issue 12): every recording of the catalogue, fresh, explained by its own page;
the same captures moved to other addresses, ports, sequence numbers, clocks and IPv6, and
printed by real tcpdump with the flags people use; bad input refused cleanly."""

from __future__ import annotations

import datetime
import io
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import rst_explain
from lab.artifact import TRACES
from lab.scenarios import all_slugs
from rst_explain.rules import NO_RST_NOTES, PAGES, TIES
from scapy.all import IP, IPv6, TCP, CookedLinux, CookedLinuxV2, Ether, PcapNgWriter, PcapWriter, UDP, rdpcap

from own_recordings import Recorded

EXPLAIN = [sys.executable, "-m", "rst_explain"]
TEXT_FLAGS = ["", "-n", "-nn", "-S", "-v", "-vnn", "-tttt", "-tt -S -v"]


def _tcpdump(pcap: Path, flags: str) -> bytes:
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump is missing (apt-get install tcpdump)")
    return subprocess.run(["tcpdump", "-r", str(pcap), *flags.split()], capture_output=True, check=True).stdout


def _rewrite(pcap: Path, ipv6: bool, seed: int) -> bytes:
    """The capture moved elsewhere: other addresses (or IPv6), ports, ISNs, a slower clock."""
    rng = random.Random(seed)
    packets = rdpcap(str(pcap))
    hosts: dict[str, str] = {}
    ports: dict[int, int] = {}
    shift: dict[str, int] = {}
    scale = rng.choice([3.0, 7.5])
    start = float(packets[0].time)
    out = []
    for p in packets:
        ip, tcp = p[IP], p[TCP]
        for a in (ip.src, ip.dst):
            if a not in hosts:
                n = len(hosts) + 10
                hosts[a] = f"2001:db8:{n}::{n}" if ipv6 else f"203.0.113.{n}"
                shift[a] = rng.getrandbits(32)
        for port in (tcp.sport, tcp.dport):
            ports.setdefault(port, 20000 + rng.randrange(30000))
        seq, ack = tcp.seq, tcp.ack
        if not (tcp.flags.R and seq == 0 and tcp.flags.A):   # a RST's literal seq 0 stays 0
            seq = (seq + shift[ip.src]) % 2**32
        if tcp.flags.A:
            ack = (ack + shift[ip.dst]) % 2**32
        new_tcp = TCP(sport=ports[tcp.sport], dport=ports[tcp.dport], seq=seq, ack=ack, flags=tcp.flags,
                      window=tcp.window, options=tcp.options) / bytes(tcp.payload)
        if ipv6:
            pkt = Ether() / IPv6(src=hosts[ip.src], dst=hosts[ip.dst], hlim=ip.ttl) / new_tcp
        else:
            pkt = Ether() / IP(src=hosts[ip.src], dst=hosts[ip.dst], ttl=ip.ttl, id=ip.id, flags=ip.flags) / new_tcp
        pkt.time = 1_600_000_000 + (float(p.time) - start) * scale
        out.append(pkt)
    buf = io.BytesIO()
    writer = PcapWriter(buf)
    writer.write(out)
    writer.flush()
    return buf.getvalue()


def _pcapng(pcap: Path) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "capture.pcapng"
        writer = PcapNgWriter(str(path))
        writer.write(rdpcap(str(pcap)))
        writer.close()
        return path.read_bytes()


def _variant(form: str, pcap: Path) -> bytes:
    if form == "pcap":
        return pcap.read_bytes()
    if form == "pcapng":
        return _pcapng(pcap)
    if form.startswith("text"):
        return _tcpdump(pcap, form[4:])
    if form == "moved":
        return _rewrite(pcap, ipv6=False, seed=12)
    if form == "ipv6":
        return _rewrite(pcap, ipv6=True, seed=13)
    raise AssertionError(form)


def _explaining_packet(slug: str) -> tuple[int, str]:
    """The recording's packet that explains the page, by the claim name rules.py gives it."""
    name = PAGES[slug].packet if slug in PAGES else next(
        p for kind, (_, pages) in NO_RST_NOTES.items() for s, p, _, _ in pages if s == slug)
    packets = json.loads((TRACES / f"{slug}.json").read_text())["packets"]
    match = [p for p in packets if p["name"] == name]
    assert match, f"{slug}: rules.py names packet {name!r}, which the recording does not name"
    return match[0]["number"], match[0]["flags"]


FORMS = ["pcap", "pcapng", "moved", "ipv6"] + [f"text {f}".strip() for f in TEXT_FLAGS]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("slug", all_slugs())
def test_recording_is_explained_by_its_own_page(recorded: Recorded, slug: str, form: str) -> None:
    """The page's own packet gets the page first, or tied first; a page without RST is
    named first by a note."""
    recorded.require(slug)
    number, flags = _explaining_packet(slug)
    doc = rst_explain.explain(_variant(form, TRACES / f"{slug}.pcap"), f"{slug} ({form})")
    if "R" in flags:
        rst = [r for r in doc["rsts"] if r["packet"] == number]
        assert rst, f"{slug} ({form}): no verdict for RST packet {number}: {[r['packet'] for r in doc['rsts']]}"
        ranked = [(v["slug"], v["score"]) for v in rst[0]["verdicts"][:4]]
        assert slug in rst[0]["tie"], f"{slug} ({form}) packet {number}: ranked {ranked}"
        assert rst[0]["verdicts"][0]["score"] == rst[0]["verdicts"][len(rst[0]["tie"]) - 1]["score"]
    else:
        firsts = [[v["slug"] for v in n["verdicts"] if v["score"] == n["verdicts"][0]["score"]]
                  for n in doc["notes"] if n["verdicts"]]
        assert any(slug in f for f in firsts), f"{slug} ({form}): notes {doc['notes']}"


def _sll2(pcap: Path, tmp_path: Path) -> Path:
    """A `tcpdump -i any` capture (LINUX_SLL, 113) framed as LINUX_SLL2 (276), as
    `tcpdump -i any -y LINUX_SLL2` writes it: interface index and direction per packet."""
    out = []
    for p in rdpcap(str(pcap)):
        assert p.haslayer(CookedLinux), f"{pcap.name}: not a LINUX_SLL capture"
        q = CookedLinuxV2(proto=0x0800, ifindex=2 if p[IP].src.startswith("192.") else 3,
                          pkttype=p[CookedLinux].pkttype, lladdrtype=1, lladdrlen=6, src=b"\x02" * 8) / p[IP]
        q.time = p.time
        out.append(q)
    path = tmp_path / "sll2.pcap"
    writer = PcapWriter(str(path), linktype=276)
    writer.write(out)
    writer.close()
    return path


@pytest.mark.parametrize("slug", ["proxy-keepalive-race", "proxy-upstream-reset"])
def test_linux_cooked_captures(recorded: Recorded, slug: str, tmp_path: Path) -> None:
    """`tcpdump -i any` captures: LINUX_SLL as recorded, LINUX_SLL2 too, in pcap, pcapng and
    tcpdump's text (which prefixes SLL2 packets with the interface and its direction)."""
    recorded.require(slug)
    pcap = TRACES / f"{slug}.pcap"
    assert pcap.read_bytes()[20:24] == (113).to_bytes(4, "little"), "the lab's proxy capture is no longer LINUX_SLL"
    expected = [(r["packet"], r["tie"]) for r in rst_explain.explain(pcap.read_bytes(), slug)["rsts"]]
    assert expected and all(slug in tie for _, tie in expected), expected
    sll2 = _sll2(pcap, tmp_path)
    assert sll2.read_bytes()[20:24] == (276).to_bytes(4, "little")
    text = _tcpdump(sll2, "-nn")
    assert b" In  IP " in text and b" Out IP " in text, text[:300]
    for form, data in (("pcap", sll2.read_bytes()), ("pcapng", _pcapng(sll2)), ("text", text),
                       ("text -v", _tcpdump(sll2, "-v"))):
        got = [(r["packet"], r["tie"]) for r in rst_explain.explain(data, f"{slug} SLL2 ({form})")["rsts"]]
        assert got == expected, (form, got, expected)


def test_every_tie_is_a_documented_group(recorded_traces: Path) -> None:
    """A tie for first between pages is one TIES names (with why and what to check next)."""
    groups = [set(g["slugs"]) for g in TIES]
    for slug in all_slugs():
        for form in ("pcap", "text"):
            doc = rst_explain.explain(_variant(form, TRACES / f"{slug}.pcap"), slug)
            for rst in doc["rsts"]:
                if len(rst["tie"]) > 1:
                    assert any(set(rst["tie"]) <= g for g in groups), (slug, form, rst["packet"], rst["tie"])
                    assert rst["next"], (slug, rst["packet"])


def test_ties_name_counters_the_kernel_counted(recorded_traces: Path) -> None:
    """A next step naming an nstat counter names one the lab recorded on one of the tied pages."""
    counted = {}
    for path in TRACES.glob("*.json"):
        d = json.loads(path.read_text())
        counted[d["slug"]] = {name for host in d.get("counters", {}).values() for name in host}
    for group in TIES:
        for step in group["next"]:
            for word in step.replace(",", " ").split():
                if word.startswith(("TcpExt", "TcpRetrans", "TcpOut")):
                    assert any(word in counted.get(s, set()) for s in group["slugs"]), (group["slugs"], word)


def test_the_command_line_and_json(recorded: Recorded) -> None:
    recorded.require("closed-port", "graceful-close")
    files = [str(TRACES / f"{s}.pcap") for s in ("closed-port", "graceful-close")]
    text = subprocess.run([*EXPLAIN, *files], capture_output=True, text=True, check=True).stdout
    assert "closed-port" in text and "firewall-reject" in text and "graceful-close" in text
    out = subprocess.run([*EXPLAIN, "--json", files[0]], capture_output=True, text=True, check=True).stdout
    doc = json.loads(out)
    assert set(doc) == {"rsts", "notes"}
    rst = doc["rsts"][0]
    assert {"packet", "time", "src", "dst", "verdicts", "next"} <= set(rst)
    assert {"slug", "score", "evidence"} <= set(rst["verdicts"][0])
    assert doc == json.loads(json.dumps(rst_explain.explain((TRACES / "closed-port.pcap").read_bytes(), files[0])))


def test_stdin_reads_pasted_text(recorded: Recorded) -> None:
    recorded.require("keepalive-race")
    pasted = _tcpdump(TRACES / "keepalive-race.pcap", "")
    proc = subprocess.run([*EXPLAIN, "-"], input=pasted, capture_output=True, check=True)
    assert b"keepalive-race" in proc.stdout and b"write-after-peer-close" in proc.stdout


def test_a_rst_is_placed_at_the_time_its_capture_gave(recorded: Recorded) -> None:
    """Pasted text: the time as tcpdump printed it; a capture file: its time on a UTC clock
    (the number of seconds stays in "time")."""
    recorded.require("closed-port")
    pasted = (TRACES / "closed-port.txt").read_text()
    rst = rst_explain.explain(pasted.encode())["rsts"][0]
    line = next(line for line in pasted.splitlines() if "Flags [R" in line)
    assert rst["at"] == line.split(" ")[0]
    text = subprocess.run([*EXPLAIN, "-"], input=pasted, capture_output=True, text=True, check=True).stdout
    assert f"at {rst['at']}" in text and "t=" not in text
    from_file = rst_explain.explain((TRACES / "closed-port.pcap").read_bytes())["rsts"][0]
    stamp = datetime.datetime.fromtimestamp(from_file["time"], datetime.timezone.utc)
    assert from_file["at"] == stamp.strftime("%Y-%m-%d %H:%M:%S.%f UTC")
    local = datetime.datetime.fromtimestamp(from_file["time"]).strftime("%H:%M:%S.%f")
    assert local == rst["at"]  # the same RST: tcpdump printed the text on the local clock


def _udp_only() -> bytes:
    buf = io.BytesIO()
    writer = PcapWriter(buf)
    writer.write([Ether() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=5353, dport=53) / b"x"])
    writer.flush()
    return buf.getvalue()


BAD_INPUTS = {
    "truncated pcap": lambda: (TRACES / "graceful-close.pcap").read_bytes()[:-7],
    "truncated pcap header": lambda: (TRACES / "graceful-close.pcap").read_bytes()[:13],
    "binary, not a capture": lambda: Path(sys.executable).resolve().read_bytes()[:50000],
    "text without tcpdump lines": lambda: b"GET / HTTP/1.1\nHost: example.org\n\nnothing here\n",
    "capture without TCP": _udp_only,
    "empty": lambda: b"",
}


@pytest.mark.parametrize("what", BAD_INPUTS)
def test_bad_input_is_refused_cleanly(recorded: Recorded, what: str, tmp_path: Path) -> None:
    recorded.require("graceful-close")  # two inputs are its pcap, cut short
    path = tmp_path / "input"
    path.write_bytes(BAD_INPUTS[what]())
    for args in ([str(path)], ["--json", str(path)]):
        proc = subprocess.run([*EXPLAIN, *args], capture_output=True, text=True)
        assert proc.returncode != 0, (what, proc.stdout)
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("rst-explain: "), proc.stderr
    with pytest.raises(rst_explain.ExplainError):
        rst_explain.explain(path.read_bytes(), what)


def test_missing_file(tmp_path: Path) -> None:
    proc = subprocess.run([*EXPLAIN, str(tmp_path / "nope.pcap")], capture_output=True, text=True)
    assert proc.returncode != 0 and "No such file" in proc.stderr and "Traceback" not in proc.stderr


def test_memory_follows_open_connections_not_the_file(tmp_path: Path) -> None:
    """Streaming: after many short connections, only those still open or recently closed are kept."""
    from lab.bench_explain import write_capture
    from rst_explain.capture import segments
    from rst_explain.connections import FORGET_QUIET, Tracker
    path = tmp_path / "many.pcap"
    write_capture(path, packets=400_000, concurrent=16)
    tracker = Tracker()
    kept = 0
    for seg in segments(path.open("rb")):
        tracker.add(seg)
        kept = max(kept, len(tracker.conns) // 2)
        tracker.ready()
    # 40k connections in 8 s of capture time; at most FORGET_QUIET s of closed ones remain
    assert kept < 40_000 * (FORGET_QUIET + 1) / 8 * 1.2
    assert tracker.rsts > 1000


def test_no_reference_cycle_outlives_a_run(tmp_path: Path) -> None:
    """The command line runs without the cycle collector (__main__.py): everything a run
    creates must be freed by reference counts alone, resets and their findings included."""
    import gc
    from lab.bench_explain import write_capture
    path = tmp_path / "resets.pcap"
    write_capture(path, packets=20_000, concurrent=16)
    data = path.read_bytes()
    gc.collect()
    gc.disable()
    try:
        doc = rst_explain.explain(data, "cycles")
        assert len(doc["rsts"]) > 100
        del doc
        assert gc.collect() == 0, "a run left objects only the cycle collector frees"
    finally:
        gc.enable()
