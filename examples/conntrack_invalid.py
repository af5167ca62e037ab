"""A NAT router's conntrack marks an out-of-window segment INVALID; it escapes the reverse NAT, and the client's kernel answers it with a RST that kills the server's end of the connection.

The router publishes a service address (192.0.2.254:80) and DNATs it to the
server (198.51.100.2:8080), as a Kubernetes node does for a Service. A segment
from the server lies beyond the window conntrack has seen the client offer
(forged here, with scapy, standing in for whatever made it): conntrack's
window tracking (`tcp_in_window()`) calls it INVALID, and an INVALID packet
belongs to no connection, so the reverse NAT skips it. Nothing drops it: it
reaches the client from the server's real address and port, for which the
client has no socket. The client's kernel answers with a bare RST (reason
NO_SOCKET), which the router forwards untranslated to the server, where it
matches the real connection exactly: the server's recv() raises
ConnectionResetError (ECONNRESET), while the client's own socket still looks
established. With `net.netfilter.nf_conntrack_tcp_be_liberal=1` on the router
(second connection), the same segment is translated and reaches the client's
socket, which answers it with a duplicate ACK; the connection lives.
"""

import threading

from scapy.layers.inet import IP, TCP

TITLE = "Conntrack INVALID: an out-of-window segment escapes NAT and draws a RST"
PHASE = "middleboxes"
HOSTS = ("client", "router", "server")
TRACE_OPTIONS = ["-v", "-K"]  # TTL and IP ID; -K: veth leaves checksums to "hardware"
SERVICE_PORT, BACKEND_PORT = 80, 8080  # the service address's port, and the server's
AHEAD = 10_000_000  # bytes beyond the server's next sequence number: far outside any window

# the node: DNAT of the service address to the server, and a rule that only counts
# what conntrack calls invalid (it accepts it, as a chain without a drop rule does)
NODE = f"""
table ip node {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        tcp dport {SERVICE_PORT} dnat to 198.51.100.2:{BACKEND_PORT}
    }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
        ct state invalid counter
    }}
}}
"""


def invalid_count(router):
    """conntrack -S's `invalid` statistic, summed over the router's CPUs."""
    stats = router.sh("conntrack", "-S")
    return sum(int(field.split("=")[1]) for field in stats.split() if field.startswith("invalid="))


def one_connection(client, router, server, tap, listener):
    """Connect through the service address; the server sends an out-of-window segment."""
    sock = client.socket()
    sock.connect((router.ip, SERVICE_PORT))
    conn, (_, client_port) = listener.accept()
    ack = tap.expect(flags=".", source=client.ip)  # the handshake's last ACK: the sequence numbers
    # a data segment "from the server", 10 MB beyond what the client has been told to expect
    segment = (IP(src=server.ip, dst=client.ip, flags="DF")
               / TCP(sport=BACKEND_PORT, dport=client_port, flags="PA",
                     seq=(ack[TCP].ack + AHEAD) % 2**32, ack=ack[TCP].seq, window=502) / b"stray")
    return sock, conn, segment


def run(client, router, server):
    router.nft(NODE)
    tap = server.wiretap()  # the server host's stand-in: it forges the stray segment
    listener = server.socket()
    listener.bind((server.ip, BACKEND_PORT))
    listener.listen()

    # 1. the default: nf_conntrack_tcp_be_liberal=0, invalid packets are let through
    router.note("net.netfilter.nf_conntrack_tcp_be_liberal",
                router.sh("sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal").strip())
    sock, conn, segment = one_connection(client, router, server, tap, listener)
    router.note("the router's conntrack entry", " ".join(router.conntrack()[0].split()[3:12]))
    with server.receives("R", source=client):  # the client's kernel answers it
        tap.send(segment)
    try:
        conn.recv(1024)
    except ConnectionResetError:
        pass
    client.note("the client's connection (ss -tn)", " ".join(client.sh("ss", "-tnH").split()[:5]))
    router.note("conntrack -S: invalid (all CPUs)", invalid_count(router))
    rule = router.sh("nft", "list", "chain", "ip", "node", "forward")
    router.note("packets counted by ct state invalid", int(rule.split("counter packets ")[1].split()[0]))

    # 2. the fix: the router's conntrack is liberal with windows
    router.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", 1)
    sock2, conn2, segment2 = one_connection(client, router, server, tap, listener)
    with server.receives(".", source=client):  # the client's socket answers it: a duplicate ACK
        tap.send(segment2)
    conn2.sendall(b"hello")
    sock2.recv(1024)
    router.note("conntrack -S: invalid (all CPUs), at the end", invalid_count(router))


