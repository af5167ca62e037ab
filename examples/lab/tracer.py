"""The kernel's own account of each run, from its tracepoints: every RST a TCP stack sent
and why (tcp:tcp_send_reset), the state of each socket that accepted one
(tcp:tcp_receive_reset), each socket's states (sock:inet_sock_set_state), the errors
it reported (sock:inet_sk_error_report) and the packets it dropped (skb:kfree_skb).

Tracepoints are global and the scenarios run in parallel with the same addresses, so
one bpftrace process per runner watches the whole machine and prints, with each event,
the network namespace it happened in (its inode number, read from the socket or the
packet's device) and the time (CLOCK_MONOTONIC). An event belongs to the run whose
namespace had that number at that time: exact, however many runs share the addresses.
inet_sk_error_report carries no socket; it is given the namespace of the event next to it
on the same CPU for the same four-tuple (the kernel reports the error in the same call:
tcp_reset(), tcp_write_err(), tcp_done_with_error()).

The worker waits, over a Unix socket in its run's folder, until the probes are attached
(bpftrace compiles them while the worker builds its hosts), runs its scenario, and asks
for its events once its capture has stopped; the runner first makes bpftrace read
everything up to that time (a marker event on every CPU), then answers. Where tracing is
impossible (not root, no bpftrace, no tracefs, a kernel without the field), the answer
says so and why.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import netns
from .process import SLOW, die_with_parent
from .wire import tcpdump_flags

SOCKET = "kernel.sock"  # in each run's folder: the worker's line to the runner's tracer
EVENTS = ("tcp_send_reset", "tcp_receive_reset", "inet_sock_set_state", "inet_sk_error_report", "kfree_skb")
FORMATS = {"tcp_send_reset": "tcp/tcp_send_reset", "tcp_receive_reset": "tcp/tcp_receive_reset",
           "inet_sock_set_state": "sock/inet_sock_set_state", "inet_sk_error_report": "sock/inet_sk_error_report",
           "kfree_skb": "skb/kfree_skb"}
TRACEFS = "/sys/kernel/tracing"
START_TIMEOUT = 20.0 * SLOW
PORT = "($P >> 8) | (($P & 0xff) << 8)"  # network to host order, in bpftrace

# The kernel structures the probes read, by the offsets this kernel's BTF gives (pahole,
# Debian package dwarves): declared in the script, so bpftrace need not load the whole BTF
# (that alone took 0.45 s of its 0.9 s start). (struct, member) -> (name in the script, C type)
LAYOUT = {
    ("sock_common", "skc_family"): ("fg_sock", "family", "unsigned short"),
    ("sock_common", "skc_state"): ("fg_sock", "state", "unsigned char"),
    ("sock_common", "skc_net"): ("fg_sock", "net", "struct fg_net *"),
    ("net", "ns"): ("fg_net", "ns", "struct fg_ns"),
    ("ns_common", "inum"): ("fg_ns", "inum", "unsigned int"),
    ("sk_buff", "dev"): ("fg_skb", "dev", "struct fg_dev *"),
    ("sk_buff", "sk"): ("fg_skb", "sk", "struct fg_sock *"),
    ("sk_buff", "transport_header"): ("fg_skb", "transport_header", "unsigned short"),
    ("sk_buff", "network_header"): ("fg_skb", "network_header", "unsigned short"),
    ("sk_buff", "head"): ("fg_skb", "head", "unsigned char *"),
    ("net_device", "nd_net"): ("fg_dev", "net", "struct fg_net *"),
}
# wire formats (RFC 791, RFC 9293) and struct sockaddr_in: the same on every kernel
_WIRE = """
struct fg_iphdr { unsigned char version_ihl; unsigned char tos; unsigned short len; unsigned short id;
  unsigned short frag; unsigned char ttl; unsigned char protocol; unsigned short check; unsigned int saddr;
  unsigned int daddr; };
