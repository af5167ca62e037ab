"""ftrace's record of the tracer's tracepoints, kept beside bpftrace's: the events bpftrace lost.

Measured on this machine (Linux 6.18, a Firecracker guest): a tracepoint that fires in a softirq
on top of certain threads (tokio-rt-worker threads of PID 1, the guest's agent) is written to
ftrace's ring but never reaches a BPF program. Out of 820,567 events compared one by one, the 63
that bpftrace lacked were every event on those threads; plain `perf record` saw none of them
either, and the programs' recursion_misses stayed 0. So no miss is counted and bpftrace reports
no loss, yet a keepalive timer's RST or a loss probe's drop is absent from a run about once in
75 runs of keepalive-timeout and lb-idle-silent-drop. (The perf path's one silent, per-task exit
is perf_trace_##call returning when perf_trace_buf_alloc() gets no recursion context,
include/trace/perf.h, kernel/trace/trace_event_perf.c; that it is the one taken here is likely,
not proven.) ftrace fills its ring on another path (trace_event_raw_event_*), so it witnesses
what bpftrace missed; it cannot replace bpftrace: its events carry no network namespace, and
kfree_skb's no addresses.

    python -m lab.witness      (run by Witness, with tracefs mounted: probes.in_tracefs())

makes an ftrace instance of its own (instances/fg-witness-PID), enables the four tracepoints
with the tracer's own filters, prints "R ready", then every event as ftrace prints it, until
SIGTERM (also when the runner dies), and removes the instance. An instance left by a witness
that was SIGKILLed is removed by the next one.

Witness (the runner's side) keeps the events by name, time (CLOCK_MONOTONIC) and the fields
that identify one (unseen() matches them with bpftrace's).
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .process import die_with_parent

PREFIX = "fg-witness-"
EVENTS = {"tcp/tcp_send_reset": "", "tcp/tcp_receive_reset": "", "sock/inet_sock_set_state": "protocol == 6",
          "skb/kfree_skb": "reason > 1 && protocol == 2048"}  # the bpftrace probes' own filters
LAB_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
TOLERANCE_NS = 5_000_000  # ftrace's time and bpftrace's of one event: microseconds apart
# "   python-12414   [000] ..s2. 14550.672650: inet_sock_set_state: family=AF_INET ..."
_LINE = re.compile(r"\[(\d+)\]\s+\S+\s+(\d+)\.(\d+): (\w+): (.*)$")
_FIELD = re.compile(r"(\w+)[=:] ?(\S+)")


# -- the witness process ----------------------------------------------------------------
def _main(tracefs: Path) -> int:
    for stale in (tracefs / "instances").glob(PREFIX + "*"):  # a SIGKILLed witness's
        pid = stale.name.removeprefix(PREFIX)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _remove(stale)
    instance = tracefs / "instances" / f"{PREFIX}{os.getpid()}"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    instance.mkdir()
    try:
        (instance / "trace_clock").write_text("mono")
        (instance / "options" / "hash-ptr").write_text("0")  # kfree_skb's skbaddr as bpftrace prints it
        (instance / "buffer_size_kb").write_text("4096")
        for event, condition in EVENTS.items():
            if condition:
                (instance / "events" / event / "filter").write_text(condition)
            (instance / "events" / event / "enable").write_text("1")
        print("R ready", flush=True)
        with open(instance / "trace_pipe") as pipe:
            for line in pipe:
                sys.stdout.write(line)
                sys.stdout.flush()
    except BrokenPipeError:
        pass
    finally:
        _remove(instance)
    return 0


def _remove(instance: Path) -> None:
    for enable in instance.glob("events/*/*/enable"):
        try:
            enable.write_text("0")
        except OSError:
            pass
    try:
        instance.rmdir()
    except OSError:
        pass


# -- the runner's side ------------------------------------------------------------------
def parse(line: str) -> tuple[str, int, int, tuple[Any, ...]] | None:
    """(event, t_ns, cpu, key) of one line of ftrace's, None for another line. key: what
    identifies the event among bpftrace's (addresses, ports and states; a packet's address)."""
    found = _LINE.search(line)
    if not found:
        return None
    cpu, seconds, fraction, event, rest = found.groups()
    t_ns = int(seconds) * 1_000_000_000 + int(fraction.ljust(9, "0"))
    fields = dict(_FIELD.findall(rest))
    if event == "kfree_skb":
        return event, t_ns, int(cpu), (int(fields.get("skbaddr", "0"), 16),)
    if event == "tcp_send_reset":
        src, _, sport = fields.get("src", "").rpartition(":")
        dst, _, dport = fields.get("dest", "").rpartition(":")
        return event, t_ns, int(cpu), (src.strip("[]"), int(sport or 0), dst.strip("[]"), int(dport or 0))
    flow = (fields.get("saddr", ""), int(fields.get("sport", 0)), fields.get("daddr", ""), int(fields.get("dport", 0)))
    if event == "inet_sock_set_state":
        return event, t_ns, int(cpu), (*flow, fields.get("oldstate", ""), fields.get("newstate", ""))
    return event, t_ns, int(cpu), flow


def in_lab(key: tuple[Any, ...]) -> bool:
    """A socket event of the lab's addresses: the machine's own (a kernel on 127.0.0.1, a
    notebook's) are not bpftrace's to see (it leaves out the machine's namespace)."""
    for address in key[0:3:2]:
        try:
            if any(ipaddress.ip_address(address) in net for net in LAB_NETS):
                return True
        except ValueError:
            continue
    return False


class Witness:
    """The ftrace instance's events, read from the witness process's lines."""

    def __init__(self, in_tracefs: Any, tracefs: str) -> None:
        """in_tracefs: probes.in_tracefs, the argv of a command with tracefs mounted at tracefs."""
        self.events: list[tuple[str, int, int, tuple[Any, ...]]] = []
        self.ready = threading.Event()
        self.failure = ""
        self.seen_until: dict[int, int] = {}  # cpu -> the latest time ftrace printed for it
        self._cond = threading.Condition()
        self._proc = subprocess.Popen(in_tracefs(f"exec {sys.executable} -m lab.witness {tracefs}"),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True,
                                      preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("R ready"):
                self.ready.set()
                continue
            event = parse(line)
            if event is None:
                continue
            with self._cond:
                self.events.append(event)
                self.seen_until[event[2]] = max(self.seen_until.get(event[2], 0), event[1])
                self._cond.notify_all()
        self.failure = self.failure or ("the ftrace witness exited: "
                                        + (self._proc.stderr.read() if self._proc.stderr else "").strip()[-300:])
        self.ready.set()
        with self._cond:
            self._cond.notify_all()

    def through(self, until: int, cpus: list[int], timeout: float) -> bool:
        """Wait until ftrace has printed, on each CPU, an event after `until` (the tracer's
        markers, fired on each CPU after it): every earlier one is printed then (trace_pipe
        gives each CPU's events in order)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(self.seen_until.get(c, 0) > until for c in cpus):
                if self.failure or not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    return False
        return True

    def unseen(self, theirs: list[tuple[str, int, tuple[Any, ...]]], since: int, until: int) -> dict[str, int]:
        """How many of ftrace's events between since and until (ns) have no counterpart among
        bpftrace's (theirs: event, t_ns, key), by tracepoint: events bpftrace lost. Each of
        bpftrace's events answers at most one of ftrace's, the nearest in time."""
        with self._cond:
            mine = [e for e in self.events if since <= e[1] <= until]
        pool: dict[tuple[Any, ...], list[int]] = {}
        for name, t_ns, key in theirs:
            pool.setdefault((name, *key), []).append(t_ns)
        lost: dict[str, int] = {}
        for name, t_ns, _cpu, key in mine:
            if name != "kfree_skb" and not in_lab(key):
                continue
            times = pool.get((name, *key), [])
            near = min(times, key=lambda t: abs(t - t_ns), default=None)
            if near is not None and abs(near - t_ns) <= TOLERANCE_NS:
                times.remove(near)
            else:
                lost[name] = lost.get(name, 0) + 1
        return lost

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()  # it removes its instance
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/sys/kernel/tracing")))
