"""The lab: isolated hosts, a real tcpdump capture, and claims checked against it.

An example in `examples/` is one file:

    TITLE = "..."                  # the page title
    PHASE = "opening"              # opening | established | closing | middleboxes
    HOSTS = ("client", "server")   # hosts in a line, joined by veth links

    def run(client, server):       # the socket calls of each host, in order
        ...

    def claims(trace):             # what the capture and the applications must show,
        ...                        # naming every packet: trace.next(..., name="server-rst")

Optional: CAPTURE_ON (host whose eth0 is captured, default the first), CAPTURE_ALL_LINKS
(True: every link of that host in one pcap, tcpdump -i any: a proxy's two sides),
TIMEOUT (seconds, default 20), TRACE_OPTIONS (extra tcpdump -r options, e.g. ["-v"]),
each_program(program, *hosts): the server's part once per real client program, which
`program.get(url)` / `program.post(url, size)` / `program.start(...).wait()` runs on the
client host after run() (lab/clients.py: curl, Node.js, Go, Java, Python's libraries).

Host API (examples/lab/hosts.py): host.ip, host.socket(), `with host:`,
host.record(label, fn, ...), host.note(what, value), host.start(fn, ...),
host.process(argv or fn, ...), host.receives(flags, source=...), host.raw_peer(),
host.wiretap(), host.nginx(http_block) (lab/nginx.py), host.lose_state(port) (a silent reboot), host.sh(...), host.nft(...), host.sysctl(key, value), host.counters(),
host.until(what, condition) and host.counter_reaches(name, n) (kernel state with no event
to wait on), host.accept_queue(listener), host.conntrack().

Claims API (examples/lab/trace.py): trace.next(sender, flags, name=..., **fields),
trace.handshake(client, server, name="handshake"), trace.noise(sender, flags, reason=...),
trace.no / count / check, trace.counter(host, "TcpExtListenOverflows", 1),
trace.raised / returned; the kernel's word: trace.next(..., reason="NO_SOCKET") (reason=None:
no TCP stack sent it), trace.dropped(host, reason, packet=...), trace.kernel_check(what, event,
ok, detail) on trace.events. Every packet must be named or declared noise; the shape
(examples/shapes/SLUG.txt) must match the committed one (`--update` accepts a change).

The modules: artifact (what a recording is), scenarios (the catalogue), hosts, netns,
rtnetlink, threads, process, peer, nginx, wire (the lab's hosts and what they send), clients
(the real client programs), capture
(tcpdump), recording (socket calls), trace (claims), shapes, preflight, worker, zygote,
runner (scheduling and publishing), bench.
"""
