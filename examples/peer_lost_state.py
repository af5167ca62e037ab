"""The server host lost the connection without telling the client; the client's next data draws a RST.

A host that reboots (or whose connection table is wiped) keeps no trace of the
connections it had, and it said nothing to its peers. The client still believes
the connection is open. Its next segment reaches a kernel with no socket for it,
and that kernel answers as for any unknown connection: a bare RST (`[R]`, no ACK
flag) whose seq is the segment's ack, window 0. The client's `recv()` raises
ConnectionResetError (ECONNRESET).
"""

import threading

TITLE = "Peer lost its state: the next data is answered with RST"
PHASE = "established"
HOSTS = ("client", "server")

def run(client, server):
    listener = server.socket()
    listener.bind((server.ip, 8888))
    listener.listen()

    sock = client.socket()
    sock.connect((server.ip, 8888))
    conn, _ = listener.accept()

    # the server host "reboots": its kernel forgets the connection and tells no one
    killed = server.lose_state(8888)  # listener and connection, destroyed without a word
    server.note("sockets destroyed by the reboot", [line.split()[0] for line in killed.splitlines()])
    server.note("sockets on port 8888 after it", server.sh("ss", "-Htan", "sport", "=", ":8888"))

    sock.sendall(b"hello?")  # the client does not know: its data leaves as usual
    try:
        sock.recv(1024)
    except ConnectionResetError:
        pass


def each_program(program, client, server):
    """Each real client makes two requests with one client object (its pool of kept-alive
    connections). Once the first response has reached the program's kernel and the program
    has handled it, the server host "reboots" as in run(): every socket on port 8080 is
    destroyed and the client is told nothing. The service is then back up (a new listener on
    the port) and the program makes its second request: on the pooled connection, which the
    server's kernel answers with a RST, or on a new one, which is served and stays open until
    the program closes it."""
    answered = threading.Event()
    httpd = server.http_server(8080, answered, lost=ConnectionAbortedError)  # ss -K destroys it
    first = server.start(httpd.handle_request)  # the first connection, until the reboot
    url = f"http://{server.ip}:8080"
    running = program.start("GET", f"{url}/first", then=f"{url}/second")
    if not answered.wait(program.timeout):
        raise TimeoutError(f"{program.name}: the first request was not answered within {program.timeout:g} s")
    # the response is acknowledged when the server's connection has nothing left to send
    # (Send-Q 0): kernel state with no event to wait on
    server.until("the client's kernel acknowledged the first response",
                 lambda: server.sh("ss", "-Htn", "state", "established", "sport", "=", ":8080").split()[1:2] == ["0"],
                 timeout=program.timeout)
    running.settled()  # and the program has read it and waits for the lab
    killed = server.lose_state(8080)  # listener and connection, destroyed without a word
    server.note("sockets destroyed by the reboot", [line.split()[0] for line in killed.splitlines()])
    first.join(program.timeout)
    if first.is_alive():
        raise TimeoutError(f"{program.name}: the server's first connection outlived the reboot")
    httpd.server_close()
    with server.serving(server.http_server(8080, lost=ConnectionAbortedError), program.timeout):  # the service is back up
        running.proceed()  # the program makes its second request now
        running.wait()


def claims(trace):
    trace.handshake("client", "server")
    data = trace.next("client", "P.", name="client-data", payload=6,
                      what="the client sends 6 bytes on the connection it still believes in")
    rst = trace.next("server", "R", name="server-rst", seq=data.ack, win=0,
                     what="the server answers with a bare [R]: seq = the data's ack, no ACK flag, win 0")
    trace.check("the RST has no TCP options: no socket made it", rst.options == (), f"options {rst.options}")
    trace.no("server", "F", what="the server never sent a FIN: the reboot was silent")
    trace.count("server", "R", 1, what="exactly one RST reaches the client")
    trace.raised("client", "recv", "ECONNRESET")
    after = trace.calls("server", "sockets on port 8888 after it")
    trace.check("after the reboot the server has no socket at all on port 8888",
                bool(after) and after[0]["returned"] == "''", str(after))
    trace.counter("client", "TcpEstabResets", 1, what="the client counts one established connection reset")
