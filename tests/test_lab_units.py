"""Unit tests of the lab's parts that need no namespaces."""

from __future__ import annotations

import dataclasses
import struct
import threading
from typing import Any

import pytest
from lab.artifact import Packet, shape_of
from lab.capture import _count_packets, read_packets, read_packets_scapy
from lab.recording import Transcript, describe_error
from lab.scenarios import UnknownScenario, all_slugs, check
from lab.trace import Trace
from lab.wire import http_request_complete, tcp_payload, tcpdump_flags
from lab.witness import Witness, parse
from lab.worker import counter_deltas


@pytest.mark.parametrize(("bits", "shown"), [
    (0x02, "S"), (0x12, "S."), (0x10, "."), (0x04, "R"), (0x14, "R."), (0x18, "P."),
    (0x11, "F."), (0x19, "FP."), (0x00, "none"),
])
def test_flags_are_shown_as_tcpdump_shows_them(bits: int, shown: str) -> None:
    assert tcpdump_flags(bits) == shown


def _pcap(records: list[bytes], cut: int = 0) -> bytes:
    out = struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    for data in records:
        out += struct.pack("=IIII", 0, 0, len(data), len(data)) + data
    return out[: len(out) - cut]


def test_counting_stops_at_a_record_tcpdump_has_not_finished(tmp_path) -> None:
    pcap = tmp_path / "x.pcap"
    pcap.write_bytes(_pcap([b"a" * 60, b"b" * 54]))
    assert _count_packets(pcap) == 2
    pcap.write_bytes(_pcap([b"a" * 60, b"b" * 54], cut=10))
    assert _count_packets(pcap) == 1
    assert _count_packets(tmp_path / "missing.pcap") == 0


def packet(number: int, sender: str, flags: str, seq: int = 0, ack: int = 0, time: float = 0.0,
           payload: int = 0) -> Packet:
    receiver = "server" if sender == "client" else "client"
    return Packet(number, time, sender, receiver, "192.0.2.1", "192.0.2.2", 1, 2, flags, seq, ack,
                  0, payload, 64, 0)


HANDSHAKE_RST = [
    packet(1, "client", "S", seq=2**32 - 1),
    packet(2, "server", "R.", seq=0, ack=0, time=0.001),
]


def test_next_follows_the_timeline_and_wraps_sequence_numbers() -> None:
    trace = Trace(HANDSHAKE_RST, [])
    syn = trace.next("client", "S", name="client-syn")
    trace.next("server", "R.", name="server-rst", ack=syn.seq + 1, within=0.01)  # ISN + 1 wraps to 0
    assert trace.passed and len(trace.claims) == 2
    assert trace.claims[1]["packet"] == 2 and trace.claims[1]["name"] == "server-rst"


@pytest.mark.parametrize("wrong", [
    dict(flags="R"), dict(flags="R.", seq=5), dict(flags="R.", after=0.5), dict(flags="F."),
])
def test_next_fails_on_other_flags_fields_or_timing(wrong: dict) -> None:
    trace = Trace(HANDSHAKE_RST, [])
    trace.next("client", "S", name="client-syn")
    flags = wrong.pop("flags")
    trace.next("server", flags, name="server-rst", **wrong)
    assert not trace.passed


def test_next_fails_when_the_sender_sent_nothing_more() -> None:
    trace = Trace(HANDSHAKE_RST, [])
    trace.next("server", "R.", name="server-rst")
    missing = trace.next("server", "R.", name="another-rst")
    assert not trace.passed and "sent nothing more" in trace.claims[-1]["detail"]
    assert missing.number == 0


def _claim(trace: Trace, starts: str) -> dict:
    return next(c for c in trace.claims if c["claim"].startswith(starts))


def test_every_packet_is_named_or_declared_noise() -> None:
    trace = Trace(HANDSHAKE_RST, [])
    trace.next("client", "S", name="client-syn")
    trace.finish()
    assert not trace.passed
    assert _claim(trace, "every captured packet")["detail"] == "unclaimed: packet 2 (unnamed) server [R.]"
    trace = Trace(HANDSHAKE_RST, [])
    trace.next("client", "S", name="client-syn")
    assert [p.number for p in trace.noise("server", "R.", reason="not the story")] == [2]
    trace.finish()
    assert trace.passed
    assert [(p.name, p.noise) for p in trace.named_packets()] == [("client-syn", None), (None, "not the story")]


