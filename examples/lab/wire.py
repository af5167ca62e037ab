"""What arrives at a host, for examples that must wait for a packet, not a sleep.

    with client.receives("."):    # the mark is set before the body acts
        sock.close()              # ...and the body's effect is waited for after it
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator

from . import netns
from .peer import ETH_P_IP, PACKET_OUTGOING
from .trace import tcpdump_flags



class Inbox:
    """A packet socket on every interface of a host, opened before anything happens."""

    def __init__(self, ns_fd: int) -> None:
        with netns.inside(ns_fd):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        self.sock.setblocking(False)

    def _segments(self, timeout: float) -> Iterator[tuple[str, str]]:
        """(source address, tcpdump flags) of arriving TCP segments, until timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    return
                continue
            if addr[2] == PACKET_OUTGOING or len(data) < 20 or data[9] != socket.IPPROTO_TCP:
                continue
            tcp = (data[0] & 0x0F) * 4
            yield socket.inet_ntoa(data[12:16]), tcpdump_flags(data[tcp + 13])

    def discard(self) -> None:
        for _ in self._segments(timeout=0):
            pass

    def expect(self, flags: str, source: str | None, count: int = 1) -> Expected:
        """Arm now, wait later: segments that arrive from now on count."""
        self.discard()
        return Expected(self, flags, source, count)

    @contextlib.contextmanager
    def receives(self, flags: str, source: str | None, timeout: float, count: int = 1) -> Iterator[None]:
        expected = self.expect(flags, source, count)
        yield
        expected.wait(timeout)

    def close(self) -> None:
        self.sock.close()


class Expected:
    """Segments a host expects; `wait()` returns once `count` of them arrived since it was armed.

    A host has one inbox: arm the next expectation only after the previous one was waited for.
    """

    def __init__(self, inbox: Inbox, flags: str, source: str | None, count: int) -> None:
        self.inbox, self.flags, self.source, self.count = inbox, flags, source, count

    def wait(self, timeout: float = 5.0) -> None:
        seen = 0
        for src, got in self.inbox._segments(timeout):
            if got == self.flags and self.source in (None, src):
                seen += 1
                if seen == self.count:
                    return
        raise TimeoutError(f"{seen} of {self.count} [{self.flags}] segment(s)"
                           f"{' from ' + self.source if self.source else ''} arrived within {timeout:g} s")
