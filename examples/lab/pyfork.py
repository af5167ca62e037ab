"""The Python client programs (examples/clients/python_client.py), each run forked from a warm
Python instead of started cold: requests, httpx and aiohttp are imported once per client
session (by the zygote, lab/zygote.py), not once per run, which cost 0.1-0.2 s of CPU each
(19 runs of each library per session).

A run is still that file run as a program: a new process, in the client host's network
namespace, with its own standard input and output, `sys.argv` as on its command line, run
as `__main__` (runpy), its exit status its own. Only the imports are inherited.

The forks are made by a server process that the worker forks while it is still
single-threaded (a fork of a process with threads can inherit a lock held by one of them):

    forks = Forks()                       # in the worker, before any thread
    proc = forks.spawn(argv, netns_fd, hosts_file)   # a Popen-like handle
"""

from __future__ import annotations

import ctypes
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import threading
import time

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
LIBRARIES = ("requests", "httpx", "aiohttp")  # what python_client.py imports (the zygote imports them)
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def warm() -> None:
    """In the zygote: import the libraries once, for every fork after."""
    for name in LIBRARIES:
        __import__(name)
    import asyncio  # noqa: F401  (aiohttp's loop)


# -- the server: a single-threaded process that forks one child per run --------------------

def _run_program(argv: list[str], hosts_file: str | None) -> int:
    """In the forked child, fds 0-2 already its own: become the program and run it."""
    ns = 3  # the host's namespace, the first fd after stdio (see _serve)
    _check(_libc.setns(ns, CLONE_NEWNET), "setns (net)")
    os.close(ns)
    if hosts_file:  # the program's own /etc/hosts, as lab/clients.py with_names() gives any program
        _check(_libc.unshare(CLONE_NEWNS), "unshare (mount)")
        _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        _check(_libc.mount(hosts_file.encode(), b"/etc/hosts", None, MS_BIND, None), "mount --bind /etc/hosts")
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    sys.argv = list(argv[1:])  # [script, args...], as `python script args...` sets it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        runpy.run_path(argv[1], run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:  # an uncaught exception: Python prints it and exits 1
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _serve(sock: socket.socket) -> None:
    """Fork a child per request; report each child's pid, then its exit status."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    running: set[int] = set()
    while True:
        for key, _ in selector.select():
            if key.fileobj is sock:
                data, fds, _, _ = socket.recv_fds(sock, 65536, 4)
                if not data:  # the worker is gone: so are its programs (its PID namespace ends)
                    os._exit(0)
                request = json.loads(data)
                if "reap" in request:  # the worker has its exit status: the pid may go now
                    _, _, usage = os.wait4(request["reap"], 0)
                    sock.send(json.dumps({"reaped": request["reap"], "cpu_s": usage.ru_utime + usage.ru_stime}).encode())
                    continue
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        sock.close()
                        signal.set_wakeup_fd(-1)
                        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                        os.close(wake_r)
                        os.close(wake_w)
                        stdin, stdout, ns = fds
                        os.dup2(stdin, 0)
                        os.dup2(stdout, 1)
                        os.dup2(stdout, 2)
                        os.dup2(ns, 3)
                        os.closerange(4, 4096)
                        code = _run_program(request["argv"], request.get("hosts_file"))
                    finally:
                        os._exit(code)
                for fd in fds:
                    os.close(fd)
                running.add(pid)
                sock.send(json.dumps({"pid": pid}).encode())
            else:
                os.read(wake_r, 4096)
                # an exited child stays a zombie (WNOWAIT) until the worker has read its status, as
                # a Popen's child does: its pid, and a pidfd opened on it (lab/peer.py), stay valid
                for pid in sorted(running):
                    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                    if info is None:
                        continue
                    running.discard(pid)
                    status = -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status
                    sock.send(json.dumps({"exit": pid, "status": status}).encode())


class Forked:
    """A forked program, as much of subprocess.Popen as lab/clients.py's Run uses."""

    def __init__(self, forks: Forks, pid: int, stdin: int | None, stdout: int) -> None:
        self._forks, self.pid = forks, pid
        self.stdin = os.fdopen(stdin, "wb") if stdin is not None else None
        self._stdout = stdout
        self._chunks: list[bytes] = []  # what it printed so far (kept across a timeout, as Popen does)
        self.returncode: int | None = None
        self.cpu_s: float | None = None  # user+sys, its threads' and reaped children's (communicate())
        self._exited = threading.Event()

    def _exit(self, status: int) -> None:
        self.returncode = status
        self._exited.set()

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def communicate(self, timeout: float | None = None) -> tuple[bytes, None]:
        """Its whole output and its exit, as Popen.communicate(): TimeoutExpired after `timeout`."""
        import subprocess

        if self.stdin is not None:
            self.stdin.close()
            self.stdin = None
        deadline = None if timeout is None else time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            if self._stdout >= 0:
                sel.register(self._stdout, selectors.EVENT_READ)
            while self._stdout >= 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired("python client", timeout or 0)
                if not sel.select(left):
                    continue
                data = os.read(self._stdout, 65536)
                if not data:
                    sel.unregister(self._stdout)
                    os.close(self._stdout)
                    self._stdout = -1
                self._chunks.append(data)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._exited.wait(left):
            raise subprocess.TimeoutExpired("python client", timeout or 0)
        self.cpu_s = self._forks.reap(self.pid)
        return b"".join(self._chunks), None