def test_noise_is_a_step_of_the_timeline_and_needs_a_reason() -> None:
    """Noise in the middle: the claims after it go on from there."""
    packets = [packet(1, "client", "S"), packet(2, "server", "S."), packet(3, "server", "."),
               packet(4, "server", "R.")]
    trace = Trace(packets, [])
    trace.next("client", "S", name="client-syn")
    trace.next("server", "S.", name="server-syn-ack")
    trace.noise("server", ".", reason="a duplicate ACK")
    trace.next("server", "R.", name="server-rst")
    trace.finish()
    assert trace.passed, trace.claims
    trace = Trace(packets[:1], [])
    trace.noise("client", "S", reason=" ")
    assert not trace.passed and "no reason given" in trace.claims[-1]["detail"]


@pytest.mark.parametrize("bad", ["Client-SYN", "client syn", "client_syn", "-syn", "syn-", "1st", ""])
def test_names_are_short_lower_case_and_hyphenated(bad: str) -> None:
    trace = Trace(HANDSHAKE_RST, [])
    trace.next("client", "S", name=bad)
    assert not trace.passed and "lower-case and hyphenated" in trace.claims[-1]["detail"]


def test_names_are_short() -> None:
    trace = Trace(HANDSHAKE_RST, [])
    trace.next("client", "S", name="a" * 41)
    assert not trace.passed


def test_a_name_names_one_packet_but_a_group_claim_several() -> None:
    trace = Trace(HANDSHAKE_RST, [])
    trace.next("client", "S", name="twice")
    trace.next("server", "R.", name="twice")
    assert not trace.passed and "already names packet 1" in trace.claims[-1]["detail"]
    handshake = [packet(1, "client", "S", seq=9), packet(2, "server", "S.", seq=99, ack=10),
                 packet(3, "client", ".", seq=10, ack=100)]
    trace = Trace(handshake, [])
    syn, synack, ack = trace.handshake("client", "server")
    trace.finish()
    assert trace.passed and {p.name for p in trace.named_packets()} == {"handshake"}
    assert (syn.number, synack.number, ack.number) == (1, 2, 3)


def test_two_group_claims_cannot_share_a_name() -> None:
    twice = [packet(n + 3 * k, s, f, seq=100 * k + q, ack=a)
             for k in (0, 1) for n, s, f, q, a in ((1, "client", "S", 9, 0), (2, "server", "S.", 99, 10 + 100 * k),
                                                    (3, "client", ".", 10, 100 + 100 * k))]
    trace = Trace(twice, [])
    trace.handshake("client", "server")
    trace.handshake("client", "server")
    assert not trace.passed and "already names packet 1" in trace.claims[-3]["detail"]


@pytest.mark.parametrize("name", ["handshake-2", "packet-3", "noise-1"])
def test_a_name_that_would_take_another_packets_anchor_is_refused(name: str) -> None:
    packets = [packet(1, "client", "S", seq=9), packet(2, "server", "S.", seq=99, ack=10),
               packet(3, "client", ".", seq=10, ack=100), packet(4, "server", "R.", seq=100, ack=10)]
    trace = Trace(packets, [])
    trace.handshake("client", "server")
    trace.next("server", "R.", name=name)
    trace.finish()
    assert not trace.passed


def test_no_and_count() -> None:
    trace = Trace(HANDSHAKE_RST, [])
    trace.no("server", "F")
    trace.count("client", "S", 1)
    assert trace.passed
    trace.no("server", "R")
    assert not trace.passed


def test_application_claims_read_the_transcript() -> None:
    log = Transcript()
    with pytest.raises(ConnectionResetError):
        log.call("client", "recv(1024)", _raise, ConnectionResetError(104, "Connection reset by peer"))
    log.call("server", "recv(1024)", lambda: b"")
    trace = Trace([], log.entries)
    trace.raised("client", "recv", "ECONNRESET")
    trace.raised("client", "recv", "ConnectionResetError")
    trace.returned("server", "recv", "b''")
    assert trace.passed
    trace.raised("server", "recv", "ECONNRESET")
    trace.raised("client", "send", "EPIPE")
    assert [c["passed"] for c in trace.claims[-2:]] == [False, False]