def next_sequence_numbers(tap, client_ip):
    """(client's port, the client's next sequence number, the server's) of the one connection
    whose segments from the client have arrived at the server host, read from its last one:
    called once the server has nothing left unacknowledged."""
    last = None
    while True:
        try:
            seen = tap.expect(timeout=0, source=client_ip)
        except TimeoutError:  # none left
            break
        if seen[TCP].dport == BACKEND_PORT:
            last = seen
    if last is None:
        raise TimeoutError("no segment of the client's arrived at the server")
    tcp = last[TCP]
    return tcp.sport, (tcp.seq + len(tcp.payload)) % 2**32, tcp.ack


def each_program(program, client, router, server):
    """Each real client makes two requests with one client object (its pool of kept-alive
    connections) through the service address, with the router's nftables from run() and
    nf_conntrack_tcp_be_liberal back at 0. Once the first response has been acknowledged and
    the program has handled it, the server host sends the out-of-window segment of run() on
    that connection: it escapes the reverse NAT, and the client's kernel answers it with the
    RST that resets the server's end. Then the program makes its second request, on the pooled
    connection its own kernel still holds, or on a new one, which is served and stays open
    until the program closes it."""
    router.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", 0)
    # run()'s sockets hold port 8080 until closed: its second connection is destroyed first,
    # without a packet on the wire (closing it would send a FIN into the recording)
    server.lose_state(BACKEND_PORT)
    for sock in server.sockets:
        sock.close()
    answered = threading.Event()
    # the client's kernel's RST, through the router, ends the first connection while the server waits on it
    httpd = server.http_server(BACKEND_PORT, answered, lost=ConnectionResetError)
    tap = server.wiretap()  # as in run(): the server host's stand-in forges the segment
    first = server.start(httpd.handle_request)
    url = f"http://{router.ip}:{SERVICE_PORT}"
    running = program.start("GET", f"{url}/first", then=f"{url}/second")
    if not answered.wait(program.timeout):
        raise TimeoutError(f"{program.name}: the first request was not answered within {program.timeout:g} s")
    # the response is acknowledged when the server's connection has nothing left to send
    # (Send-Q 0): kernel state with no event to wait on
    server.until("the client's kernel acknowledged the first response",
                 lambda: server.sh("ss", "-Htn", "state", "established", "sport", "=", f":{BACKEND_PORT}")
                 .split()[1:2] == ["0"], timeout=program.timeout)
    running.settled()  # and the program has read it and waits for the lab
    client_port, client_next, server_next = next_sequence_numbers(tap, client.ip)
    segment = (IP(src=server.ip, dst=client.ip, flags="DF")
               / TCP(sport=BACKEND_PORT, dport=client_port, flags="PA",
                     seq=(server_next + AHEAD) % 2**32, ack=client_next, window=502) / b"stray")
    with server.receives("R", source=client):  # the client's kernel answers it
        tap.send(segment)
    first.join(program.timeout)
    if first.is_alive():
        raise TimeoutError(f"{program.name}: the server's first connection was not reset")
    client.note("the program's connection (ss -tn)",
                " ".join(client.sh("ss", "-tnH", "sport", "=", f":{client_port}").split()[:5]))
    with server.serving(httpd, program.timeout):  # a retry on a new connection is served too
        running.proceed()  # the program makes its second request now
        running.wait()


