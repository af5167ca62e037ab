"""A restart done safely: with SO_REUSEPORT and net.ipv4.tcp_migrate_req=1, the
closing listener hands the connections queued on it to the new process; no RST.

The old process listens with SO_REUSEPORT; two clients connect and wait in its
accept queue, one with its request already sent. The new process starts
listening on the same port, with the same option, before the old one closes
its listener. Because `net.ipv4.tcp_migrate_req` is on, closing the old
listener moves each waiting connection to the new listener's queue instead of
resetting it (Linux 5.14 and later). The new process accepts both connections
and serves them as if nothing had happened.
"""

import socket

TITLE = "Listener handover with tcp_migrate_req: queued connections survive the restart"
PHASE = "opening"
HOSTS = ("client", "server")
REQUEST = b"GET / HTTP/1.1\r\n\r\n"
RESPONSE = b"HTTP/1.1 204 No Content\r\n\r\n"


def listen_on_shared_port(server):
    """A listener that shares port 8080 with the other process's (SO_REUSEPORT)."""
    listener = server.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((server.ip, 8080))
    listener.listen()
    return listener


def run(client, server):
    server.sysctl("net.ipv4.tcp_migrate_req", 1)
    old = listen_on_shared_port(server)  # the old process; it will never accept again

    talker = client.socket()
    talker.connect((server.ip, 8080))
    with client.receives(".", source=server):  # the request waits, acknowledged, in the queue
        talker.sendall(REQUEST)
    quiet = client.socket()
    quiet.connect((server.ip, 8080))
    server.until("both connections wait in the old listener's queue", lambda: server.accept_queue(old) == 2)

    new = listen_on_shared_port(server)  # the new process listens before the old one closes
    old.close()  # the old process exits: its queue moves to the new listener
    server.note("connections waiting for the new process", server.accept_queue(new))

    accepted = {addr: conn for conn, addr in (new.accept(), new.accept())}
    talker_conn, quiet_conn = accepted[talker.getsockname()], accepted[quiet.getsockname()]

    talker_conn.recv(1024)  # the request sent before the restart is still there
    with server.receives(".", source=client):
        talker_conn.sendall(RESPONSE)
    talker.recv(1024)

    with client.receives(".", source=server):
        quiet.sendall(REQUEST)  # the second client sends its request only now
    quiet_conn.recv(1024)
    with server.receives(".", source=client):
        quiet_conn.sendall(RESPONSE)
    quiet.recv(1024)


def claims(trace):
    trace.handshake("client", "server", name="first-handshake",
                    what="the first client; its connection waits in the old listener's accept queue")
    request = trace.next("client", "P.", name="first-request", payload=len(REQUEST),
                         what="the first client sends its request")
    trace.next("server", ".", name="first-request-ack", ack=request.seq + len(REQUEST),
               what="the server's kernel acknowledges it")
    trace.handshake("client", "server", name="second-handshake",
                    what="the second client; its connection waits in the same queue, silent")
    answer = trace.next("server", "P.", name="first-response", payload=len(RESPONSE),
                        what="after the restart the new process answers the first client's request")
    trace.check("that answer is on the first client's connection", answer.dport == request.sport,
                f"to port {answer.dport}")
    trace.next("client", ".", name="first-response-ack", what="the first client acknowledges it")
    late = trace.next("client", "P.", name="second-request", payload=len(REQUEST),
                      what="the second client sends its request")
    trace.next("server", ".", name="second-request-ack", ack=late.seq + len(REQUEST),
               what="the new process's socket acknowledges it")
    trace.next("server", "P.", name="second-response", payload=len(RESPONSE), what="and answers")
    trace.next("client", ".", name="second-response-ack", what="the second client acknowledges the answer")
    trace.no("server", "R", what="the server never sends a RST")
    trace.no("client", "R", what="nor does either client")
    trace.counter("server", "TcpExtTCPMigrateReqSuccess", 2,
                  what="the server's kernel counts two connections moved to the new listener")
    trace.counter("server", "TcpEstabResets", 0, what="and no connection reset")
    trace.returned("server", "connections waiting for the new process", "2")
    trace.returned("client", "recv", repr(RESPONSE), nth=0)
    trace.returned("client", "recv", repr(RESPONSE), nth=1)
