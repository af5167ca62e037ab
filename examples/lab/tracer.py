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
from .witness import Witness
from .wire import tcpdump_flags

SOCKET = "kernel.sock"  # in each run's folder: the worker's line to the runner's tracer
START_TIMEOUT = 20.0 * SLOW
# the probe program and its decoding are rst_explain.probes', shared with `rst-explain --live`;
# imported where tracing begins, so that the lab without it (`PYTHONPATH=examples`, the lab run
# by a user who cannot trace anyway) still runs: these names are probes' own
_SHARED = {"EVENTS": "EVENTS", "TRACEFS": "TRACEFS", "LAYOUT": "LAYOUT", "OPTIONAL": "OPTIONAL",
           "parse_pahole": "parse_pahole", "declarations": "declarations", "symbols": "symbols",
           "_in_tracefs": "in_tracefs"}


def _probes() -> Any:
    from rst_explain import probes
    return probes


def __getattr__(name: str) -> Any:
    if name in _SHARED:
        return getattr(_probes(), _SHARED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def not_recorded(why: str) -> dict[str, Any]:
    """The `tracing` of a run whose kernel events were not recorded, and why."""
    return {"recorded": False, "events": [], "missing": {}, "why": why}


def offsets() -> dict[tuple[str, str], int]:
    """Each LAYOUT member's byte offset in this kernel, from its BTF (pahole)."""
    probes = _probes()
    return probes.offsets(probes.LAYOUT, timeout=10 * SLOW)


def _script(events: list[str], home: int, layout: str, rx_sk: bool = True, rst_reason: bool = True) -> str:
    """rx_sk: kfree_skb has that field (the socket that dropped the packet; 6.12 and later);
    rst_reason: tcp_send_reset has its reason (6.10 and later). Every drop it does not print
    as an event is printed as a `K` line, for the ftrace witness (lab/witness.py)."""
    return _probes().script(events, home, layout, rx_sk=rx_sk, rst_reason=rst_reason, witnessed=True)


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


class Tracer:
    """One bpftrace for a whole run of the catalogue (launch(), then ready(); or the reason
    it cannot)."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {"recorded": False, "events": [], "missing": {}}
        self.names: dict[str, dict[str, dict[int, str]]] = {}
        self._proc: subprocess.Popen[str] | None = None
        self._events: list[tuple[Any, ...]] = []
        self._other_drops: list[tuple[str, int, tuple[Any, ...]]] = []  # `K` lines: (event, t_ns, key)
        self._witness: Witness | None = None  # ftrace's record of the same events (lab/witness.py)
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
            if self._witness is not None and (not self._witness.ready.wait(START_TIMEOUT) or self._witness.failure):
                self.status["witness"] = self._witness.failure or "the ftrace witness did not start"
                self._witness.close()
                self._witness = None
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
        probes = _probes()
        try:
            found = probes.kernel_formats(timeout=10 * SLOW)
        except probes.NoTracefs as exc:
            raise RuntimeError(str(exc)) from None
        events, fields, self.names = found["events"], found["fields"], found["names"]
        self.status["missing"].update(found["missing"])
        if found.get("lacking"):
            self.status["lacking"] = found["lacking"]
        # the reasons this kernel knows, by name (its own enums): a claim on a reason the
        # kernel does not have is not applicable there, rather than failed (lab/trace.py)
        self.status["reasons"] = found["reasons"]
        if "inet_sock_set_state" not in events:
            raise RuntimeError("inet_sock_set_state, which the tracer's marker needs, cannot be used: "
                               + self.status["missing"]["inet_sock_set_state"])
        home = os.stat("/proc/self/ns/net").st_ino  # the machine's own traffic is never a run's
        layout = probes.declarations(offsets())
        self._mark_fd = netns.new_namespace()
        self._mark_ns = str(os.fstat(self._mark_fd).st_ino)
        script = _script(events, home, layout, rx_sk="rx_sk" in fields["kfree_skb"],
                         rst_reason="reason" in fields["tcp_send_reset"])
        self._proc = subprocess.Popen(probes.in_tracefs('exec bpftrace -e "$0"') + [script],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True,
                                      preexec_fn=_tracer_child, env={**os.environ, **TRACER_ENV})
        with contextlib.suppress(OSError):  # a larger pipe to this process's reader: more slack still
            fcntl.fcntl(self._proc.stdout.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
        self.status["events"] = events
        threading.Thread(target=self._read, daemon=True).start()
        # started from this thread too: the witness dies with the thread that outlives the run
        self._witness = Witness(probes.in_tracefs, probes.TRACEFS)
        threading.Thread(target=self._read_errors, daemon=True).start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        probes = _probes()
        for line in self._proc.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            with self._cond:
                if kind == "E":
                    event, _ = probes.split(rest)
                    if event[3] == self._mark_ns:  # name, t, cpu, ns: the runner's own marker
                        cpu = int(event[2])
                        self._marks[cpu] = max(self._marks.get(cpu, 0), int(event[1]))
                        self._cond.notify_all()
                    else:
                        self._events.append(event)
                elif kind == "K":  # a drop left out of the events (another namespace, not TCP, a copy)
                    name, t, _cpu, skb = rest.split(" ")
                    self._other_drops.append((name, int(t), (int(skb, 16),)))
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
        if self._witness is not None:
            self._witness.close()
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
        """How many times the kernel skipped one of bpftrace's programs so far (probes.recursion_misses())."""
        return _probes().recursion_misses(self._proc.pid) if self._proc is not None else 0

    def collect(self, namespaces: dict[int, tuple[str, int]], until: int, misses_before: int = 0) -> dict[str, Any]:
        """The run's events: those in its namespaces (inode -> (host, made at ns)), from the
        moment each was made until `until`, with the kernel's names for numbers."""
        if not self.status["recorded"]:
            return {"tracing": self.status, "events": []}
        complete = self.flush(until)
        with self._cond:
            everything = list(self._events)
            lost = self._lost
            other_drops = list(self._other_drops)
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
        unseen = self._unseen(everything, other_drops, min((made for _, made in namespaces.values()), default=until),
                              until)
        if unseen:  # the same: events ftrace recorded and bpftrace was never given (lab/witness.py)
            status["unseen"] = unseen
        return {"tracing": status, "events": events}

    def _unseen(self, everything: list[tuple[Any, ...]], other_drops: list[tuple[str, int, tuple[Any, ...]]],
                since: int, until: int) -> dict[str, int]:
        """ftrace's events between since and until with no counterpart among bpftrace's, by
        tracepoint ({} without a witness, or when ftrace did not confirm every event up to until)."""
        witness = self._witness
        if witness is None or not witness.through(until, sorted(os.sched_getaffinity(0)), 10.0):
            return {}
        states = self.names.get("inet_sock_set_state", {})

        def key(e: tuple[Any, ...]) -> tuple[Any, ...]:
            name, sk, rest = e[0], e[4], e[5:]
            if name == "kfree_skb":
                return (int(sk, 16),)
            if name == "inet_sock_set_state":
                old, new = (states.get(f, {}).get(int(v), v) for f, v in zip(("oldstate", "newstate"), rest[:2]))
                return (rest[2], int(rest[3]), rest[4], int(rest[5]), old, new)
            flow = rest[2:6] if name == "tcp_send_reset" else rest[1:5]
            return (flow[0], int(flow[1]), flow[2], int(flow[3]))

        theirs = [(e[0], int(e[1]), key(e)) for e in everything if e[0] != "inet_sk_error_report"]
        return witness.unseen(theirs + other_drops, since, until)

    def _decode(self, e: tuple[Any, ...], host: str) -> dict[str, Any]:
        return _probes().decode(e, self.names, host, flag_names=tcpdump_flags)


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
