"""Causes of a RST made by plain socket code (none of them is an example of the catalogue), in two
network namespaces of their own joined by a veth link: client 203.0.113.10, server 203.0.113.20,
ports 47001 and up. Used by tests/test_live.py while `rst-explain --live --json` watches, and by
the lab's bench (a storm of RSTs) and the "Watch your own machine" page's recording.

Each cause is (name, page, port, run): run(pair) makes the RST and returns once it has been
sent; nothing here sleeps to let something happen: it waits for the kernel to say so (a socket's
state in `ss`, data readable, a connect's error).
"""

from __future__ import annotations

import errno
import json
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import netns
from .process import die_with_parent

CLIENT, SERVER, PREFIX = "203.0.113.10", "203.0.113.20", 24


@dataclass
class Pair:
    """Two namespaces, held by descriptors of this process: gone when it ends, however it ends."""
    client: int
    server: int
    held: list[socket.socket] = field(default_factory=list)

    def path(self, fd: int) -> str:
        return f"/proc/{os.getpid()}/fd/{fd}"

    def socket(self, fd: int) -> socket.socket:
        with netns.inside(fd):
            s = socket.socket()
        self.held.append(s)
        return s

    def sh(self, fd: int, *argv: str, input: str | None = None) -> str:
        return netns.run(fd, list(argv), input=input)

    def until(self, what: str, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait for a condition the kernel shows (polled: ss has no event to wait on)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {what}")
            time.sleep(0.005)

    def close(self) -> None:
        for s in self.held:
            s.close()
        self.held.clear()
        for fd in (self.client, self.server):
            os.close(fd)


def make_pair() -> Pair:
    pair = Pair(netns.new_namespace(), netns.new_namespace())
    try:
        far = pair.path(pair.server)
        pair.sh(pair.client, "ip", "-batch", "-", input=(
            "link set lo up\n"
            f"link add eth0 index 10 type veth peer name eth0 index 11 netns {far}\n"
            f"addr add {CLIENT}/{PREFIX} dev eth0\nlink set eth0 up\n"))
        pair.sh(pair.server, "ip", "-batch", "-", input=(
            f"link set lo up\naddr add {SERVER}/{PREFIX} dev eth0\nlink set eth0 up\n"))
        for fd in (pair.client, pair.server):  # every ACK at once (no delayed-ACK timer in the causes)
            pair.sh(fd, "ip", "route", "change", f"203.0.113.0/{PREFIX}", "dev", "eth0", "proto", "kernel",
                    "scope", "link", "src", CLIENT if fd == pair.client else SERVER, "quickack", "1")
        _wait_for_path(pair)
    except BaseException:
        pair.close()
        raise
    return pair


def _wait_for_path(pair: Pair) -> None:
    """Until a connection can be made (links up, neighbours resolved): a listener answers."""
    listener = pair.socket(pair.server)
    listener.bind((SERVER, 47000))
    listener.listen()
    deadline = time.monotonic() + 10
    while True:
        probe = pair.socket(pair.client)
        probe.settimeout(0.2)
        try:
            probe.connect((SERVER, 47000))
            listener.accept()[0].close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
        finally:
            probe.close()
    listener.close()


def _connected(pair: Pair, port: int, backlog: int = 8) -> tuple[socket.socket, socket.socket, socket.socket]:
    listener = pair.socket(pair.server)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((SERVER, port))
    listener.listen(backlog)
    client = pair.socket(pair.client)
    client.connect((SERVER, port))
    accepted, _ = listener.accept()
    pair.held.append(accepted)
    return listener, client, accepted


def _ss(pair: Pair, fd: int, *filter_: str) -> list[str]:
    """ss's lines (with a `state` filter, ss prints no State column: Recv-Q comes first)."""
    return pair.sh(fd, "ss", "-Htan", *filter_).splitlines()


# -- the causes ------------------------------------------------------------------------------
def closed_port(pair: Pair, port: int) -> None:
    client = pair.socket(pair.client)
    try:
        client.connect((SERVER, port))
    except ConnectionRefusedError:
        return
    raise AssertionError("the connection to a closed port was accepted")


def firewall(pair: Pair, port: int) -> None:
    pair.sh(pair.server, "nft", "-f", "-", input=(
        "table ip live_test_reject {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
        f"  tcp dport {port} reject with tcp reset\n }}\n}}\n"))
    try:
        closed_port(pair, port)
    finally:
        pair.sh(pair.server, "nft", "delete", "table", "ip", "live_test_reject")


def unread_close(pair: Pair, port: int) -> None:
    listener, client, accepted = _connected(pair, port)
    client.sendall(b"hello")
    select.select([accepted], [], [], 5)  # the data has arrived, unread
    accepted.close()


def linger_zero(pair: Pair, port: int) -> None:
    listener, client, accepted = _connected(pair, port)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def ss_kill(pair: Pair, port: int) -> None:
    listener, client, accepted = _connected(pair, port)
    pair.sh(pair.server, "ss", "-K", "-Htn", "sport", "=", f":{port}", "dst", CLIENT)


def listener_closed(pair: Pair, port: int) -> None:
    listener = pair.socket(pair.server)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((SERVER, port))
    listener.listen(4)
    client = pair.socket(pair.client)
    client.connect((SERVER, port))  # queued, never accepted
    pair.until("the queued connection", lambda: any("ESTAB" in line for line in
                                                    _ss(pair, pair.server, "sport", "=", f":{port}")))
    listener.close()


def write_after_close(pair: Pair, port: int) -> None:
    listener, client, accepted = _connected(pair, port)
    accepted.close()  # a FIN; the socket lives on, orphaned
    assert client.recv(100) == b""  # the FIN has come (and its ACK gone at once: quickack)
    pair.until("the server's socket past FIN-WAIT-1",
               lambda: not _ss(pair, pair.server, "state", "fin-wait-1", "sport", "=", f":{port}"))
    client.sendall(b"late")


def keepalive_timeout(pair: Pair, port: int) -> None:
    listener, client, accepted = _connected(pair, port)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 1)
    pair.sh(pair.server, "nft", "-f", "-", input=(
        "table ip live_test_silent {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
        f"  tcp dport {port} drop\n }}\n}}\n"))
    try:
        client.settimeout(10)
        try:
            client.recv(10)
        except OSError as exc:
            if exc.errno == errno.ETIMEDOUT:
                return  # the keepalive timer gave up, and sent its RST
            raise AssertionError(f"the keepalive timer did not end the connection in 10 s: {exc}") from exc
    finally:
        pair.sh(pair.server, "nft", "delete", "table", "ip", "live_test_silent")


