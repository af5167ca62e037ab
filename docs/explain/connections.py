"""Follow each TCP connection of a capture and describe every RST by what the wire shows.

One job: Segments in, for each RST a `Finding` (the RST, and the named features of the wire
around it, each with its evidence text), and per connection without RST a note. Which page
a feature points to is rules.py's business, not this module's.

Memory grows with the connections open at once: a connection is forgotten once it is closed
or reset and quiet (or idle for long), and a RST's finding is handed out once the few packets
after it that can change its reading (a challenge ACK, the peer still talking) have passed.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Iterator

from .capture import ACK, FIN, RST, SYN, Segment, flag_text, has_timestamps, option_names

MOD = 1 << 32
AFTER_PACKETS = 4          # packets of the same connection watched after a RST
SETTLE_QUIET = 1.0         # ...or seconds of silence after it
FORGET_QUIET = 4.0         # seconds of silence after which a closed or reset connection is dropped
                           # (a later segment of it reads as a stray one)
FORGET_IDLE = 3600.0       # ...and after which any connection is dropped
SWEEP_EVERY = 4096         # packets between sweeps (a power of 2)


def _before(a: int, b: int) -> bool:
    """a < b in sequence space (RFC 9293 §3.4: arithmetic modulo 2**32)."""
    return 0 < (b - a) % MOD < 1 << 31


def _idle(conn: "Connection", gap: float) -> bool:
    """Silence long against the connection's round trip (the handshake's, where seen): not a
    pause between a request and its answer. At least 0.1 s: a capture's clock is that coarse."""
    rtt = conn.rtt if conn.rtt is not None else 0.001
    return gap >= 0.1 and gap > 100 * max(rtt, 0.0005)


class Side:
    __slots__ = ("addr", "port", "isn", "nxt", "una_seen", "fin_seq", "fin_time", "fin_acked",
                 "data_bytes", "data_packets", "retransmits", "ttl", "ttl_mixed",
                 "timestamps", "packets", "last_time", "syn_count", "synack_count", "probes",
                 "last_data_time", "acks_sent_time", "win", "last_ack", "probe_number")

    def __init__(self, addr: str, port: int) -> None:
        self.addr, self.port = addr, port
        self.isn = self.nxt = self.fin_seq = self.ttl = None
        self.una_seen = None          # highest ack this side received from the peer
        self.fin_time = self.last_time = self.last_data_time = self.acks_sent_time = None
        self.fin_acked = self.timestamps = self.ttl_mixed = False
        self.data_bytes = self.data_packets = self.retransmits = self.packets = 0
        self.syn_count = self.synack_count = self.probes = 0
        self.win = self.last_ack = self.probe_number = None

    def name(self) -> str:
        return f"{self.addr}.{self.port}"


class Connection:
    __slots__ = ("sides", "first", "last", "history", "rtt", "resets", "pending", "syn_time",
                 "synack_time", "synack_ack", "handshake_ack", "synack_again_after_ack",
                 "midstream", "first_number", "first_finding")

    def __init__(self, a: Side, b: Side, seg: Segment, midstream: bool) -> None:
        self.sides = (a, b)
        self.first = self.last = seg.time
        self.first_number = seg.number
        self.history: deque = deque(maxlen=6)   # the last Segments (direction: Tracker._sent_by)
        self.rtt = None
        self.resets: list[int] = []
        self.pending: list[Finding] = []
        self.syn_time = self.synack_time = self.synack_ack = self.handshake_ack = None
        self.synack_again_after_ack = False
        self.midstream = midstream
        if midstream:
            self.handshake_ack = seg   # no handshake to watch
        self.first_finding = None


class Finding:
    """One RST: the packet, who sent it, and the wire's features (name -> evidence text)."""

    __slots__ = ("segment", "sender", "receiver", "features", "after", "conn", "direction", "earlier")

    def __init__(self, seg: Segment, conn: Connection, direction: int) -> None:
        self.segment = seg
        self.conn = conn
        self.direction = direction
        self.sender = conn.sides[direction]
        self.receiver = conn.sides[1 - direction]
        self.features: dict[str, str] = {}
        self.after = 0
        self.earlier: Finding | None = None   # the connection's first RST, when this one follows it