def _raise(exc: BaseException) -> None:
    raise exc


def test_errors_are_described_with_their_errno_name() -> None:
    assert describe_error(ConnectionRefusedError(111, "Connection refused")) == {
        "raised": "ConnectionRefusedError", "errno": "ECONNREFUSED",
        "message": "[Errno 111] Connection refused"}
    assert describe_error(TimeoutError("timed out"))["errno"] is None


def test_shape_ignores_numbers_but_not_roles_flags_data_or_names() -> None:
    a = [packet(1, "client", "P.", seq=1, payload=5)]
    b = [packet(1, "client", "P.", seq=999, payload=7, time=3.0)]
    c = [packet(1, "client", "P.", payload=0)]
    d = [dataclasses.replace(a[0], name="request")]
    assert shape_of(a) == shape_of(b) != shape_of(c)
    assert shape_of(a) != shape_of(d) == [["client", "P.", True, "request"]]


def test_a_committed_shape_is_a_readable_file_and_a_change_is_a_diff(tmp_path, monkeypatch) -> None:
    from lab import scenarios, shapes

    monkeypatch.setattr(scenarios, "EXAMPLES", tmp_path)
    shape = [["client", "S", False, "client-syn"], ["server", "R.", False, "server-rst"]]
    assert "no committed shape" in shapes.difference("x", shape)
    assert shapes.accept("x", shape) and not shapes.accept("x", shape)
    text = (tmp_path / "shapes" / "x.txt").read_text()
    assert "client  [S]    -     client-syn\nserver  [R.]   -     server-rst\n" in text
    assert shapes.difference("x", shape) == ""
    changed = shapes.difference("x", [shape[0], ["server", "F.", False, "server-fin"]])
    assert "-server  [R.]   -     server-rst" in changed and "+server  [F.]   -     server-fin" in changed


def test_unknown_slugs_are_named_with_the_known_ones() -> None:
    with pytest.raises(UnknownScenario) as info:
        check(["closed-port", "no-such-thing", "closed_port"])
    assert info.value.slugs == ["no-such-thing", "closed_port"]
    assert all(slug in str(info.value) for slug in all_slugs())


def test_counter_deltas_keep_only_what_moved() -> None:
    assert counter_deltas({"TcpOutRsts": 3, "TcpInSegs": 9}, {"TcpOutRsts": 4, "TcpInSegs": 9,
                                                               "TcpExtNew": 2}) == {
        "TcpExtNew": 2, "TcpOutRsts": 1}


def test_differing_shapes_fail_every_run_of_that_slug_and_publish_nothing(tmp_path) -> None:
    from lab.runner import Result, Runner

    runner = Runner.__new__(Runner)  # no preflight: nothing is run
    runner.out = tmp_path
    same = [["client", "S", False], ["server", "R.", False]]
    other = [["client", "S", False], ["client", "S", False], ["server", "R.", False]]
    runner.update = False
    results = [Result("x", True, 0.1, shape=same, files=tmp_path / "a"),
               Result("x", True, 0.1, shape=other, files=tmp_path / "b")]
    runner._publish(["x"], results)
    assert not any(r.ok for r in results)
    assert "shapes differ" in results[0].problem and "1 run(s)" in results[0].problem
    assert list(tmp_path.iterdir()) == []


