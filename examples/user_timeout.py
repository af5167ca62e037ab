"""TCP_USER_TIMEOUT expires on data the silent peer never acknowledges: ETIMEDOUT, retransmissions, and no RST at all.

The server host has vanished (powered off, its link cut, a firewall dropping
it) and nothing tells the client. The client sends a request on a socket with
TCP_USER_TIMEOUT set to 1 s (by default it is 0: the retransmission count of
net.ipv4.tcp_retries2 decides, about 15 minutes). Its kernel sends the request
again on a tail loss probe, then twice on its retransmission timer. Linux
counts the user timeout from the first timer retransmission, not from the
request: 1 s after that retransmission the kernel gives up, closes the socket,
and the blocked `recv()` raises TimeoutError (ETIMEDOUT). Unlike a keepalive
timeout, the kernel sends no RST: the connection just stops. The scenario's
own time is that: about 1.4 s.
"""

import socket

TITLE = "User timeout: unacknowledged data, ETIMEDOUT, and no RST"
PHASE = "established"
HOSTS = ("client", "server")
USER_TIMEOUT_MS = 1000  # TCP_USER_TIMEOUT, in milliseconds (0, the default: tcp_retries2 decides)

# the server host goes dark: whatever reaches it is lost, and it says nothing
GONE = """
table inet gone {
    chain in {
        type filter hook input priority 0; policy drop;
    }
    chain out {
        type filter hook output priority 0; policy drop;
    }
}
"""


def run(client, server):
    listener = server.socket()
    listener.bind((server.ip, 8888))
    listener.listen()

    sock = client.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    sock.connect((server.ip, 8888))
    conn, _ = listener.accept()

    server.nft(GONE)  # the server vanishes; the client is not told

    sock.sendall(b"hello")  # accepted into the send buffer: sendall() returns at once
    try:
        sock.recv(1024)  # waits for an answer that never comes: the user timeout decides
    except TimeoutError:
        pass  # recorded with its errno
    sock.close()  # the kernel has already closed the connection: nothing more is sent


def claims(trace):
    trace.handshake("client", "server")
    request = trace.next("client", "P.", name="request", payload=5, what="the client sends its 5-byte request")
    trace.next("client", "P.", name="loss-probe", payload=5, seq=request.seq, after=0.19, within=0.3,
               what="no ACK within about 200 ms: a tail loss probe sends the request again")
    first = trace.next("client", "P.", name="retransmission-1", payload=5, seq=request.seq, after=0.19, within=0.3,
                       what="the retransmission timer, restarted by the probe, fires about 200 ms later")
    trace.next("client", "P.", name="retransmission-2", payload=5, seq=request.seq, after=0.38, within=0.6,
               what="it fires again after twice as long (exponential backoff)")
    retransmissions = [first]
    trace.no("client", "R", what="the client's kernel never sends a RST: it gives up in silence")
    trace.no("client", "F", what="nor a FIN")
    trace.count("server", "S.", 1, what="the server's only packet is its SYN-ACK")
    # timed by the kernel's own report of the error (inet_sk_error_report), not by the
    # application waking up: on a busy machine recv() returns a little later
    first_timer = retransmissions[0].time - request.time
    reported = [e for e in trace.events if e["event"] == "inet_sk_error_report" and e["host"] == "client"]
    gave_up = reported[0]["time"] - request.time if reported else float("nan")
    trace.kernel_check("the kernel reports ETIMEDOUT the user timeout after the first timer retransmission,"
                       " not after the request", "inet_sk_error_report",
                       lambda: [e["errno"] for e in reported] == ["ETIMEDOUT"]
                       and abs(gave_up - (first_timer + USER_TIMEOUT_MS / 1000)) < 0.1,
                       f"{', '.join(e['errno'] for e in reported) or 'no error reported'} {gave_up:.3f} s after the"
                       f" request; retransmission-1 left {first_timer:.3f} s after it")
    trace.dropped("server", "NETFILTER_DROP", packet=request, what="the request reached the server host and was lost there")
    trace.raised("client", "recv", "ETIMEDOUT")
    trace.counter("client", "TcpExtTCPAbortOnTimeout", 1, what="the client's kernel counts one connection aborted on a timeout")
    trace.counter("client", "TcpExtTCPLossProbes", 1, what="one tail loss probe")
    trace.counter("client", "TcpRetransSegs", 3, what="three retransmitted segments in all (the probe included)")
    trace.counter("client", "TcpExtTCPTimeouts", 3, what="three retransmission timeouts: two retransmitted, the last gave up")
    trace.counter("client", "TcpOutRsts", 0, what="and sends no RST")
    trace.counter("client", "TcpEstabResets", 1, what="an established connection went straight to CLOSED")
