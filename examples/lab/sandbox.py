"""Where a scenario runs: confined, bounded, and gone with it when it ends.

    code = sandbox.run_confined(fn, writable=folder, read_only=[ROOT])

runs fn() in a child that is PID 1 of a new PID namespace, in a new, empty network
namespace and a mount namespace of its own, with bounded memory, file size and time:

- nothing outlives it: when that child ends (or is killed) the kernel kills every
  process left in its PID namespace, however it left its process group (setsid, a
  double fork);
- an example's bare `socket.socket()` lives in a network namespace with no interface up
  and no route: only the lab's hosts (namespaces of their own) can send anything;
- every file system is read-only (locked: the run has no capability outside its own user
  namespace to remount it); only the run's own folder is writable, and no file may grow
  beyond MAX_FILE_BYTES; each process's address space is capped at MAX_MEMORY_BYTES
  (a client program may raise its own to MAX_PROGRAM_MEMORY_BYTES, lab/clients.py);
- its /proc is its PID namespace's own: no process outside the run, and so none of the
  machine's namespaces, can be reached through it.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from collections.abc import Callable
from pathlib import Path

from .process import PR_SET_PDEATHSIG

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1  # x86-64
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
MAX_MEMORY_BYTES = 2 << 30  # address space: the lab needs a few hundred MB
# the hard limit: Node.js's fetch() (undici's WebAssembly parser) reserves about 10 GiB of
# address space for WebAssembly's guard regions; a client program raises its soft limit to this
MAX_PROGRAM_MEMORY_BYTES = 16 << 30
MAX_FILE_BYTES = 256 << 20  # a pcap of any scenario is far smaller

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(RuntimeError):
    """The kernel refused a namespace, a mount or a limit; the message says which."""


def _check(result: int, what: str) -> None:
    if result != 0:
        raise SandboxError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _mount(source: str | None, target: str, flags: int, fstype: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(),
                       fstype.encode() if fstype else None, flags, None), f"mount {target}")


def limit() -> None:
    """Bound this process and its children: address space and file size."""
    resource.setrlimit(resource.RLIMIT_AS, (MAX_MEMORY_BYTES, MAX_PROGRAM_MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _read_only(path: str, recursive: bool, on: bool = True) -> None:
    """mount_setattr(2): the mount at `path` (and every mount below it) read-only, or not."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY if on else 0, 0 if on else MOUNT_ATTR_RDONLY, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    _check(_libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr),
                         ctypes.sizeof(attr)), f"mount_setattr {path}")


def read_only_except(writable: Path, hidden: list[Path]) -> None:
    """In this (new) mount namespace: every file system read-only but /proc (sysctls) and
    `writable`; `hidden` files replaced by an empty one (the folder's sealing key)."""
    _mount(None, "/", MS_REC | MS_PRIVATE)  # nothing done here reaches the machine's mounts
    _read_only("/", recursive=True)
    _read_only("/proc", recursive=False, on=False)
    _mount(str(writable), str(writable), MS_BIND)
    _read_only(str(writable), recursive=False, on=False)
    for path in hidden:
        if path.is_file():
            _mount("/dev/null", str(path), MS_BIND)


def _own_user_namespace() -> None:
    """Move into a new user namespace with the same uid and gid: the mounts above become
    locked (no remount can undo them) and no capability is left outside it (no setns into
    the machine's namespaces). A helper still outside writes the id maps."""
    uid, gid = os.geteuid(), os.getegid()
    ready_r, ready_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        code = 1
        try:
            os.close(ready_w)
            os.read(ready_r, 1)  # the parent has unshared
            parent = os.getppid()
            for name, line in (("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/{parent}/{name}", "w") as f:
                    f.write(line)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_r)
    _check(_libc.unshare(CLONE_NEWUSER), "unshare (user)")
    os.write(ready_w, b"x")
    os.close(ready_w)
    _, status = os.waitpid(helper, 0)
    if status != 0:
        raise SandboxError("the run's user namespace could not be mapped")
    _keep_capabilities_across_exec()


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _keep_capabilities_across_exec() -> None:
    """tcpdump, nft, ip run as the user's own uid in a rootless run: give them this
    namespace's capabilities (inheritable + ambient), as `unshare --keep-caps` does."""
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    for half in data:
        half.inheritable = half.permitted
    _check(_libc.capset(ctypes.byref(header), data), "capset")
    for cap in range(64):
        if _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0:
            break  # past the last capability this kernel knows


def run_confined(fn: Callable[[], int], writable: Path, hidden: list[Path] = ()) -> int:
    """Run fn() as PID 1 of new PID, network and mount namespaces, in a user namespace of its
    own; its exit code.

    Called in a single-threaded process (the zygote's fresh fork). A signal that kills
    this process (the runner's SIGKILL of its process group) kills the child with it.
    """
    limit()
    _check(_libc.unshare(CLONE_NEWNS), "unshare (mount)")
    read_only_except(writable, list(hidden))
    _own_user_namespace()
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
            # this PID namespace's own /proc: no process outside the run can be reached through it
            _mount("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "proc")
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
