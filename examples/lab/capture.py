"""Real tcpdump: the capture on a lab interface, its text, and the pcap read back.

Start: wait for tcpdump's own "listening on" line. Stop: a packet socket of our
own counts what crossed the interface; once the pcap file holds as many packets,
tcpdump gets SIGINT and is waited for. The pcap is then complete. Its text is
tcpdump's own (`tcpdump -r`); its packets are read by read_packets(), as scapy dissects them.
"""

from __future__ import annotations

import dataclasses
import os
from decimal import Decimal
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

from . import netns
from .artifact import Packet
from .wire import tcpdump_flags

# TCP and ICMP over IPv4: what the scenarios are about. ARP and (disabled)
# IPv6 chatter are left out so a trace is the same from run to run.
FILTER = "ip and (tcp or icmp)"
ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33
SOL_PACKET, PACKET_STATISTICS = 263, 6
_IP_PROTOCOLS = {1, 6}


class CaptureError(RuntimeError):
    """tcpdump could not start, or did not deliver a complete capture."""


# every packet written to the file as it arrives, whole. libpcap's ring (-B, KiB) has one slot of
# just over 64 KiB per packet on a veth link (offloads let a segment reach 64 KiB), each in a
# 128 KiB block of its own, so the kernel allocates and zeroes twice -B; the default 2 MiB,
# 32 slots, dropped an upload's burst (about 30 segments and ACKs within 5 ms, early-response-lost)
# while tcpdump waited for a CPU. 8 MiB: 128 slots in 16 MiB, four such bursts. Not more: the kernel
# allocates and zeroes the whole ring for each capture, and on this project's machines (virtual,
# their free memory handed back to the host) zeroing is slow: 32 MiB (64 MiB zeroed) cost each run about 0.1 s
# of CPU (clear_page_erms, the catalogue's largest share after the programs)
CAPTURE_OPTIONS = ["-U", "--immediate-mode", "-s", "262144", "-B", "8192"]
# the text trace: numbers instead of names, tcpdump's default time and relative seq/ack
TEXT_OPTIONS = ["-n"]


def tcpdump_argv(iface: str, pcap: Path) -> list[str]:
    argv = ["tcpdump", "-i", iface, "-w", str(pcap), *CAPTURE_OPTIONS]
    if iface == "any":  # every link of a host: the cooked header's first version, In/Out without
        argv += ["-y", "LINUX_SLL"]  # the interface index (SLL2's), which tcpdump -r cannot name
        # "any" has no MTU: each slot of libpcap's ring is a whole snapshot (256 KiB), and the
        # default 2 MiB ring drops packets whenever tcpdump waits for a CPU. 64 MiB: 256 slots
        argv += ["-B", "65536"]
    if os.geteuid() == 0:
        argv += ["-Z", "root"]  # as real root, tcpdump would switch user and lose the file
    return argv + [FILTER]


def _count_packets(pcap: Path) -> int:
    """Whole records in a pcap file that tcpdump is still writing."""
    try:
        data = pcap.read_bytes()
    except FileNotFoundError:
        return 0
    count, offset = 0, 24
    while offset + 16 <= len(data):
        (caplen,) = struct.unpack_from("=I", data, offset + 8)
        if offset + 16 + caplen > len(data):
            break
        offset += 16 + caplen
        count += 1
    return count