struct fg_tcphdr { unsigned short source; unsigned short dest; unsigned int seq; unsigned int ack;
  unsigned char offset; unsigned char flags; };
struct fg_sin { unsigned short family; unsigned short port; unsigned int addr; };
"""


def not_recorded(why: str) -> dict[str, Any]:
    """The `tracing` of a run whose kernel events were not recorded, and why."""
    return {"recorded": False, "events": [], "missing": {}, "why": why}


def offsets() -> dict[tuple[str, str], int]:
    """Each LAYOUT member's byte offset in this kernel, from its BTF (pahole)."""
    classes = sorted({c for c, _ in LAYOUT})
    return parse_pahole(subprocess.run(["pahole", "-C", ",".join(classes), "/sys/kernel/btf/vmlinux"],
                                       capture_output=True, text=True, timeout=10 * SLOW).stdout)


def parse_pahole(out: str) -> dict[tuple[str, str], int]:
    """LAYOUT's members' offsets in pahole's listing (`type name; /* offset size */`): the
    first listing of a member counts (a union lists some twice)."""
    found: dict[tuple[str, str], int] = {}
    current = ""
    for line in out.splitlines():
        opening = re.match(r"^struct (\w+) \{", line)
        if opening:
            current = opening.group(1)
            continue
        member = re.search(r"[\s*](\w+)(?:\[\d+\])?;\s+/\*\s+(\d+)(?::\s*\d+)?\s+\d+\s+\*/", line)
        if member and (current, member.group(1)) in LAYOUT:
            found.setdefault((current, member.group(1)), int(member.group(2)))
    missing = sorted(f"{c}.{m}" for c, m in LAYOUT if (c, m) not in found)
    if missing:
        raise RuntimeError(f"this kernel's BTF has no {', '.join(missing)} (pahole)")
    return found


def declarations(found: dict[tuple[str, str], int]) -> str:
    """The script's structs: each LAYOUT member at its offset, padding before it."""
    structs: dict[str, list[tuple[int, str, str]]] = {}
    for key, (struct, name, ctype) in LAYOUT.items():
        structs.setdefault(struct, []).append((found[key], name, ctype))
    sizes = {"unsigned char": 1, "unsigned short": 2, "unsigned int": 4, "struct fg_ns": 0}  # fg_ns: last
    text = []
    for struct in ("fg_ns", "fg_net", "fg_sock", "fg_dev", "fg_skb"):  # each before its use
        members, at = [], 0
        for offset, name, ctype in sorted(structs[struct]):
            if offset > at:
                members.append(f"char _{at}[{offset - at}];")
            members.append(f"{ctype}{'' if ctype.endswith('*') else ' '}{name};")
            at = offset + (8 if ctype.endswith("*") else sizes[ctype])
        text.append(f"struct {struct} {{ {' '.join(members)} }};")
    return "\n".join(text) + _WIRE


