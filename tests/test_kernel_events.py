"""The kernel's events: attribution to a run, ties to packets, claims on them (no namespaces)."""

from __future__ import annotations

import dataclasses

import pytest
from lab.artifact import Packet
from lab.kernel_events import annotate, states, strip
from lab.trace import Trace
from lab.tracer import Tracer, attribute, declarations, parse_pahole, symbols

FMT = ('"skbaddr=%p state=%s reason=%s", REC->state ? __print_symbolic(REC->state, { TCP_ESTABLISHED,'
       ' "TCP_ESTABLISHED" }) : "UNKNOWN", __print_symbolic(REC->reason, { 0, "NOT_SPECIFIED" },'
       ' { 1, "NO_SOCKET" }, { 9, "TCP_TIMEWAIT_SOCKET" })')


def test_names_are_the_kernels_own_from_its_format() -> None:
    found = symbols(FMT)
    assert found["reason"] == {0: "NOT_SPECIFIED", 1: "NO_SOCKET", 9: "TCP_TIMEWAIT_SOCKET"}
    assert found["state"] == {0: "UNKNOWN"}  # the macro names are not numbers: taken elsewhere


def _event(name: str, t: int, cpu: int, ns: int, flow: tuple[str, int, str, int], *fields: object) -> tuple:
    return (name, str(t), str(cpu), str(ns), "0", *map(str, fields), flow[0], str(flow[1]), flow[2], str(flow[3]))


FLOW = ("192.0.2.1", 40000, "192.0.2.2", 80)


def test_a_reused_namespace_number_belongs_to_each_run_only_while_it_exists() -> None:
    everything = [
        _event("tcp_send_reset", 100, 0, 7, FLOW, 0, 1),  # run A's namespace 7
        _event("tcp_send_reset", 300, 0, 7, FLOW, 0, 1),  # namespace 7 again: run B's, made at 250
        _event("tcp_send_reset", 310, 1, 8, FLOW, 0, 1),  # another run's namespace entirely
    ]
    assert attribute(everything, {7: ("server", 50)}, until=200) == {0: "server"}
    assert attribute(everything, {7: ("server", 250)}, until=400) == {1: "server"}
    assert attribute(everything, {7: ("server", 250)}, until=299) == {}  # after the run's end: not its


def test_an_error_report_takes_its_neighbours_namespace_on_the_same_cpu_and_flow() -> None:
    back = (FLOW[2], FLOW[3], FLOW[0], FLOW[1])
    everything = [
        _event("inet_sock_set_state", 100, 0, 7, FLOW, 2, 7),
        _event("inet_sk_error_report", 101, 0, 0, FLOW, 111),  # same CPU, same flow: namespace 7's
        _event("inet_sock_set_state", 102, 1, 9, back, 1, 7),  # another run, same addresses, CPU 1
        _event("inet_sk_error_report", 103, 1, 0, back, 104),  # next to the other run's: not ours
        _event("inet_sk_error_report", 104, 0, 0, ("192.0.2.1", 1, "192.0.2.2", 2), 110),  # another flow
        _event("inet_sock_set_state", 105, 0, 7, FLOW, 1, 7),
        _event("inet_sk_error_report", 106, 0, 0, back, 104),  # its peer's view of the flow: not this socket
        _event("kfree_skb", 107, 0, 0, FLOW, 3),  # a drop with no namespace is never guessed
    ]
    assert attribute(everything, {7: ("client", 0)}, until=1000) == {0: "client", 1: "client", 5: "client"}


def _packet(number: int, time: float, sender: str, flags: str, src: str, sport: int, dst: str, dport: int,
            seq: int = 1) -> Packet:
    receiver = "client" if sender == "server" else "server"
    return Packet(number, time, sender, receiver, src, dst, sport, dport, flags, seq, 0, 0, 0, 64, 0)


