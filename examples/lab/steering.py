"""One CPU receives every lab packet, so each link delivers packets in the order they were sent.

A veth (or loopback) transmit hands the packet to netif_rx(), which queues it on the backlog
of the CPU that sent it (netif_rx_internal() -> enqueue_to_backlog(), net/core/dev.c), and
each CPU drains its own backlog. A socket's two segments sent from two CPUs can then cross: a
server's pure ACK, sent from the softirq that took the client's FIN on one CPU, arrived 2 ms
after the FIN its process sent next from the other CPU; the client, in TIME_WAIT, answered the
stale ACK and drew a RST no page explains (lb-idle-reset-both, one client session in about 30,
one CPU busy). With receive packet steering set to one CPU, get_rps_cpu() (same file) picks
that CPU for every packet, and one backlog is one queue, in the order of transmission.

The mask is a sysfs file (/sys/class/net/IFACE/queues/rx-N/rps_cpus) that only a sysfs
mounted in the host's network namespace shows. The run cannot mount one: its /sys is locked
read-only (lab/sandbox.py), and the kernel refuses a fresh sysfs that is less restricted than
a locked one (mnt_already_visible(), fs/namespace.c). So a helper forked before the run's own
user namespace, which keeps its privilege over the run's namespaces, does it: the run sends it
each host's namespace (an fd over a socket pair), and it answers with the masks it read back.
It ends with the run (the socket's other end closes; PR_SET_PDEATHSIG).

A rootless run (lab/preflight.py) cannot steer: a namespace it owns maps no uid 0, so its
queues' sysfs files belong to the machine's root (net_ns_get_ownership(), net/core/net-sysfs.c),
which no capability of the run's reaches. Its recording says so (receive_cpu: null), and its
links may reorder as above.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import signal
import socket
import threading

from .process import PR_SET_PDEATHSIG

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE, MNT_DETACH = 2, 4, 8, 16384, 1 << 18, 2
QUEUES = "/sys/class/net/*/queues/rx-*/rps_cpus"

_libc = ctypes.CDLL(None, use_errno=True)
_channel: socket.socket | None = None
_lock = threading.Lock()


class SteeringError(RuntimeError):
    """A host's receive steering could not be set; the message says where."""


def _check(result: int, what: str) -> None:
    if result != 0:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")


def receive_cpu() -> int:
    """The CPU every lab packet is received on: the lowest this process may run on."""
    return min(os.sched_getaffinity(0))


def cpu_mask(cpu: int) -> str:
    """`cpu` as a sysfs CPU mask: hex in comma-separated 32-bit groups (bitmap_parse())."""
    groups = [0] * (cpu // 32 + 1)
    groups[cpu // 32] = 1 << (cpu % 32)
    return ",".join(f"{g:08x}" for g in reversed(groups))


def _set_masks(netns_fd: int, mask: str) -> dict[str, str]:
    """In the namespace `netns_fd`: every receive queue steered to `mask`; each queue's mask
    as read back."""
    _check(_libc.setns(netns_fd, CLONE_NEWNET), "setns")
    # nosuid, nodev, noexec: a rootless run's /sys has them locked, and a new sysfs may not drop them
    _check(_libc.mount(b"sysfs", b"/sys", b"sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount sysfs")
    try:
        read_back = {}
        for path in sorted(glob.glob(QUEUES)):
            with open(path, "w") as f:
                f.write(mask)
            with open(path) as f:
                read_back[path.split("/")[4] + "/" + path.split("/")[6]] = f.read().strip()
        return read_back
    finally:
        _check(_libc.umount2(b"/sys", MNT_DETACH), "umount sysfs")


def _serve(channel: socket.socket) -> None:
    """The helper: one answer (JSON) per namespace received, until the run closes its end."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _check(_libc.unshare(CLONE_NEWNS), "unshare (mount)")  # its sysfs mounts are its own
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount private")
    while True:
        message, fds, _, _ = socket.recv_fds(channel, 64, 1)
        if not message:
            return
        try:
            answer = {"queues": _set_masks(fds[0], message.decode())}
        except OSError as exc:
            answer = {"error": str(exc)}
        finally:
            for fd in fds:
                os.close(fd)
        channel.send(json.dumps(answer).encode())


def available() -> bool:
    """Whether this run can steer: it runs as the machine's root, not rootless."""
    return os.geteuid() == 0


def start() -> None:
    """Fork the helper (before the run leaves the privileged user namespace), if it can work."""
    global _channel
    if not available():
        return
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ours.close()
            _serve(theirs)
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    _channel = ours


def steer(netns_fd: int, host: str) -> int | None:
    """Steer every receive queue of the namespace `netns_fd` (host `host`) to receive_cpu();
    the CPU, or None in a rootless run. Raises SteeringError if any queue did not take it."""
    if not available():
        return None
    if _channel is None:
        raise SteeringError("no steering helper: lab hosts are built inside a run (lab/sandbox.py)")
    cpu = receive_cpu()
    mask = cpu_mask(cpu)
    with _lock:
        socket.send_fds(_channel, [mask.encode()], [netns_fd])
        reply = _channel.recv(1 << 16)
    if not reply:
        raise SteeringError(f"{host}: the steering helper ended (its traceback is in the worker's log)")
    answer = json.loads(reply)
    if "error" in answer:
        raise SteeringError(f"{host}: receive steering: {answer['error']}")
    wrong = {q: m for q, m in answer["queues"].items() if int(m.replace(",", ""), 16) != 1 << cpu}
    if wrong or not answer["queues"]:
        raise SteeringError(f"{host}: receive queues not steered to CPU {cpu}: {wrong or 'no queue found'}")
    return cpu