class Capture:
    def __init__(self, ns_fd: int, iface: str, pcap: Path) -> None:
        self.pcap = pcap
        self._tap = self._open_tap(ns_fd, iface)
        self._seen = 0
        self.proc = subprocess.Popen(
            netns.command(ns_fd, tcpdump_argv(iface, pcap)),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(ns_fd,),
        )

    @staticmethod
    def _open_tap(ns_fd: int, iface: str) -> socket.socket:
        with netns.inside(ns_fd):
            tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            if iface != "any":  # unbound, a packet socket sees every interface, as tcpdump -i any does
                tap.bind((iface, 0))
        # room for a whole scenario's packets: they are only counted at the end
        try:
            tap.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        except PermissionError:  # rootless: capped at net.core.rmem_max; drops are detected
            tap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        tap.setblocking(False)
        return tap

    def wait_ready(self, timeout: float = 10) -> None:
        """Return once tcpdump says it is capturing (its own "listening on" line)."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        text = b""
        while b"listening on" not in text:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stderr], [], [], max(0.0, left))
            chunk = os.read(self.proc.stderr.fileno(), 4096) if ready else b""
            if not chunk:
                self.proc.kill()
                self.proc.wait()
                why = "timed out" if not ready else f"exited {self.proc.returncode}"
                raise CaptureError(f"tcpdump {why} before capturing: {text.decode().strip()}")
            text += chunk
        self.stderr = text

    def _drain_tap(self) -> None:
        while True:
            try:
                frame = self._tap.recv(65535)
            except BlockingIOError:
                return
            if len(frame) >= 24 and frame[12:14] == b"\x08\x00" and frame[23] in _IP_PROTOCOLS:
                self._seen += 1

    def stop(self, also_close: list[socket.socket] = (), timeout: float = 5.0) -> None:
        """Wait until tcpdump has written every packet our tap saw, then stop it.

        Closing a packet socket waits for an RCU grace period (synchronize_net):
        tcpdump's, our tap's and `also_close` are closed at the same time so
        they share one instead of waiting for one each.
        """
        self._drain_tap()
        _, dropped = struct.unpack("II", self._tap.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        if dropped:
            self.kill()
            raise CaptureError(f"the packet counter dropped {dropped} packets")
        deadline = time.monotonic() + timeout
        while _count_packets(self.pcap) < self._seen:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.kill()
                raise CaptureError(
                    f"tcpdump wrote {_count_packets(self.pcap)} of {self._seen} packets")
            time.sleep(0.001)  # polling the file tcpdump is writing; it has no event to wait on
        self.proc.send_signal(signal.SIGINT)
        closers = [threading.Thread(target=s.close) for s in [self._tap, *also_close]]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join()
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise CaptureError("tcpdump did not stop on SIGINT") from None
        self.stderr += err
        if self.proc.returncode != 0:
            raise CaptureError(f"tcpdump failed: {self.stderr.decode().strip()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._tap.close()


def trace_text(pcap: Path, options: list[str]) -> str:
    """tcpdump's own text for the pcap, exactly as it prints it."""
    argv = ["tcpdump", *TEXT_OPTIONS, "-r", str(pcap), *options]
    if os.geteuid() == 0:
        argv[1:1] = ["-Z", "root"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CaptureError(f"tcpdump -r failed: {proc.stderr.strip()}")
    return proc.stdout


_version: str | None = None


def tcpdump_version() -> str:
    """The first line of `tcpdump --version`, e.g. "4.99.3"."""
    global _version
    if _version is None:
        out = subprocess.run(["tcpdump", "--version"], capture_output=True, text=True).stdout
        _version = out.splitlines()[0].removeprefix("tcpdump version ").strip()
    return _version


# scapy's option names -> tcpdump's
_OPTION_NAMES = {"MSS": "mss", "SAckOK": "sackOK", "SAck": "sack", "Timestamp": "TS", "NOP": "nop",
                 "WScale": "wscale", "EOL": "eol", "MD5": "md5", "AO": "tcp-ao", "TFO": "tfo"}
# scapy's names of the TCP option kinds (scapy.layers.inet.TCPOptions); another kind is its number
_SCAPY_OPTIONS = {0: "EOL", 1: "NOP", 2: "MSS", 3: "WScale", 4: "SAckOK", 5: "SAck", 8: "Timestamp",
                  14: "AltChkSum", 15: "AltChkSumOpt", 19: "MD5", 25: "Mood", 28: "UTO", 29: "AO", 34: "TFO"}
LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL = 1, 113
ETHERTYPE_IP, ETHERTYPES_VLAN = 0x0800, (0x8100, 0x88A8, 0x9100)
SCAPY_MTU = 0xFFFF  # scapy's PcapReader keeps at most this much of a record (scapy.data.MTU)
_MICRO, _NANO = Decimal(10) ** -6, Decimal(10) ** -9

def first_packet_time(pcap: Path) -> float:
    """The capture's first packet's time (seconds since the epoch); 0.0 if there is none."""
    data = pcap.read_bytes()[:32]
    if len(data) < 32:
        return 0.0
    magic = data[:4]
    order = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    seconds, fraction = struct.unpack(order + "II", data[24:32])
    return seconds + fraction / (1e9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e6)


def read_packets(pcap: Path, hosts: dict[str, list[str]]) -> list[Packet]:
    """The pcap's IPv4 TCP segments and ICMP messages, each attributed to its host: what scapy's
    dissection gives (read_packets_scapy(), which the tests compare it with on every recording),
    read with struct, ten times faster, and without importing scapy (the site's build
    reads every recording again). A capture it does not know how to read (another link type, a
    truncated header) is handed to scapy whole."""
    data = pcap.read_bytes()
    try:
        frames = _records(data)
    except _Unusual:
        return read_packets_scapy(pcap, hosts)
    owner = {ip: name for name, ips in hosts.items() for ip in ips}
    found = []
    for time_, frame, linktype in frames:
        try:
            dissected = _dissect(frame, linktype)
        except _Unusual:
            return read_packets_scapy(pcap, hosts)
        if dissected is not None:
            found.append((time_, *dissected))
    start = found[0][0] if found else 0.0
    packets = []
    for number, (time_, src, dst, ttl, ip_id, proto, body) in enumerate(found, 1):
        common = dict(number=number, time=round(time_ - start, 6), src=src, dst=dst,
                      sender=owner.get(src, "?"), receiver=owner.get(dst, "?"), ttl=ttl, ip_id=ip_id)
        if proto == "tcp":
            sport, dport, seq, ack, offset_flags, win = struct.unpack_from("!HHIIHH", body)
            header = max((offset_flags >> 12) * 4, 20)  # scapy reads no options below 5 words
            packets.append(Packet(**common, sport=sport, dport=dport, flags=tcpdump_flags(offset_flags & 0xFF),
                                  seq=seq, ack=ack, win=win, payload=len(body) - min(header, len(body)),
                                  options=_option_names(body[20:header])))
        else:
            packets.append(Packet(**common, sport=0, dport=0, flags=f"icmp {body[0]}/{body[1]}",
                                  seq=0, ack=0, win=0, payload=0, proto="icmp"))
    return packets


class _Unusual(Exception):
    """Something read_packets() leaves to scapy."""


def _records(data: bytes) -> list[tuple[float, bytes, int]]:
    """Each record's time (as scapy's PcapReader computes it), its bytes (as many as scapy
    keeps) and the file's link type."""
    if len(data) < 24:
        raise _Unusual
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:  # pcapng, or not a capture
        raise _Unusual
    power = _NANO if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else _MICRO
    (linktype,) = struct.unpack_from(order + "I", data, 20)
    if linktype not in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL):
        raise _Unusual
    found, offset, header = [], 24, struct.Struct(order + "IIII")
    while offset + 16 <= len(data):
        sec, fraction, caplen, _ = header.unpack_from(data, offset)
        offset += 16
        if offset + caplen > len(data):  # cut short: scapy warns and keeps what is there
            raise _Unusual
        found.append((float(sec + power * fraction), data[offset:offset + min(caplen, SCAPY_MTU)], linktype))
        offset += caplen
    if offset != len(data):
        raise _Unusual
    return found


