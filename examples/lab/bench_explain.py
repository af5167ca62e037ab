"""The explainer's speed: `rst-explain` against `tcpdump -r` on a capture of 1 million packets.

The capture is written here (no lab needed): many short TCP connections, 64 open at a time,
each a handshake, a request, a response and a close; one in eight ends with a RST from the
server after unread data, one in sixteen answers a SYN with a RST (no listener). Addresses
from 192.0.2.0/24 and 198.51.100.0/24, an Ethernet pcap as tcpdump writes it.
Target (issue 12): rst-explain takes at most 3 x the time tcpdump takes to print the file.
"""

from __future__ import annotations

import random
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

TARGET_RATIO = 3.0
_ETH = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
_TS_OPTION = b"\x01\x01\x08\x0a" + b"\x00" * 8        # nop, nop, timestamps
_SYN_OPTIONS = b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + b"\x00" * 8 + b"\x01\x03\x03\x07"


def _frame(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
           payload: int, options: bytes, ip_id: int) -> bytes:
    tcp_len = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (tcp_len // 4) << 4,
                      flags, 0 if flags & 4 and not flags & 16 else 502, 0, 0) + options + b"x" * payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ip_id & 0xFFFF, 0x4000, 64, 6, 0, src, dst)
    return _ETH + ip + tcp


def _connection(rng: random.Random, index: int) -> list[tuple]:
    """One connection's packets as (delay, frame) pairs."""
    client = bytes([192, 0, 2, 1 + index % 200])
    server = bytes([198, 51, 100, 1 + index % 50])
    cport, sport = 10000 + index % 50000, 8080
    c, s = rng.getrandbits(32), rng.getrandbits(32)
    ci, si = rng.getrandbits(16), 0
    out = [(_frame(client, server, cport, sport, c, 0, 0x02, 0, _SYN_OPTIONS, ci))]
    if index % 16 == 5:   # nothing listens: RST answers the SYN
        out.append(_frame(server, client, sport, cport, 0, c + 1, 0x14, 0, b"", 0))
        return out
    out.append(_frame(server, client, sport, cport, s, c + 1, 0x12, 0, _SYN_OPTIONS, 0))
    out.append(_frame(client, server, cport, sport, c + 1, s + 1, 0x10, 0, _TS_OPTION, ci + 1))
    out.append(_frame(client, server, cport, sport, c + 1, s + 1, 0x18, 120, _TS_OPTION, ci + 2))
    out.append(_frame(server, client, sport, cport, s + 1, c + 121, 0x10, 0, _TS_OPTION, si + 1))
    if index % 8 == 3:    # closed with the request unread
        out.append(_frame(server, client, sport, cport, s + 1, c + 121, 0x14, 0, _TS_OPTION, si + 2))
        return out
    out.append(_frame(server, client, sport, cport, s + 1, c + 121, 0x18, 900, _TS_OPTION, si + 2))
    out.append(_frame(client, server, cport, sport, c + 121, s + 901, 0x10, 0, _TS_OPTION, ci + 3))
    out.append(_frame(client, server, cport, sport, c + 121, s + 901, 0x11, 0, _TS_OPTION, ci + 4))
    out.append(_frame(server, client, sport, cport, s + 901, c + 122, 0x11, 0, _TS_OPTION, si + 3))
    out.append(_frame(client, server, cport, sport, c + 122, s + 902, 0x10, 0, _TS_OPTION, ci + 5))
    return out


def write_capture(path: Path, packets: int = 1_000_000, concurrent: int = 64, seed: int = 12) -> int:
    """Write the synthetic capture; returns the number of packets written."""
    rng = random.Random(seed)
    t = 1_700_000_000.0
    written = index = 0
    open_conns: list[list[bytes]] = []
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        while written < packets:
            while len(open_conns) < concurrent:
                open_conns.append(_connection(rng, index)[::-1])
                index += 1
            conn = open_conns[rng.randrange(len(open_conns))]
            frame = conn.pop()
            if not conn:
                open_conns.remove(conn)
            t += 0.00002
            sec = int(t)
            out.write(struct.pack("<IIII", sec, int((t - sec) * 1e6), len(frame), len(frame)) + frame)
            written += 1
    return written


def _time(command: list[str], rounds: int) -> float:
    runs = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def measure(folder: Path, packets: int = 1_000_000, rounds: int = 3) -> dict:
    """Median wall times of tcpdump printing the capture and of rst-explain reading it."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        raise SystemExit("tcpdump is missing: apt-get install tcpdump")
    folder.mkdir(parents=True, exist_ok=True)
    capture = folder / "explain-1M.pcap"
    written = write_capture(capture, packets)
    explain = [sys.executable, "-m", "rst_explain", str(capture)]
    printing = [tcpdump, "-r", str(capture), "-nn"]
    # side by side: one of each in turn, so that both see the same machine load
    tcpdump_runs, explain_runs = [], []
    for _ in range(rounds):
        tcpdump_runs.append(_time(printing, 1))
        explain_runs.append(_time(explain, 1))
    tcpdump_s, explain_s = statistics.median(tcpdump_runs), statistics.median(explain_runs)
    return {"packets": written, "capture": str(capture), "bytes": capture.stat().st_size,
            "tcpdump_command": " ".join(printing) + " > /dev/null",
            "explain_command": " ".join(explain) + " > /dev/null",
            "tcpdump_s": round(tcpdump_s, 3), "explain_s": round(explain_s, 3),
            "tcpdump_runs_s": tcpdump_runs, "explain_runs_s": explain_runs,
            "ratio": round(explain_s / tcpdump_s, 2), "target_ratio": TARGET_RATIO,
            "target_met": explain_s <= TARGET_RATIO * tcpdump_s}
