"""A load balancer times out an idle flow and resets both ends: each application's recv() fails with ECONNRESET, and neither TCP stack sent a RST.

Some load balancers, on a flow's idle timeout, do not just forget it silently:
configured to, they send a RST to the client in the server's name and another
to the server in the client's name (Azure Load Balancer's "TCP reset on idle"
does exactly this). Here the router between client and server plays that load
balancer in user space (scapy): it watches the flow's segments, keeps the next
sequence number of each direction, and after 0.3 s of silence (minutes in real
life) sends both RSTs, each at exactly the sequence number its receiver
expects. Both are accepted. The client, waiting for more data, gets
ConnectionResetError (ECONNRESET) from recv(); so does the server. Neither
kernel sent a RST: the client's arrives with TTL 64, one hop too close to be
the server's.
"""

import threading
import time

from scapy.layers.inet import IP, TCP

TITLE = "Load balancer idle timeout: a RST to each side"
PHASE = "middleboxes"
HOSTS = ("client", "router", "server")
TRACE_OPTIONS = ["-v", "-K"]  # TTL and IP ID betray who sent a segment; -K: veth checksums are offloaded
IDLE_TIMEOUT = 0.3  # seconds of silence before the load balancer resets the flow (Azure: 4 to 100 minutes)
PORT = 443


def load_balancer(router, tap, client_ip, server_ip, idle_from=None, timeout=5):
    """The load balancer's flow table for one flow: the next sequence number each side will
    send, and the time of its last segment; on idle timeout, a RST to each side.
    idle_from: an event before which no silence counts (a program's first response sent);
    timeout: how long the flow may take to go idle (a program's is its own time bound)."""
    next_seq = {}
    ports = None
    tap.expect(flags="S", source=client_ip, timeout=timeout)  # wait for the flow to start (the SYN)
    deadline = time.monotonic() + timeout
    # the flow's segments, in both directions, until it has been silent for IDLE_TIMEOUT
    seen = tap.expect(flags=None)  # the SYN-ACK (the SYN itself was read above)
    while True:
        tcp = seen[TCP]
        length = len(tcp.payload) + (1 if tcp.flags.S or tcp.flags.F else 0)
        next_seq[seen[IP].src] = (tcp.seq + length) % 2**32
        if seen[IP].src == client_ip:
            ports = (tcp.sport, tcp.dport)
        try:
            seen = tap.expect(flags=None, timeout=IDLE_TIMEOUT)
        except TimeoutError:
            if idle_from is None or idle_from.is_set():
                break
            continue
        if time.monotonic() > deadline:
            raise TimeoutError("the flow never went idle")
    client_port, server_port = ports
    to_client = IP(src=server_ip, dst=client_ip) / TCP(sport=server_port, dport=client_port, flags="R",
                                                       seq=next_seq[server_ip], window=0)
    to_server = IP(src=client_ip, dst=server_ip) / TCP(sport=client_port, dport=server_port, flags="R",
                                                       seq=next_seq[client_ip], window=0)
    tap.send(to_client)
    tap.send(to_server)
    router.note("the load balancer resets the idle flow: RST to the client, seq", next_seq[server_ip])
    router.note("and RST to the server, seq", next_seq[client_ip])


def serve(listener):
    conn, _ = listener.accept()
    conn.recv(1024)
    conn.sendall(b"200 OK\n")
    try:
        conn.recv(1024)  # waits for the next request, which never comes
    except ConnectionResetError:
        pass


def each_program(program, client, router, server):
    """Each real client makes two requests with one client object (its pool of kept-alive
    connections). The load balancer resets the first connection once it has been idle after
    the response (a RST to each side); once the program has handled its RST, it makes its
    second request. A new connection is served, and stays open until the program closes it."""
    answered = threading.Event()
    # the load balancer's RST, in the client's name, ends the first connection while the server waits on it
    httpd = server.http_server(8080, answered, lost=ConnectionResetError)
    tap = router.wiretap()
    lb = router.start(load_balancer, router, tap, client.ip, server.ip, answered, program.timeout)
    reset = client.expects("R", source=server)
    first = server.start(httpd.handle_request)
    url = f"http://{server.ip}:8080"
    running = program.start("GET", f"{url}/first", then=f"{url}/second")
    reset.wait(program.timeout)  # the load balancer's RST reached the client
    running.settled()  # and the program has done what it does when a pooled connection is reset
    first.join(program.timeout)
    if first.is_alive():
        raise TimeoutError(f"{program.name}: the server's first connection was not reset")
    lb.join(program.timeout)
    with server.serving(httpd, program.timeout):  # a retry on a new connection is served too
        running.proceed()  # the program makes its second request now
        running.wait()


def run(client, router, server):
    tap = router.wiretap()  # the load balancer sees every segment of the flow
    lb = router.start(load_balancer, router, tap, client.ip, server.ip)
    listener = server.socket()
    listener.bind((server.ip, PORT))
    listener.listen()
    backend = server.start(serve, listener)

    sock = client.socket()
    sock.connect((server.ip, PORT))
    sock.sendall(b"GET /\n")
    sock.recv(1024)
    try:
        sock.recv(1024)  # a long poll: waits for more, and the flow goes idle
    except ConnectionResetError:
        pass
    backend.join(5)
    lb.join(5)


def claims(trace):
    _, synack, _ = trace.handshake("client", "server", what="through the load balancer")
    trace.next("client", "P.", name="request", payload=6)
    trace.next("server", ".", name="request-ack")
    response = trace.next("server", "P.", name="response", payload=7)
    trace.check("the real server's packets arrive with TTL 63: the load balancer is one hop away",
                synack.ttl == response.ttl == 63, f"TTL {synack.ttl}, {response.ttl}")
    trace.next("client", ".", name="response-ack", ack=response.seq + 7,
               what="the client acknowledges the response; the flow goes idle")
    rst = trace.next("server", "R", name="lb-rst-to-client", reason=None, seq=response.seq + 7, win=0, options=(),
                     after=IDLE_TIMEOUT, within=IDLE_TIMEOUT + 1.0,  # the load balancer's timer is a user process's: late on a loaded machine (705 ms seen)
                     what=f"{IDLE_TIMEOUT} s of silence later, a bare RST arrives in the server's name,"
                          " at exactly the client's next expected byte")
    trace.check("it arrives with TTL 64: made one hop away, by the load balancer",
                rst.ttl == 64, f"TTL {rst.ttl}")
    sent = [e for e in trace.events if e["event"] == "tcp_send_reset"]
    trace.kernel_check("no TCP stack of the lab sent a RST in the whole run (no tcp_send_reset event)",
                        "tcp_send_reset", lambda: not sent, ", ".join(e["host"] for e in sent) or "none")
    received = sorted(e["host"] for e in trace.events
                      if e["event"] == "tcp_receive_reset" and e["state"] == "TCP_ESTABLISHED")
    trace.kernel_check("client and server each accepted one RST, in ESTABLISHED (tcp_receive_reset)",
                        "tcp_receive_reset", lambda: received == ["client", "server"], ", ".join(received))
    trace.raised("client", "recv", "ECONNRESET", nth=1)
    trace.raised("server", "recv", "ECONNRESET", nth=1)
    for host in ("client", "server"):
        trace.counter(host, "TcpOutRsts", 0, what=f"the {host}'s TCP stack sent no RST")
        trace.counter(host, "TcpEstabResets", 1, what=f"the {host} lost its established connection to a RST")
    trace.counter("router", "TcpOutRsts", 0, what="nor did the router's: its RSTs are raw IP packets")
