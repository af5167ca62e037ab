"""A host whose TCP is played by hand with scapy instead of by its kernel.

    peer = server.raw_peer()          # the server kernel's own RSTs are dropped
    syn = peer.expect(flags="S")      # the next segment arriving, as a scapy packet
    peer.send(IP(...) / TCP(...))

Segments are read from a packet socket on the host's interface and sent
through a raw IP socket, both inside the host's namespace.

    tap = router.wiretap()            # a third party: every interface, kernel left alone
    tap.expect(flags="PA", source=server.ip)
"""

from __future__ import annotations

import select
import socket
import struct
import time
from typing import Any

from . import netns

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35

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
        with netns.inside(ns_fd):
            self._rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
            if iface is not None:  # None: every interface (a router sees both directions)
                self._rx.bind((iface, ETH_P_IP))
            # the kernel's arrival time of each segment, not the time we read it
            self._rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self._tx.setsockopt(socket.SOL_SOCKET, SO_MARK, HAND_MADE)

    def expect(self, flags: str | None = None, timeout: float = 5.0, source: str | None = None) -> Any:
        """Wait for the next TCP segment arriving (with exactly `flags`, scapy notation,
        from `source` if given); segments before it are skipped."""
        from scapy.layers.inet import IP, TCP

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._rx], [], [], left)[0]:
                raise TimeoutError(f"no TCP segment{' with flags ' + flags if flags else ''}"
                                   f"{' from ' + source if source else ''} arrived")
            data, ancillary, _, addr = self._rx.recvmsg(65535, 64)
            if addr[2] == PACKET_OUTGOING:
                continue
            packet = IP(data)
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    packet.time = seconds + nanoseconds / 1e9
            if TCP in packet and (flags is None or str(packet[TCP].flags) == flags) \
                    and source in (None, packet.src):
                return packet

    def send(self, packet: Any) -> None:
        """Send a scapy IP packet as it is (checksums filled in by scapy)."""
        self._tx.sendto(bytes(packet), (packet.dst, 0))

    def sockets(self) -> list[socket.socket]:
        return [self._rx]

    def close(self) -> None:
        self._rx.close()
        self._tx.close()
