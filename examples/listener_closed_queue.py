"""The server closes its listening socket while finished connections still wait
in its accept queue: each of them is reset.

This is what a restart during a deploy does to connections the old process had
not accepted yet. The clients' handshakes completed, so their connect() calls
succeeded, and one of them has already sent its request. When the listener is
closed, the kernel aborts every connection still in its accept queue: each
client gets a RST (`[R.]`), whether it had sent data or not, and its recv()
raises ConnectionResetError (ECONNRESET).
"""

import socket

TITLE = "Listener closed with a full accept queue: every waiting client is reset"
PHASE = "opening"
HOSTS = ("client", "server")


def run(client, server):
    listener = server.socket()
    listener.bind((server.ip, 8080))
    listener.listen()  # the old process never calls accept() again

    talker = client.socket()
    talker.connect((server.ip, 8080))  # the handshake completes in the server's kernel
    with client.receives(".", source=server):  # the server's kernel acknowledges the request
        talker.sendall(b"GET / HTTP/1.1\r\n\r\n")
    quiet = client.socket()
    quiet.connect((server.ip, 8080))  # a second client that has not sent anything yet
    server.until("both connections wait in the accept queue", lambda: server.accept_queue(listener) == 2)

    listener.close()  # the deploy stops the old process's listener

    for sock in (talker, quiet):
        try:
            sock.recv(1024)
        except ConnectionResetError:
            pass


def claims(trace):
    trace.handshake("client", "server", name="first-handshake",
                    what="the first client; the server's kernel answers, no application is involved")
    request = trace.next("client", "P.", name="first-request", payload=18,
                         what="the first client sends its request (18 bytes)")
    trace.next("server", ".", name="first-request-ack", ack=request.seq + 18,
               what="the server's kernel acknowledges it; no one reads it")
    _, _, hs2 = trace.handshake("client", "server", name="second-handshake",
                                what="the second client, which sends nothing")
    first_rst = trace.next("server", "R.", name="first-rst", ack=request.seq + 18,
                           what="closing the listener resets the first queued connection, acking its request")
    second_rst = trace.next("server", "R.", name="second-rst", seq=hs2.ack, ack=hs2.seq,
                            what="and the second one, though it never sent data")
    # both come from the one close(); the kernel may reschedule between them (cond_resched), so no time bound
    trace.check("nothing else happens between the two RSTs",
                second_rst.number == first_rst.number + 1, f"{trace.label(first_rst)}, {trace.label(second_rst)}")
    trace.check("the two RSTs go to the two clients' ports",
                {first_rst.dport, second_rst.dport} == {request.sport, hs2.sport},
                f"RSTs to ports {first_rst.dport} and {second_rst.dport}")
    trace.check("both RSTs come from live sockets: they carry a window, not the win 0 of a 'no socket' RST",
                first_rst.win > 0 and second_rst.win > 0, f"win {first_rst.win} and {second_rst.win}")
    trace.check("and the timestamp option", "TS" in first_rst.options and "TS" in second_rst.options,
                f"options {list(first_rst.options)} and {list(second_rst.options)}")
    trace.no("server", "F", what="the server never sends a FIN")
    trace.counter("server", "TcpEstabResets", 2, what="the server's kernel counts two established connections reset")
    trace.raised("client", "recv", "ECONNRESET", nth=0)
    trace.raised("client", "recv", "ECONNRESET", nth=1)
    trace.returned("client", "connect", "None", nth=1)


def each_program(program, client, server):
    """Each real client sends its request into an accept queue that is then closed."""
    listener = server.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((server.ip, 8081))
    listener.listen()
    request = server.expects("P.", source=client)  # armed before the program starts
    running = program.start("GET", f"http://{server.ip}:8081/")
    request.wait(program.timeout)  # its request has arrived, unread, on a connection nobody accepted
    server.until("the connection waits in the accept queue", lambda: server.accept_queue(listener) == 1)
    listener.close()
    running.wait()
