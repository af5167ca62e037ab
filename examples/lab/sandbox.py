"""Where a scenario runs: confined, bounded, and gone with it when it ends.

    code = sandbox.run_confined(fn, writable=folder, read_only=[ROOT])

runs fn() in a child that is PID 1 of a new PID namespace, in a new, empty network
namespace and a mount namespace of its own, with bounded memory, file size and time:

- nothing outlives it: when that child ends (or is killed) the kernel kills every
  process left in its PID namespace, however it left its process group (setsid, a
  double fork);
- an example's bare `socket.socket()` lives in a network namespace with no interface up
  and no route: only the lab's hosts (namespaces of their own) can send anything;
- the source tree is mounted read-only; only the run's own folder is writable, and no
  file may grow beyond MAX_FILE_BYTES; the address space is capped at MAX_MEMORY_BYTES.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from collections.abc import Callable
from pathlib import Path

CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
MAX_MEMORY_BYTES = 2 << 30  # address space: the lab needs a few hundred MB
MAX_FILE_BYTES = 256 << 20  # a pcap of any scenario is far smaller

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(RuntimeError):
    """The kernel refused a namespace, a mount or a limit; the message says which."""


def _check(result: int, what: str) -> None:
    if result != 0:
        raise SandboxError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _mount(source: str | None, target: str, flags: int) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(), None, flags, None),
           f"mount {target}")


def limit() -> None:
    """Bound this process and its children: address space and file size."""
    resource.setrlimit(resource.RLIMIT_AS, (MAX_MEMORY_BYTES, MAX_MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))


def read_only_except(read_only: list[Path], writable: Path, hidden: list[Path]) -> None:
    """In this (new) mount namespace: `read_only` folders read-only, `writable` still writable,
    `hidden` files replaced by an empty one (the folder's sealing key)."""
    _mount(None, "/", MS_REC | MS_PRIVATE)  # nothing done here reaches the machine's mounts
    for folder in read_only:
        _mount(str(folder), str(folder), MS_BIND | MS_REC)
        _mount(None, str(folder), MS_REMOUNT | MS_BIND | MS_RDONLY)
    if any(writable.is_relative_to(folder) for folder in read_only):
        _mount(str(writable), str(writable), MS_BIND)
        _mount(None, str(writable), MS_REMOUNT | MS_BIND)
    for path in hidden:
        if path.is_file():
            _mount("/dev/null", str(path), MS_BIND)


def run_confined(fn: Callable[[], int], writable: Path, read_only: list[Path], hidden: list[Path] = ()) -> int:
    """Run fn() as PID 1 of new PID, network and mount namespaces; its exit code.

    Called in a single-threaded process (the zygote's fresh fork). A signal that kills
    this process (the runner's SIGKILL of its process group) kills the child with it.
    """
    limit()
    _check(_libc.unshare(CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWNS), "unshare (pid, net, mount)")
    alive_r, alive_w = os.pipe()  # its write end lives as long as this process
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(alive_w)
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # even if it leaves the group
            os.set_blocking(alive_r, False)
            try:
                if os.read(alive_r, 1) == b"":  # the parent died before the request took effect
                    os._exit(1)
            except BlockingIOError:  # still alive: from now on its death kills this one
                pass
            os.close(alive_r)
            read_only_except(read_only, writable, list(hidden))
            os.chdir(writable)  # relative paths an example writes land in the run's folder
            code = fn()
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(alive_r)
    # PID 1 of a namespace ignores the signals it has no handler for; this parent does not
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
