"""The explainer's speed: `rst-explain` against `tcpdump -r` on a capture of 1 million packets.

The capture is written here (no lab needed): many short TCP connections, 64 open at a time,
each a handshake, a request, a response and a close; one in eight ends with a RST from the
server after unread data, one in sixteen answers a SYN with a RST (no listener). Addresses
from 192.0.2.0/24 and 198.51.100.0/24, an Ethernet pcap as tcpdump writes it.

Why this mix: it is the hard case for rst-explain and an ordinary one for tcpdump. tcpdump
spends about the same on every packet; rst-explain's cheap path is an in-order segment of a
known connection, while a handshake, a FIN, a new connection, a forgotten one and above all a
RST (its features, its verdicts, its lines of output) cost it several times more. Here half
the packets are SYN, SYN-ACK, the handshake's ACK or a FIN, one connection in five is reset
(about 2 % of the packets are RSTs), and no connection carries more than two data segments.
A capture of longer transfers puts more of its packets on the cheap path.

Target (issue 12): rst-explain takes at most 3 x the time tcpdump takes to print the file.
Both are timed side by side, one run of each in turn, and each run's CPU time (user + sys of
the child, from getrusage) is recorded beside its wall time: the machine is shared, and other
sessions' load stretches wall times by a factor that changes from one run to the next, while
CPU time is the work each program did. The ratio is judged on CPU time; wall is reported too.
"""

from __future__ import annotations

import os
import random
import resource
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


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(command: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run; CPU is the child's user + sys time."""
    cpu_before, started = _children_cpu(), time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started, _children_cpu() - cpu_before


def measure(folder: Path, packets: int = 1_000_000, rounds: int = 3) -> dict:
    """Median wall and CPU times of tcpdump printing the capture and of rst-explain reading it."""
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
        tcpdump_runs.append(_time(printing))
        explain_runs.append(_time(explain))
    wall = {name: statistics.median(w for w, _ in runs) for name, runs in
            (("tcpdump", tcpdump_runs), ("explain", explain_runs))}
    cpu = {name: statistics.median(c for _, c in runs) for name, runs in
           (("tcpdump", tcpdump_runs), ("explain", explain_runs))}
    ratio = cpu["explain"] / cpu["tcpdump"]
    return {"packets": written, "capture": str(capture), "bytes": capture.stat().st_size,
            "tcpdump_command": " ".join(printing) + " > /dev/null",
            "explain_command": " ".join(explain) + " > /dev/null",
            "tcpdump_cpu_s": round(cpu["tcpdump"], 3), "explain_cpu_s": round(cpu["explain"], 3),
            "tcpdump_wall_s": round(wall["tcpdump"], 3), "explain_wall_s": round(wall["explain"], 3),
            "tcpdump_runs": [{"wall_s": round(w, 3), "cpu_s": round(c, 3)} for w, c in tcpdump_runs],
            "explain_runs": [{"wall_s": round(w, 3), "cpu_s": round(c, 3)} for w, c in explain_runs],
            "ratio_cpu": round(ratio, 2), "ratio_wall": round(wall["explain"] / wall["tcpdump"], 2),
            "load_average": os.getloadavg(), "target_ratio": TARGET_RATIO,
            "judged_on": "CPU time (user + sys): wall times are stretched by other sessions' load",
            "target_met": ratio <= TARGET_RATIO}