def test_a_request_is_whole_once_its_announced_body_is_there() -> None:
    """host.expects_request() waits for a program's whole request, however it is split."""
    head = b"POST /order HTTP/1.1\r\nHost: proxy\r\nContent-Length: 6\r\n\r\n"
    assert not http_request_complete(head[:20])
    assert not http_request_complete(head + b"item=")
    assert http_request_complete(head + b"item=1")
    assert http_request_complete(b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n")
    chunked = b"POST / HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n6\r\nitem=1\r\n"
    assert not http_request_complete(chunked)
    assert http_request_complete(chunked + b"0\r\n\r\n")


def test_a_segments_payload_is_read_past_its_headers() -> None:
    ip = bytes([0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0, 192, 0, 2, 1, 192, 0, 2, 254])
    tcp = struct.pack("!HHIIBBHHH", 40000, 8080, 1234, 0, 8 << 4, 0x18, 512, 0, 0) + bytes(12)  # 32-byte header
    assert tcp_payload(ip + tcp + b"GET /") == (40000, 1234, b"GET /")
    assert tcp_payload(ip[:9] + bytes([17]) + ip[10:] + tcp) is None  # UDP


def test_the_clock_offset_is_read_between_two_monotonic_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A preemption between the readings (here: 5 ms in the first bracket) must not shift the
    offset that ties the tracer's events to the capture's packets: the narrowest bracket wins."""
    import itertools

    from lab import kernel_events

    ticks = itertools.chain([0, 5_000_000], itertools.count(10_000_000, 1_000))
    monkeypatch.setattr(kernel_events.time, "monotonic_ns", lambda: next(ticks))
    walls = itertools.chain([1_000_000_000_000], itertools.count(1_000_010_001_000, 2_000))
    monkeypatch.setattr(kernel_events.time, "time_ns", lambda: next(walls))
    # first bracket: 5 ms wide, wall read just after its start; the others 1 us wide
    assert kernel_events.clock_offset_ns(samples=3) == 1_000_010_001_000 - 10_000_500


def _frames() -> list[tuple[str, list[Any], int]]:
    """Frames of the kinds read_packets() meets, and of kinds it leaves to scapy."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import CookedLinux, Dot1Q, Ether
    a, b = "192.0.2.1", "192.0.2.2"
    tcp = [
        Ether() / IP(src=a, dst=b, id=7, ttl=63) / TCP(sport=40000, dport=8080, flags="S", seq=1,
                                                       options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)),
                                                                ("NOP", None), ("WScale", 7)]),
        Ether() / IP(src=b, dst=a) / TCP(sport=8080, dport=40000, flags="SA", ack=2, options=[("MSS", 1460), ("EOL", None)]),
        Ether() / IP(src=a, dst=b) / TCP(flags="PA", options=[("NOP", None), ("NOP", None), ("SAck", (1, 2))]) / (b"x" * 5),
        Ether() / IP(src=a, dst=b) / TCP(flags="R", options=[(30, b"\x01\x02"), (253, b"ab"), ("UTO", 9)]),
        Ether() / IP(src=a, dst=b) / TCP(flags="FA", dataofs=3) / b"data",  # a data offset below 5 words
        Ether() / IP(src=a, dst=b) / TCP(flags="A", dataofs=15) / b"short",  # options past the segment's end
        Ether() / IP(src=a, dst=b) / TCP(flags="A") / b"\x02\x00\x01",
        Ether() / IP(src=a, dst=b, options=b"\x01\x01\x01\x00") / TCP(flags="A") / b"ip options",
        Ether() / IP(src=a, dst=b, len=30) / TCP(flags="A") / b"shorter than the frame",
        Ether() / IP(src=a, dst=b, len=10) / TCP(flags="A") / b"total length below the header",
        Ether() / IP(src=b, dst=a) / ICMP(type=3, code=3) / IP(src=a, dst=b) / TCP(flags="S"),
        Ether() / IP(src=a, dst=b) / UDP() / b"left out",
        Ether() / IP(src=a, dst=b, frag=3) / b"a later fragment",
        Ether() / IP(src=a, dst=b, flags="MF") / TCP(flags="S"),
    ]
    raw_options = Ether() / IP(src=a, dst=b) / TCP(flags="A", dataofs=7)  # malformed option lengths
    malformed = bytes(raw_options)[:-0 or None] + b"\x05\x00\x08\x01\x00\x00\x01\x00"
    return [
        ("ethernet", tcp + [Ether(malformed)], 1),
        ("cooked", [CookedLinux(proto=0x0800) / f[IP] for f in tcp[:4]], 113),
        ("vlan", [Ether() / Dot1Q() / IP(src=a, dst=b) / TCP()], 1),  # scapy's
        ("ip-in-ip", [Ether() / IP(src=a, dst=b) / IP(src=b, dst=a) / TCP()], 1),  # scapy's
        ("truncated", [Ether() / IP(src=a, dst=b) / TCP(flags="S")], 1),  # scapy's
    ]


