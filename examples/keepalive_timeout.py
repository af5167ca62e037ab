"""The peer is gone without a word; keepalive probes go unanswered and the kernel gives up: ETIMEDOUT, and a RST of its own.

The server host vanishes (powered off, its link cut, a firewall dropping it):
nothing it receives is answered, and nothing tells the client. The client has
nothing to send and waits in `recv()`, with SO_KEEPALIVE on at the shortest
settings Linux allows: TCP_KEEPIDLE 1 s, TCP_KEEPINTVL 1 s, TCP_KEEPCNT 1
(defaults: 7200 s, 75 s, 9). After 1 s of silence its kernel sends a probe;
no answer comes. One interval later the keepalive timer finds as many
unanswered probes as TCP_KEEPCNT allows: the kernel sends a RST (`[R.]`) to
the peer it believes gone, closes the socket, and the blocked `recv()` raises
TimeoutError (ETIMEDOUT). The whole story is the two keepalive timers: about
2 s.
"""

import socket

TITLE = "Keepalive timeout: the peer is gone, the kernel gives up with ETIMEDOUT and a RST"
PHASE = "established"
HOSTS = ("client", "server")
KEEPIDLE = 1  # seconds of silence before the first probe (Linux default 7200; 1 is the minimum)
KEEPINTVL = 1  # seconds between probes (default 75; 1 is the minimum)
KEEPCNT = 1  # unanswered probes before giving up (default 9; 1 is the minimum)

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
    sock.connect((server.ip, 8888))
    conn, _ = listener.accept()

    server.nft(GONE)  # the server vanishes; the client is not told

    # keepalive on the idle client (set after the server went dark: the first probe surely finds it gone)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPIDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPINTVL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPCNT)
    try:
        sock.recv(1024)  # waits for a server that will never speak: the keepalive timer decides
    except TimeoutError:
        pass
    sock.close()  # the kernel has already closed the connection: nothing more is sent


def claims(trace):
    _, synack, ack = trace.handshake("client", "server")
    probe = trace.next("client", ".", name="keepalive-probe", payload=0, seq=ack.seq - 1, ack=synack.seq + 1,
                       after=KEEPIDLE * 0.9,
                       what=f"after {KEEPIDLE} s of silence the client sends a keepalive probe:"
                            " an empty ACK whose seq is one byte behind (snd_una - 1)")
    rst = trace.next("client", "R.", name="client-rst", reason="TCP_KEEPALIVE_TIMEOUT", state="TCP_ESTABLISHED",
                     seq=ack.seq, ack=synack.seq + 1, after=KEEPINTVL * 0.9,
                     what=f"no answer: {KEEPINTVL} s later the client's kernel gives up and sends [R.],"
                          " seq = snd_nxt, from its established socket")
    trace.check("the RST comes from a socket: it carries the connection's timestamp option",
                any(o.startswith("TS") for o in rst.options), f"options {rst.options}")
    trace.count("server", "S.", 1, what="the server's only packet is its SYN-ACK: nothing answers the probe")
    trace.dropped("server", "NETFILTER_DROP", packet=probe, what="the probe reached the server host and was lost there")
    trace.dropped("server", "NETFILTER_DROP", packet=rst, what="and so was the RST: the server never learns")
    trace.raised("client", "recv", "ETIMEDOUT")
    trace.counter("client", "TcpExtTCPKeepAlive", KEEPCNT, what="the client's kernel counts the keepalive probe it sent")
    trace.counter("client", "TcpExtTCPAbortOnTimeout", 1, what="and one connection aborted on a timeout")
    trace.counter("client", "TcpOutRsts", 1, what="and the one RST it sent")
    trace.counter("client", "TcpEstabResets", 1, what="an established connection went straight to CLOSED")
