"""A host whose TCP is played by hand with scapy instead of by its kernel.

    peer = server.raw_peer()          # the server kernel's own RSTs are dropped
    syn = peer.expect("S")            # the next segment arriving, as a scapy packet
    peer.send(IP(...) / TCP(...))

Segments are read with lab.wire (flags in tcpdump's notation) and sent through a raw
IP socket, both inside the host's namespace.

    tap = router.wiretap()            # a third party: every interface, kernel left alone
    tap.expect("P.", source=server.ip)
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

from . import netns
from .wire import Tap

SO_MARK = 36
HAND_MADE = 0x7E57  # the mark of every packet the hand-played peer sends

# the host's kernel would answer segments for ports it has no socket for with a
# RST of its own; a hand-played peer must be the only voice of the host (its own
# RSTs, which carry the mark, still leave)
DROP_KERNEL_RSTS = f"""
table ip hand_played_peer {{
    chain out {{
        type filter hook output priority 0; policy accept;
        tcp flags rst meta mark != {HAND_MADE:#x} drop
    }}
}}
"""


class RawPeer:
    def __init__(self, ns_fd: int, iface: str | None = "eth0") -> None:
        self._rx = Tap(ns_fd, iface)  # iface None: every interface (a router sees both directions)
        with netns.inside(ns_fd):
            self._tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self._tx.setsockopt(socket.SOL_SOCKET, SO_MARK, HAND_MADE)

    def expect(self, flags: str | None = None, timeout: float = 5.0, source: str | None = None) -> Any:
        """Wait for the next TCP segment arriving (with exactly `flags`, tcpdump notation,
        from `source` if given) and return it as a scapy packet; segments before it are skipped."""
        from scapy.layers.inet import IP

        data, when = self._rx.next(flags, source, timeout)
        packet = IP(data)
        packet.time = when
        return packet

    def each_until_exit(self, pid: int, flags: str | None = None, source: str | None = None,
                        timeout: float = 30.0) -> Iterator[Any]:
        """Each segment arriving (as expect() picks them) until process `pid` (a child of this
        one) has exited and none is left: a program's first connection and any retry of it.
        Its exit wakes the wait (a pidfd); `timeout` bounds the whole wait."""
        exited = os.pidfd_open(pid)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    yield self.expect(flags, timeout=0, source=source)
                    continue
                except TimeoutError:  # none is waiting
                    pass
                ready = select.select([exited, self._rx.sock], [], [], max(deadline - time.monotonic(), 0))[0]
                if not ready:
                    return
                if exited in ready:  # what arrived before the exit is still read
                    while True:
                        try:
                            yield self.expect(flags, timeout=0, source=source)
                        except TimeoutError:
                            return
        finally:
            os.close(exited)

    def send(self, packet: Any) -> None:
        """Send a scapy IP packet as it is (checksums filled in by scapy)."""
        self._tx.sendto(bytes(packet), (packet.dst, 0))

    def sockets(self) -> list[socket.socket]:
        return [self._rx.sock]

    def close(self) -> None:
        self._rx.close()
        self._tx.close()