@pytest.mark.parametrize("kind", ["ethernet", "cooked", "vlan", "ip-in-ip", "truncated", "nanoseconds"])
def test_the_pcap_reader_reads_what_scapy_dissects(tmp_path, kind: str) -> None:
    """read_packets() (struct) gives exactly read_packets_scapy()'s packets, times included."""
    from scapy.utils import PcapWriter
    frames = dict((k, (f, lt)) for k, f, lt in _frames())
    found, linktype = frames.get(kind, frames["ethernet"])
    pcap = tmp_path / f"{kind}.pcap"
    with PcapWriter(str(pcap), linktype=linktype, nano=kind == "nanoseconds", sync=True) as writer:
        for i, frame in enumerate(found):
            frame.time = 1765100000 + i * 0.1234567 + (0.000000321 if kind == "nanoseconds" else 0)
            writer.write(frame)
    if kind == "truncated":
        pcap.write_bytes(pcap.read_bytes()[:-3])
    hosts = {"client": ["192.0.2.1"], "server": ["192.0.2.2"]}
    assert read_packets(pcap, hosts) == read_packets_scapy(pcap, hosts)
    assert kind in ("vlan", "ip-in-ip", "truncated") or read_packets(pcap, hosts)


# -- the ftrace witness (lab/witness.py) --------------------------------------------------
_FTRACE = [
    "  python-12414 [000] ..... 14550.672544: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP"
    " sport=37106 dport=8888 saddr=192.0.2.1 daddr=192.0.2.2 saddrv6=::ffff:192.0.2.1"
    " daddrv6=::ffff:192.0.2.2 oldstate=TCP_SYN_SENT newstate=TCP_ESTABLISHED",
    "  tokio-rt-worker-105 [000] ..s1. 15026.300074: tcp_send_reset: skbaddr=0000000000000000"
    " skaddr=ffff8880041d8000 src=192.0.2.1:59834 dest=192.0.2.2:8888 state=TCP_ESTABLISHED"
    " reason=TCP_KEEPALIVE_TIMEOUT",
    "  <idle>-0 [001] ..s2. 15026.300090: kfree_skb: skbaddr=ffff888005a3c700 rx_sk=0000000000000000"
    " protocol=2048 location=nft_do_chain+0x3c1/0x6b0 reason: NETFILTER_DROP",
    "  python-1 [001] ..... 15026.400000: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP"
    " sport=5000 dport=40000 saddr=127.0.0.1 daddr=127.0.0.1 saddrv6=::1 daddrv6=::1"
    " oldstate=TCP_ESTABLISHED newstate=TCP_CLOSE",
]


def test_the_witness_reads_ftraces_lines_as_bpftraces_keys() -> None:
    state, reset, drop, _ = (parse(line) for line in _FTRACE)
    assert state == ("inet_sock_set_state", 14550672544000, 0,
                     ("192.0.2.1", 37106, "192.0.2.2", 8888, "TCP_SYN_SENT", "TCP_ESTABLISHED"))
    assert reset == ("tcp_send_reset", 15026300074000, 0, ("192.0.2.1", 59834, "192.0.2.2", 8888))
    assert drop == ("kfree_skb", 15026300090000, 1, (0xFFFF888005A3C700,))
    assert parse("# tracer: nop") is None


def test_an_event_ftrace_has_and_bpftrace_lacks_is_unseen_and_the_machines_own_are_not() -> None:
    witness = Witness.__new__(Witness)  # its events only: no process
    witness.events = [e for e in map(parse, _FTRACE) if e]
    witness._cond = threading.Condition()
    state, reset, drop, loopback = witness.events
    everything = [(e[0], e[1] + 3000, e[3]) for e in (state, reset, drop)]
    assert witness.unseen(everything, 0, 10**15) == {}
    # bpftrace never got the RST: one unseen; the loopback close is the machine's own, not the lab's
    assert witness.unseen([everything[0], everything[2]], 0, 10**15) == {"tcp_send_reset": 1}
    # one event of bpftrace's answers one of ftrace's, and only near it in time
    assert witness.unseen([everything[0], everything[2], (reset[0], reset[1] + 10**8, reset[3])],
                          0, 10**15) == {"tcp_send_reset": 1}
    # only the run's window counts: after the RST, the drop (the loopback close is not the lab's)
    assert witness.unseen([], reset[1] + 1, 10**15) == {"kfree_skb": 1}
