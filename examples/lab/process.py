"""A separate process on a lab host: a real program (argv) or a Python function.

    server_process = server.process(serve, (server.ip, 8888))  # serve(address) in a child
    server_process.wait_for("listening")   # a line the child printed: an event, not a sleep
    server_process.kill()                  # SIGKILL, then reaped: its sockets are closed

The child is started inside the host's network namespace with nsenter, in the
worker's process group: the runner's cleanup kills it along with the worker,
and the host kills it at the end of the run if it is still alive. Its stdout is
a pipe the lab reads lines from; its stderr goes to the worker's log.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from . import netns

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)

def python_argv(fn: Callable[..., Any], args: tuple[Any, ...]) -> list[str]:
    """The argv that runs fn(*args) in a new Python: fn is found again by its file and name."""
    source = sys.modules[fn.__module__].__file__
    return [sys.executable, "-m", "lab.child", str(source), fn.__qualname__, json.dumps(args)]

# how much slower than this machine the lab runs: a guest under emulation (lab/matrix.py sets
# it) waits that much longer for its own start (the zygote, bpftrace, an example's import);
# the scenarios' own timers and timing claims are not stretched
SLOW = float(os.environ.get("LAB_SLOW", 1))


def state(pid: int) -> str:
    """A process's state letter in /proc (R running, S sleeping, T stopped...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def waits_in_epoll(pid: int) -> bool:
    """Whether the process sleeps in epoll_wait(): it has handled every event it was given."""
    with open(f"/proc/{pid}/wchan") as f:
        return state(pid) == "S" and "epoll_wait" in f.read()


class Process:
    def __init__(self, ns_fd: int, argv: list[str], host: Any, name: str) -> None:
        self._host, self.name = host, name
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # nsenter enters the namespace and execs argv: the pid is the program's own
        self._proc = subprocess.Popen(
            netns.command(ns_fd, argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            pass_fds=(ns_fd,), env=env,
        )
        self.pid = self._proc.pid
        self._pending = b""
        self.lines: list[str] = []

    def wait_for(self, text: str, timeout: float = 5.0) -> str:
        """Wait until the process prints a line containing `text`; return that line."""
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._pending:
                raw, self._pending = self._pending.split(b"\n", 1)
                line = raw.decode(errors="replace")
                self.lines.append(line)
                self._host.note(f"{self.name} prints", line)
                if text in line:
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._proc.stdout], [], [], left)[0]:
                raise TimeoutError(f"{self.name} did not print {text!r} within {timeout:g} s")
            chunk = os.read(self._proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"{self.name} exited ({self._proc.wait()}) before printing {text!r}")
            self._pending += chunk

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send `sig` and reap the process: once this returns, the kernel has closed its files."""
        self._proc.send_signal(sig)
        status = self._proc.wait()
        self._host.note(f"{self.name} killed with {signal.Signals(sig).name}, exit status", status)
        return status

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def kill_group(pgid: int, leader: subprocess.Popen[bytes] | None = None) -> None:
    """SIGKILL a process group and return once every member is gone.

    A leader that is our own child is reaped first: a zombie still counts as a member."""
    kill_groups([pgid], leader)


def kill_groups(pgids: list[int], leader: subprocess.Popen[bytes] | None = None) -> None:
    """SIGKILL every group at once, then wait until all their members are gone."""
    alive = []
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
            alive.append(pgid)
        except ProcessLookupError:
            pass
    if leader is not None:
        leader.wait()
    deadline = time.monotonic() + 5
    while alive and time.monotonic() < deadline:  # members die asynchronously; no event says when
        for pgid in list(alive):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                alive.remove(pgid)
        if alive:
            time.sleep(0.001)


def die_with_parent(sig: int) -> None:
    """Have the kernel send `sig` to this process when its parent ends (nox, a shell, this runner)."""
    parent = os.getppid()
    _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:  # the parent ended before the request took effect
        os.kill(os.getpid(), sig)
