"""Lab hosts: one network namespace each, joined in a line by veth links.

    hosts("client", "server")            client 192.0.2.1 ---- 192.0.2.2 server
    hosts("client", "router", "server")  client 192.0.2.1 ---- 192.0.2.254 router
                                         198.51.100.254 ---- 198.51.100.2 server

Every address is from the documentation ranges and no host has a default
route or any link to the machine's own interfaces: lab traffic cannot leave.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from http.server import HTTPServer
from typing import Any

from . import netns, rtnetlink
from .httpd import keep_alive_server
from .nginx import Nginx
from .peer import DROP_KERNEL_RSTS, RawPeer
from .process import Process, python_argv
from .recording import RecordedSocket, Transcript
from .threads import HostThread
from .wire import Expected, HttpRequestArrival, Tap

SUBNETS = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
MTU = 1500  # a veth link gives the MSS 1460 of real Ethernet


# a FIN or RST from the dying sockets would warn their peers
SILENT_REBOOT = """
table ip silent_reboot {
    chain out {
        type filter hook output priority 0; policy accept;
        tcp flags & (fin | rst) != 0 drop
    }
}
"""


class Host:
    """A machine of the lab: its own network stack, addresses and processes."""

    def __init__(self, name: str, transcript: Transcript) -> None:
        self.name = name
        self.fd = netns.new_namespace()
        # which kernel events are this host's (lab/tracer.py): its namespace's number, from now on
        self.netns_inode, self.made_ns = os.fstat(self.fd).st_ino, time.monotonic_ns()
        self.addresses: list[str] = []
        self._transcript = transcript
        self._threads: list[HostThread] = []
        self.sockets: list[socket.socket] = []
        self._peers: list[RawPeer] = []
        self._processes: list[Process] = []
        self._inbox: Tap | None = None  # opened on first use: receives() marks its start

    @property
    def ip(self) -> str:
        """The host's first address (the one its peers use)."""
        return self.addresses[0]

    def __repr__(self) -> str:
        return f"<host {self.name} {' '.join(self.addresses)}>"

    # -- what an application on this host does ------------------------------

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> RecordedSocket:
        """A socket on this host; every call on it is recorded with its outcome."""
        with netns.inside(self.fd):
            sock = socket.socket(family, type)
        self.sockets.append(sock)
        return RecordedSocket(sock, self.name, self._transcript, self.sockets)

    def __enter__(self) -> Host:
        """`with host:` runs library code (http.client, ...) on this host."""
        self._ctx = netns.inside(self.fd)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)

    def record(self, call: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call `fn` on this host and record what it returned or raised as `call`."""
        with netns.inside(self.fd):
            return self._transcript.call(self.name, call, fn, *args, **kwargs)

    def note(self, what: str, value: Any) -> None:
        """Record something the application observed (a log line, a status...)."""
        self._transcript.note(self.name, what, value)

    def add_outcome(self, entry: dict[str, Any]) -> None:
        """Record what a program run on this host printed (lab/clients.py)."""
        self._transcript.add(self.name, entry)

    def receives(self, flags: str, source: Host | None = None, timeout: float = 5.0,
                 count: int = 1) -> Any:
        """`with host.receives(flags):` waits, after its body, for such a segment to arrive.

        count: wait for that many such segments (counted from the start of the body).
        """
        return _waiting_after(self.expects(flags, source, count), timeout)

    def expects(self, flags: str, source: Host | None = None, count: int = 1) -> Expected:
        """Like receives(), split in two: arm now, `.wait()` later (e.g. in another function)."""
        return self._open_inbox().expect(flags, self.facing(source) if source else None, count)

    def expects_request(self, source: Host) -> HttpRequestArrival:
        """Arm now, `.wait(timeout)` later: a whole HTTP request from `source` (a program whose
        request may take several segments, and whose size the lab does not know)."""
        return HttpRequestArrival(Tap(self.fd), self.facing(source))

    def facing(self, other: Host) -> str:
        """`other`'s address on the link towards this host (a router or proxy has one per link)."""
        links = [ipaddress.ip_network(s) for s in SUBNETS]
        for address in other.addresses:
            link = next(net for net in links if ipaddress.ip_address(address) in net)
            if any(ipaddress.ip_address(mine) in link for mine in self.addresses):
                return address
        return other.ip

    def _open_inbox(self) -> Tap:
        if self._inbox is None:
            self._inbox = Tap(self.fd)
        return self._inbox

    def start(self, fn: Callable[..., Any], *args: Any) -> HostThread:
        """Run `fn(*args)` in a thread of this host (a second process, in effect)."""
        thread = HostThread(self, fn, args)
        self._threads.append(thread)
        thread.start()
        return thread

    @contextlib.contextmanager
    def serving(self, server: Any, timeout: float) -> Iterator[None]:
        """Serve `server`'s connections (a socketserver, one after another) in a thread of this
        host while the block runs; then stop it, wake its accept() and close its socket."""
        stopped = threading.Event()

        def serve() -> None:
            while not stopped.is_set():
                server.handle_request()

        thread = self.start(serve)
        try:
            yield
        finally:
            stopped.set()
            server.socket.shutdown(socket.SHUT_RDWR)  # wakes handle_request()
            thread.join(timeout)
            server.server_close()

    def process(self, program: list[str] | Callable[..., Any], *args: Any) -> Process:
        """A separate process on this host: an argv, or fn(*args) run in a new Python
        (fn is a module-level function of the example; args are JSON values).
        `.wait_for(text)` waits for a line it prints, `.kill()` sends SIGKILL and reaps it."""
        argv = list(program) if isinstance(program, (list, tuple)) else python_argv(program, args)
        name = f"{self.name} process {len(self._processes) + 1}"
        proc = Process(self.fd, argv, self, name)
        self._processes.append(proc)
        return proc

    def nginx(self, http: str, level: str = "error") -> Nginx:
        """nginx (Debian's) as a process on this host, serving this `http { ... }` block;
        returns once its worker runs. Its error log at `level` is read with .error_log()."""
        return Nginx(self, http, level)

    def http_server(self, port: int, answered: threading.Event | None = None,
                    lost: type[BaseException] | None = None) -> HTTPServer:
        """http.server on this host's port, keeping connections alive (lab/httpd.py):
        answered is set once a response is written; `lost`, the error a connection taken
        away by the scenario raises, is noted rather than failing the run."""
        return keep_alive_server(self, port, answered, lost)

    def raw_peer(self) -> RawPeer:
        """Play this host's TCP by hand (scapy): its kernel's own RSTs are dropped."""
        self.nft(DROP_KERNEL_RSTS)
        peer = RawPeer(self.fd)
        self._peers.append(peer)
        return peer

    def wiretap(self) -> RawPeer:
        """A third party on this host (scapy): reads every segment arriving on any of its
        interfaces (a router sees both directions) and sends forged ones. Unlike
        raw_peer(), the host's kernel keeps its own voice (a router still forwards)."""
        peer = RawPeer(self.fd, iface=None)
        self._peers.append(peer)
        return peer

    # -- what an operator does on this host ---------------------------------

    def sh(self, *argv: str, input: str | None = None) -> str:
        """Run a command (ss, nft, ip...) on this host and return its output."""
        return netns.run(self.fd, list(argv), input=input)

    def nft(self, ruleset: str) -> None:
        """Load an nftables ruleset on this host."""
        self.sh("nft", "-f", "-", input=ruleset)

    def lose_state(self, port: int) -> str:
        """A silent reboot: destroy every socket on this local port (`ss -K`) while the
        host's outgoing FIN and RST are dropped, so its peers are told nothing.
        Returns ss's lines for the sockets destroyed."""
        self.nft(SILENT_REBOOT)
        try:
            return self.sh("ss", "-K", "-Htan", "sport", "=", f":{port}")
        finally:
            self.nft("delete table ip silent_reboot")

    def ack_at_once(self) -> None:
        """Every IPv4 route of this host's main table with the option `quickack 1`, which each
        TCP socket reads when its route is set up (sk_setup_caps(), net/core/sock.c): it sends
        each ACK as soon as it processes the segment (in the receiving softirq or, when its
        process holds the socket, at release_sock()), never from the delayed-ACK timer
        (tcp_in_quickack_mode(): dst_quick_ack, net/ipv4/tcp_input.c).

        Why: a FIN received in ESTABLISHED puts its receiver in pingpong mode (tcp_fin()),
        which ends quick-ACK mode, so __tcp_ack_snd_check() leaves the FIN's ACK to the
        delayed-ACK timer (at least 40 ms, TCP_DELACK_MIN). A server slow to close then sent
        that pure ACK from the timer and its own FIN from its process, possibly on another
        CPU; each CPU drains its own backlog (__netif_rx() -> enqueue_to_backlog(),
        net/core/dev.c) and the two crossed: the client, in TIME_WAIT, answered the stale ACK
        (tcp_timewait_state_process(), net/ipv4/tcp_minisocks.c) and the server's listener
        reset that answer (TCP_FLAGS). With quickack the ACK leaves as the FIN is processed,
        before the server's process can close."""
        # ip prints a route's rto_min as "rto_min lock 5s" but reads it back only as "rto_min 5s"
        # (the lock is implied: iproute2's ip/iproute.c sets it for every rto_min)
        routes = (self.sh("ip", "-4", "-o", "route", "show").replace("rto_min lock ", "rto_min ")
                  .replace(" quickack 1", "").splitlines())  # (an example's own call came first)
        self.sh("ip", "-batch", "-", input="".join(f"route change {r.strip()} quickack 1\n" for r in routes))

    def sysctl(self, key: str, value: object) -> None:
        """Set a per-namespace sysctl on this host (net.* keys)."""
        path = "/proc/sys/" + key.replace(".", "/")
        with netns.inside(self.fd), open(path, "w") as f:
            f.write(str(value))

    def counters(self) -> dict[str, int]:
        """The kernel's SNMP/netstat counters of this host, named as nstat names them."""
        values: dict[str, int] = {}
        with netns.inside(self.fd):
            for table in ("snmp", "netstat"):
                with open(f"/proc/thread-self/net/{table}") as f:
                    lines = f.read().splitlines()
                for head, row in zip(lines[::2], lines[1::2], strict=True):
                    prefix, names = head.split(":", 1)
                    _, numbers = row.split(":", 1)
                    for name, number in zip(names.split(), numbers.split(), strict=True):
                        values[prefix + name] = int(number)
        return values

    def until(self, what: str, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `condition()` holds: for kernel state that sends nothing on the wire
        and offers no event (a counter, a queue length)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: not within {timeout:g} s: {what}")
            time.sleep(0.001)  # no event to wait on: poll

    def counter_reaches(self, name: str, value: int, timeout: float = 5.0) -> None:
        """Wait until the nstat counter `name` (e.g. "TcpExtListenOverflows") is at least `value`."""
        self.until(f"{name} reaches {value}", lambda: self.counters().get(name, 0) >= value, timeout)

    def conntrack(self) -> list[str]:
        """This host's connection tracking table, one entry a line, as `conntrack -L` shows it.

        The kernel leaves expired entries out of the listing: an entry that is gone
        here is one the host has forgotten.
        """
        # conntrack(8) asks the kernel over netlink, which a rootless run may do in its own
        # namespaces; /proc/net/nf_conntrack is for the machine's root only
        return self.sh("conntrack", "-L").splitlines()

    @staticmethod
    def accept_queue(listener: Any) -> int:
        """How many finished connections wait in a listening socket's accept queue."""
        # for a listener, tcp_info's tcpi_unacked is the accept queue's length (tcp_get_info)
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
        return struct.unpack_from("I", info, 24)[0]

    def join_threads(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise TimeoutError(f"{self.name}: thread {thread.fn.__name__} still running")
            if thread.error is not None:
                raise thread.error

    def packet_sockets(self) -> list[socket.socket]:
        """This host's packet sockets: closing one waits for an RCU grace period."""
        found = [s for peer in self._peers for s in peer.sockets()]
        return found + ([self._inbox.sock] if self._inbox else [])

    def close(self) -> None:
        for proc in self._processes:
            proc.close()
        for sock in self.sockets:
            sock.close()
        for peer in self._peers:
            peer.close()
        if self._inbox:
            self._inbox.close()
        os.close(self.fd)


@contextlib.contextmanager
def _waiting_after(expected: Expected, timeout: float) -> Iterator[None]:
    yield
    expected.wait(timeout)


def address_plan(count: int) -> list[list[tuple[str, str, int]]]:
    """Each host's (interface, address, prefix length), link by link, left to right."""
    plan: list[list[tuple[str, str, int]]] = [[] for _ in range(count)]
    for i in range(count - 1):
        net = ipaddress.ip_network(SUBNETS[i])
        # the first host is .1, the last .2, a router's ends .254
        left_ip = net[1] if i == 0 else net[254]
        right_ip = net[2] if i == count - 2 else net[254]
        plan[i].append(("eth1" if i else "eth0", str(left_ip), net.prefixlen))
        plan[i + 1].append(("eth0", str(right_ip), net.prefixlen))
    return plan


def build(names: tuple[str, ...], transcript: Transcript,
          on_interface: tuple[str, Callable[[Host], None]] | None = None) -> list[Host]:
    """Make the hosts and join consecutive ones with a veth link each.

    One `ip -batch` per host configures it from inside its namespace; the veth
    to the next host is created there with its far end put straight into the
    next namespace, so no lab interface ever exists on the machine itself.
    on_interface=(name, fn): call fn(host) as soon as that host's eth0 is configured and
    up (the capture starts while the rest of the line is configured).
    """
    if not 1 <= len(names) <= len(SUBNETS) + 1:
        raise ValueError(f"a lab line has 1 to {len(SUBNETS) + 1} hosts, not {len(names)}")
    hosts = [Host(name, transcript) for name in names]
    plan = address_plan(len(hosts))
    for i, host in enumerate(hosts):
        host.addresses = [ip for _, ip, _ in plan[i]]
    for i, host in enumerate(hosts):
        for key in ("all", "default"):  # no IPv6 chatter on the wire
            host.sysctl(f"net.ipv6.conf.{key}.disable_ipv6", 1)
        if 0 < i < len(hosts) - 1:
            host.sysctl("net.ipv4.ip_forward", 1)
        batch = ["link set lo up"]
        if i < len(hosts) - 1:
            # this process as /proc numbers it (the run is PID 1 of a PID namespace of its own)
            far_end = f"/proc/{os.readlink('/proc/self')}/fd/{hosts[i + 1].fd}"
            # distinct interface indexes at the two ends: the kernel (linkwatch) then
            # brings the carrier up at once, instead of in a batch up to a second later
            batch.append(f"link add {plan[i][-1][0]} index {10 + 2 * i} mtu {MTU} type veth"
                         f" peer name eth0 index {11 + 2 * i} mtu {MTU} netns {far_end}")
        for ifname, ip, prefix in plan[i]:
            batch += [f"addr add {ip}/{prefix} dev {ifname}", f"link set {ifname} up"]
        # every lab subnet through the neighbour on its side; nothing else (no default route)
        for j in range(len(hosts) - 1):
            if j < i - 1:
                batch.append(f"route add {SUBNETS[j]} via {hosts[i - 1].addresses[-1]}")
            elif j > i:
                batch.append(f"route add {SUBNETS[j]} via {hosts[i + 1].addresses[0]}")
        host.sh("ip", "-batch", "-", input="\n".join(batch) + "\n")
        if on_interface and i == names.index(on_interface[0]):  # its eth0 exists and is up
            on_interface[1](host)
    for host in hosts:
        rtnetlink.wait_for_links_up(host.fd, host.name)
    if len(hosts) > 1:
        _wait_for_path(hosts[0], hosts[-1])
    return hosts


def _wait_for_path(first: Host, last: Host, timeout: float = 5.0) -> None:
    """Wait until a datagram crosses the whole line (links up, ARP resolved).

    UDP stays out of the capture, which only shows TCP and ICMP. The receiving
    socket stays open until the end: a late duplicate must not draw an ICMP
    port-unreachable into the trace.
    """
    with netns.inside(last.fd):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns.inside(first.fd):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    last.sockets.append(rx)
    with tx:
        rx.bind((last.ip, 9))
        rx.settimeout(0.01)
        deadline = time.monotonic() + timeout
        while True:
            tx.sendto(b"link up?", (last.ip, 9))
            try:
                rx.recv(64)
                return
            except TimeoutError:  # the link's carrier or ARP is not there yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no path from {first.name} to {last.name}") from None
