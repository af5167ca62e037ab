"""A load balancer or NAT forgets an idle flow and drops its next packets without a word: retransmissions, ETIMEDOUT, no RST.

A router between client and server tracks connections (conntrack), as load
balancers, NAT gateways and cloud firewalls do, and silently drops packets of
flows it does not know. Its idle timeout is 1 s here (minutes or hours in real
life). Client and server exchange a request and a response, then stay silent;
the router forgets the flow. The client's next request is dropped at the
router, and so is every retransmission: nothing comes back, not even a RST.
The client set TCP_USER_TIMEOUT to 1 s, so its kernel gives up about 1 s after
its first timer retransmission and `recv()` raises TimeoutError (ETIMEDOUT);
without it the wait would be about 15 minutes. The server never hears of any
of it and still holds the connection, and a new connection to it works at
once: the path is fine, only the old flow was forgotten.
"""

import socket

TITLE = "Idle flow forgotten by a load balancer: silent drops, then ETIMEDOUT"
PHASE = "middleboxes"
HOSTS = ("client", "router", "server")
IDLE_TIMEOUT = 1  # seconds; nf_conntrack_tcp_timeout_established (5 days by default)
USER_TIMEOUT_MS = 1000  # the client's TCP_USER_TIMEOUT (0, the default: tcp_retries2 decides, ~15 min)

# a stateful middlebox that drops, silently, what belongs to no flow it knows
MIDDLEBOX = """
table inet middlebox {
    chain forward {
        type filter hook forward priority 0; policy accept;
        ct state invalid counter drop
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
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    sock.connect((server.ip, 80))
    conn, _ = listener.accept()

    sock.sendall(b"ping\n")
    conn.recv(1024)
    conn.sendall(b"pong\n")
    sock.recv(1024)  # the client acknowledges the response: then all is quiet

    # the idle timeout itself: wait until the router's table no longer lists the flow (~1 s
    # after the last packet through it, the client's acknowledgement)
    router.until("the router forgets the idle flow", lambda: not router.conntrack(), timeout=IDLE_TIMEOUT + 2)

    sock.sendall(b"ping\n")  # the next request: no state for it in the router
    try:
        sock.recv(1024)  # nothing comes back: the user timeout decides
    except TimeoutError:
        pass
    sock.close()  # the kernel has already closed the connection: nothing more is sent
    rule = router.sh("nft", "list", "chain", "inet", "middlebox", "forward")
    router.note("packets counted by the drop rule", int(rule.split("counter packets ")[1].split()[0]))
    server.note("the server's connections (ss -tn)", " ".join(server.sh("ss", "-tnH").split()))

    # the application opens a new connection: the router tracks it from its SYN, and it works
    again = client.socket()
    again.connect((server.ip, 80))
    listener.accept()


def claims(trace):
    trace.handshake("client", "server", what="through the router, which tracks the flow")
    trace.next("client", "P.", name="request", payload=5, what="the client sends a request")
    trace.next("server", ".", name="request-ack", what="the server acknowledges the request")
    response = trace.next("server", "P.", name="response", payload=5, what="the server answers")
    quiet = trace.next("client", ".", name="response-ack", ack=response.seq + 5,
                       what="the client acknowledges; the connection goes idle")

    request = trace.next("client", "P.", name="request-after-idle", payload=5, after=IDLE_TIMEOUT - 0.01,
                         what="the idle timeout later (1 s, to a kernel tick), the client sends its next request")
    trace.check("it is the first packet since the connection went idle",
                request.number == quiet.number + 1, trace.label(request))
    probe = trace.next("client", "P.", name="loss-probe", payload=5, seq=request.seq, after=0.19, within=0.3,
                       what="no ACK within about 200 ms: a tail loss probe sends the request again")
    first = trace.next("client", "P.", name="retransmission-1", payload=5, seq=request.seq, after=0.19, within=0.3,
                       what="the retransmission timer, restarted by the probe, fires about 200 ms later")
    last = trace.next("client", "P.", name="retransmission-2", payload=5, seq=request.seq, after=0.38, within=0.6,
                      what="it fires again after twice as long (exponential backoff)")
    for p in (request, probe, first, last):
        trace.dropped("router", "NETFILTER_DROP", packet=p,
                      what=f"the router's nftables dropped {trace.names.get(p.number)}: a packet of no known flow")
    syn, _, _ = trace.handshake("client", "server", name="new-handshake",
                                what="a new connection, after the error: the router tracks it from its SYN")
    trace.check("the new connection's handshake is the next thing on the wire: nothing came back for the old one",
                syn.number == last.number + 1, trace.label(syn))
    trace.no("server", "R", what="no RST comes from the server's address: the router rejects nothing, it drops")
    trace.no("client", "R", what="and the client's kernel gives up without a RST")
    trace.raised("client", "recv", "ETIMEDOUT", nth=1)
    counted = trace.calls("router", "packets counted by the drop rule")
    trace.check("the drop rule's own counter matched the request and its three retransmissions",
                bool(counted) and counted[0]["returned"] == "4", counted[0]["returned"] if counted else "not read")
    server_view = trace.calls("server", "the server's connections")
    trace.check("after the client gave up, the server still holds the old connection as established",
                bool(server_view) and server_view[0]["returned"].startswith("'ESTAB"),
                server_view[0]["returned"] if server_view else "")
    trace.counter("client", "TcpExtTCPAbortOnTimeout", 1, what="the client counts one connection aborted on a timeout")
    trace.counter("client", "TcpOutRsts", 0, what="the client sends no RST")
    trace.counter("server", "TcpOutRsts", 0, what="nor does the server")
    trace.counter("server", "TcpEstabResets", 0, what="and the server loses no connection")
