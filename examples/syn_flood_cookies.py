"""A SYN flood fills a listener's SYN queue; Linux answers with SYN cookies and keeps no state, and an ACK with a wrong cookie draws a RST.

The listener has a small backlog (listen(1)): two half-open connections from a
flood of spoofed SYNs fill its SYN queue. From then on, with the default
`net.ipv4.tcp_syncookies = 1`, the server's kernel answers each SYN with a SYN
cookie: the SYN-ACK's sequence number encodes the connection, and nothing is
kept. A real client connecting now gets a cookie; its final ACK is lost on the
way, yet its connect() succeeded, and the server holds nothing for it: no
SYN-ACK is retransmitted. The connection comes into being only when the client's
request arrives, because that segment carries the same acknowledgment number
and the kernel validates the cookie again. An ACK whose number is not a valid
cookie is counted in SyncookiesFailed and answered with a RST. With
syncookies off (0), the next SYN is dropped without an answer (ListenDrops).
"""

from scapy.layers.inet import IP, TCP

TITLE = "SYN flood: SYN cookies, a lost ACK, and a RST for a bad cookie"
PHASE = "opening"
HOSTS = ("client", "server")
TRACE_OPTIONS = ["-K"]  # no checksum checks: veth leaves them to "hardware"
BACKLOG = 1  # listen(1): the SYN queue counts as full beyond this many half-open requests
FLOOD_PORTS = (41001, 41002, 41003)  # the flood's source ports (spoofed: no socket answers there)
DROPPED_PORT = 41004  # one more SYN, once syncookies are off
CLIENT_PORT = 40080  # the real client's port, so that its final ACK can be lost on the way
WRONG_COOKIE = 1000  # the flood's bad ACK acknowledges this much past the cookie

LOSE_CLIENT_ACK = f"""
table ip lose_ack {{
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp sport {CLIENT_PORT} tcp flags == ack drop
    }}
}}
"""


def run(client, server):
    server.note("net.ipv4.tcp_syncookies", server.sh("sysctl", "-n", "net.ipv4.tcp_syncookies").strip())
    listener = server.socket()
    listener.bind((server.ip, 80))
    listener.listen(BACKLOG)

    # the flood, played by scapy on the client's host, from ports nothing answers on
    # (raw_peer() drops the kernel's RSTs there, as a spoofed address answers nothing)
    flood = client.raw_peer()

    def syn(port):
        flood.send(IP(src=client.ip, dst=server.ip) / TCP(sport=port, dport=80, flags="S", seq=1000 * port))
        return flood.expect(flags="S.", source=server.ip)

    for port in FLOOD_PORTS[:2]:
        syn(port)  # a half-open connection in the SYN queue
    half_open = server.sh("ss", "-Htn", "state", "syn-recv").splitlines()
    server.note("half-open connections (ss state syn-recv)", len(half_open))
    cookie = syn(FLOOD_PORTS[2])  # the queue is full: a SYN cookie

    # a real client connects now; its final ACK is lost on the way
    server.nft(LOSE_CLIENT_ACK)
    sock = client.socket()
    sock.bind((client.ip, CLIENT_PORT))
    sock.connect((server.ip, 80))  # succeeds: the client has its SYN-ACK and sends its ACK
    server.sh("nft", "delete", "table", "ip", "lose_ack")
    server.note("the server's sockets for the client's port (ss)",
                len(server.sh("ss", "-Htan", "sport", "=", ":80", "and", "dport", "=", f":{CLIENT_PORT}").splitlines()))
    server.note("connections in the accept queue", server.accept_queue(listener))

    with client.receives(".", source=server):
        sock.sendall(b"hello")  # carries the same ack: the cookie is checked again, the connection made
    conn, _ = listener.accept()
    conn.recv(1024)

    # an ACK with a number that is not the cookie (a flood of ACKs guesses)
    with client.receives("R", source=server):
        flood.send(IP(src=client.ip, dst=server.ip) / TCP(
            sport=FLOOD_PORTS[2], dport=80, flags="A", seq=cookie[TCP].ack, ack=cookie[TCP].seq + 1 + WRONG_COOKIE))

    # syncookies off: the next SYN is dropped, and nothing answers it
    server.sysctl("net.ipv4.tcp_syncookies", 0)
    flood.send(IP(src=client.ip, dst=server.ip) / TCP(sport=DROPPED_PORT, dport=80, flags="S", seq=1))
    server.counter_reaches("TcpExtListenDrops", 1)
    listener.close()  # the half-open requests die with it: no SYN-ACK retransmission at 1 s


