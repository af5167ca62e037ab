"""Anonymous network namespaces, held open by file descriptors.

A namespace made here has no name in /run/netns: it lives exactly as long as
the process holding its descriptor. When a run ends in any way (even SIGKILL),
the kernel frees every namespace, veth link and socket of that run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(RuntimeError):
    """The kernel refused to make or enter a network namespace."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(f"setns: {os.strerror(err)}")


def _current() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def new_namespace() -> int:
    """Make a fresh network namespace and return a descriptor holding it.

    Only the calling thread switches, and it switches straight back.
    """
    home = _current()
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NamespaceError(
                f"cannot create a network namespace: {os.strerror(err)} "
                "(needs root, or an unprivileged user namespace: see README)"
            )
        fd = _current()
        _setns(home)
        return fd
    finally:
        os.close(home)


@contextlib.contextmanager
def inside(fd: int) -> Iterator[None]:
    """Run the body with this thread in the namespace `fd`.

    Sockets created in the body belong to that namespace for their whole life,
    whichever thread uses them later.
    """
    home = _current()
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def enter_for_good(fd: int) -> None:
    """Move this thread into `fd` (for threads that live in one host)."""
    _setns(fd)


def command(fd: int, argv: list[str]) -> list[str]:
    """The argv that runs `argv` inside namespace `fd` (pass `fd` to the child)."""
    return ["nsenter", f"--net=/proc/self/fd/{fd}", "--", *argv]


def run(fd: int, argv: list[str], input: str | None = None) -> str:
    """Run a command inside namespace `fd`; raise with its stderr if it fails."""
    proc = subprocess.run(
        command(fd, argv), input=input, capture_output=True, text=True, pass_fds=(fd,)
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout
