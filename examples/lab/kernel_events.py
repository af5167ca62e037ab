"""The kernel's events of one run (lab/tracer.py), tied to the capture's packets.

- each RST on the wire gets `kernel`: the tcp_send_reset that made it ({event, host, state,
  reason}), or None when no TCP stack of the lab sent it (nftables, a forged segment);
- each RST gets `received`: the tcp_receive_reset of the socket that accepted it, or None;
- a packet the kernel dropped gets `dropped`: the kfree_skb ({host, reason, location});
- `states`: each socket's path through the TCP states, named by host and four-tuple.

An event is tied to a packet by four-tuple and time (the capture's clock and the tracer's
are the same machine's, realtime and monotonic, converted at the run's end); the event
then names its packet (`packet`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from .artifact import Packet

SLACK = 0.0001  # seconds: the two clocks' conversion and the pcap's microseconds
# tcp_v4_send_reset() traces a RST just before sending it, tcp_send_active_reset() just after
# (tcp_output.c: after tcp_transmit_skb()); a capture on the far side sees it later still
NEAR = 0.05


def _wildcard(e: dict[str, Any]) -> bool:
    return e["dport"] == 0  # a listener's: no peer yet


def annotate(packets: list[Packet], events: list[dict[str, Any]], recorded: bool) -> list[Packet]:
    """The packets with what the kernel said of them (unchanged if nothing was recorded).

    A tcp_send_reset is tied to the RST of its flow nearest in time (within NEAR seconds,
    either side); a RST is accepted, or a packet dropped, after it was captured (the last
    such packet on the wire until then)."""
    if not recorded:
        return packets
    changes: dict[int, dict[str, Any]] = {p.number: {} for p in packets}
    if any(p.is_rst for p in packets):
        for p in packets:
            if p.is_rst:
                changes[p.number].update(kernel=None, received=None)
    # each tcp_send_reset to the RST of its flow nearest in time, the closest pairs first: a RST
    # that nftables dropped on output leaves an event with no packet, which must not take the
    # packet of the RST sent a moment later for the same flow
    pairs = sorted(((abs(p.time - e["time"]), i, p.number) for i, e in enumerate(events)
                    if e["event"] == "tcp_send_reset" for p in packets
                    if p.is_rst and (p.src, p.sport) == (e["src"], e["sport"])
                    and ((p.dst, p.dport) == (e["dst"], e["dport"]) or _wildcard(e))
                    and abs(p.time - e["time"]) <= NEAR))
    for _, i, number in pairs:
        e = events[i]
        if changes[number]["kernel"] is None and "packet" not in e:
            changes[number]["kernel"] = {"event": e["event"], "host": e["host"], "state": e["state"],
                                         "reason": e["reason"]}
            e["packet"] = number
    for e in sorted(events, key=lambda e: e["time"]):
        if e["event"] == "tcp_receive_reset":
            p = _last(p for p in packets if p.is_rst and changes[p.number]["received"] is None
                      and (p.dst, p.dport, p.src, p.sport) == (e["src"], e["sport"], e["dst"], e["dport"])
                      and p.time <= e["time"] + SLACK)
            if p:
                changes[p.number]["received"] = {"event": e["event"], "host": e["host"], "state": e["state"]}
                e["packet"] = p.number
        elif e["event"] == "kfree_skb":
            p = _last(p for p in packets if "dropped" not in changes[p.number] and p.sender != e["host"]
                      and (p.src, p.sport, p.dst, p.dport, p.flags, p.seq)
                      == (e["src"], e["sport"], e["dst"], e["dport"], e["flags"], e["seq"])
                      and p.time <= e["time"] + SLACK)
            if p:
                changes[p.number]["dropped"] = {"event": e["event"], "host": e["host"], "reason": e["reason"],
                                                "location": e["location"]}
                e["packet"] = p.number
    return [dataclasses.replace(p, **changes[p.number]) if changes[p.number] else p for p in packets]


def _last(found: Any) -> Packet | None:
    return ([*found] or [None])[-1]


def clock_offset_ns(samples: int = 9) -> int:
    """The wall clock (the capture's timestamps) minus the monotonic clock (the tracer's
    nsecs), read between two monotonic readings; the narrowest of several brackets wins. One
    plain difference of two calls is off by however long the process was preempted between
    them: on a busy machine, milliseconds, enough to put a drop's event before its packet and
    leave it unmatched (the claims on NETFILTER_DROP then failed)."""
    best: tuple[int, int] | None = None
    for _ in range(samples):
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        if best is None or after - before < best[0]:
            best = (after - before, wall - (before + after) // 2)
    assert best is not None
    return best[1]


def timed(events: list[dict[str, Any]], offset_ns: int, first_packet: float) -> list[dict[str, Any]]:
    """Events with `time`: seconds since the capture's first packet (as the packets' times),
    from CLOCK_MONOTONIC ns and the realtime-minus-monotonic offset of the run's end."""
    return [{**{k: v for k, v in e.items() if k != "t_ns"},
             "time": round((e["t_ns"] + offset_ns) / 1e9 - first_packet, 6)} for e in events]


def states(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each socket's states in order, named `HOST LOCAL > REMOTE` (tcpdump's address.port),
    or `HOST LOCAL (listening)`; a socket whose memory a new one reuses is a new socket.
    Each event of a socket gets `_socket`, that name, in place of the kernel's address of it."""
    paths: dict[str, list[str]] = {}
    current: dict[tuple[str, str], str] = {}  # (host, socket address) -> its label
    flows: dict[str, dict[str, Any]] = {}
    members: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if not e.get("socket"):
            continue
        key = (e["host"], e["socket"])
        label = current.get(key)
        if e["event"] == "inet_sock_set_state":
            if label is None or (paths[label][-1] == "TCP_CLOSE" and e["oldstate"] == "TCP_CLOSE"):
                label = f"{e['host']} socket {len(paths) + 1}"
                current[key] = label
                paths[label] = [e["oldstate"]]
            paths[label].append(e["newstate"])
            # name it by its fullest view: both ports (not a connect's unbound port, nor the
            # peer a disconnect cleared), else its own port (a listener)
            if label not in flows or _fullness(e) >= _fullness(flows[label]):
                flows[label] = e
        if label:
            members.setdefault(label, []).append(e)
    named = {}
    for label, path in paths.items():
        e = flows[label]
        local = f"{e['src']}.{e['sport']}"
        name = f"{e['host']} {local} > {e['dst']}.{e['dport']}" if not _wildcard(e) else f"{e['host']} {local} (listening)"
        while name in named:
            name += " (again)"
        named[name] = path
        for member in members.get(label, []):
            member["_socket"] = name
    return named


def _fullness(e: dict[str, Any]) -> int:
    return 2 if e["sport"] and e["dport"] else 1 if e["sport"] else 0


def strip(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events as published: a socket by its name in `states` (after states()), never by
    the kernel's address of it; without the matching's bookkeeping."""
    out = []
    for e in events:
        kept = {k: v for k, v in e.items() if not k.startswith("_") and k != "socket"}
        if "socket" in e:
            kept["socket"] = e.get("_socket")
        out.append(kept)
    return out