def test_events_tie_to_the_packets_they_made_accepted_or_dropped() -> None:
    c, s = ("192.0.2.1", 40000), ("192.0.2.2", 80)
    packets = [
        _packet(1, 0.000, "client", "S", *c, *s, seq=5),
        _packet(2, 0.010, "server", "R.", *s, *c),  # forged, in window: not accepted
        _packet(3, 0.020, "server", "R.", *s, *c),  # made by the server's kernel, accepted
    ]
    events = [
        {"event": "kfree_skb", "time": 0.0001, "host": "server", "reason": "NO_SOCKET", "location": "tcp_v4_rcv",
         "src": c[0], "sport": c[1], "dst": s[0], "dport": s[1], "flags": "S", "seq": 5},
        {"event": "tcp_send_reset", "time": 0.0199, "host": "server", "state": "UNKNOWN", "reason": "NO_SOCKET",
         "src": s[0], "sport": s[1], "dst": c[0], "dport": c[1]},
        {"event": "tcp_receive_reset", "time": 0.0201, "host": "client", "state": "TCP_SYN_SENT",
         "src": c[0], "sport": c[1], "dst": s[0], "dport": s[1]},
    ]
    syn, forged, real = annotate(packets, events, recorded=True)
    assert syn.dropped == {"event": "kfree_skb", "host": "server", "reason": "NO_SOCKET", "location": "tcp_v4_rcv"}
    assert forged.kernel is None and forged.received is None  # no TCP stack sent it; nobody took it
    assert real.kernel == {"event": "tcp_send_reset", "host": "server", "state": "UNKNOWN", "reason": "NO_SOCKET"}
    assert real.received == {"event": "tcp_receive_reset", "host": "client", "state": "TCP_SYN_SENT"}
    assert [e["packet"] for e in events] == [1, 3, 3]
    assert annotate(packets, events, recorded=False) == packets  # nothing recorded: nothing said


def test_state_paths_name_sockets_by_host_and_flow_never_by_kernel_address() -> None:
    def change(sk: str, old: str, new: str, sport: int, dst: str = "192.0.2.2", dport: int = 80) -> dict:
        return {"event": "inet_sock_set_state", "host": "client", "socket": sk, "oldstate": old, "newstate": new,
                "src": "192.0.2.1", "sport": sport, "dst": dst, "dport": dport, "time": 0.0}

    events = [change("ffff1", "TCP_CLOSE", "TCP_SYN_SENT", 0), change("ffff1", "TCP_SYN_SENT", "TCP_CLOSE", 40000),
              change("ffff1", "TCP_CLOSE", "TCP_LISTEN", 8080, "0.0.0.0", 0)]  # the memory reused
    assert states(events) == {"client 192.0.2.1.40000 > 192.0.2.2.80": ["TCP_CLOSE", "TCP_SYN_SENT", "TCP_CLOSE"],
                              "client 192.0.2.1.8080 (listening)": ["TCP_CLOSE", "TCP_LISTEN"]}
    published = strip(events)
    assert {e["socket"] for e in published} == {"client 192.0.2.1.40000 > 192.0.2.2.80",
                                                "client 192.0.2.1.8080 (listening)"}
    assert "ffff1" not in repr(published)


def test_kernel_claims_are_not_checked_without_tracing_never_passed() -> None:
    rst = dataclasses.replace(_packet(1, 0.0, "server", "R.", "192.0.2.2", 80, "192.0.2.1", 40000),
                              kernel={"event": "tcp_send_reset", "host": "server", "state": "UNKNOWN",
                                      "reason": "NO_SOCKET"})
    untraced = Trace([rst], [], tracing={"recorded": False, "why": "the lab ran without root"})
    untraced.next("server", "R.", name="server-rst", reason="NO_SOCKET")
    untraced.dropped("server", "TCP_LISTEN_OVERFLOW")
    assert [c["passed"] for c in untraced.claims] == [True, None, None]
    assert all("not checked: the lab ran without root" == c["detail"] for c in untraced.claims[1:])
    assert untraced.passed  # not checked is not a failure

    traced = Trace([rst], [], tracing={"recorded": True, "events": ["tcp_send_reset", "kfree_skb"]})
    traced.next("server", "R.", name="server-rst", reason="TCP_STATE")
    traced.dropped("server", "TCP_LISTEN_OVERFLOW")
    assert [c["passed"] for c in traced.claims] == [True, False, False]
    assert traced.claims[1]["detail"] == "NO_SOCKET in UNKNOWN" and not traced.passed

    forged = Trace([dataclasses.replace(rst, kernel=None)], [], tracing={"recorded": True, "events": ["tcp_send_reset"]})
    forged.next("server", "R.", name="router-rst", reason=None)
    assert forged.claims[1] == {"claim": "no TCP stack sent router-rst (no tcp_send_reset event)", "passed": True,
                                "detail": "no tcp_send_reset event", "packet": 1, "name": "router-rst"}