_PROBES = {
    "tcp_send_reset": """
tracepoint:tcp:tcp_send_reset {
  $ns = args->skaddr != 0 ? SKNS(args->skaddr) : ((struct fg_skb *)args->skbaddr)->dev->net->ns.inum;
  $sa = (struct fg_sin *)args->saddr; $da = (struct fg_sin *)args->daddr;
  if ($ns != HOME) { printf("E tcp_send_reset %llu %d %u %llx %d %d %s %d %s %d\\n", nsecs, cpu, $ns, args->skaddr,
    args->state, RSTREASON, ntop($sa->addr), PORT($sa->port), ntop($da->addr),
    PORT($da->port)); }
}""",
    "tcp_receive_reset": """
tracepoint:tcp:tcp_receive_reset {
  $ns = SKNS(args->skaddr);
  if ($ns != HOME) { printf("E tcp_receive_reset %llu %d %u %llx %d %s %d %s %d\\n", nsecs, cpu, $ns, args->skaddr,
    ((struct fg_sock *)args->skaddr)->state, ntop(args->saddr), args->sport, ntop(args->daddr),
    args->dport); }
}""",
    "inet_sock_set_state": """
tracepoint:sock:inet_sock_set_state /args->protocol == 6/ {
  $ns = SKNS(args->skaddr);
  if ($ns != HOME) { printf("E inet_sock_set_state %llu %d %u %llx %d %d %s %d %s %d\\n", nsecs, cpu, $ns,
    args->skaddr, args->oldstate, args->newstate, ntop(args->saddr), args->sport, ntop(args->daddr), args->dport); }
}""",
    "inet_sk_error_report": """
tracepoint:sock:inet_sk_error_report /args->protocol == 6 && args->error != 0/ {
  printf("E inet_sk_error_report %llu %d 0 0 %d %s %d %s %d\\n", nsecs, cpu, args->error, ntop(args->saddr),
    args->sport, ntop(args->daddr), args->dport);
}""",
    "kfree_skb": """
tracepoint:skb:kfree_skb /args->reason > 1 && args->protocol == 0x0800/ {
  $skb = (struct fg_skb *)args->skbaddr;
  $rx = (struct fg_sock *)RXSK;
  $ns = $skb->dev != 0 ? $skb->dev->net->ns.inum : ($rx != 0 ? $rx->net->ns.inum
        : ($skb->sk != 0 ? $skb->sk->net->ns.inum : 0));
  $ip = (struct fg_iphdr *)($skb->head + $skb->network_header);
  // 17, AF_PACKET: a copy held by a packet socket (tcpdump's, the lab's taps), not the stack's drop
  $copy = $skb->sk != 0 ? $skb->sk->family == 17 : 0;
  if ($ns != HOME && $ns != 0 && !$copy && $ip->protocol == 6) {
    $th = (struct fg_tcphdr *)($skb->head + $skb->transport_header);
    printf("E kfree_skb %llu %d %u 0 %d %s %d %s %d %d %u %s\\n", nsecs, cpu, $ns, args->reason, ntop($ip->saddr),
      PORT($th->source), ntop($ip->daddr), PORT($th->dest), $th->flags,
      $th->seq, ksym(args->location));
  }
}""",
}
# the fields each probe reads from its event (the kernel must have them)
_NEEDS = {"tcp_send_reset": ("skbaddr", "skaddr", "state", "saddr", "daddr"),
          "tcp_receive_reset": ("skaddr", "sport", "dport", "saddr", "daddr"),
          "inet_sock_set_state": ("skaddr", "oldstate", "newstate", "protocol", "saddr", "daddr"),
          "inet_sk_error_report": ("error", "protocol", "saddr", "daddr"),
          "kfree_skb": ("skbaddr", "location", "protocol", "reason")}
# fields read where the kernel has them; without one, its value is printed as -1 and decoded
# as None, and the claims that need it are not applicable there (lab/trace.py)
OPTIONAL = {"tcp_send_reset": ("reason",)}  # tcp_send_reset's reason: Linux 6.10 and later
_HEAD = """
BEGIN { printf("R ready\\n"); }
"""


def _script(events: list[str], home: int, layout: str, rx_sk: bool = True, rst_reason: bool = True) -> str:
    """rx_sk: kfree_skb has that field (the socket that dropped the packet; 6.12 and later);
    rst_reason: tcp_send_reset has its reason (6.10 and later)."""
    text = layout + _HEAD + "".join(_PROBES[e] for e in events)
    text = text.replace("RXSK", "args->rx_sk" if rx_sk else "0")
    text = text.replace("RSTREASON", "args->reason" if rst_reason else "-1")
    text = re.sub(r"SKNS\(([^()]*)\)", r"((struct fg_sock *)\1)->net->ns.inum", text)
    text = re.sub(r"PORT\(([^()]*)\)", lambda m: "(" + PORT.replace("$P", m.group(1)) + ")", text)
    return text.replace("HOME", str(home))