def claims(trace):
    # 1. nf_conntrack_tcp_be_liberal=0
    _, synack, ack = trace.handshake("client", "router", what="to the service address, DNATed to the server")
    trace.check("the real server's SYN-ACK arrives translated, from the service address, TTL 63",
                (synack.src, synack.sport, synack.ttl) == ("192.0.2.254", SERVICE_PORT, 63),
                f"{synack.src}.{synack.sport}, TTL {synack.ttl}")
    stray = trace.next("server", "P.", name="stray-segment", payload=5, seq=synack.seq + 1 + AHEAD, ack=ack.seq,
                       what="a data segment of the connection arrives untranslated, from the server's own"
                            f" address and port, {AHEAD} bytes beyond the window")
    trace.check("it carries the server's address and port, not the service's: the reverse NAT skipped it",
                (stray.src, stray.sport, stray.dport) == ("198.51.100.2", BACKEND_PORT, ack.sport),
                f"{stray.src}.{stray.sport} > {stray.dst}.{stray.dport}")
    trace.dropped("client", "NO_SOCKET", packet=stray,
                  what="the client's kernel has no socket for it and drops it (NO_SOCKET)")
    rst = trace.next("client", "R", name="client-rst", reason="NO_SOCKET", state="UNKNOWN", seq=stray.ack, win=0,
                     options=(), within=0.05,
                     what="the client's kernel answers at once with a bare RST to the server's address: seq ="
                          " the segment's ack, win 0, no options")
    trace.check("the RST goes to the server's own address and port", (rst.dst, rst.dport) ==
                ("198.51.100.2", BACKEND_PORT), f"{rst.dst}.{rst.dport}")
    trace.raised("server", "recv", "ECONNRESET")
    view = trace.calls("client", "the client's connection")
    trace.check("after the reset, the client still holds its connection to the service as established",
                bool(view) and view[0]["returned"].startswith("'ESTAB") and "192.0.2.254:80" in view[0]["returned"],
                view[0]["returned"] if view else "")
    entry = trace.calls("router", "the router's conntrack entry")
    trace.check("the router tracked the flow as ESTABLISHED, DNATed to the server",
                bool(entry) and entry[0]["returned"].startswith("'ESTABLISHED") and "src=198.51.100.2" in
                entry[0]["returned"], entry[0]["returned"] if entry else "")
    for what, value in (("conntrack -S: invalid (all CPUs)", 2), ("packets counted by ct state invalid", 2)):
        got = trace.calls("router", what)
        trace.check(f"the router's {what} is 2: the stray segment and the client's RST",
                    bool(got) and got[0]["returned"] == str(value), got[0]["returned"] if got else "not read")

    # 2. nf_conntrack_tcp_be_liberal=1
    _, synack2, ack2 = trace.handshake("client", "router", name="handshake-liberal",
                                       what="a second connection, after nf_conntrack_tcp_be_liberal=1")
    trace.next("router", "P.", name="stray-segment-liberal", payload=5, seq=synack2.seq + 1 + AHEAD,
                        ack=ack2.seq, what="the same kind of segment now arrives translated, from the service address")
    trace.next("client", ".", name="dup-ack", ack=synack2.seq + 1, payload=0, within=0.05,
               what="and answers with a duplicate ACK saying what it expects")
    response = trace.next("router", "P.", name="response", payload=5, seq=synack2.seq + 1,
                          what="the server's real data arrives, translated")
    trace.next("client", ".", name="response-ack", ack=response.seq + 5)
    trace.returned("client", "recv", "b'hello'")
    end = trace.calls("router", "conntrack -S: invalid (all CPUs), at the end")
    trace.check("with be_liberal, conntrack counted no new invalid packet",
                bool(end) and end[0]["returned"] == "2", end[0]["returned"] if end else "not read")
    trace.counter("client", "TcpExtBeyondWindow", 1,
                  what="the client's socket counts one segment beyond its window (the second connection's)")
    trace.counter("client", "TcpOutRsts", 1, what="the client's kernel sent one RST")
    trace.counter("server", "TcpEstabResets", 1, what="the server lost one established connection")
    trace.counter("client", "TcpEstabResets", 0, what="the client lost none")
