"""The server closes a connection without reading what the client sent.

Closing a socket whose receive queue still holds data tells the peer that data
was lost: instead of a FIN, the server's kernel sends a RST (`[R.]`) that
acknowledges the unread bytes (RFC 2525, section 2.17). The client's next
`recv()` raises ConnectionResetError (ECONNRESET).
"""

import select
import socket

TITLE = "Close with unread data: RST instead of FIN"
PHASE = "closing"
HOSTS = ("client", "server")


def run(client, server):
    listener = server.socket()
    listener.bind((server.ip, 8888))
    listener.listen()

    sock = client.socket()
    sock.connect((server.ip, 8888))
    sock.sendall(b"hello")  # 5 bytes the server will never read

    conn, _ = listener.accept()
    select.select([conn], [], [])  # the 5 bytes are waiting in the server's queue
    conn.close()  # close without reading them: RST, not FIN

    try:
        sock.recv(1024)
    except ConnectionResetError:
        pass


def claims(trace):
    trace.handshake("client", "server")
    data = trace.next("client", "P.", name="client-data", payload=5, what="the client sends 5 bytes")
    trace.next("server", ".", name="client-data-ack", ack=data.seq + 5, what="the server's kernel acknowledges them")
    rst = trace.next("server", "R.", name="server-rst", reason="TCP_ABORT_ON_CLOSE", ack=data.seq + 5,
                     what="on close() the server sends [R.], acking the unread bytes")
    trace.check("the RST carries the live socket's window and timestamp option",
                rst.win > 0 and "TS" in rst.options, f"win {rst.win}, options {rst.options}")
    trace.no("server", "F", what="the server never sends a FIN")
    trace.raised("client", "recv", "ECONNRESET")
    trace.counter("server", "TcpExtTCPAbortOnClose", 1,
                  what="the server counts an abort on close with unread data (TCPAbortOnClose)")
    trace.counter("client", "TcpEstabResets", 1)
    trace.counter("server", "TcpEstabResets", 1)


def close_unread(listener):
    """The server's part for one program: accept, wait for the request, close without
    reading it; again for each connection the program opens, until the listener is shut down."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # shut down: the program has exited
            return
        select.select([conn], [], [])  # the request is waiting in the server's queue
        conn.close()  # close without reading it: RST, not FIN


def each_program(program, client, server):
    """Each real client sends its request to a server that closes without reading it."""
    listener = server.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((server.ip, 8889))
    listener.listen()
    closing = server.start(close_unread, listener)
    program.get(f"http://{server.ip}:8889/")
    listener.shutdown(socket.SHUT_RDWR)  # wakes the server's accept()
    closing.join(5)
    listener.close()