def _dissect(frame: bytes, linktype: int) -> tuple[str, str, int, int, str, bytes] | None:
    """(src, dst, ttl, id, "tcp" or "icmp", the TCP segment or ICMP message) of an IPv4 frame,
    None for any other (scapy: no IP layer, or one with neither TCP nor ICMP in it)."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            raise _Unusual
        (ethertype,) = struct.unpack_from("!H", frame, 12)
        offset = 14
        if ethertype in ETHERTYPES_VLAN:  # 802.1Q: scapy's Dot1Q, never on a lab link
            raise _Unusual
    else:
        if len(frame) < 16:
            raise _Unusual
        (ethertype,) = struct.unpack_from("!H", frame, 14)
        offset = 16
    if ethertype != ETHERTYPE_IP:
        return None
    ip = frame[offset:]
    if len(ip) < 20 or ip[0] >> 4 != 4 or (ip[0] & 0x0F) < 5:
        raise _Unusual
    ihl = (ip[0] & 0x0F) * 4
    total, ip_id, fragment, ttl, protocol = struct.unpack_from("!HHHBB", ip, 2)
    if len(ip) < ihl:
        raise _Unusual
    # scapy's IP.extract_padding: the payload ends where the total length says (all of it if
    # the length is shorter than the header); a later fragment is Raw, not TCP nor ICMP
    body = ip[ihl:] if total < ihl else ip[ihl:total]
    if fragment & 0x1FFF or not body:
        return None
    if protocol == 4:  # IP in IP: scapy would find the inner one's TCP
        raise _Unusual
    if protocol not in (6, 1):
        return None
    if (protocol == 6 and len(body) < 20) or (protocol == 1 and len(body) < 8):
        raise _Unusual  # a truncated header: scapy's own defaults would fill it
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    return src, dst, ttl, ip_id, "tcp" if protocol == 6 else "icmp", body


def _option_names(x: bytes) -> tuple[str, ...]:
    """TCP options' kinds in order, as scapy's TCPOptionsField.m2i() walks them, in tcpdump's names."""
    names = []
    while x:
        kind = x[0]
        if kind == 0:
            names.append("EOL")
            break
        if kind == 1:
            names.append("NOP")
            x = x[1:]
            continue
        length = x[1] if len(x) > 1 else 0
        names.append(_SCAPY_OPTIONS.get(kind, str(kind)))
        x = x[max(length, 2):]
    return tuple(_OPTION_NAMES.get(name, name) for name in names)


