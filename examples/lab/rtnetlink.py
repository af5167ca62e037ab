"""Link state from rtnetlink: wait until a host's interfaces are up, on the kernel's events."""

from __future__ import annotations

import select
import socket
import struct
import time

from . import netns

NETLINK_ROUTE, RTMGRP_LINK, RTM_NEWLINK, RTM_GETLINK = 0, 1, 16, 18
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
IFLA_IFNAME, IFLA_OPERSTATE, IF_OPER_UP = 3, 16, 6


def wait_for_links_up(ns_fd: int, who: str, timeout: float = 5.0) -> None:
    """Wait until every eth* of the host is operationally up (rtnetlink events).

    A packet sent before that is dropped; if it is an ARP request, the next one
    only goes a second later (the neighbour retransmit timer).
    """
    with netns.inside(ns_fd):
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    with nl:
        nl.bind((0, RTMGRP_LINK))  # subscribe first, then ask: no change can slip between
        nl.send(struct.pack("=IHHII", 32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
                + struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0))
        state: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while not state or any(v != IF_OPER_UP for k, v in state.items() if k.startswith("eth")):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([nl], [], [], left)[0]:
                raise RuntimeError(f"{who}: links not up: {state}")
            state.update(_link_states(nl.recv(65536)))


def _link_states(data: bytes) -> dict[str, int]:
    """Interface name -> operstate, from rtnetlink RTM_NEWLINK messages."""
    found: dict[str, int] = {}
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if kind == RTM_NEWLINK:
            name, oper, attr = "", -1, offset + 32
            while attr + 4 <= offset + length:
                size, atype = struct.unpack_from("=HH", data, attr)
                if atype == IFLA_IFNAME:
                    name = data[attr + 4: attr + size].rstrip(b"\0").decode()
                elif atype == IFLA_OPERSTATE:
                    oper = data[attr + 4]
                attr += (size + 3) & ~3
            found[name] = oper
        offset += (length + 3) & ~3
    return found
