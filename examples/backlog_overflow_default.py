"""The server's accept queue is full, with Linux's default settings: no RST,
the handshake's last ACK is dropped and retried.

The same overflow as with tcp_abort_on_overflow=1, but with its default value
0: the server's kernel drops the ACK that would finish the handshake, counts it
in ListenOverflows and keeps the half-open request, retransmitting its SYN-ACK
on a timer. The client, whose connect() succeeded, just waits. Once the
application accepts and makes room, the client's next segment (here its
request) completes the handshake and the connection works: a delay, not a
reset.
"""

TITLE = "Accept queue overflow, default settings: dropped ACK, no RST"
PHASE = "opening"
HOSTS = ("client", "server")
LATE_PORT = 40001  # the client port whose final ACK is held up on the way

# the path loses the late client's handshake ACK (a pure ACK, no data)
HOLD_LATE_ACK = f"""
table ip hold_ack {{
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp sport {LATE_PORT} tcp flags == ack drop
    }}
}}
"""


def run(client, server):
    server.note("net.ipv4.tcp_abort_on_overflow",
                server.sh("sysctl", "-n", "net.ipv4.tcp_abort_on_overflow").strip())
    listener = server.socket()
    listener.bind((server.ip, 8888))
    listener.listen(1)  # a small backlog; the application is slow to call accept()

    server.nft(HOLD_LATE_ACK)
    late = client.socket()
    late.bind((client.ip, LATE_PORT))
    late.connect((server.ip, 8888))  # succeeds for the client; its final ACK is lost on the way
    for _ in range(2):  # Linux queues backlog + 1 finished connections
        early = client.socket()
        early.connect((server.ip, 8888))  # handshake completes: the accept queue is now full
    server.sh("nft", "delete", "table", "ip", "hold_ack")  # the path heals

    # the server's SYN-ACK retransmission (1 s) draws the ACK again; the queue is full: dropped
    server.counter_reaches("TcpExtListenOverflows", 1)
    listener.accept()  # the application catches up: room for one more connection
    with client.receives(".", source=server):
        late.sendall(b"hello")  # the request's segment carries the ACK: the handshake completes
    listener.accept()
    conn, _ = listener.accept()  # the late client's connection, now established
    conn.recv(1024)


def claims(trace):
    syn = trace.next("client", "S", name="late-syn", what="the late client sends its SYN")
    synack = trace.next("server", "S.", name="late-syn-ack", ack=syn.seq + 1,
                        what="the server answers with a SYN-ACK")
    trace.next("client", ".", name="late-ack", ack=synack.seq + 1,
               what="the late client's final ACK (held up on the way: the server never gets it)")
    for n in (1, 2):
        trace.handshake("client", "server", name=f"early-{n}-handshake",
                        what=f"early client {n}: its connection waits in the accept queue")
    again = trace.next("server", "S.", name="syn-ack-again", seq=synack.seq, after=0.9,
                       what="about 1 s later the server retransmits the late client's SYN-ACK")
    ack_again = trace.next("client", ".", name="late-ack-again", ack=again.seq + 1,
                           what="the client acknowledges it again")
    request = trace.next("client", "P.", name="late-request", payload=5,
                         what="after the server accepted one connection, the late client sends its request")
    trace.next("server", ".", name="late-request-ack", ack=request.seq + 5,
               what="the server acknowledges it: the connection now exists on the server too")
    trace.no("server", "R", what="the server never sends a RST")
    trace.no("client", "R", what="nor does the client")
    trace.dropped("server", "TCP_LISTEN_OVERFLOW", packet=ack_again,
                  what="the server's kernel drops that ACK: its accept queue is full")
    trace.counter("server", "TcpExtListenOverflows", 1,
                  what="the server counts the ACK it dropped as one accept queue overflow")
    trace.counter("server", "TcpOutRsts", 0, what="the server sends no RST")
    trace.counter("client", "TcpExtTCPSYNChallenge", 1,
                  what="the client's ACK to the retransmitted SYN-ACK is a challenge ACK (RFC 5961)")
    trace.returned("client", "connect", "None")
    trace.returned("server", "recv", "b'hello'")