def claims(trace):
    for n, port in enumerate(FLOOD_PORTS[:2], 1):
        s = trace.next("client", "S", name=f"flood-syn-{n}", sport=port, options=(),
                       what=f"flood SYN {n}, from a spoofed port")
        trace.next("server", "S.", name=f"flood-syn-ack-{n}", ack=s.seq + 1,
                   what=f"an ordinary SYN-ACK: half-open connection {n} waits in the SYN queue")
    s = trace.next("client", "S", name="flood-syn-3", sport=FLOOD_PORTS[2], what="flood SYN 3: the SYN queue is full")
    cookie = trace.next("server", "S.", name="flood-cookie", ack=s.seq + 1, what="a SYN-ACK carrying a SYN cookie")

    syn = trace.next("client", "S", name="client-syn", sport=CLIENT_PORT, what="the real client's SYN")
    synack = trace.next("server", "S.", name="client-cookie", ack=syn.seq + 1, what="a SYN cookie for it too")
    ack = trace.next("client", ".", name="client-ack-lost", ack=synack.seq + 1,
                     what="the client's final ACK, lost on the way (the server's nftables drops it)")
    request = trace.next("client", "P.", name="request", payload=5, ack=ack.ack,
                         what="the client's request, acknowledging the same cookie")
    trace.next("server", ".", name="request-ack", ack=request.seq + 5, within=0.05,
               what="the server acknowledges it: the cookie made the connection")
    trace.count("server", "S.", 4, what="the server sends 4 SYN-ACKs, none of them twice")

    bad = trace.next("client", ".", name="bad-cookie-ack", sport=FLOOD_PORTS[2], ack=cookie.seq + 1 + WRONG_COOKIE,
                     what="an ACK from the flood, for its cookie's port, with a wrong cookie")
    trace.next("server", "R", name="server-rst", reason="TCP_FLAGS", state="TCP_LISTEN", seq=bad.ack, win=0,
               within=0.05, what="the listener answers with [R], seq = the bad ACK's ack")
    trace.next("client", "S", name="flood-syn-dropped", sport=DROPPED_PORT,
               what="with syncookies off, one more SYN: no answer")

    trace.returned("server", "net.ipv4.tcp_syncookies", "'1'")
    trace.returned("server", "half-open connections", "2")
    trace.returned("client", "connect", "None")
    trace.returned("server", "the server's sockets for the client's port", "0")
    trace.returned("server", "connections in the accept queue", "0")
    trace.returned("server", "recv", "b'hello'")
    trace.counter("server", "TcpExtSyncookiesSent", 2, what="the server sent 2 SYN cookies")
    trace.counter("server", "TcpExtTCPReqQFullDoCookies", 2, what="both because the SYN queue was full")
    trace.counter("server", "TcpExtSyncookiesRecv", 1, what="one valid cookie came back: the client's request")
    trace.counter("server", "TcpExtSyncookiesFailed", 1, what="one was wrong: the flood's ACK")
    trace.counter("server", "TcpExtTCPReqQFullDrop", 1, what="with syncookies off, one SYN dropped for a full queue")
    trace.counter("server", "TcpExtListenDrops", 1, what="and counted as a listen drop")
    trace.counter("server", "TcpPassiveOpens", 1, what="one connection made: the client's")
    trace.counter("server", "TcpOutRsts", 1)
