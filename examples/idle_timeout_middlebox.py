"""A stateful middlebox forgets an idle connection; the next packet is rejected with a RST forged in the server's name.

A router between client and server tracks connections (conntrack), as NAT
gateways, firewalls and cloud load balancers do, and rejects packets of flows
it does not know. Its idle timeout is 1 s here (hours or minutes in real life).
Client and server exchange a request and a response, then stay silent; once
the idle timeout has passed, the router has forgotten the flow. The client's
next request reaches the router as a packet of no known connection: the router
answers with a bare RST (`[R]`) from the server's address, arriving with TTL 64
and IP ID 0 where the real server's packets have TTL 63. The client's recv()
raises ConnectionResetError (ECONNRESET); the server never hears of it and
still holds the connection.
"""

TITLE = "Idle timeout in a middlebox: RST for a forgotten flow"
PHASE = "middleboxes"
HOSTS = ("client", "router", "server")
TRACE_OPTIONS = ["-v", "-K"]  # TTL and IP ID; no checksum checks (veth leaves them to "hardware")
IDLE_TIMEOUT = 1  # seconds; nf_conntrack_tcp_timeout_established (5 days by default)

MIDDLEBOX = """
table inet middlebox {
    chain forward {
        type filter hook forward priority 0; policy accept;
        ct state invalid counter reject with tcp reset
    }
}
"""


def run(client, router, server):
    router.nft(MIDDLEBOX)
    router.sysctl("net.netfilter.nf_conntrack_tcp_loose", 0)  # a mid-flow packet cannot start a new entry
    router.sysctl("net.netfilter.nf_conntrack_tcp_timeout_established", IDLE_TIMEOUT)

    listener = server.socket()
    listener.bind((server.ip, 80))
    listener.listen()
    sock = client.socket()
    sock.connect((server.ip, 80))
    conn, _ = listener.accept()

    sock.sendall(b"ping\n")
    conn.recv(1024)
    with server.receives(".", source=client):  # the client acknowledges the response: all is quiet
        conn.sendall(b"pong\n")
    sock.recv(1024)
    router.note("the router's conntrack entry", " ".join(router.conntrack()[0].split()[:8]))

    # the idle timeout itself: wait until the router's table no longer lists the flow (~1 s)
    router.until("the router forgets the idle flow", lambda: not router.conntrack(), timeout=IDLE_TIMEOUT + 2)

    sock.sendall(b"ping\n")  # the next request: no state for it in the router
    try:
        sock.recv(1024)
    except ConnectionResetError:
        pass
    server.note("the server's connections (ss -tn)", " ".join(server.sh("ss", "-tnH").split()))
    rule = router.sh("nft", "list", "chain", "inet", "middlebox", "forward")
    router.note("packets counted by the reject rule", int(rule.split("counter packets ")[1].split()[0]))


def claims(trace):
    _, synack, _ = trace.handshake("client", "server", what="through the router, which tracks the flow")
    trace.check("the real server's packets arrive with TTL 63: one router has decremented it",
                synack.ttl == 63, f"TTL {synack.ttl}")
    trace.next("client", "P.", name="request", payload=5, what="the client sends a request")
    server_ack = trace.next("server", ".", name="request-ack", what="the server acknowledges the request")
    response = trace.next("server", "P.", name="response", payload=5, what="the server answers")
    trace.check("the server's established socket numbers its packets: consecutive IP IDs",
                response.ip_id == (server_ack.ip_id + 1) % 65536, f"IP IDs {server_ack.ip_id}, {response.ip_id}")
    quiet = trace.next("client", ".", name="response-ack", ack=response.seq + 5,
                       what="the client acknowledges; the connection goes idle")

    request = trace.next("client", "P.", name="request-after-idle", payload=5, after=IDLE_TIMEOUT - 0.01,
                         what="the idle timeout later (1 s, to a kernel tick), the client sends its next request")
    trace.check("it is the first packet since the connection went idle",
                request.number == quiet.number + 1, trace.label(request))
    rst = trace.next("server", "R", name="router-rst", reason=None, seq=request.ack, win=0, options=(), within=0.05,
                     what="a bare RST comes back at once from the server's address,"
                          " seq = the request's ack, win 0, no options")
    trace.check("that RST arrives with TTL 64: it was made one hop away, by the router",
                rst.ttl == 64, f"TTL {rst.ttl}")
    trace.check("and with IP ID 0, outside the server's own IP ID sequence",
                rst.ip_id == 0, f"IP ID {rst.ip_id}; the server's last was {response.ip_id}")
    trace.raised("client", "recv", "ECONNRESET", nth=1)
    entry = trace.calls("router", "the router's conntrack entry")
    fields = entry[0]["returned"].strip("'").split() if entry else []
    trace.check("before going idle, the router tracked the flow as ESTABLISHED, at most 1 s left to live",
                fields[:2] == ["tcp", "6"] and fields[2] in ("0", "1") and fields[3] == "ESTABLISHED",
                " ".join(fields[:4]) or "no entry")
    server_view = trace.calls("server", "the server's connections")
    trace.check("after the reset, the server still holds the connection as established",
                bool(server_view) and server_view[0]["returned"].startswith("'ESTAB"),
                server_view[0]["returned"] if server_view else "")
    counted = trace.calls("router", "packets counted by the reject rule")
    trace.check("the reject rule's own counter matched exactly one packet",
                bool(counted) and counted[0]["returned"] == "1", counted[0]["returned"] if counted else "not read")
    trace.counter("server", "TcpOutRsts", 0, what="the server's kernel sent no RST")
    trace.counter("server", "TcpEstabResets", 0, what="and lost no connection")