class Forks:
    """The worker's side: the server, forked at once (call while single-threaded)."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                mine.close()
                _serve(theirs)
            finally:
                os._exit(code)
        theirs.close()
        self.pid, self._sock = pid, mine
        self._lock = threading.Lock()
        self._started: list[int] = []
        self._running: dict[int, Forked] = {}
        self._exits: dict[int, int] = {}  # exits that came before their pid was handed out
        self._reaped: dict[int, float] = {}  # pid -> its CPU time, as the server reaped it
        self._gone = False  # the server ended
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    def _read(self) -> None:
        while True:
            data = self._sock.recv(65536)
            if not data:
                with self._cond:
                    self._gone = True
                    self._cond.notify_all()
                return
            message = json.loads(data)
            with self._cond:
                if "pid" in message:
                    self._started.append(message["pid"])
                elif "reaped" in message:
                    self._reaped[message["reaped"]] = message["cpu_s"]
                else:
                    proc = self._running.pop(message["exit"], None)
                    if proc:
                        proc._exit(message["status"])
                    else:
                        self._exits[message["exit"]] = message["status"]
                self._cond.notify_all()

    def reap(self, pid: int) -> float:
        """Let the server reap an exited child; its CPU time (user+sys, wait4's rusage)."""
        with self._lock:
            self._sock.send(json.dumps({"reap": pid}).encode())
        with self._cond:
            while pid not in self._reaped:
                if self._gone:
                    raise RuntimeError(f"the fork server ended before reaping {pid}")
                self._cond.wait()
            return self._reaped.pop(pid)

    def spawn(self, argv: list[str], ns_fd: int, hosts_file: str | None = None,
              stdin_pipe: bool = False) -> Forked:
        """argv: [python, script, args...]; the child's output (stdout and stderr) in one pipe."""
        with self._lock:
            if self._reader is None:  # the first thread of the worker's side, once it has threads anyway
                self._reader = threading.Thread(target=self._read, daemon=True)
                self._reader.start()
            out_r, out_w = os.pipe()
            if stdin_pipe:
                in_r, in_w = os.pipe()
            else:
                in_r, in_w = os.open(os.devnull, os.O_RDONLY), None
            try:
                socket.send_fds(self._sock, [json.dumps({"argv": argv, "hosts_file": hosts_file}).encode()],
                                [in_r, out_w, ns_fd])
            finally:
                os.close(in_r)
                os.close(out_w)
            with self._cond:
                while not self._started:
                    self._cond.wait()
                pid = self._started.pop(0)
                proc = Forked(self, pid, in_w, out_r)
                if pid in self._exits:
                    proc._exit(self._exits.pop(pid))
                else:
                    self._running[pid] = proc
            return proc


_forks: Forks | None = None


def start() -> None:
    """In the worker, while single-threaded: the server its Python client programs fork from."""
    global _forks
    _forks = Forks()


def forks() -> Forks | None:
    return _forks


def used(argv: list[str]) -> bool:
    """Whether argv is a Python program this server can run (started, and argv is `python FILE ...`)."""
    return _forks is not None and len(argv) > 1 and argv[0] == sys.executable and argv[1].endswith(".py")

