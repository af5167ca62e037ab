"""One side sets SO_LINGER to {on, 0 s} and closes: an abortive close.

With a zero linger time, `close()` does not send a FIN and wait: the kernel
drops the connection at once and sends a RST (`[R.]`). Nothing unread is
needed for it. Unlike the RST for a closed port, this one comes from a live
socket: it carries the socket's window and timestamp option. The peer's next
`recv()` raises ConnectionResetError (ECONNRESET).
"""

import socket
import struct

TITLE = "SO_LINGER 0: close() sends RST"
PHASE = "closing"
HOSTS = ("client", "server")


def run(client, server):
    listener = server.socket()
    listener.bind((server.ip, 8888))
    listener.listen()

    sock = client.socket()
    sock.connect((server.ip, 8888))
    conn, _ = listener.accept()

    # struct linger {l_onoff = 1, l_linger = 0}: abort on close
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST, no FIN

    try:
        conn.recv(1024)
    except ConnectionResetError:
        pass


def claims(trace):
    _, _, hs = trace.handshake("client", "server")
    rst = trace.next("client", "R.", name="client-rst", reason="TCP_STATE", seq=hs.seq, ack=hs.ack,
                     what="the client's close() sends [R.] at its next sequence number")
    trace.check("the RST carries the live socket's window and timestamp option",
                rst.win > 0 and "TS" in rst.options, f"win {rst.win}, options {rst.options}")
    trace.no("client", "F", what="the client never sends a FIN")
    trace.no("server", "F", what="nor does the server")
    trace.raised("server", "recv", "ECONNRESET")
    trace.counter("client", "TcpExtTCPAbortOnData", 1, what="Linux counts the zero-linger abort as TCPAbortOnData")
    trace.counter("client", "TcpEstabResets", 1)
    trace.counter("server", "TcpEstabResets", 1)
