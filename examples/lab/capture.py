"""Real tcpdump: the capture on a lab interface, its text, and the pcap read back.

Start: wait for tcpdump's own "listening on" line. Stop: a packet socket of our
own counts what crossed the interface; once the pcap file holds as many packets,
tcpdump gets SIGINT and is waited for. The pcap is then complete. Its text is
tcpdump's own (`tcpdump -r`); its packets are read with scapy.
"""

from __future__ import annotations

import dataclasses
import os
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


# every packet written to the file as it arrives, whole. libpcap's ring (-B, KiB) has a 64 KiB
# slot per packet on a veth link (offloads let a segment reach 64 KiB), so the default 2 MiB,
# 32 slots, dropped an upload's burst (about 30 segments and ACKs within 5 ms, early-response-lost)
# while tcpdump waited for a CPU. 8 MiB: 128 slots, four such bursts. Not more: the kernel
# allocates and zeroes the whole ring for each capture, and on this project's machines (virtual,
# their free memory handed back to the host) zeroing is slow: 32 MiB cost each run about 0.1 s
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
    """The pcap's IPv4 TCP segments and ICMP messages, each attributed to its host."""
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
    start = packets[0].time if packets else 0.0
    return [dataclasses.replace(p, time=round(p.time - start, 6)) for p in packets]