def _relative(packets: list[Packet]) -> list[Packet]:
    """Each packet's time since the first's."""
    start = packets[0].time if packets else 0.0
    return [dataclasses.replace(p, time=round(p.time - start, 6)) for p in packets]


def read_packets_scapy(pcap: Path, hosts: dict[str, list[str]]) -> list[Packet]:
    """read_packets() through scapy's own dissection (its reference, and its fall-back)."""
    from scapy.layers.inet import ICMP, IP, TCP
    from scapy.utils import PcapReader

    owner = {ip: name for name, ips in hosts.items() for ip in ips}
    packets: list[Packet] = []
    with PcapReader(str(pcap)) as reader:
        for frame in reader:
            if IP not in frame:
                continue
            ip = frame[IP]
            common = dict(
                number=len(packets) + 1, time=float(frame.time), src=ip.src, dst=ip.dst,
                sender=owner.get(ip.src, "?"), receiver=owner.get(ip.dst, "?"),
                ttl=ip.ttl, ip_id=ip.id,
            )
            if TCP in ip:
                tcp = ip[TCP]
                packets.append(Packet(
                    **common, sport=tcp.sport, dport=tcp.dport, flags=tcpdump_flags(int(tcp.flags)),
                    seq=tcp.seq, ack=tcp.ack, win=tcp.window, payload=len(tcp.payload),
                    options=tuple(_OPTION_NAMES.get(name, str(name)) for name, _ in tcp.options)))
            elif ICMP in ip:
                packets.append(Packet(**common, sport=0, dport=0, flags=f"icmp {ip[ICMP].type}/{ip[ICMP].code}",
                                      seq=0, ack=0, win=0, payload=0, proto="icmp"))
    return _relative(packets)
