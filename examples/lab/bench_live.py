"""What `rst-explain --live` costs at a sustained storm of RSTs (`nox -s bench`, or alone:
`python -m lab bench --live-only`).

Two namespaces of their own (lab/live_causes.py): a client that connects to a closed port of
the server as fast as one process can, for SECONDS, each connect refused with a RST (NO_SOCKET:
tcp_v4_send_reset() in net/ipv4/tcp_ipv4.c); `rst-explain --live --json` watches both
namespaces, its output to a file. Measured:

- the watcher's CPU seconds (its own and its bpftrace's: wait4()'s rusage once it ended), per
  second of storm and per RST;
- the events bpftrace lost (its own count, "Lost N events") and the probe runs the kernel
  skipped (recursion_misses), from the watcher's summary;
- its memory: resident set sampled each 0.25 s through the storm (first, last, peak), and the
  peak of its bpftrace;
- RSTs made (the client's refused connects), reported (the summary's count) and printed (at
  most --rate a second: the rest counted as not printed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from . import live_causes

SECONDS = 5.0
RATE = 50
STORM = """
import socket, sys, time
address, until, refused = (sys.argv[1], int(sys.argv[2])), time.monotonic() + float(sys.argv[3]), 0
while time.monotonic() < until:
    s = socket.socket()
    if s.connect_ex(address) == 111:  # ECONNREFUSED: the server's kernel answered with a RST
        refused += 1
    s.close()
print(refused)
"""


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except OSError:
        return 0.0


def measure(seconds: float = SECONDS, port: int = 47099) -> dict:
    pair = live_causes.make_pair()
    watch = None
    try:
        watch = live_causes.Watching([pair.path(pair.client), pair.path(pair.server)], "--rate", str(RATE))
        if not watch.attached.wait(90) or watch.proc.poll() is not None:
            return {"measured": False, "why": "".join(watch.stderr).strip()}
        storm = subprocess.Popen(live_causes.netns.command(pair.client, [
            sys.executable, "-c", STORM, live_causes.SERVER, str(port), str(seconds)]),
            pass_fds=(pair.client,), stdout=subprocess.PIPE, text=True)
        samples, bpftrace_peak = [], 0
        started = time.monotonic()
        while storm.poll() is None:
            samples.append(_rss_kb(watch.proc.pid))
            bpftrace_peak = max([bpftrace_peak] + [_rss_kb(c) for c in _children(watch.proc.pid)])
            time.sleep(0.25)  # a sampling period, not a wait for an event
        storm_s = time.monotonic() - started
        refused = int(storm.communicate()[0].strip() or 0)
        split = {"python_s": round(_cpu_s(watch.proc.pid), 2),
                 "bpftrace_s": round(sum(_cpu_s(c) for c in _children(watch.proc.pid)), 2)}
        printed = 0
        watch.proc.send_signal(signal.SIGINT)
        summary = {}
        while (item := watch.objects.get(timeout=60)) is not None:
            if "summary" in item:
                summary = item["summary"]
            else:
                printed += 1
        _, status, usage = os.wait4(watch.proc.pid, 0)
        watch.proc.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime
        return {
            "measured": True, "seconds": round(storm_s, 3), "rsts_made": refused,
            "rsts_per_s": round(refused / storm_s), "rate_limit_per_s": RATE,
            "reported": summary.get("rsts"), "printed": printed, "not_printed": summary.get("not_printed"),
            "lost_events": summary.get("lost_events"), "missed_probe_runs": summary.get("missed_probe_runs"),
            "events_read": summary.get("events_read"),
            "watcher_cpu_s": round(cpu, 3), "watcher_cpu_per_storm_s": round(cpu / storm_s, 3),
            "watcher_cpu_us_per_rst": round(cpu / max(refused, 1) * 1e6, 1),
            "rss_kb": {"first": samples[0] if samples else 0, "last": samples[-1] if samples else 0,
                       "peak": max(samples or [0])},
            "bpftrace_rss_peak_kb": bpftrace_peak, "cpu_by_process_at_storm_end": split, "exit": watch.proc.returncode,
            "command": "rst-explain --live --json --rate 50 --netns CLIENT --netns SERVER",
        }
    finally:
        if watch is not None:
            watch.kill()
        pair.close()


def report(figures: dict) -> None:
    if not figures.get("measured"):
        print(f"rst-explain --live under a RST storm: not measured: {figures.get('why')}")
        return
    f = figures
    print(f"rst-explain --live under a RST storm ({f['rsts_made']} RSTs in {f['seconds']:.1f} s,"
          f" {f['rsts_per_s']}/s, one client process in a namespace): watcher CPU {f['watcher_cpu_s']:.2f} s"
          f" ({f['watcher_cpu_per_storm_s']:.2f} CPU-s per second of storm, {f['watcher_cpu_us_per_rst']:.0f} us"
          f" per RST, bpftrace included); reported {f['reported']}, printed {f['printed']} (at most"
          f" {f['rate_limit_per_s']}/s), not printed {f['not_printed']}; events lost {f['lost_events']},"
          f" probe runs skipped {f['missed_probe_runs']}; memory {f['rss_kb']['first'] / 1024:.1f} MiB first,"
          f" {f['rss_kb']['last'] / 1024:.1f} last, {f['rss_kb']['peak'] / 1024:.1f} peak;"
          f" bpftrace {f['bpftrace_rss_peak_kb'] / 1024:.1f} MiB peak; CPU at the storm's end: rst-explain"
          f" {f['cpu_by_process_at_storm_end']['python_s']:.2f} s, bpftrace {f['cpu_by_process_at_storm_end']['bpftrace_s']:.2f} s")


if __name__ == "__main__":
    found = measure(float(sys.argv[1]) if len(sys.argv) > 1 else SECONDS)
    report(found)