_HOLDER = """
import socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((sys.argv[1], int(sys.argv[2])))
listener.listen()
print("listening", flush=True)
conn, _ = listener.accept()
print("accepted", flush=True)
sys.stdin.read()  # until killed
"""


def process_killed(pair: Pair, port: int) -> None:
    server = subprocess.Popen(netns.command(pair.server, [sys.executable, "-c", _HOLDER, SERVER, str(port)]),
                              pass_fds=(pair.server,), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "listening\n"
        client = pair.socket(pair.client)
        client.connect((SERVER, port))
        assert server.stdout.readline() == "accepted\n"
        client.sendall(b"hello")
        pair.until("the request unread in the server's receive queue", lambda: any(
            line.split()[0] == "5" for line in _ss(pair, pair.server, "state", "established", "sport", "=", f":{port}")))
        server.send_signal(signal.SIGKILL)
    finally:
        server.kill()
        server.wait()


class Watching:
    """`rst-explain --live --json` (or without --json: text) on these namespaces, its objects
    (or lines) through a queue; `attached` once it wrote its `watching` line."""

    def __init__(self, paths: list[str], *extra: str, json_: bool = True, stdout: Any = subprocess.PIPE) -> None:
        argv = [sys.executable, "-m", "rst_explain", "--live", *(["--json"] if json_ else []), *extra]
        self.json = json_
        for path in paths:
            argv += ["--netns", path]
        self.argv = argv
        # its own session (a Ctrl-C at the terminal is for this process, which passes it on), and
        # it ends with this process, however this one ends (it stops its bpftrace in turn)
        self.proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        self.objects: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        self.attached = threading.Event()
        if stdout is subprocess.PIPE:
            threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.objects.put(json.loads(line) if self.json else line)
        self.objects.put(None)

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if line.startswith("watching"):
                self.attached.set()
        self.attached.set()

    def next(self, timeout: float = 20.0) -> dict[str, Any]:
        try:
            item = self.objects.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no RST reported within {timeout} s; stderr: {''.join(self.stderr)}") from None
        assert item is not None, f"the watcher ended: {''.join(self.stderr)}"
        return item

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGINT)  # as Ctrl-C
        self.proc.wait(timeout=30)
        if not self.json or self.proc.stdout is None:
            return {}
        last = None
        while (item := self.objects.get(timeout=5)) is not None:
            last = item
        return last or {}

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@dataclass(frozen=True)
class Cause:
    name: str
    page: str
    port: int
    run: Callable[[Pair, int], None]
    sender: str  # who sends the RST: "server" or "client"


CAUSES = [
    Cause("closed port", "closed-port", 47001, closed_port, "server"),
    Cause("firewall reject", "firewall-reject", 47002, firewall, "server"),
    Cause("close with unread data", "unread-data-close", 47003, unread_close, "server"),
    Cause("SO_LINGER 0", "linger-zero", 47004, linger_zero, "client"),
    Cause("ss -K", "ss-kill", 47005, ss_kill, "server"),
    Cause("listener closed with a queued connection", "listener-closed-queue", 47006, listener_closed, "server"),
    Cause("write after the peer closed", "write-after-peer-close", 47007, write_after_close, "server"),
    Cause("keepalive timeout", "keepalive-timeout", 47008, keepalive_timeout, "client"),
    Cause("process killed with unread data", "process-killed", 47009, process_killed, "server"),
]
