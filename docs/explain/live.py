"""rst-explain --live: every RST a TCP stack of this machine sends or receives, as it happens,
with the kernel's word on it and the pages that explain it.

One bpftrace (probes.py, the lab's own program with the live additions) watches every network
namespace. Each RST is known by its tcp:tcp_send_reset (a TCP stack sent it: the reason and
the socket's state) and its tcp:tcp_receive_reset (a socket accepted it); the two are paired by
the RST's four-tuple within HOLD seconds. A RST received with no send event was made by no TCP
stack of this machine: if its source address is one of the machine's own (any namespace), a
firewall or a forger made it in the stack's name; else a remote host, or something on the path, sent it.

Each RST's features are named as the capture's (connections.py) where the kernel tells the same
thing, and ranked by the same rules (rules.py PAGES); then the kernel's word (rules.py KERNEL:
whether a stack sent it, the reason, the state, the functions on the sending task's stack)
rules out the pages it contradicts and adds KERNEL_POINTS to those it confirms.

Memory is bounded whatever the rate: every table here is an LRU of fixed size, the summary's
counters keep at most SUMMARY_KEYS keys each, and the line from bpftrace is read through a
bounded queue (bpftrace blocks, its per-CPU buffers fill, and it counts what it lost).
"""

from __future__ import annotations

import array
import collections
import ctypes
import fcntl
import json
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Any

from . import probes, verdicts
from .rules import KERNEL, KERNEL_POINTS, PAGES, TIES

HOLD = 0.2               # seconds (the kernel's clock) between a RST's send and its receipt, at most
WAIT_PAIR = 1.0          # seconds (ours) a RST's event waits for its pair once read from bpftrace
GRACE = 0.1              # seconds (ours) a paired RST waits for what follows it (the errno, the drop)
DROP_BEFORE = 5.0        # seconds before a RST in which a dropped segment of its flow is told
SOCKETS = 16384          # sockets whose paths are kept, and RSTs waiting, at most (LRU)
SUMMARY_KEYS = 1000      # keys per summary counter; more are counted as "(other)"
QUEUE = 4096             # bpftrace's lines waiting to be read
START_TIMEOUT = 60.0
RING_PAGES = 1024        # bpftrace's perf ring per CPU, in pages (4 MiB)
ACK, SYN, FIN, RST = 0x10, 0x02, 0x01, 0x04
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET, PR_SET_PDEATHSIG = 0x40000000, 1
SIOCGIFCONF = 0x8912
SOFTIRQ = ("handle_softirqs", "__do_softirq", "run_ksoftirqd")
PROCESS = ("do_syscall_64",)


class Unavailable(Exception):
    """A situation in which the live mode cannot run: one line for the user, exit 2."""


