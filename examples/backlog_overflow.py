"""The server's accept queue is full and tcp_abort_on_overflow is on: the handshake's last ACK is answered with a RST.

The server's application is slow to call accept(). Its listener was made with
listen(1), and Linux queues up to backlog + 1 finished connections: two. The
late client's final ACK is held up on the way (standing in for an ACK that
arrives late), two other clients fill the queue, and when the late client's ACK
arrives again (drawn by the server's SYN-ACK retransmission, 1 s later) there
is no room for its connection. With `net.ipv4.tcp_abort_on_overflow=1` the
server's kernel answers that ACK with a bare RST. The client's connect() had
already succeeded; its first recv() raises ConnectionResetError (ECONNRESET).
"""

TITLE = "Accept queue overflow with tcp_abort_on_overflow: RST after the handshake"
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
    server.sysctl("net.ipv4.tcp_abort_on_overflow", 1)
    listener = server.socket()
    listener.bind((server.ip, 8888))
    listener.listen(1)  # a small backlog; the application never calls accept()

    server.nft(HOLD_LATE_ACK)
    late = client.socket()
    late.bind((client.ip, LATE_PORT))
    late.connect((server.ip, 8888))  # succeeds for the client; its final ACK is lost on the way
    for _ in range(2):  # Linux queues backlog + 1 finished connections
        early = client.socket()
        early.connect((server.ip, 8888))  # handshake completes: the accept queue is now full
    server.sh("nft", "delete", "table", "ip", "hold_ack")  # the path heals

    try:
        late.recv(1024)  # the server's SYN-ACK retransmission draws the ACK again: RST
    except ConnectionResetError:
        pass


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
    ack = trace.next("client", ".", name="late-ack-again", ack=again.seq + 1,
                     what="the client acknowledges it again")
    trace.next("server", "R", name="server-rst", seq=ack.ack, win=0, options=(), within=0.05,
               what="the accept queue is full: the server answers that ACK with a bare RST, no options")
    trace.counter("server", "TcpExtListenOverflows", 1, what="the server counts one accept queue overflow")
    trace.counter("server", "TcpExtEmbryonicRsts", 1, what="and one half-open connection reset because of it")
    trace.counter("server", "TcpExtSyncookiesSent", 0, what="no SYN cookies were involved")
    trace.counter("client", "TcpExtTCPSYNChallenge", 1,
                  what="the client's ACK to the retransmitted SYN-ACK is a challenge ACK (RFC 5961)")
    trace.returned("client", "connect", "None")
    trace.raised("client", "recv", "ECONNRESET")
