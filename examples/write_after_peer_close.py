"""The peer has closed; the application writes anyway, and the write draws a RST.

The server closes its socket: the client's kernel receives the FIN, but the
client application does not look and writes. Its first `send()` succeeds: the
data only has to reach the client's own kernel. The server has no application
left to read it, so its kernel answers with a RST (`[R]`). On Linux the next
write then fails with BrokenPipeError (EPIPE) whatever the application did in
between, while a read returns end-of-stream (`b""`), never ECONNRESET: the FIN
came first.
"""

from http.server import BaseHTTPRequestHandler, HTTPServer

TITLE = "Write after the peer closed: the first write succeeds, a RST answers it"
PHASE = "established"
HOSTS = ("client", "server")


def run(client, server):
    listener = server.socket()
    listener.bind((server.ip, 8888))
    listener.listen()

    for second_call in ("send", "recv"):
        sock = client.socket()
        sock.connect((server.ip, 8888))
        conn, _ = listener.accept()

        with server.receives(".", source=client):
            conn.close()  # the server is done: FIN, which the client's kernel acknowledges
        with client.receives("R", source=server):
            sock.send(b"first")  # accepted by the kernel; the server answers with a RST

        if second_call == "send":  # connection 1: write again, then read
            try_call(sock.send, b"second")
            try_call(sock.recv, 1024)
        else:  # connection 2: read, then write again
            try_call(sock.recv, 1024)
            try_call(sock.send, b"second")
        sock.close()


def each_program(program, client, server):
    """Each real client makes two requests with one client object (its pool of kept-alive
    connections). The server answers the first without `Connection: close` and closes the
    connection; once the client's kernel has acknowledged that FIN, the program makes its
    second request: does it find the connection closed, or write on it? A new connection is
    served, and stays open until the program closes it."""
    accepted = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # the response says nothing of closing

        def do_GET(self):
            accepted.append(self.client_address)
            body = b"hello\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = len(accepted) == 1  # the first connection: close() after the response

        def log_message(self, format, *args):
            server.note("log", format % args)

    with server:
        httpd = HTTPServer((server.ip, 8080), Handler)
    first = server.start(httpd.handle_request)
    url = f"http://{server.ip}:8080"
    running = program.start("GET", f"{url}/first", then=f"{url}/second")
    first.join(program.timeout)
    if first.is_alive():
        raise TimeoutError(f"{program.name}: the first connection was not closed within {program.timeout:g} s")
    # the FIN is acknowledged (by an ACK, or the program's own FIN) when no socket of the
    # server is left in FIN-WAIT-1: kernel state with no event to wait on
    server.until("the client's kernel acknowledged the server's FIN",
                 lambda: not server.sh("ss", "-Htn", "state", "fin-wait-1", "sport", "=", ":8080").strip(),
                 timeout=program.timeout)
    running.settled()  # and the program has done what it does when a pooled connection's FIN arrives
    with server.serving(httpd, program.timeout):  # a retry on a new connection is served too
        running.proceed()  # the FIN has arrived: the program makes its second request now
        running.wait()


def try_call(call, arg):
    try:
        call(arg)
    except OSError:  # recorded with its errno
        pass


def claims(trace):
    for n in (1, 2):
        c = f"c{n}"
        trace.handshake("client", "server", name=f"{c}-handshake", what=f"connection {n}")
        fin = trace.next("server", "F.", name=f"{c}-server-fin", what="the server's close() sends a FIN")
        trace.next("client", ".", name=f"{c}-server-fin-ack", ack=fin.seq + 1,
                   what="the client's kernel acknowledges the FIN")
        data = trace.next("client", "P.", name=f"{c}-client-data", payload=5,
                          what="later, the client application writes 5 bytes")
        rst = trace.next("server", "R", name=f"{c}-server-rst", seq=data.ack, win=0,
                         what="the server answers the data with [R]: no ACK flag, seq = the data's ack, win 0")
        trace.check(f"connection {n}: the RST has no TCP options (built from the segment, not a socket)",
                    rst.options == (), str(rst.options))
        trace.check(f"connection {n}: the RST comes right after the data (within 50 ms)",
                    rst.time - data.time < 0.05, f"{(rst.time - data.time) * 1000:.2f} ms")
    trace.no("client", "R", what="the client sends no RST")
    trace.no("client", "F", what="the client never closes its side with a FIN")

    trace.counter("server", "TcpOutRsts", 2)
    trace.counter("server", "TcpExtTW", 2, what="the server's closed sockets became FIN-WAIT-2 time-wait sockets")
    trace.counter("client", "TcpEstabResets", 2, what="the client counts the resets of its CLOSE-WAIT connections")

    # connection 1: send, send, recv
    trace.returned("client", "send", "5", nth=0)
    trace.raised("client", "send", "EPIPE", nth=1)
    trace.returned("client", "recv", "b''", nth=0)
    # connection 2: send, recv, send
    trace.returned("client", "send", "5", nth=2)
    trace.returned("client", "recv", "b''", nth=1)
    trace.raised("client", "send", "EPIPE", nth=3)
    order = [o["call"].split("(")[0] for o in trace.calls("client", "") if o["call"].startswith(("send", "recv"))]
    trace.check("the client's calls came in the order the page shows",
                order == ["send", "send", "recv", "send", "recv", "send"], " ".join(order))
