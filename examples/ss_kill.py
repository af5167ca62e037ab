"""An operator kills an established connection with `ss -K`.

`ss -K` asks the kernel to destroy the matching sockets (SOCK_DESTROY over
sock_diag). For TCP the kernel aborts the connection (`tcp_abort()`): it sends the
peer a RST (`[R.]`) at its next sequence number while the socket is still
established, and wakes the local application, whose blocked `recv()`
raises ConnectionAbortedError (ECONNABORTED). The peer's next `recv()` raises
ConnectionResetError (ECONNRESET).
"""

import select
import socket

TITLE = "ss -K: an operator kills the connection"
PHASE = "established"
HOSTS = ("client", "server")


def run(client, server):
    listener = server.socket()
    listener.bind((server.ip, 8888))
    listener.listen()

    sock = client.socket()
    sock.connect((server.ip, 8888))
    client_port = sock.getsockname()[1]
    conn, _ = listener.accept()

    def wait_for_request():  # the server application waits for the client to speak
        try:
            conn.recv(1024)
        except ConnectionAbortedError:
            pass

    server.start(wait_for_request).wait_blocked()  # its recv() now sleeps in the kernel

    with client.receives("R.", source=server):  # the operator, on the server host:
        killed = server.sh("ss", "-K", "-t", "dst", client.ip, "dport", "=", str(client_port))
    server.note("ss -K printed", killed.strip().splitlines()[-1])

    try:
        sock.recv(1024)
    except ConnectionResetError:
        pass


def claims(trace):
    _, _, hs = trace.handshake("client", "server")
    rst = trace.next("server", "R.", name="server-rst", seq=hs.ack, ack=hs.seq,
                     what="ss -K makes the server's kernel send [R.] at its next sequence number")
    trace.check("the RST comes from a live socket: it carries a window and the timestamp option",
                rst.win > 0 and "TS" in rst.options, f"win {rst.win}, options {rst.options}")
    trace.no("server", "F", what="no FIN: the connection is aborted, not closed")
    trace.no("client", "R", what="the client sends no RST of its own")
    trace.raised("server", "recv", "ECONNABORTED")
    trace.raised("client", "recv", "ECONNRESET")
    trace.counter("server", "TcpOutRsts", 1)
    trace.counter("server", "TcpEstabResets", 1)
    trace.counter("client", "TcpEstabResets", 1)
    aborts = {k: v for k, v in trace.counters.get("server", {}).items() if k.startswith("TcpExtTCPAbortOn")}
    trace.check("no TcpExtTCPAbortOn* counter moves on the server", not aborts, str(aborts))
    killed = trace.calls("server", "ss -K printed")
    trace.check("ss -K lists the connection it killed (state ESTAB)",
                bool(killed) and "ESTAB" in killed[0]["returned"], killed[0]["returned"] if killed else "")


def kill_each(server, listener):
    """The server's part for one program: accept, wait for the request, and the operator
    kills the connection with `ss -K`; again for each connection the program opens, until
    the listener is shut down."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # shut down: the program has exited
            return
        select.select([conn], [], [])  # the request has arrived; the application is busy with it
        server.sh("ss", "-K", "-t", "state", "established", "sport", "=", ":8890")
        conn.close()


def each_program(program, client, server):
    """Each real client's request is on a connection the operator kills on the server."""
    listener = server.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((server.ip, 8890))
    listener.listen()
    killing = server.start(kill_each, server, listener)
    program.get(f"http://{server.ip}:8890/")
    listener.shutdown(socket.SHUT_RDWR)  # wakes the server's accept()
    killing.join(5)
    listener.close()