def _in_tracefs(command: str) -> list[str]:
    """argv running a shell command with tracefs mounted, in a mount namespace of its own
    (nothing is left mounted on the machine)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f"mountpoint -q {TRACEFS} || mount -t tracefs nodev {TRACEFS} || exit 3; {command}"]


# The probes see every network namespace of the machine: other runs' (another checkout's lab
# at the same time) as well as this one's. When bpftrace, or the thread that reads its lines,
# waits for a CPU, their events wait in its per-CPU perf buffers; at bpftrace's default of 64
# pages (256 KiB a CPU) a soak beside another lab's lost 1176 events at once ("Lost N events":
# the run is then incomplete, and its claims on those events fail). 512 pages: 2 MiB a CPU.
TRACER_ENV = {"BPFTRACE_PERF_RB_PAGES": "512"}
F_SETPIPE_SZ, PIPE_BYTES = 1031, 1 << 20  # fcntl(2); 1 MiB, /proc/sys/fs/pipe-max-size's default


def _tracer_child() -> None:
    """In bpftrace's process before it starts: it dies with the runner, and it compiles its
    probes ahead of the workers that wait for them (a negative nice value: root only)."""
    die_with_parent(signal.SIGKILL)
    os.nice(-10)


def symbols(print_fmt: str) -> dict[str, dict[int, str]]:
    """Each field's numbers -> names, from an event format's __print_symbolic() tables:
    the names the kernel itself prints (TCP_LISTEN, NO_SOCKET, TCP_LISTEN_OVERFLOW...)."""
    found: dict[str, dict[int, str]] = {}
    for fieldname, table in re.findall(r"__print_symbolic\(REC->(\w+),((?:\s*\{\s*\d+,\s*\"[^\"]*\"\s*\},?)+)",
                                       print_fmt):
        found[fieldname] = {int(n): name for n, name in re.findall(r"\{\s*(\d+),\s*\"([^\"]*)\"\s*\}", table)}
    if "REC->state ?" in print_fmt:  # tcp_send_reset prints a state of 0 (no socket) as UNKNOWN
        found.setdefault("state", {})[0] = "UNKNOWN"
    return found


class Tracer:
    """One bpftrace for a whole run of the catalogue (launch(), then ready(); or the reason
    it cannot)."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {"recorded": False, "events": [], "missing": {}}
        self.names: dict[str, dict[str, dict[int, str]]] = {}
        self._proc: subprocess.Popen[str] | None = None
        self._events: list[tuple[Any, ...]] = []
        self._marks: dict[int, int] = {}
        self._lost = 0
        self._cond = threading.Condition()
        self._ready = threading.Event()  # bpftrace printed its BEGIN line
        self.attached = threading.Event()  # ready() is over: status says whether events are recorded
        self._failure = ""
        self._stderr: list[str] = []
        self._mark_fd: int | None = None  # the marker's network namespace (flush())
        self._mark_ns = ""
        self._runs_left = -1  # runs that may still ask for events (expect()); at 0 bpftrace stops
        self._stopping: threading.Thread | None = None

    # -- starting ------------------------------------------------------------------
    @classmethod
    def launch(cls) -> Tracer:
        """Start bpftrace (call from the thread that outlives the run: bpftrace dies with it,
        even if the runner is killed); ready() waits until its probes are attached."""
        tracer = cls()
        why = tracer._unavailable()
        if why:
            tracer.status["why"] = why
            tracer.attached.set()
            return tracer
        try:
            tracer._launch()
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            tracer._give_up(exc)
        return tracer

    def ready(self) -> Tracer:
        """Wait until bpftrace's probes are attached (or give up, saying why)."""
        if self._proc is None:
            self.attached.set()
            return self
        try:
            if not self._ready.wait(START_TIMEOUT) or self._failure:
                stderr = "\n".join(line for line in self._stderr if "RLIMIT_MEMLOCK" not in line)[-2000:]
                raise RuntimeError(f"bpftrace did not start: {self._failure or 'no answer'}\n{stderr}".strip())
            version = subprocess.run(["bpftrace", "--version"], capture_output=True, text=True).stdout.strip()
            self.status.update(recorded=True, by=version or "bpftrace")
        except (OSError, RuntimeError) as exc:
            self._give_up(exc)
        self.attached.set()
        return self

    def _give_up(self, exc: BaseException) -> None:
        self.close()
        self.status = not_recorded(str(exc))

    def _unavailable(self) -> str:
        if os.geteuid() != 0:
            return ("the lab ran without root: the kernel's tracepoints are the machine's, not a user"
                    " namespace's (they need CAP_BPF and CAP_PERFMON and tracefs)")
        missing = [tool for tool in ("bpftrace", "pahole", "unshare") if not shutil.which(tool)]
        if missing:
            return f"{' and '.join(missing)} not installed (Debian packages bpftrace, dwarves)"
        return ""

    def _launch(self) -> None:
        paths = " ".join(f"{TRACEFS}/events/{FORMATS[e]}/format" for e in EVENTS)
        probe = subprocess.run(_in_tracefs(f"for f in {paths}; do echo \"== $f\"; cat \"$f\" 2>/dev/null; done"),
                               capture_output=True, text=True, timeout=10 * SLOW)
        if probe.returncode == 3:
            raise RuntimeError(f"tracefs cannot be mounted: {probe.stderr.strip()}")
        formats = dict(re.findall(r"== \S+/events/\w+/(\w+)/format\n(.*?)(?=\n== |\Z)", probe.stdout, re.S))
        fields = {e: set(re.findall(r"field:[^;]*?(\w+)(?:\[\d+\])?;", formats.get(e, ""))) for e in EVENTS}
        events = []
        for event in EVENTS:
            text = formats.get(event, "")
            lacking = [f for f in _NEEDS[event] if f not in fields[event]]
            if not text.strip():
                self.status["missing"][event] = "this kernel has no such tracepoint"
            elif lacking:
                self.status["missing"][event] = f"this kernel's {event} has no field {', '.join(lacking)}"
            else:
                events.append(event)
                self.names[event] = symbols(text.partition("print fmt:")[2])
                absent = [f for f in OPTIONAL.get(event, ()) if f not in fields[event]]
                if absent:
                    self.status.setdefault("lacking", {})[event] = absent
        # the reasons this kernel knows, by name (its own enums): a claim on a reason the
        # kernel does not have is not applicable there, rather than failed (lab/trace.py)
        self.status["reasons"] = {e: sorted(set(self.names[e].get("reason", {}).values()))
                                  for e in ("tcp_send_reset", "kfree_skb") if e in self.names
                                  and "reason" not in self.status.get("lacking", {}).get(e, [])}
        if "tcp_send_reset" in self.names:  # its states are printed by macro names: the numbers are these
            states = self.names.get("inet_sock_set_state", {}).get("newstate", {})
            self.names["tcp_send_reset"]["state"] = {**states, **self.names["tcp_send_reset"].get("state", {})}
        if "inet_sock_set_state" not in events:
            raise RuntimeError("inet_sock_set_state, which the tracer's marker needs, cannot be used: "
                               + self.status["missing"]["inet_sock_set_state"])
        home = os.stat("/proc/self/ns/net").st_ino  # the machine's own traffic is never a run's
        layout = declarations(offsets())
        self._mark_fd = netns.new_namespace()
        self._mark_ns = str(os.fstat(self._mark_fd).st_ino)
        script = _script(events, home, layout, rx_sk="rx_sk" in fields["kfree_skb"],
                         rst_reason="reason" in fields["tcp_send_reset"])
        self._proc = subprocess.Popen(_in_tracefs('exec bpftrace -e "$0"') + [script],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True,
                                      preexec_fn=_tracer_child, env={**os.environ, **TRACER_ENV})
        with contextlib.suppress(OSError):  # a larger pipe to this process's reader: more slack still
            fcntl.fcntl(self._proc.stdout.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
        self.status["events"] = events
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_errors, daemon=True).start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            with self._cond:
                if kind == "E":
                    event = tuple(rest.split(" "))
                    if event[3] == self._mark_ns:  # name, t, cpu, ns: the runner's own marker
                        cpu = int(event[2])
                        self._marks[cpu] = max(self._marks.get(cpu, 0), int(event[1]))
                        self._cond.notify_all()
                    else:
                        self._events.append(event)
                elif kind == "R":
                    self._ready.set()
                elif "Lost" in line:  # bpftrace: "Lost N events"
                    self._lost += int(re.search(r"\d+", line).group()) if re.search(r"\d+", line) else 1
        self._failure = self._failure or "bpftrace exited"
        self._ready.set()
        with self._cond:
            self._cond.notify_all()

    def _read_errors(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr.append(line.rstrip())

    def expect(self, runs: int) -> None:
        self._runs_left = runs

    def run_over(self) -> None:
        """A run has its events (or will never ask): once every run has, bpftrace stops, its
        probes detaching (about 0.1 s each) while the last runs are judged and published."""
        with self._cond:
            self._runs_left -= 1
            last = self._runs_left == 0
        if last:
            self._stopping = threading.Thread(target=self._stop)
            self._stopping.start()

    def close(self) -> None:
        if self._stopping:
            self._stopping.join()
        self._stop()

    def _stop(self) -> None:
        if self._mark_fd is not None:
            os.close(self._mark_fd)
            self._mark_fd = None
        if self._proc and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()

    # -- a run's events ------------------------------------------------------------
    def flush(self, until: int, timeout: float = 10.0) -> bool:
        """Wait until bpftrace has printed every event up to `until` (CLOCK_MONOTONIC ns):
        a marker fired on each CPU after that time comes after them in its CPU's buffer."""
        cpus = sorted(os.sched_getaffinity(0))

        # the marker: a socket set listening, in a network namespace of the runner's own, on
        # each CPU: an inet_sock_set_state event like any other (a probe of its own would cost
        # about 0.1 s to detach; a syscall tracepoint would slow every syscall of the machine)
        def mark() -> None:
            assert self._mark_fd is not None
            netns.enter_for_good(self._mark_fd)  # this thread only, which ends here
            for cpu in cpus:
                os.sched_setaffinity(0, {cpu})
                with socket.socket() as marker:
                    marker.listen()  # CLOSE -> LISTEN, on this CPU

        # a CPU's buffer is read in the order it was written: once its marker is printed,
        # so is every event that CPU wrote before it
        thread = threading.Thread(target=mark)
        thread.start()
        thread.join()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(self._marks.get(c, 0) > until for c in cpus):
                if self._failure or not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    return False
        return True

    def misses(self) -> int:
        """How many times the kernel skipped one of bpftrace's programs so far: a tracepoint that
        fires while a kprobe or tracepoint BPF program already runs on the same CPU (a softirq's packet drop on a
        timer tick that interrupted a probe in process context) is not run, only counted
        (trace_call_bpf(), kernel/trace/bpf_trace.c: bpf_prog_active), in each program's
        recursion_misses (/proc/PID/fdinfo of its file descriptor). Only kprobe and perf-event
        tracepoint programs, such as bpftrace 0.17's `tracepoint:` probes, take bpf_prog_active;
        the miss is counted for the programs of the tracepoint that was skipped."""
        if self._proc is None:
            return 0
        total = 0
        try:
            names = os.listdir(f"/proc/{self._proc.pid}/fdinfo")
        except OSError:
            return 0
        for name in names:
            try:
                with open(f"/proc/{self._proc.pid}/fdinfo/{name}") as f:
                    info = f.read()
            except OSError:
                continue
            if "prog_id:" in info:
                found = re.search(r"^recursion_misses:\s+(\d+)", info, re.M)
                total += int(found.group(1)) if found else 0
        return total

    def collect(self, namespaces: dict[int, tuple[str, int]], until: int, misses_before: int = 0) -> dict[str, Any]:
        """The run's events: those in its namespaces (inode -> (host, made at ns)), from the
        moment each was made until `until`, with the kernel's names for numbers."""
        if not self.status["recorded"]:
            return {"tracing": self.status, "events": []}
        complete = self.flush(until)
        with self._cond:
            everything = list(self._events)
            lost = self._lost
        owner = attribute(everything, namespaces, until)
        events = [self._decode(everything[i], owner[i]) for i in sorted(owner, key=lambda i: int(everything[i][1]))]
        status = dict(self.status)
        if not complete:
            status["incomplete"] = "bpftrace did not confirm every event up to the end of the run"
        if lost:
            status["incomplete"] = f"bpftrace lost {lost} events during this run of the catalogue"
        missed = self.misses() - misses_before
        if missed:  # claims on an event that is absent cannot then be judged (lab/trace.py)
            status["missed"] = missed
        return {"tracing": status, "events": events}

    def _decode(self, e: tuple[Any, ...], host: str) -> dict[str, Any]:
        name, t, _cpu, _ns, sk, *rest = e
        out: dict[str, Any] = {"event": name, "t_ns": int(t), "host": host}
        names = self.names.get(name, {})

        def named(fieldname: str, value: str) -> str:
            return names.get(fieldname, {}).get(int(value), value)

        if name == "tcp_send_reset":
            state, reason, *flow = rest
            out.update(socket=sk if sk != "0" else None, state=named("state", state),
                       reason=None if reason == "-1" else named("reason", reason))
        elif name == "tcp_receive_reset":
            state, *flow = rest
            states = self.names.get("inet_sock_set_state", {}).get("newstate", {})
            out.update(socket=sk, state=states.get(int(state), state))
        elif name == "inet_sock_set_state":
            old, new, *flow = rest
            out.update(socket=sk, oldstate=named("oldstate", old), newstate=named("newstate", new))
        elif name == "inet_sk_error_report":
            error, *flow = rest
            out.update(error=int(error), errno=errno.errorcode.get(int(error), error))
        else:  # kfree_skb
            reason, *flow = rest
            out.update(reason=named("reason", reason))
            flow, extra = flow[:4], flow[4:]
            out.update(flags=tcpdump_flags(int(extra[0])), seq=int.from_bytes(int(extra[1]).to_bytes(4, "little"), "big"),
                       location=extra[2])
        saddr, sport, daddr, dport = flow[:4]
        out.update(src=saddr, sport=int(sport), dst=daddr, dport=int(dport))
        return out


def attribute(everything: list[tuple[Any, ...]], namespaces: dict[int, tuple[str, int]], until: int) -> dict[int, str]:
    """Which of the machine's events (as bpftrace printed them: name, t, cpu, ns, ...) are
    this run's: index -> host. An event is the run's when its namespace is one of the run's
    and it happened between the namespace's making and `until`: a namespace's number is
    reused only after it is gone. An error report (it carries no socket) takes its
    neighbour's namespace on the same CPU, when that neighbour is about the same socket's
    four-tuple, seen the same way round: the kernel reports both in one call."""
    owner = {}
    for i, e in enumerate(everything):
        ns, t = int(e[3]), int(e[1])
        if ns in namespaces and namespaces[ns][1] <= t <= until:
            owner[i] = namespaces[ns][0]
    by_cpu: dict[str, list[int]] = {}
    for i, e in enumerate(everything):
        by_cpu.setdefault(e[2], []).append(i)
    for indexes in by_cpu.values():
        indexes.sort(key=lambda i: int(everything[i][1]))
        for k, i in enumerate(indexes):
            e = everything[i]
            if e[0] != "inet_sk_error_report" or int(e[1]) > until:
                continue
            for j in (indexes[k - 1] if k else None, indexes[k + 1] if k + 1 < len(indexes) else None):
                if j is not None and j in owner and _same_flow(everything[j], e):
                    owner[i] = owner[j]
                    break
    return owner


def _same_flow(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    def flow(e: tuple[Any, ...]) -> tuple[str, ...]:
        offset = {"tcp_send_reset": 7, "tcp_receive_reset": 6, "inet_sock_set_state": 7,
                  "inet_sk_error_report": 6, "kfree_skb": 6}[e[0]]
        return tuple(e[offset:offset + 4])
    return flow(a) == flow(b)  # the same socket's view: the peer's events see the flow reversed


# -- the two ends of the worker's question ------------------------------------------------
class Server:
    """The runner's side, on FOLDER/kernel.sock, for one run: first "are the probes attached?"
    (the worker builds its hosts meanwhile, and waits for the answer before the scenario
    runs), then "which events were mine?"."""

    def __init__(self, tracer: Tracer, folder: Path) -> None:
        self._tracer = tracer
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        with _short(folder) as path:  # a socket's path is at most 107 bytes
            self._sock.bind(path)
        self._sock.listen(1)
        self._over = False
        self._misses = 0  # the tracer's skipped probe runs when the run began (Tracer.misses())
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _run_over(self) -> None:
        if not self._over:
            self._over = True
            self._tracer.run_over()

    def _serve(self) -> None:
        for _ in range(2):
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed: the run ended
                return
            with conn:
                try:
                    conn.settimeout(START_TIMEOUT + 30)
                    request = json.loads(conn.makefile("r").readline())
                    if request.get("wait"):
                        self._tracer.attached.wait(START_TIMEOUT + 5)
                        answer: dict[str, Any] = {"tracing": self._tracer.status}
                        self._misses = self._tracer.misses()  # the run starts now
                    else:
                        namespaces = {int(k): (v[0], int(v[1])) for k, v in request["namespaces"].items()}
                        answer = self._tracer.collect(namespaces, int(request["until"]), self._misses)
                        self._run_over()
                except Exception as exc:  # noqa: BLE001  (a malformed question gets an answer, not a hang)
                    answer = {"tracing": not_recorded(f"the tracer failed: {type(exc).__name__}: {exc}"),
                              "events": []}
                try:
                    conn.sendall(json.dumps(answer).encode() + b"\n")
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(timeout=35)
        self._run_over()


@contextlib.contextmanager
def _short(folder: Path) -> Iterator[str]:
    """FOLDER/kernel.sock by a path short enough for a Unix socket, however deep FOLDER is."""
    fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET}"
    finally:
        os.close(fd)


def _exchange(folder: Path, request: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as conn:
        conn.settimeout(START_TIMEOUT + 60)
        with _short(folder) as short:
            conn.connect(short)
        conn.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(conn.makefile("r").readline())


def wait_attached(folder: Path) -> None:
    """The worker's side, before its scenario runs: wait until the runner's probes are
    attached (or it has given up on them), so that no event of the run is missed."""
    if (folder / SOCKET).exists():
        _exchange(folder, {"wait": True})


def ask(folder: Path, namespaces: dict[int, tuple[str, int]], until: int) -> dict[str, Any]:
    """The worker's side: this run's kernel events, or why there are none."""
    path = folder / SOCKET
    if not path.exists():
        return {"tracing": not_recorded("the run had no tracer (a worker started by hand, not by the runner)"),
                "events": []}
    return _exchange(folder, {"namespaces": {str(k): list(v) for k, v in namespaces.items()}, "until": until})