class LRU(collections.OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


class Counter(dict):
    """A bounded count: past SUMMARY_KEYS keys, new ones count as "(other)"."""

    def add(self, key: str) -> None:
        if key not in self and len(self) >= SUMMARY_KEYS:
            key = "(other)"
        self[key] = self.get(key, 0) + 1


def _flags(bits: int) -> str:
    from .capture import flag_text
    return flag_text(bits)


# -- the machine's own addresses ---------------------------------------------------------
def _namespace_paths() -> dict[int, str]:
    """Every network namespace of the machine that a task, a descriptor or /run/netns holds:
    inode -> a path that opens it."""
    found: dict[int, str] = {}
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        candidates = [f"/proc/{pid}/ns/net"]
        try:
            candidates += [f"/proc/{pid}/task/{t}/ns/net" for t in os.listdir(f"/proc/{pid}/task")]
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("net:["):
                        candidates.append(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
        except OSError:
            pass
        for path in candidates:
            try:
                found.setdefault(os.stat(path).st_ino, path)
            except OSError:
                continue
    try:
        for name in os.listdir("/run/netns"):
            try:
                found.setdefault(os.stat(f"/run/netns/{name}").st_ino, f"/run/netns/{name}")
            except OSError:
                continue
    except OSError:
        pass
    return found


def _ipv4_addresses() -> set[str]:
    """This thread's namespace's IPv4 addresses (SIOCGIFCONF, as ifconfig asks)."""
    buf = array.array("B", bytes(40 * 256))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        size, _ = struct.unpack("iL", fcntl.ioctl(s.fileno(), SIOCGIFCONF,
                                                  struct.pack("iL", len(buf), buf.buffer_info()[0])))
    data = buf.tobytes()[:size]
    return {socket.inet_ntoa(data[i + 20:i + 24]) for i in range(0, size, 40)}


def local_addresses() -> set[str]:
    """The IPv4 addresses of every network namespace of the machine (each read in a thread
    that enters it: setns() moves only the calling thread)."""
    found: set[str] = set()

    def visit(paths: list[str]) -> None:
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if _libc.setns(fd, CLONE_NEWNET) == 0:
                    found.update(_ipv4_addresses())
            except OSError:
                pass
            finally:
                os.close(fd)

    thread = threading.Thread(target=visit, args=(list(_namespace_paths().values()),), daemon=True)
    thread.start()
    thread.join()
    return found


# -- what the kernel said of one RST -------------------------------------------------------
def _either_way(flow: tuple) -> tuple:
    """A flow's key whichever way round it is seen."""
    a, b = (flow[0], flow[1]), (flow[2], flow[3])
    return (a, b) if a <= b else (b, a)


class Sock:
    __slots__ = ("path", "flow", "ns")

    def __init__(self, ns: int, first: str) -> None:
        self.ns, self.path, self.flow = ns, [first], None


class Rst:
    """One RST: its send event and/or its receipt, and what came with them."""

    def __init__(self, key: tuple, t_ns: int) -> None:
        self.key = key              # (src, sport, dst, dport) of the RST on the wire
        self.t_ns = t_ns
        self.sent: dict[str, Any] | None = None
        self.received: dict[str, Any] | None = None
        self.sender_path: list[str] = []
        self.receiver_path: list[str] = []
        self.errors: list[dict[str, Any]] = []
        self.dropped: dict[str, Any] | None = None
        self.read_ns = time.monotonic_ns()   # when its first event was read (bpftrace may lag)
        self.paired_ns: int | None = None
        self.settled = False


class Live:
    """Events in (feed()), RSTs out (settle()), as documents: see document()."""

    def __init__(self, names: dict, lacking_reason: bool, hosts: set[str] = frozenset(),
                 ports: set[int] = frozenset(), locals_: Any = local_addresses) -> None:
        self.names = names
        self.lacking_reason = lacking_reason
        self.hosts, self.ports = set(hosts), set(ports)
        self.sockets: LRU = LRU(SOCKETS)
        self.by_flow: LRU = LRU(SOCKETS)          # (ns, src, sport, dst, dport) -> its last socket
        self.pending: LRU = LRU(SOCKETS)             # the RST's four-tuple -> [Rst] not yet settled
        self.unpaired: collections.deque = collections.deque()  # Rst in the order read
        self.paired: collections.deque = collections.deque()    # Rst in the order paired
        self.drops: LRU = LRU(SOCKETS)               # a flow, either way round -> its last drops
        self.errors: LRU = LRU(SOCKETS)              # ... -> its last error reports
        self._locals_fn = locals_
        self._locals: set[str] = set()
        self._locals_at = 0.0

    # -- events ------------------------------------------------------------------------
    def _wanted(self, src: str, sport: int, dst: str, dport: int) -> bool:
        if self.hosts and src not in self.hosts and dst not in self.hosts:
            return False
        return not self.ports or sport in self.ports or dport in self.ports

    def feed(self, fields: tuple[str, ...], extra: list[str], stack: list[str]) -> None:
        e = probes.decode(fields, self.names)
        e.update(probes.decode_live(fields, extra, stack))
        ns = int(fields[3])
        name, flow = e["event"], (e["src"], e["sport"], e["dst"], e["dport"])
        if name == "inet_sock_set_state":
            key = (ns, e["socket"])
            sock = self.sockets.get(key)
            if sock is None or (sock.path[-1] == "TCP_CLOSE" and e["oldstate"] == "TCP_CLOSE"):
                sock = Sock(ns, e["oldstate"])
            if len(sock.path) < 16:
                sock.path.append(e["newstate"])
            if e["sport"] and e["dport"]:
                sock.flow = flow
                self.by_flow.put((ns, *flow), sock)
            self.sockets.put(key, sock)
            return
        if name in ("inet_sk_error_report", "kfree_skb"):
            table = self.errors if name == "inet_sk_error_report" else self.drops
            key = _either_way(flow)
            # only what a RST's document needs: these tables hold SOCKETS flows each
            kept = {k: e[k] for k in ("t_ns", "src", "sport", "dst", "dport", "errno", "reason", "location",
                                      "flags") if k in e}
            recent = table.get(key) or []
            table.put(key, [*recent[-3:], kept])
            return
        if not self._wanted(*flow):
            return
        if name == "tcp_send_reset":
            key = flow
            rst = self._pair(key, e["t_ns"], "sent")
            rst.sent = {**e, "ns": ns}
            self._paired(rst)
            sock = self.sockets.get((ns, e["socket"])) if e["socket"] else None
            sock = sock or self.by_flow.get((ns, *flow))
            rst.sender_path = list(sock.path) if sock else []
        else:  # tcp_receive_reset: the receiver's view, its own address first
            key = (e["dst"], e["dport"], e["src"], e["sport"])
            rst = self._pair(key, e["t_ns"], "received")
            rst.received = {**e, "ns": ns}
            self._paired(rst)
            sock = self.sockets.get((ns, e["socket"]))
            rst.receiver_path = list(sock.path) if sock else []

    def _pair(self, key: tuple, t_ns: int, side: str) -> Rst:
        for rst in self.pending.get(key, []):
            if getattr(rst, side) is None and abs(rst.t_ns - t_ns) <= HOLD * 1e9:
                return rst
        rst = Rst(key, t_ns)
        self.pending.put(key, [*self.pending.get(key, []), rst])
        self.unpaired.append(rst)
        return rst

    def _paired(self, rst: Rst) -> None:
        if rst.sent and rst.received:
            rst.paired_ns = time.monotonic_ns()
            self.paired.append(rst)

    # -- settling --------------------------------------------------------------------------
    def settle(self, now_ns: int, everything: bool = False) -> list[dict[str, Any]]:
        """The documents of the RSTs paired GRACE seconds ago, or unpaired for WAIT_PAIR seconds
        (now_ns: time.monotonic_ns()); each queue is in time order, so only its ready head is
        looked at."""
        ready = []
        # (past SOCKETS waiting, the oldest go at once: memory is bounded whatever the rate)
        while self.paired and (everything or len(self.paired) > SOCKETS
                               or now_ns - self.paired[0].paired_ns > GRACE * 1e9):
            ready.append(self.paired.popleft())
        while self.unpaired and (everything or len(self.unpaired) > SOCKETS
                                 or now_ns - self.unpaired[0].read_ns > WAIT_PAIR * 1e9):
            ready.append(self.unpaired.popleft())
        out = []
        for rst in ready:
            if rst.settled:
                continue
            rst.settled = True
            rsts = [r for r in self.pending.get(rst.key, []) if r is not rst]
            if rsts:
                self.pending[rst.key] = rsts
            else:
                self.pending.pop(rst.key, None)
            out.append(self.document(rst))
        out.sort(key=lambda d: d["t_ns"])
        return out

    def _is_local(self, address: str) -> bool:
        if address in self._locals:
            return True
        if time.monotonic() - self._locals_at > 1.0:  # refreshed at most once a second
            self._locals = self._locals_fn()
            self._locals_at = time.monotonic()
        return address in self._locals

    def _near(self, table: LRU, rst: Rst, before: float, after: float) -> list[dict[str, Any]]:
        return [e for e in table.get(_either_way(rst.key), ())
                if -before * 1e9 <= e["t_ns"] - rst.t_ns <= after * 1e9]

    def document(self, rst: Rst) -> dict[str, Any]:
        src, sport, dst, dport = rst.key
        sent, received = rst.sent, rst.received
        rst.errors = self._near(self.errors, rst, HOLD, HOLD)
        drops = self._near(self.drops, rst, DROP_BEFORE, HOLD)
        # the segment a RST answers is dropped after the reply (tcp_v4_rcv() in
        # net/ipv4/tcp_ipv4.c calls tcp_v4_send_reset(), then drops it at discard_it): the drop
        # nearest the RST, of a segment towards its sender
        toward = [d for d in drops if d["dst"] == src and d["dport"] == sport] or drops
        rst.dropped = min(toward, key=lambda d: abs(d["t_ns"] - rst.t_ns)) if toward else None
        stack = [f.split("+")[0] for f in (sent or {}).get("stack", [])]
        context = None
        if sent:
            if any(f in SOFTIRQ for f in stack):
                context = "softirq"
            elif any(f in PROCESS for f in stack):
                context = "process"
            elif stack:
                context = "other"
        if sent:
            local_sender = True
        elif self._is_local(src):
            local_sender = True  # an address of this machine, and no stack of it sent the RST
        else:
            local_sender = None  # a remote host's, or forged on the way: the kernel cannot tell
        features = self.features(rst, stack)
        ranked, apart, notes = self.rank(features, rst, stack, local_sender)
        top = ranked[0]["score"] if ranked else None
        doc: dict[str, Any] = {
            "t_ns": rst.t_ns, "src": f"{src}:{sport}", "dst": f"{dst}:{dport}",
            "direction": "sent" if sent else "received",
            "sender": ("this machine's TCP stack" if sent else
                       "no TCP stack of this machine (its address is one of this machine's: a firewall or "
                       "a forged segment)" if local_sender else
                       "a remote host, or something on the way (no TCP stack of this machine sent it)"),
            "netns": (sent or received)["ns"],
            "reason": sent["reason"] if sent else None,
            "state": sent["state"] if sent else None,
            "path": rst.sender_path,
            "pid": sent.get("pid") if sent and context == "process" else None,
            "comm": sent.get("comm") if sent and context == "process" else None,
            "context": context,
            "interrupted": ({"pid": sent.get("pid"), "comm": sent.get("comm")}
                            if sent and context == "softirq" else None),
            "via": [f for f in stack if not f.startswith(("tcp_v4_send_reset", "tcp_send_active_reset"))][:4],
            "answered": ({"flags": _flags(sent["answered_flags"]), "bytes": sent["answered_len"]}
                         if sent and sent.get("socket") is None or sent and sent.get("answered_flags") else None),
            "received": ({"state": received["state"], "path": rst.receiver_path, "netns": received["ns"]}
                         if received else None),
            "errno": rst.errors[0]["errno"] if rst.errors else None,
            "errors": [{"errno": e["errno"], "socket": f"{e['src']}:{e['sport']}"} for e in rst.errors],
            "dropped": ({"reason": rst.dropped["reason"], "location": rst.dropped["location"],
                         "flags": rst.dropped["flags"], "src": f"{rst.dropped['src']}:{rst.dropped['sport']}"}
                        if rst.dropped else None),
            "features": sorted(features),
            "verdicts": ranked,
            "tie": [v["slug"] for v in ranked if v["score"] == top],
            "told_apart": apart,
            "notes": notes,
        }
        return doc

    # -- features and pages ----------------------------------------------------------------
    def features(self, rst: Rst, stack: list[str]) -> dict[str, str]:
        """What the kernel tells of this RST, named as the capture's features (connections.py)."""
        f: dict[str, str] = {}
        sent, received = rst.sent, rst.received
        path = rst.sender_path
        if sent and sent.get("socket") is None or sent and sent.get("skb_reply"):
            pass
        if sent and (sent.get("answered_flags") or sent.get("socket") is None
                     or sent["state"] in ("TCP_TIME_WAIT", "TCP_LISTEN", "TCP_SYN_SENT", "TCP_NEW_SYN_RECV")):
            # tcp_v4_send_reset() in net/ipv4/tcp_ipv4.c: a reply to a segment, made from that segment
            bits, length = sent.get("answered_flags", 0), sent.get("answered_len", 0)
            answered = f"[{_flags(bits)}]"
            if bits & ACK:
                f["rst_no_ack"] = (f"[R] without ACK: the reply to the ACK-bearing segment {answered} "
                                   "(tcp_v4_send_reset() in net/ipv4/tcp_ipv4.c)")
            else:
                f["rst_ack"] = f"[R.]: the reply to a segment without ACK {answered}"
                f["rst_seq_zero"] = "seq 0: the answered segment had no ACK (tcp_v4_send_reset())"
            f["rst_no_options"] = "a reply made without a connection's state: no TCP option (tcp_v4_send_reset())"
            f["rst_win_zero"] = "window 0 (tcp_v4_send_reset())"
            if bits & SYN and not bits & ACK:
                f["answers_syn"] = f"answers a SYN {answered}: nothing accepted the connection"
            elif bits & SYN and bits & ACK:
                f["answers_synack"] = f"answers a SYN-ACK {answered} to a connection it opened"
            elif sent["state"] == "TCP_LISTEN":
                f["answers_handshake_ack"] = f"a listener answers {answered}: the handshake's ACK it cannot take"
            elif bits:
                f["answers_segment"] = f"answers {answered} in a connection it has no open socket for"
                if length > 0:
                    f["answers_data"] = f"the answered segment carries {length} bytes of data"
                elif not bits & FIN:
                    f["keepalive_probe"] = ("the answered segment carries no data and no FIN, as a keepalive probe "
                                            "(tcp_xmit_probe_skb() in net/ipv4/tcp_output.c)")
                if "TCP_FIN_WAIT1" in path or sent["state"] == "TCP_TIME_WAIT":
                    f["sender_fin_before"] = ("its socket had sent its FIN and closed: "
                                              + " > ".join(path or [sent["state"]]))
        elif sent:
            # tcp_send_active_reset() in net/ipv4/tcp_output.c: a socket aborts
            f["rst_ack"] = "[R.] from a socket (tcp_send_active_reset() in net/ipv4/tcp_output.c)"
            f["socket_abort"] = "a socket's own RST: tcp_send_active_reset() in net/ipv4/tcp_output.c"
            rcvd, sent_bytes = sent.get("bytes_received", 0), sent.get("bytes_sent", 0)
            if "TCP_SYN_SENT" in path:
                f["sender_initiator"] = "it opened the connection (its path: TCP_SYN_SENT)"
            elif "TCP_SYN_RECV" in path:
                f["sender_acceptor"] = "it accepted the connection (its path: TCP_SYN_RECV)"
            fin_sent, fin_received = "TCP_FIN_WAIT1" in path, "TCP_CLOSE_WAIT" in path
            if not rcvd and not sent_bytes and not fin_sent and not fin_received:
                f["no_data"] = "no data either way (tcp_sock bytes_received and bytes_sent 0)"
            if rcvd and not sent_bytes and not fin_sent:
                f["peer_data_unanswered"] = f"it had received {rcvd} bytes and sent none"
            if sent_bytes and not fin_sent:
                f["sender_data_then_rst"] = f"it had sent {sent_bytes} bytes, then this RST and no FIN"
            if fin_received and not fin_sent:
                f["peer_fin_before"] = "the peer had sent its FIN (its path: TCP_CLOSE_WAIT)"
            if fin_sent and not fin_received:
                f["sender_fin_then_rst"] = "it had sent its FIN (its path: TCP_FIN_WAIT1), then this RST"
            if "tcp_keepalive_timer" in stack:
                f["probes_unanswered"] = ("sent by the keepalive timer (tcp_keepalive_timer() in "
                                          "net/ipv4/tcp_timer.c): its probes went unanswered")
                f["unprompted"] = "nothing from the peer prompted it"
            if "inet_csk_listen_stop" in stack:
                f["resets_together"] = ("its listener was closing (inet_csk_listen_stop() in "
                                        "net/ipv4/inet_connection_sock.c resets each queued connection)")
        elif received:
            state = received["state"]
            if state == "TCP_SYN_SENT":
                f["answers_syn"] = "accepted in TCP_SYN_SENT: it answers this socket's SYN"
                f["rst_ack"] = "a RST that answers a SYN carries ACK (RFC 9293 §3.10.7.1)"
            elif state in ("TCP_ESTABLISHED", "TCP_CLOSE_WAIT", "TCP_FIN_WAIT1", "TCP_FIN_WAIT2"):
                outstanding = received.get("bytes_sent", 0) - received.get("bytes_acked", 0)
                if outstanding > 0:
                    f["answers_segment"] = f"accepted in {state}, with {outstanding} bytes sent and not acknowledged"
                    f["answers_data"] = f"it answers data: {outstanding} bytes were outstanding"
                else:
                    f["unprompted"] = f"accepted in {state} with nothing outstanding: nothing prompted it"
        return f

    def _matches(self, k: Any, rst: Rst, stack: list[str], local_sender: bool | None) -> tuple[bool, str]:
        sent = rst.sent
        if not k.sent:
            if sent:
                return False, "expects a RST no TCP stack sent; this one had tcp_send_reset"
            if local_sender is None:
                return True, "no TCP stack of this machine sent it"
            return True, "no TCP stack of this machine sent it, from one of this machine's addresses"
        if not sent:
            if local_sender is None:
                return True, ""
            return False, "expects a TCP stack's RST; no tcp_send_reset came for this one"
        if not self.lacking_reason and k.reason and sent["reason"] != k.reason:
            return False, f"expects reason {k.reason}; the kernel said {sent['reason']}"
        if k.state and sent["state"] != k.state:
            return False, f"expects the state {k.state}; the socket was in {sent['state']}"
        if stack:
            missing = [fn for fn in k.via if fn not in stack]
            if missing:
                return False, f"expects {missing[0]}() on the kernel's stack; it was not"
            present = [fn for fn in k.not_via if fn in stack]
            if present:
                return False, f"{present[0]}() was on the kernel's stack: not this page's way"
        said = (f"reason {sent['reason']}, state {sent['state']}" if not self.lacking_reason
                else f"the socket's state {sent['state']}")
        via = [fn for fn in k.via if fn in stack]
        return True, said + (f", by {via[0]}()" if via else "") + ", as on this page's recording"

    def rank(self, features: dict[str, str], rst: Rst, stack: list[str], local_sender: bool | None,
             ) -> tuple[list[dict[str, Any]], list[dict[str, str]], list[str]]:
        wire = verdicts(features)
        wire_top = wire[0]["score"] if wire else None
        ranked, apart, notes = [], [], []
        for v in wire:
            ok, why = self._matches(KERNEL[v["slug"]], rst, stack, local_sender)
            if not ok:
                if v["score"] == wire_top or len(apart) < 6:
                    apart.append({"slug": v["slug"], "why": why})
                continue
            ranked.append({"slug": v["slug"], "score": v["score"] + (KERNEL_POINTS if why else 0),
                           "url": url(v["slug"], v["packet_name"]),
                           "evidence": ([f"the kernel: {why}"] if why else []) + v["evidence"],
                           "against": v["against"]})
        if not ranked:  # the features match no page the kernel allows: the kernel's word alone
            for slug, k in KERNEL.items():
                ok, why = self._matches(k, rst, stack, local_sender)
                if ok and why and (k.reason or not k.sent):
                    ranked.append({"slug": slug, "score": KERNEL_POINTS, "url": url(slug, PAGES[slug].packet),
                                   "evidence": [f"the kernel: {why}"], "against": []})
            if ranked:
                notes.append("no page matched what the kernel tells of the connection; these match the "
                             "kernel's word alone")
        ranked.sort(key=lambda v: -v["score"])
        top = [v["slug"] for v in ranked if v["score"] == ranked[0]["score"]] if ranked else []
        if len(top) > 1:
            for group in TIES:
                if len(set(group["slugs"]) & set(top)) >= 2:
                    notes.append("reason, state and stack cannot tell " + ", ".join(top) + " apart: "
                                 + group["next"][0])
                    break
        if rst.sent is None and local_sender is None:
            notes.append("a remote host sent this RST (or something on the way forged it): only a capture "
                         "on both sides, or the kernel's word on that host, can tell")
        return ranked, apart, notes


def url(slug: str, packet_name: str | None) -> str:
    from .__main__ import _link, _packet_numbers
    global _NUMBERS
    if _NUMBERS is None:
        _NUMBERS = _packet_numbers()
    return _link(slug, packet_name, _NUMBERS)


_NUMBERS: dict | None = None


# -- the watcher ------------------------------------------------------------------------
def preflight() -> None:
    """Raise Unavailable, with one line for the user, where the live mode cannot run."""
    if os.geteuid() != 0:
        raise Unavailable("needs root: the kernel's tracepoints are the machine's (CAP_BPF, CAP_PERFMON "
                          "and tracefs); run it with sudo")
    missing = [tool for tool in ("bpftrace", "pahole", "unshare") if not shutil.which(tool)]
    if missing:
        raise Unavailable(f"{' and '.join(missing)} not found on PATH (Debian packages bpftrace, dwarves, "
                          "util-linux): `apt-get install bpftrace dwarves`")


def _new_namespace() -> int:
    """A fresh network namespace, held by the descriptor returned (the calling thread stays home)."""
    fd: list[int] = []

    def make() -> None:
        if _libc.unshare(CLONE_NEWNET) == 0:  # this thread only, which ends here
            fd.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))

    thread = threading.Thread(target=make, daemon=True)
    thread.start()
    thread.join()
    if not fd:
        raise Unavailable(f"cannot make a network namespace: {os.strerror(ctypes.get_errno())}")
    return fd[0]


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Watcher:
    """bpftrace running the live program; its lines through a bounded queue."""

    def __init__(self, netns: list[str]) -> None:
        preflight()
        try:
            found = probes.kernel_formats()
        except probes.NoTracefs as exc:
            raise Unavailable(f"no tracefs: {exc}") from None
        except (OSError, subprocess.SubprocessError) as exc:
            raise Unavailable(f"cannot read the tracepoints' formats: {exc}") from None
        needed = [e for e in ("tcp_send_reset", "tcp_receive_reset") if e not in found["events"]]
        if needed:
            raise Unavailable("this kernel cannot be watched: " + "; ".join(found["missing"][e] for e in needed))
        self.found = found
        self.lacking_reason = "reason" in found.get("lacking", {}).get("tcp_send_reset", [])
        # the marker's namespace, of this process's own (flush()): its sockets' events tell that
        # bpftrace has printed everything before them
        self.mark_fd = _new_namespace()
        self.mark_ns = os.fstat(self.mark_fd).st_ino
        self.marks: dict[int, int] = {}
        self.marked = threading.Condition()
        only = [self.mark_ns] if netns else []
        for path in netns:
            try:
                only.append(os.stat(path).st_ino)
            except OSError as exc:
                raise Unavailable(f"--netns {path}: {exc.strerror}") from None
        try:
            layout = probes.declarations(probes.offsets(probes.LIVE_LAYOUT), probes.LIVE_LAYOUT)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            raise Unavailable(f"cannot read this kernel's structures (pahole): {exc}") from None
        fields = found["fields"]
        self.script = probes.script(found["events"], 0, layout, rx_sk="rx_sk" in fields["kfree_skb"],
                                    rst_reason=not self.lacking_reason, live=True, only=tuple(only))
        self.lines: queue.Queue = queue.Queue(QUEUE)
        self.ready = threading.Event()
        self.lost = 0
        self.read: collections.Counter = collections.Counter()  # events read, by tracepoint
        self.stderr: collections.deque = collections.deque(maxlen=50)
        # a deeper ring than bpftrace's default 64 pages per CPU: a burst of RSTs waits there
        # while this process is busy, rather than being lost (bpftrace counts what is lost)
        env = {**os.environ, "BPFTRACE_PERF_RB_PAGES": os.environ.get("BPFTRACE_PERF_RB_PAGES", str(RING_PAGES))}
        self.proc = subprocess.Popen(probes.in_tracefs('exec bpftrace -e "$0"') + [self.script], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, errors="replace", start_new_session=True,
                                     preexec_fn=_die_with_parent)  # noqa: PLW1509 (before any thread of ours reads it)
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._errors, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        stack: list[str] | None = None
        pending: tuple | None = None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if stack is not None:
                if line == "|":
                    self.lines.put((*pending, stack))
                    stack = pending = None
                elif line.strip():
                    stack.append(line.strip())
                continue
            kind, _, rest = line.partition(" ")
            if kind == "E":
                fields, extra = probes.split(rest)
                if int(fields[3]) == self.mark_ns:  # name, t, cpu, ns: the marker
                    with self.marked:
                        cpu = int(fields[2])
                        self.marks[cpu] = max(self.marks.get(cpu, 0), int(fields[1]))
                        self.marked.notify_all()
                    continue
                self.read[fields[0]] += 1
                if fields[0] == "tcp_send_reset" and extra:
                    pending, stack = (fields, extra), []
                else:
                    self.lines.put((fields, extra, []))
            elif kind == "R":
                self.ready.set()
            elif line.startswith("Lost"):  # bpftrace: "Lost N events"
                found = re.search(r"\d+", line)
                self.lost += int(found.group()) if found else 1
        self.lines.put(None)
        self.ready.set()

    def _errors(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "RLIMIT_MEMLOCK" not in line:
                self.stderr.append(line.rstrip())

    def misses(self) -> int:
        return probes.recursion_misses(self.proc.pid)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until bpftrace has printed every event made until now: a socket set listening in
        the marker's namespace on each CPU, whose inet_sock_set_state comes after every event that
        CPU wrote before it (each CPU's buffer is read in order), as the lab's tracer does."""
        until = time.monotonic_ns()
        cpus = sorted(os.sched_getaffinity(0))

        def mark() -> None:
            if _libc.setns(self.mark_fd, CLONE_NEWNET) != 0:  # this thread only, which ends here
                return
            for cpu in cpus:
                os.sched_setaffinity(0, {cpu})
                with socket.socket() as marker:
                    marker.listen()  # TCP_CLOSE -> TCP_LISTEN, on this CPU

        thread = threading.Thread(target=mark, daemon=True)
        thread.start()
        thread.join()
        deadline = time.monotonic() + timeout
        with self.marked:
            while not all(self.marks.get(c, 0) > until for c in cpus):
                if self.proc.poll() is not None or not self.marked.wait(max(0.0, deadline - time.monotonic())):
                    return False
        return True

    def stop(self) -> None:
        """bpftrace ends on SIGINT after printing what its buffers still hold (SIGKILL if it
        takes more than 5 s)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass


# -- printing ---------------------------------------------------------------------------
def _clock_offset_ns() -> int:
    before = time.monotonic_ns()
    wall = time.time_ns()
    return wall - (before + time.monotonic_ns()) // 2


def text_lines(doc: dict[str, Any], offset_ns: int) -> list[str]:
    when = time.strftime("%H:%M:%S", time.localtime((doc["t_ns"] + offset_ns) / 1e9))
    micro = f"{((doc['t_ns'] + offset_ns) // 1000) % 1_000_000:06d}"
    lines = [f"{when}.{micro}  {doc['src']} > {doc['dst']}  [{doc['direction']}]  sent by {doc['sender']}"]
    if doc["direction"] == "sent":
        kernel = f"  kernel: reason {doc['reason'] or '(unknown: no reason field)'}, state {doc['state']}"
        if doc["path"]:
            kernel += f"; path {' > '.join(doc['path'])}"
        lines.append(kernel)
        who = (f"in process {doc['comm']} (pid {doc['pid']})" if doc["context"] == "process" else
               f"in softirq (it interrupted {doc['interrupted']['comm']}, pid {doc['interrupted']['pid']}: "
               "often the sender of the segment it answers)" if doc["context"] == "softirq" else "context unknown")
        lines.append(f"  sent {who}, by {' < '.join(doc['via'][:3]) or '?'}")
        if doc["answered"]:
            lines.append(f"  answers [{doc['answered']['flags']}] with {doc['answered']['bytes']} bytes of data")
    if doc["received"]:
        path = f" (path {' > '.join(doc['received']['path'])})" if doc["received"]["path"] else ""
        lines.append(f"  received in {doc['received']['state']}{path}")
    if doc["errors"]:
        lines.append("  errno reported: " + ", ".join(f"{e['errno']} to {e['socket']}" for e in doc["errors"]))
    if doc["dropped"]:
        d = doc["dropped"]
        lines.append(f"  dropped with it: [{d['flags']}] from {d['src']}, {d['reason']} in {d['location']}()")
    tie = doc["tie"]
    for rank, v in enumerate(doc["verdicts"][:4]):
        mark = "=" if len(tie) > 1 and v["slug"] in tie else " "
        lines.append(f"  {mark}{rank + 1}. {v['slug']:<26} score {v['score']:>3}  {v['url']}")
        if rank == 0 or v["slug"] in tie:
            lines += [f"        + {e}" for e in v["evidence"]]
    if not doc["verdicts"]:
        lines.append("    no page matches")
    for a in doc["told_apart"]:
        lines.append(f"  told apart by the kernel: {a['slug']}: {a['why']}")
    lines += [f"  note: {n}" for n in doc["notes"]]
    return lines


def public(doc: dict[str, Any], offset_ns: int) -> dict[str, Any]:
    """The JSON object of one RST: time as seconds since the epoch, verdicts without their evidence
    lists' internals kept (slug, score, url, evidence)."""
    out = {k: v for k, v in doc.items() if k != "t_ns"}
    out["time"] = round((doc["t_ns"] + offset_ns) / 1e9, 6)
    return {"time": out.pop("time"), **out}


class Summary:
    def __init__(self) -> None:
        self.rsts = 0
        self.not_printed = 0
        self.reasons, self.pages, self.peers, self.processes = Counter(), Counter(), Counter(), Counter()

    def add(self, doc: dict[str, Any]) -> None:
        self.rsts += 1
        self.reasons.add(doc["reason"] or ("(no TCP stack sent it)" if doc["direction"] == "received"
                                           else "(no reason field)"))
        self.pages.add(doc["verdicts"][0]["slug"] if doc["verdicts"] else "(no page)")
        peer = doc["dst"] if doc["direction"] == "sent" else doc["src"]
        self.peers.add(peer.rpartition(":")[0])
        if doc["comm"]:
            self.processes.add(f"{doc['comm']} ({doc['pid']})")

    def document(self, seconds: float, lost: int, misses: int, read: dict[str, int] | None = None,
                 ) -> dict[str, Any]:
        def top(c: Counter) -> dict[str, int]:
            return dict(sorted(c.items(), key=lambda kv: -kv[1]))
        return {"summary": {"rsts": self.rsts, "seconds": round(seconds, 3), "not_printed": self.not_printed,
                            "lost_events": lost, "missed_probe_runs": misses, "events_read": read or {},
                            "reasons": top(self.reasons), "pages": top(self.pages),
                            "peers": top(self.peers), "processes": top(self.processes)}}


def run(args: Any, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        watcher = Watcher(args.netns or [])
    except Unavailable as exc:
        print(f"rst-explain --live: {exc}", file=err)
        return 2
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    summary = Summary()
    started = time.monotonic()
    try:
        if not watcher.ready.wait(START_TIMEOUT) or watcher.proc.poll() is not None:
            print("rst-explain --live: bpftrace did not start: " + " / ".join(watcher.stderr)[-400:], file=err)
            return 2
        started = time.monotonic()
        scope = ("every network namespace" if not args.netns else
                 f"{len(args.netns)} network namespace{'s' if len(args.netns) > 1 else ''}")
        print(f"watching {scope} for TCP RSTs (bpftrace pid {watcher.proc.pid})"
              + (f", host {', '.join(args.host)}" if args.host else "")
              + (f", port {', '.join(map(str, args.port))}" if args.port else ""), file=err, flush=True)
        if watcher.lacking_reason:
            print("rst-explain --live: this kernel's tcp:tcp_send_reset has no reason field (Linux 6.10 added it):"
                  " the pages are told apart by who sent each RST, the socket's state and the kernel's stack,"
                  " not by the reason", file=err, flush=True)
        live = Live(watcher.found["names"], watcher.lacking_reason, set(args.host or []), set(args.port or []))
        offset = _clock_offset_ns()
        budget, window = float(args.rate), time.monotonic()
        suppressed_here = 0
        deadline = started + args.seconds if args.seconds else None
        done = False
        draining = False  # stopped: bpftrace is gone, what it had printed is read to the end
        misses = 0
        while not done:
            timeout = 0.05
            if deadline is not None and not draining:
                timeout = max(0.0, min(timeout, deadline - time.monotonic()))
            try:
                item = watcher.lines.get(timeout=timeout)
            except queue.Empty:
                item = False
            if item is None:
                if not stop.is_set() and not draining:
                    print("rst-explain --live: bpftrace ended: " + " / ".join(watcher.stderr)[-400:], file=err)
                done = True
            elif item:
                live.feed(*item)
            if not draining and (stop.is_set() or (deadline is not None and time.monotonic() >= deadline)):
                misses = watcher.misses()
                # everything bpftrace holds is read on (the reader goes on meanwhile), then it stops
                flushing = threading.Thread(target=lambda: (watcher.flush(), watcher.stop()), daemon=True)
                flushing.start()
                draining = True
            now = time.monotonic()
            if now - window >= 1.0:
                if suppressed_here:
                    print(f"rst-explain --live: {suppressed_here} RST(s) not printed in the last "
                          f"{now - window:.1f} s (at most {args.rate}/s; all are in the summary)",
                          file=err if args.json else out, flush=True)
                budget, window, suppressed_here = float(args.rate), now, 0
            for doc in live.settle(time.monotonic_ns(), everything=done):
                summary.add(doc)
                if budget >= 1:
                    budget -= 1
                    if args.json:
                        out.write(json.dumps(public(doc, offset)) + "\n")
                    else:
                        out.write("\n".join(text_lines(doc, offset)) + "\n")
                    out.flush()
                else:
                    summary.not_printed += 1
                    suppressed_here += 1
                if args.count and summary.rsts >= args.count:
                    done = True
                    break
        if not draining:
            misses = watcher.misses()
        watcher.stop()
        lost = watcher.lost
        doc = summary.document(time.monotonic() - started, lost, misses, dict(watcher.read))
        if args.json:
            out.write(json.dumps(doc) + "\n")
        else:
            s = doc["summary"]
            out.write(f"== {s['rsts']} RST(s) in {s['seconds']} s; not printed {s['not_printed']}; "
                      f"events lost {s['lost_events']}; probe runs the kernel skipped {s['missed_probe_runs']}\n")
            for name in ("reasons", "pages", "peers", "processes"):
                if s[name]:
                    out.write(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in s[name].items()) + "\n")
        out.flush()
        return 0
    finally:
        watcher.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
