"""A client half-closes after its request and waits for the response; the server takes the FIN for a hang-up, closes with the request unread, and its kernel resets the connection.

The client sends its whole request, then `shutdown(SHUT_WR)`: a FIN that says
"I will send nothing more", not "I am gone", and it keeps reading. The server
checks whether its client is still there before it starts work, with
`poll()` and `POLLRDHUP`, which reports exactly that FIN, and treats it as a
hang-up: it closes the connection without reading the request. Closing a
socket with unread data makes the server's kernel send a RST instead of a FIN,
and the client, still waiting for its response, gets ConnectionResetError
(ECONNRESET). A second connection shows the same exchange with a server that
reads up to the FIN and answers: the half-closed client gets its response.
"""

import select
import socket

TITLE = "Half-close taken for a hang-up: the waiting client is reset"
PHASE = "closing"
HOSTS = ("client", "server")
REQUEST = b"GET /report\n"
RESPONSE = b"200 here it is\n"
EVENTS = {select.POLLIN: "POLLIN", select.POLLOUT: "POLLOUT", select.POLLRDHUP: "POLLRDHUP",
          select.POLLHUP: "POLLHUP", select.POLLERR: "POLLERR"}


def client_is_gone(conn):
    """The server's liveness check: poll() for POLLRDHUP, and read it as "the client hung up"."""
    poller = select.poll()
    poller.register(conn, select.POLLIN | select.POLLRDHUP)
    ready = poller.poll(0)
    revents = ready[0][1] if ready else 0
    return "|".join(name for bit, name in EVENTS.items() if revents & bit) or "none"


def send_request_and_half_close(client, server, sock):
    with client.receives(".", source=server):
        sock.sendall(REQUEST)
    with client.receives(".", source=server):
        sock.shutdown(socket.SHUT_WR)  # "I will send nothing more", and the client keeps reading


def run(client, server):
    listener = server.socket()
    listener.bind((server.ip, 8080))
    listener.listen()

    # 1. the server that takes the FIN for a hang-up
    sock = client.socket()
    sock.connect((server.ip, 8080))
    conn, _ = listener.accept()
    send_request_and_half_close(client, server, sock)
    events = server.record("poll(POLLIN | POLLRDHUP) before reading", client_is_gone, conn)
    if "POLLRDHUP" in events:  # "the client hung up": drop the request
        conn.close()  # the request is still unread
    try:
        sock.recv(1024)  # the client waits for its response
    except ConnectionResetError:
        pass

    # 2. the server that reads up to the FIN, then answers
    sock = client.socket()
    sock.connect((server.ip, 8080))
    conn, _ = listener.accept()
    send_request_and_half_close(client, server, sock)
    server.record("poll(POLLIN | POLLRDHUP) before reading", client_is_gone, conn)
    conn.recv(1024)  # the request
    conn.recv(1024)  # b"": the end of the request, not of the connection
    with server.receives(".", source=client):
        conn.sendall(RESPONSE)
    sock.recv(1024)  # the response arrives
    with server.receives(".", source=client):
        conn.close()
    sock.recv(1024)  # b"": the server is done too


def claims(trace):
    trace.handshake("client", "server", name="c1-handshake", what="connection 1")
    request = trace.next("client", "P.", name="c1-request", payload=len(REQUEST), what="the client sends its request")
    trace.next("server", ".", name="c1-request-ack", ack=request.seq + len(REQUEST))
    fin = trace.next("client", "F.", name="c1-client-fin", seq=request.seq + len(REQUEST),
                     what="shutdown(SHUT_WR): the client's FIN; it keeps reading")
    trace.next("server", ".", name="c1-fin-ack", ack=fin.seq + 1, what="the server's kernel acknowledges the FIN")
    rst = trace.next("server", "R.", name="c1-server-rst", reason="TCP_ABORT_ON_CLOSE", state="TCP_CLOSE",
                     ack=fin.seq + 1,
                     what="the server application closes with the request unread: [R.] instead of a FIN")
    trace.check("connection 1: the RST comes from the live socket (window and timestamp option)",
                rst.win > 0 and "TS" in rst.options, f"win {rst.win}, options {rst.options}")

    trace.handshake("client", "server", name="c2-handshake", what="connection 2")
    request = trace.next("client", "P.", name="c2-request", payload=len(REQUEST))
    trace.next("server", ".", name="c2-request-ack", ack=request.seq + len(REQUEST))
    fin = trace.next("client", "F.", name="c2-client-fin", what="the same half-close")
    trace.next("server", ".", name="c2-fin-ack", ack=fin.seq + 1)
    response = trace.next("server", "P.", name="c2-response", payload=len(RESPONSE),
                          what="this server read up to the FIN, and answers")
    trace.next("client", ".", name="c2-response-ack", ack=response.seq + len(RESPONSE),
               what="the half-closed client receives and acknowledges the response")
    server_fin = trace.next("server", "F.", name="c2-server-fin", what="the server closes: a FIN, nothing unread")
    trace.next("client", ".", name="c2-server-fin-ack", ack=server_fin.seq + 1)
    trace.count("server", "R.", 1, what="only connection 1 is reset")
    trace.no("client", "R", what="the client sends no RST")

    trace.returned("server", "poll(POLLIN | POLLRDHUP)", "'POLLIN|POLLRDHUP'", nth=0)
    trace.raised("client", "recv", "ECONNRESET", nth=0)
    trace.returned("server", "poll(POLLIN | POLLRDHUP)", "'POLLIN|POLLRDHUP'", nth=1)
    trace.returned("server", "recv", repr(REQUEST), nth=0)
    trace.returned("server", "recv", "b''", nth=1)
    trace.returned("client", "recv", repr(RESPONSE), nth=1)
    trace.returned("client", "recv", "b''", nth=2)
    trace.counter("server", "TcpExtTCPAbortOnClose", 1, what="the server counts one close with unread data")
    trace.counter("server", "TcpOutRsts", 1)
    trace.counter("server", "TcpEstabResets", 1,
                  what="the server counts a reset connection: its socket left CLOSE-WAIT for CLOSED")
    trace.counter("client", "TcpEstabResets", 0,
                  what="the client does not: its socket was in FIN-WAIT-2, which that counter leaves out")
    trace.counter("server", "TcpExtDelayedACKs", 2, what="the server's kernel delayed its ACK of each FIN")