class Tracker:
    """Feed segments in order with `add`; collect findings from `ready()` and, at the end, `finish()`."""

    def __init__(self) -> None:
        self.conns: dict[tuple, tuple[Connection, int]] = {}
        self.endpoints: dict[tuple, Connection] = {}   # (initiator addr, port) -> connection
        self.host_ttl: dict[str, set] = {}             # address -> TTLs of its SYN/SYN-ACK/data
        self.reset_times: dict[tuple, deque] = {}      # (sender addr, port) -> recent RST times
        self.syn_times: deque = deque(maxlen=64)
        self.done: list[Finding] = []
        self.notes: dict[str, list] = {}               # note kind -> [count, first packet, example]
        self.segments = 0
        self.rsts = 0
        self.count = 0
        self.watched: deque = deque()     # connections with unsettled findings, oldest first
        self.closed: deque = deque()      # connections closed or reset, in the order they closed
        self.unsettled: list[int] = []    # heap of unsettled RSTs' packet numbers
        self.settled: set[int] = set()    # ...settled, still in the heap
        self.last_full_sweep = None

    # -- per packet ----------------------------------------------------------------------

    def add(self, seg: Segment) -> None:
        number, t, src, dst, sport, dport, flags, seq, ack, win, length, ttl, *_ = seg
        self.segments += 1
        key = (src, sport, dst, dport)
        entry = self.conns.get(key)
        if entry is None:
            entry = self._open(seg, key, src, dst, sport, dport, flags)
        conn, d = entry
        me = conn.sides[d]
        kind = flags & 0x17   # FIN, SYN, RST, ACK
        if (kind == ACK or kind == FIN | ACK and not length) and seq == me.nxt and me.ttl == ttl \
                and not conn.pending and (conn.handshake_ack or not length and d == 0
                                          and conn.synack_time is not None):
            # the common case, inline: an in-order ACK, data or bare FIN of a known connection
            # (the same bookkeeping as _update's for such a segment)
            every_ack = kind != ACK     # _update looks at every ACK of these for a FIN's
            if conn.handshake_ack is None:
                conn.handshake_ack = seg
                every_ack = True
            peer = conn.sides[1 - d]
            if length:
                me.data_packets += 1
                me.data_bytes += length
                me.last_data_time = t
                me.nxt = (seq + length) & 0xFFFFFFFF
                if not me.timestamps:
                    me.timestamps = has_timestamps(seg.options)
            elif kind != ACK:
                me.nxt = (seq + 1) & 0xFFFFFFFF
                if me.fin_seq is None:
                    me.fin_seq, me.fin_time = seq, t
            una = peer.una_seen
            if una is None or 0 < (ack - una) & 0xFFFFFFFF < 0x80000000:
                peer.una_seen = ack
                if peer.fin_seq is not None:
                    self._fin_acked(conn, me, peer, ack)
            elif every_ack and peer.fin_seq is not None:
                self._fin_acked(conn, me, peer, ack)
            me.acks_sent_time = t
            me.last_ack = ack
            me.win = win
        elif flags & RST:
            if conn.pending:
                self._watch_after(conn, d, seg)
            self._reset(conn, d, seg, t - conn.last)
        else:
            if conn.pending:
                self._watch_after(conn, d, seg)
            self._update(conn, d, me, conn.sides[1 - d], seg)
        conn.history.append(seg)
        conn.last = t
        me.last_time = t
        me.packets += 1
        if not self.segments & (SWEEP_EVERY - 1):
            self._sweep(t)

    def _fin_acked(self, conn: Connection, me: Side, peer: Side, ack: int) -> None:
        if not peer.fin_acked and ack == (peer.fin_seq + 1) % MOD:
            peer.fin_acked = True
            if me.fin_acked:
                self.closed.append(conn)

    def _open(self, seg: Segment, key: tuple, src_addr: str, dst_addr: str, sport: int, dport: int,
              flags: int) -> tuple[Connection, int]:
        src, dst = Side(src_addr, sport), Side(dst_addr, dport)
        if flags & (SYN | ACK) == SYN | ACK:   # the initiator is the receiver of a SYN-ACK
            conn = Connection(dst, src, seg, midstream=False)
            fwd, rev = 1, 0
        else:
            conn = Connection(src, dst, seg, midstream=not flags & SYN)
            fwd, rev = 0, 1
        self.conns[key] = (conn, fwd)
        self.conns[(dst_addr, dport, src_addr, sport)] = (conn, rev)
        a = conn.sides[0]
        if not conn.midstream:
            self.endpoints[(a.addr, a.port)] = conn
        return conn, fwd

    def _update(self, conn: Connection, d: int, me: Side, peer: Side, seg: Segment) -> None:
        flags, seq, length = seg.flags, seg.seq, seg.length
        if seq < 0:            # tcpdump's text leaves a pure ACK's seq out
            seq = me.nxt if me.nxt is not None else 0
            if flags & (SYN | FIN | ACK) == ACK and not length and seg.ack == me.last_ack and \
                    peer.nxt is not None and _idle(conn, seg.time - conn.last):
                # a keepalive probe has seq one below; the text hides it, the idle bare ACK remains
                me.probes += 1
                me.probe_number = seg.number
        if me.ttl is None:
            me.ttl = seg.ttl
        elif seg.ttl is not None and seg.ttl != me.ttl:
            me.ttl_mixed = True
        if flags & SYN:
            self._syn(conn, d, me, seg, seq)
        elif flags & ACK and d == 0 and conn.synack_time is not None and conn.handshake_ack is None:
            conn.handshake_ack = seg
        end = (seq + length + (1 if flags & FIN else 0) + (1 if flags & SYN else 0)) % MOD
        if length:
            if me.nxt is not None and not _before(seq, me.nxt) and seq == me.nxt:
                me.data_packets += 1
                me.data_bytes += length
            elif me.nxt is not None and _before(seq, me.nxt):
                me.retransmits += 1
            else:
                me.data_packets += 1
                me.data_bytes += length
            me.last_data_time = seg.time
            if seg.ttl is not None:
                self._host_ttl(me.addr, seg.ttl)
        elif not flags & (SYN | FIN) and me.nxt is not None and (seq + 1) % MOD == me.nxt \
                and peer.nxt is not None and conn.history:
            # a keepalive probe: seq snd_una - 1, one below the oldest unacknowledged byte, which on
            # an idle connection is one below all it has sent (tcp_xmit_probe_skb() in
            # net/ipv4/tcp_output.c, from tcp_keepalive_timer() in net/ipv4/tcp_timer.c)
            me.probes += 1
            me.probe_number = seg.number
        if me.nxt is None or _before(me.nxt, end):
            me.nxt = end
        if flags & FIN and me.fin_seq is None:
            me.fin_seq, me.fin_time = seq + length, seg.time
        if flags & ACK:
            me.acks_sent_time = seg.time
            me.last_ack = seg.ack
            if peer.una_seen is None or _before(peer.una_seen, seg.ack):
                peer.una_seen = seg.ack
            if peer.fin_seq is not None:
                self._fin_acked(conn, me, peer, seg.ack)
        me.win = seg.win
        if not me.timestamps and length:
            me.timestamps = has_timestamps(seg.options)

    def _host_ttl(self, addr: str, ttl: int) -> None:
        ttls = self.host_ttl.get(addr)
        if ttls is None:
            self.host_ttl[addr] = ttls = set()
        ttls.add(ttl)

    def _syn(self, conn: Connection, d: int, me: Side, seg: Segment, seq: int) -> None:
        if seg.ttl is not None:
            self._host_ttl(me.addr, seg.ttl)
        me.timestamps = has_timestamps(seg.options)
        if seg.flags & ACK:
            me.synack_count += 1
            if me.synack_count > 1 and conn.handshake_ack is not None:
                conn.synack_again_after_ack = True
            if conn.synack_time is None:
                conn.synack_time, conn.synack_ack = seg.time, seg.ack
                if conn.syn_time is not None:
                    conn.rtt = seg.time - conn.syn_time
        else:
            me.syn_count += 1
            self.syn_times.append(seg.time)
            if conn.syn_time is None:
                conn.syn_time = seg.time
        if me.isn is None:
            me.isn = seq

    def _sweep(self, now: float) -> None:
        """Hand out findings whose time has come; forget quiet connections. Only the queues
        of watched and closed connections are walked, oldest first; all connections only
        once per FORGET_IDLE / 4 of capture time."""
        watched = self.watched
        while watched and (not watched[0].pending or now - watched[0].last > SETTLE_QUIET):
            conn = watched.popleft()
            if conn.pending:
                self._settle(conn)
        closed = self.closed
        while closed and now - closed[0].last > FORGET_QUIET:
            conn = closed.popleft()
            if (conn.sides[0].addr, conn.sides[0].port, conn.sides[1].addr, conn.sides[1].port) in self.conns:
                self._forget(conn)
        if self.last_full_sweep is None:
            self.last_full_sweep = now
        elif now - self.last_full_sweep > FORGET_IDLE / 4:
            self.last_full_sweep = now
            for conn in {id(c): c for c, _ in self.conns.values()}.values():
                if now - conn.last > FORGET_IDLE:
                    self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        if conn.pending:
            self._settle(conn)
        self._note_connection(conn)
        conn.first_finding = None   # the one reference cycle (finding <-> connection): the CLI
                                    # runs without the cycle collector (__main__.py)
        a, b = conn.sides
        self.conns.pop((a.addr, a.port, b.addr, b.port), None)
        self.conns.pop((b.addr, b.port, a.addr, a.port), None)
        if self.endpoints.get((a.addr, a.port)) is conn:
            del self.endpoints[(a.addr, a.port)]

    # -- a RST ---------------------------------------------------------------------------

    def _reset(self, conn: Connection, d: int, seg: Segment, gap: float) -> None:
        self.rsts += 1
        f = Finding(seg, conn, d)
        me, peer = f.sender, f.receiver
        feat = f.features
        opts = option_names(seg.options)
        ack = bool(seg.flags & ACK)
        flags = flag_text(seg.flags)
        if ack:
            feat["rst_ack"] = f"[{flags}]: the RST acknowledges (ack {seg.ack})"
        else:
            feat["rst_no_ack"] = (f"[{flags}] without ACK, seq {seg.seq}: the reply RFC 9293 §3.10.7.1 "
                                  "prescribes to an ACK-bearing segment that reached no connection (seq = that "
                                  "segment's ack), as tcp_v4_send_reset() in net/ipv4/tcp_ipv4.c builds it")
        if not opts:
            feat["rst_no_options"] = ("no TCP option: made without a connection's state (tcp_v4_send_reset() "
                                      "in net/ipv4/tcp_ipv4.c builds a RST from the segment it answers and "
                                      "adds no option but MD5, TCP-AO or MPTCP)")
            if me.timestamps:
                feat["options_unlike_sender"] = (f"no TCP option, while {me.name()}'s own segments "
                                                 "carry timestamps")
        elif "TS" in opts:
            feat["rst_timestamps"] = ("the timestamp option: a socket of this connection sent it (a socket's "
                                      "RST leaves through __tcp_transmit_skb() in net/ipv4/tcp_output.c, which "
                                      "adds the connection's options)")
        if seg.win == 0:
            feat["rst_win_zero"] = "window 0"
        else:
            feat["rst_win_open"] = (f"window {seg.win}: a live socket's receive window (__tcp_transmit_skb() in "
                                    "net/ipv4/tcp_output.c; tcp_v4_send_reset() leaves it 0)")
        if ack and seg.seq == 0:
            feat["rst_seq_zero"] = "seq 0"
        self._ttl_features(f, seg)
        if conn.resets:
            feat["follows_reset"] = f"the connection was already reset at packet {conn.resets[0]}"
            f.earlier = conn.first_finding
        else:
            conn.first_finding = f
        if not conn.resets:
            self.closed.append(conn)
        conn.resets.append(seg.number)
        self.reset_times.setdefault((me.addr, me.port), deque(maxlen=8)).append(seg.time)

        last = None
        sent_by = self._sent_by
        for hseg in reversed(conn.history):
            if sent_by(hseg) != d:
                last = hseg
                break
            if hseg.flags & (SYN | FIN) or hseg.length:
                break
        rtt = conn.rtt if conn.rtt is not None else 0.2
        prompt = last is not None and seg.time - last.time <= max(10 * rtt, 0.05)
        answered = None
        if last is not None:
            # a RST with ACK that acknowledges exactly the peer's last segment answers it, however
            # late (a filter may take its time); one without ACK only by its seq and promptness
            if not ack and prompt and last.flags & ACK and seg.seq == last.ack:
                answered = last
            elif ack and seg.ack == (last.seq + last.length + (1 if last.flags & (SYN | FIN) else 0)) % MOD \
                    and (prompt or last.length or last.flags & (SYN | FIN)):
                answered = last
                prompt = True
        self._phase_features(f, conn, d, seg, answered, last, prompt)
        if not conn.pending:
            self.watched.append(conn)
        conn.pending.append(f)
        heapq.heappush(self.unsettled, seg.number)

    def _ttl_features(self, f: Finding, seg: Segment) -> None:
        me = f.sender
        if seg.ttl is None:
            return
        known = set()
        if me.ttl is not None and not me.ttl_mixed:
            known = {me.ttl}
        elif me.ttl is None:
            known = self.host_ttl.get(me.addr, set())
        if not known:
            return
        if seg.ttl in known:
            f.features["ttl_same"] = f"TTL {seg.ttl}, as {me.addr}'s other packets"
        else:
            others = ", ".join(map(str, sorted(known)))
            f.features["ttl_differs"] = (f"TTL {seg.ttl}, while {me.addr}'s other packets arrive with "
                                         f"TTL {others}: another box on the path sent it")

    def _phase_features(self, f: Finding, conn: Connection, d: int, seg: Segment,
                        answered: Segment | None, last: Segment | None, prompt: bool) -> None:
        feat, me, peer = f.features, f.sender, f.receiver
        initiator = d == 0 and not conn.midstream
        established = conn.synack_time is not None and conn.handshake_ack is not None or conn.midstream
        if conn.midstream and me.packets == 0 and peer.packets == 0:
            pass
        if answered is not None:
            feat["answers"] = f"answers packet {answered.number} ({flag_text(answered.flags)}) at once"
        elif last is not None and not prompt:
            feat["unprompted"] = (f"nothing from {peer.name()} prompted it: {seg.time - last.time:.3f} s "
                                  f"after its last packet ({last.number})")
        elif last is None and me.packets:
            feat["unprompted"] = f"{peer.name()} had sent nothing it could answer"
        if conn.midstream and peer.packets and me.packets == 0 and answered is not None \
                and not answered.flags & SYN:
            other = self.endpoints.get((peer.addr, peer.port))
            feat["stray"] = (f"{me.name()} answers {peer.name()}, which never opened a connection with it "
                             "in this capture")
            if other is not None and other is not conn:
                a, b = other.sides
                feat["stray_port_in_use"] = (f"{peer.name()} talks to {b.name()} on that port: a reply that "
                                             "escaped address translation")
        # the opening
        if answered is not None and answered.flags & (SYN | ACK) == SYN:
            feat["answers_syn"] = f"answers the SYN (packet {answered.number}): nothing accepted the connection"
        if answered is not None and answered.flags & (SYN | ACK) == SYN | ACK and me.syn_count:
            feat["answers_synack"] = (f"{me.name()} sent the SYN, then answered the SYN-ACK "
                                      f"(packet {answered.number}) with a RST")
            if me.isn is not None and answered.ack != (me.isn + 1) % MOD:
                feat["synack_ack_wrong"] = (f"the SYN-ACK acknowledges {answered.ack}, not the SYN's "
                                            f"{me.isn} + 1")
            else:
                feat["synack_ack_right"] = "the SYN-ACK acknowledges the SYN correctly"
            if conn.syn_time is not None:
                feat["synack_delay"] = (f"the SYN-ACK came {answered.time - conn.syn_time:.3f} s after the "
                                        f"first SYN ({me.syn_count} SYN sent)")
        if answered is not None and not answered.flags & SYN and peer.isn is not None and \
                peer.data_bytes == 0 and me.synack_count and not me.data_bytes and not me.fin_seq and \
                self._first_after_synack(conn, d, answered):
            feat["answers_handshake_ack"] = (f"answers {peer.name()}'s ACK of its SYN-ACK "
                                             f"(packet {answered.number})")
            if me.isn is not None and answered.ack != (me.isn + 1) % MOD:
                feat["handshake_ack_wrong"] = (f"that ACK acknowledges {answered.ack}, not the SYN-ACK's "
                                               f"{me.isn} + 1: no SYN-ACK of this capture had it")
            if conn.synack_again_after_ack:
                feat["synack_retransmitted"] = ("the SYN-ACK was sent again after the client's ACK: "
                                                "the listener had dropped that ACK (tcp_check_req() in "
                                                "net/ipv4/tcp_minisocks.c drops it when the accept queue is "
                                                "full and tcp_abort_on_overflow is 0)")
        if len([x for x in self.syn_times if seg.time - x < 1.0]) >= 3 and me.synack_count:
            feat["syn_burst"] = "several SYNs from other ports just before"
        # established connections
        idle = last is not None and self._idle_before(conn, last)
        if answered is not None and not answered.flags & SYN and "answers_handshake_ack" not in feat \
                and not conn.midstream:
            closed = me.fin_seq is not None and peer.fin_seq is not None and me.fin_acked and peer.fin_acked
            if closed and not seg.flags & ACK:
                feat["after_close"] = ("both sides had closed (FIN each way, acknowledged): the RST answers "
                                       f"packet {answered.number}, which came after")
                if answered.length and peer.nxt is not None and _before(answered.seq, peer.nxt):
                    feat["old_duplicate"] = (f"packet {answered.number} carries data {peer.name()} had "
                                             "already sent and seen acknowledged: an old duplicate")
            elif not seg.flags & ACK:
                feat["answers_segment"] = f"answers {peer.name()}'s packet {answered.number} in an open connection"
                if answered.length:
                    feat["answers_data"] = f"the answered packet carries {answered.length} bytes of data"
                elif answered.number == peer.probe_number:
                    feat["keepalive_probe"] = (f"packet {answered.number} is a keepalive probe: no data, "
                                               + ("seq one below what its sender had sent (snd_una - 1: "
                                                  "tcp_xmit_probe_skb() in net/ipv4/tcp_output.c)"
                                                  if answered.seq >= 0
                                                  else "after an idle gap, acknowledging nothing new"))
                if me.fin_seq is not None:
                    feat["sender_fin_before"] = (f"{me.name()} had sent its FIN {seg.time - me.fin_time:.3f} s "
                                                 "earlier: its socket was closed")
                if idle:
                    feat["idle_before"] = idle
        if seg.flags & ACK and "answers_syn" not in feat and not conn.midstream:
            if me.una_seen is not None and seg.seq == me.nxt:
                feat["seq_exact"] = "seq is exactly the next byte the sender owed"
            elif me.nxt is not None and peer.win is not None:
                feat["seq_in_window"] = (f"seq {seg.seq} is not the next byte {me.name()} owed ({me.nxt}): "
                                         "RFC 5961 §3.2 has the receiver answer it with a challenge ACK if it "
                                         "falls in its window, drop it if not (tcp_validate_incoming() in "
                                         "net/ipv4/tcp_input.c)")
            if seg.win and ("rst_timestamps" in feat or not me.timestamps):
                feat["socket_abort"] = ("a socket's RST (tcp_send_active_reset() in net/ipv4/tcp_output.c): "
                                        "its window "
                                        f"{seg.win}{', its timestamps' if 'rst_timestamps' in feat else ''}")
            if not me.data_bytes and not peer.data_bytes and me.fin_seq is None and peer.fin_seq is None:
                feat["no_data"] = "no data either way: the handshake, then the RST"
                feat["sender_initiator" if initiator else "sender_acceptor"] = (
                    f"{me.name()} {'opened' if initiator else 'accepted'} the connection")
            if peer.data_bytes and (me.last_data_time is None or
                                    (peer.last_data_time or 0) > me.last_data_time) and me.fin_seq is None:
                feat["peer_data_unanswered"] = (f"{peer.name()} sent {peer.data_bytes} bytes; "
                                                f"{me.name()} acknowledged them and answered with the RST, no data")
            if me.data_bytes and me.fin_seq is None and me.last_data_time is not None and \
                    (peer.last_data_time is None or me.last_data_time >= peer.last_data_time):
                feat["sender_data_then_rst"] = (f"{me.name()} sent {me.data_bytes} bytes, the connection's last "
                                                "data, then this RST and no FIN: it aborted while or after "
                                                "answering")
            if peer.fin_seq is not None and me.fin_seq is None:
                feat["peer_fin_before"] = (f"{peer.name()} had sent its FIN {seg.time - peer.fin_time:.3f} s "
                                           "earlier (it had only finished sending)")
            if me.fin_seq is not None and peer.fin_seq is None:
                feat["sender_fin_then_rst"] = (f"{me.name()} sent its FIN, then the RST "
                                               f"{seg.time - me.fin_time:.3f} s later, seq just after the FIN")
            if me.probes and peer.last_time is not None and me.last_time is not None and \
                    peer.last_time < me.last_time:
                feat["probes_unanswered"] = f"{me.name()} sent {me.probes} keepalive probe(s); no answer came"
            if idle:
                feat["idle_before"] = idle
            if initiator:
                feat.setdefault("sender_initiator", f"{me.name()} opened the connection")
            else:
                feat.setdefault("sender_acceptor", f"{me.name()} accepted the connection")
            if peer.data_packets == 1 and answered is not None and answered.length and \
                    not me.data_bytes and initiator is False:
                feat["answers_first_data"] = (f"answers the first data {peer.name()} sent "
                                              f"({answered.length} bytes, packet {answered.number})")
        if "unprompted" in feat and idle:
            feat["idle_before"] = idle

    def _idle_before(self, conn: Connection, last: Segment) -> str:
        """An idle gap before `last`: long against the connection's round trip."""
        prev = None
        for hseg in reversed(conn.history):
            if hseg is last:
                continue
            if hseg.time < last.time:
                prev = hseg
                break
        if prev is None or not _idle(conn, last.time - prev.time):
            return ""
        return f"the connection had been idle {last.time - prev.time:.3f} s before packet {last.number}"

    def _sent_by(self, seg: Segment) -> int:
        """The direction (index into its connection's sides) of a segment of an open connection."""
        return self.conns[(seg.src, seg.sport, seg.dst, seg.dport)][1]

    def _first_after_synack(self, conn: Connection, d: int, answered: Segment) -> bool:
        """Is `answered` the peer's first segment since the sender's latest SYN-ACK?"""
        seen = False
        for hseg in reversed(conn.history):
            if hseg is answered:
                seen = True
                continue
            if not seen:
                continue
            hd = self._sent_by(hseg)
            if hd == d and hseg.flags & (SYN | ACK) == SYN | ACK:
                return True
            if hd != d:
                return False
        return False

    def _watch_after(self, conn: Connection, d: int, seg: Segment) -> None:
        for f in conn.pending:
            f.after += 1
            feat = f.features
            sent_by_receiver = d != f.direction
            if sent_by_receiver and f.after == 1 and seg.flags & ACK and not seg.flags & (RST | SYN | FIN) \
                    and not seg.length and f.segment.flags & ACK and "seq_exact" not in feat:
                feat["challenge_ack"] = (f"{f.receiver.name()} answered with an ACK (packet {seg.number}), "
                                         "not a close: a challenge ACK (RFC 5961 §3.2; "
                                         "tcp_send_challenge_ack(), called by tcp_validate_incoming() "
                                         "in net/ipv4/tcp_input.c)")
            if not sent_by_receiver and not seg.flags & RST and seg.time - f.segment.time >= 0:
                ttl_note = ""
                if seg.ttl is not None and f.segment.ttl is not None and seg.ttl != f.segment.ttl:
                    ttl_note = f", TTL {seg.ttl} against the RST's {f.segment.ttl}"
                feat["sender_alive_after"] = (f"{f.sender.name()} kept sending after its own RST "
                                              f"(packet {seg.number}{ttl_note}): it never sent it")
            if sent_by_receiver and seg.flags & SYN and not seg.flags & ACK:
                feat["retry_after"] = f"{f.receiver.name()} tried again: a new SYN (packet {seg.number})"
            if not sent_by_receiver and seg.flags & SYN and not seg.flags & ACK:
                feat["retry_after"] = f"{f.sender.name()} tried again: a new SYN (packet {seg.number})"
        if any(f.after >= AFTER_PACKETS for f in conn.pending):
            self._settle(conn, only_old=True)

    def _settle(self, conn: Connection, only_old: bool = False) -> None:
        keep = []
        for f in conn.pending:
            if only_old and f.after < AFTER_PACKETS:
                keep.append(f)
                continue
            times = self.reset_times.get((f.sender.addr, f.sender.port), ())
            together = sum(1 for x in times if abs(x - f.segment.time) < 0.01)
            if together > 1 and "sender_acceptor" in f.features:
                f.features["resets_together"] = (
                    f"{f.sender.name()} reset {together} connections within 10 ms: a listener closing its "
                    "accept queue (inet_csk_listen_stop() in net/ipv4/inet_connection_sock.c resets each "
                    "queued one)")
            self.done.append(f)
            self.settled.add(f.segment.number)
        conn.pending = keep

    # -- connections without RST ---------------------------------------------------------

    def _note_connection(self, conn: Connection) -> None:
        if conn.resets:
            return
        a, b = conn.sides
        kind = None
        if a.fin_acked and b.fin_acked:
            kind = "graceful"
        elif conn.synack_again_after_ack:
            kind = "synack_again"
        elif (a.retransmits >= 2 and a.una_seen is not None and b.last_time is not None
              and (b.last_time or 0) < (a.last_time or 0)) or \
             (b.retransmits >= 2 and b.last_time is not None and (a.last_time or 0) < (b.last_time or 0)):
            kind = "silent_drop"
        elif a.syn_count > 1 and not b.synack_count:
            kind = "syn_unanswered"
        elif conn.synack_time is not None and a.fin_seq is None and b.fin_seq is None:
            kind = "open"
        if kind is None:
            return
        idle = ""
        if kind == "silent_drop":
            talker = a if a.retransmits >= 2 else b
            other = b if talker is a else a
            idle = "answered_before" if other.data_bytes else ""
        entry = self.notes.setdefault(kind, [0, conn.first_number, set()])
        entry[0] += 1
        if idle:
            entry[2].add(idle)

    # -- output --------------------------------------------------------------------------

    def oldest_unsettled(self) -> int | None:
        heap, settled = self.unsettled, self.settled
        while heap and heap[0] in settled:
            settled.discard(heapq.heappop(heap))
        return heap[0] if heap else None

    def ready(self) -> list[Finding]:
        out, self.done = self.done, []
        return out

    def finish(self) -> list[Finding]:
        seen = set()
        for conn, _ in list(self.conns.values()):
            if id(conn) in seen:
                continue
            seen.add(id(conn))
            self._forget(conn)
        return self.ready()
