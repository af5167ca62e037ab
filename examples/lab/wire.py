"""Segments arriving at a host, read from a packet socket: the one way the lab waits for one.

    tap = Tap(host.fd)                            # opened now: later segments are seen
    data, when = tap.next("S.", source=ip)        # the next SYN-ACK from ip (tcpdump notation)

Flags are always written as tcpdump prints them ("S", "S.", "R", "R.", "P.", "F.", ".").
`Host.receives()` / `Host.expects()` count such segments; `RawPeer.expect()` hands the
segment to scapy.
"""

from __future__ import annotations

import select
import socket
import struct
import time

from . import netns

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35

# tcpdump's order and letters for TCP flags; an ACK is shown as "."
_FLAG_LETTERS = (("F", 0x01), ("S", 0x02), ("R", 0x04), ("P", 0x08), ("U", 0x20),
                 ("E", 0x40), ("W", 0x80), (".", 0x10))


def tcpdump_flags(bits: int) -> str:
    shown = "".join(letter for letter, bit in _FLAG_LETTERS if bits & bit)
    return shown or "none"


def segment_flags(data: bytes) -> str | None:
    """The TCP flags of an IPv4 datagram, or None if it is not TCP."""
    if len(data) < 20 or data[9] != socket.IPPROTO_TCP:
        return None
    tcp = (data[0] & 0x0F) * 4
    return tcpdump_flags(data[tcp + 13]) if len(data) > tcp + 13 else None


class Tap:
    """A packet socket on one interface of a host (or all of them): what arrives there."""

    def __init__(self, ns_fd: int, iface: str | None = None) -> None:
        with netns.inside(ns_fd):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
            if iface is not None:
                self.sock.bind((iface, ETH_P_IP))
        # the kernel's arrival time of each segment, not the time we read it
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)

    def arrivals(self, timeout: float):
        """(datagram, arrival time) of each IPv4 datagram arriving, until `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                data, ancillary, _, addr = self.sock.recvmsg(65535, 64)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    return
                continue
            if addr[2] == PACKET_OUTGOING:
                continue
            when = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    when = seconds + nanoseconds / 1e9
            yield data, when

    def discard(self) -> None:
        """Forget what has arrived so far."""
        for _ in self.arrivals(timeout=0):
            pass

    def next(self, flags: str | None = None, source: str | None = None,
             timeout: float = 5.0) -> tuple[bytes, float]:
        """The next TCP segment arriving with exactly `flags` (any if None), from `source` if given."""
        for data, when in self.arrivals(timeout):
            got = segment_flags(data)
            if got is not None and flags in (None, got) and source in (None, socket.inet_ntoa(data[12:16])):
                return data, when
        raise TimeoutError(f"no TCP segment{' [' + flags + ']' if flags else ''}"
                           f"{' from ' + source if source else ''} arrived within {timeout:g} s")

    def expect(self, flags: str, source: str | None, count: int = 1) -> Expected:
        """Arm now, wait later: segments that arrive from now on count."""
        self.discard()
        return Expected(self, flags, source, count)

    def close(self) -> None:
        self.sock.close()


class Expected:
    """Segments a host expects; `wait()` returns once `count` of them arrived since it was armed.

    A host has one inbox: arm the next expectation only after the previous one was waited for.
    """

    def __init__(self, tap: Tap, flags: str, source: str | None, count: int) -> None:
        self.tap, self.flags, self.source, self.count = tap, flags, source, count

    def wait(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for seen in range(self.count):
            try:
                self.tap.next(self.flags, self.source, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise TimeoutError(f"{seen} of {self.count} [{self.flags}] segment(s)"
                                   f"{' from ' + self.source if self.source else ''}"
                                   f" arrived within {timeout:g} s") from None


def tcp_payload(data: bytes) -> tuple[int, int, bytes] | None:
    """(source port, sequence number, payload) of an IPv4 TCP datagram, or None."""
    if segment_flags(data) is None:
        return None
    ip = (data[0] & 0x0F) * 4
    sport, _, seq = struct.unpack("!HHI", data[ip:ip + 8])
    return sport, seq, data[ip + (data[ip + 12] >> 4) * 4:]


def http_request_complete(stream: bytes) -> bool:
    """Whether `stream` holds a whole HTTP/1.1 request: its head, and the body its
    Content-Length announces or its chunked encoding ends (RFC 9112, section 6.3)."""
    head, found, body = stream.partition(b"\r\n\r\n")
    if not found:
        return False
    fields = {name.strip().lower(): value.strip() for name, _, value in
              (line.partition(b":") for line in head.split(b"\r\n")[1:])}
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        return body.endswith(b"0\r\n\r\n")
    return len(body) >= int(fields.get(b"content-length", b"0"))


class HttpRequestArrival:
    """A whole HTTP request arriving from `source` on a new connection, over however many
    segments its client sends: armed when made (the tap sees what arrives from then on)."""

    def __init__(self, tap: Tap, source: str) -> None:
        self.tap, self.source = tap, source

    def wait(self, timeout: float = 5.0) -> None:
        streams: dict[int, dict[int, bytes]] = {}  # source port -> offset in the stream -> payload
        first: dict[int, int] = {}  # source port -> the sequence number of its first data
        try:
            for data, _ in self.tap.arrivals(timeout):
                found = tcp_payload(data)
                if found is None or socket.inet_ntoa(data[12:16]) != self.source or not found[2]:
                    continue
                sport, seq, payload = found
                segments = streams.setdefault(sport, {})
                segments[(seq - first.setdefault(sport, seq)) % 2**32] = payload  # a copy replaces its original
                if http_request_complete(b"".join(segments[s] for s in sorted(segments))):
                    return
            raise TimeoutError(f"no whole HTTP request from {self.source} arrived within {timeout:g} s")
        finally:
            self.tap.close()