PAHOLE = """struct sock_common {
	union {
		__addrpair         skc_addrpair;         /*     0     8 */
	};
	short unsigned int         skc_family;           /*    16     2 */
	volatile unsigned char     skc_state;            /*    18     1 */
	unsigned char              skc_net_refcnt:1;     /*    19: 6  1 */
	possible_net_t             skc_net;              /*    48     8 */
};
struct net {
	struct ns_common           ns;                   /*   152    80 */
};
struct ns_common {
	unsigned int               inum;                 /*    24     4 */
};
struct sk_buff {
				struct net_device * dev; /*    16     8 */
	struct sock *              sk;                   /*    24     8 */
			__u16      transport_header;     /*   178     2 */
			__u16      network_header;       /*   180     2 */
			__u16      transport_header;     /*   999     2 */
	unsigned char *            head;                 /*   192     8 */
};
struct net_device {
	possible_net_t             nd_net;               /*   264     8 */
};
"""


def test_the_probes_read_the_kernels_structures_at_the_offsets_its_btf_gives() -> None:
    found = parse_pahole(PAHOLE)
    assert found[("sock_common", "skc_state")] == 18 and found[("sock_common", "skc_net")] == 48
    assert found[("sk_buff", "transport_header")] == 178  # the first listing of a union member
    text = declarations(found)
    assert ("struct fg_sock { char _0[16]; unsigned short family; unsigned char state; char _19[29];"
            " struct fg_net *net; };") in text
    assert "struct fg_net { char _0[152]; struct fg_ns ns; };" in text
    assert "struct fg_ns { char _0[24]; unsigned int inum; };" in text
    with pytest.raises(RuntimeError, match="this kernel's BTF has no sk_buff.head"):
        parse_pahole(PAHOLE.replace("head;", "tail;"))  # a kernel whose structures changed


def test_without_bpftrace_the_run_is_recorded_and_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bpftrace, pahole or unshare here
    tracer = Tracer.launch().ready()
    assert tracer.attached.is_set() and tracer.status["recorded"] is False
    assert "not installed" in tracer.status["why"] or "without root" in tracer.status["why"]
    assert tracer.collect({}, 0) == {"tracing": tracer.status, "events": []}


def test_a_sockets_own_rst_is_traced_after_it_left() -> None:
    """tcp_send_active_reset() traces once tcp_transmit_skb() has sent the RST: the capture
    may hold it before the event (measured: about 90 us on loopback)."""
    c, s = ("192.0.2.1", 40000), ("192.0.2.2", 80)
    packets = [_packet(1, 0.5000, "client", "R.", *c, *s), _packet(2, 0.9, "client", "R.", *c, *s)]
    events = [{"event": "tcp_send_reset", "time": 0.5002, "host": "client", "socket": "ffff1", "state": "TCP_CLOSE",
               "reason": "TCP_ABORT_ON_CLOSE", "src": c[0], "sport": c[1], "dst": s[0], "dport": s[1]}]
    first, second = annotate(packets, events, recorded=True)
    assert first.kernel and first.kernel["reason"] == "TCP_ABORT_ON_CLOSE"
    assert second.kernel is None  # far from any event of its flow: no TCP stack made it


def test_a_reset_dropped_on_output_does_not_take_the_next_resets_packet() -> None:
    """A silent reboot: the dying socket's RST (TCP_STATE) is dropped by nftables, then a RST
    for the same flow comes from no socket at all (NO_SOCKET): the packet is the second's."""
    s, c = ("192.0.2.2", 80), ("192.0.2.1", 40000)
    packets = [_packet(1, 0.0200, "server", "R", *s, *c)]

    def reset(time: float, reason: str, state: str) -> dict:
        return {"event": "tcp_send_reset", "time": time, "host": "server", "state": state, "reason": reason,
                "src": s[0], "sport": s[1], "dst": c[0], "dport": c[1]}

    events = [reset(0.0100, "TCP_STATE", "TCP_ESTABLISHED"), reset(0.01999, "NO_SOCKET", "UNKNOWN")]
    (rst,) = annotate(packets, events, recorded=True)
    assert rst.kernel is not None and rst.kernel["reason"] == "NO_SOCKET"
    assert "packet" not in events[0]  # never on the wire
