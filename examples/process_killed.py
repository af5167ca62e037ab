"""A server process is killed with SIGKILL: its kernel closes its sockets, with a FIN if
nothing was left unread, with a RST if a request was waiting.

Killing a process sends nothing by itself. The kernel closes every socket the
process held, exactly as `close()` would: a connection whose receive queue is
empty ends with a FIN (the client reads end-of-stream, `b""`), and the dead
process's kernel even finishes the closing handshake for it. A connection
whose request was still waiting unread ends with a RST (`[R.]` acknowledging
the unread bytes); the client's `recv()` raises ConnectionResetError.
"""

import select
import signal
import socket

TITLE = "Server process killed: FIN, or RST if a request was unread"
PHASE = "closing"
HOSTS = ("client", "server")


def server_program(address, read_request, stop_listening=False):
    """A server process: accept one connection, read its request or not, then hang.
    stop_listening: close the listener once the connection is accepted, so that a client
    that reconnects by itself after the kill is refused, never queued on a listener the
    kill is about to close (which of the two happens would depend on when it reconnects)."""
    listener = socket.create_server(tuple(address))
    print("listening")
    conn, _ = listener.accept()
    if stop_listening:
        listener.close()
    if read_request:
        print("read", conn.recv(1024))  # and then busy with it, until killed
    else:
        select.select([conn], [], [])
        print("request arrived, not read yet")
    signal.pause()


def run(client, server):
    # 1. the process has read the request and is working on it when it is killed
    busy = server.process(server_program, (server.ip, 8888), True)
    busy.wait_for("listening")
    first = client.socket()
    first.connect((server.ip, 8888))
    with client.receives(".", source=server):  # the server's kernel acknowledges the request
        first.sendall(b"GET /a")
    busy.wait_for("read")
    with server.receives(".", source=client):  # the client's kernel will ack the FIN
        busy.kill()  # SIGKILL: the kernel closes the socket; nothing unread, so a FIN
        first.recv(1024)  # b"": end of stream, and no response
    with client.receives(".", source=server):  # the orphaned socket answers the client's FIN
        first.close()

    # 2. the request is still waiting unread when the (restarted) process is killed
    idle = server.process(server_program, (server.ip, 8888), False)
    idle.wait_for("listening")
    second = client.socket()
    second.connect((server.ip, 8888))
    with client.receives(".", source=server):
        second.sendall(b"GET /b")
    idle.wait_for("not read yet")
    idle.kill()  # SIGKILL: 6 unread bytes in the queue, so a RST
    try:
        second.recv(1024)
    except ConnectionResetError:
        pass


def claims(trace):
    # connection 1: nothing unread
    trace.handshake("client", "server", name="c1-handshake")
    request = trace.next("client", "P.", name="c1-request", payload=6)
    trace.next("server", ".", name="c1-request-ack", ack=request.seq + 6,
               what="the server's kernel acknowledges the request")
    fin = trace.next("server", "F.", name="c1-server-fin", ack=request.seq + 6,
                     what="SIGKILL with an empty receive queue: the kernel sends a FIN, not a RST")
    trace.next("client", ".", name="c1-server-fin-ack", ack=fin.seq + 1,
               what="the client's kernel acknowledges the FIN")
    client_fin = trace.next("client", "F.", name="c1-client-fin", what="the client closes in turn")
    trace.next("server", ".", name="c1-client-fin-ack", ack=client_fin.seq + 1,
               what="the process is dead, yet its kernel acknowledges the client's FIN")
    trace.returned("client", "recv", "b''")

    # connection 2: a request waiting unread
    trace.handshake("client", "server", name="c2-handshake")
    request = trace.next("client", "P.", name="c2-request", payload=6)
    trace.next("server", ".", name="c2-request-ack", ack=request.seq + 6,
               what="the server's kernel acknowledges the request")
    rst = trace.next("server", "R.", name="c2-server-rst", ack=request.seq + 6,
                     what="SIGKILL with 6 unread bytes: the kernel sends [R.] acknowledging them, no FIN")
    trace.check("the RST comes from the live socket: it carries its window and timestamp option",
                rst.win > 0 and "TS" in rst.options, f"win {rst.win}, options {rst.options}")
    trace.count("server", "F.", 1, what="only the first connection ends with a FIN")
    trace.count("server", "R.", 1, what="only the second ends with a RST")
    trace.raised("client", "recv", "ECONNRESET", nth=1)
    trace.counter("server", "TcpExtTCPAbortOnClose", 1,
                  what="the server's kernel counts one abort on close (data was unread)")
    kills = [o for o in trace.calls("server", "server process") if "killed with SIGKILL" in o["call"]]
    trace.check("both server processes died of SIGKILL (exit status -9)",
                [o["returned"] for o in kills] == ["-9", "-9"], str(kills))


def each_program(program, client, server):
    """Each real client's request is read by a server process that is then killed: a FIN."""
    busy = server.process(server_program, (server.ip, 8889), True, True)
    busy.wait_for("listening")
    running = program.start("GET", f"http://{server.ip}:8889/")
    busy.wait_for("read", timeout=program.timeout)
    busy.kill()  # nothing unread: the kernel closes the connection with a FIN
    running.wait()
