"""A pooling HTTP client reuses a kept-alive connection the server has just closed.

After the first response the connection stays open (HTTP/1.1 keep-alive) and
idle. The server's idle timeout fires and it closes the connection: a FIN. The
client does not look at the socket before reusing it and sends its next request;
the server has no socket open for it any more, so its kernel answers with a RST
(`[R]`). http.client then reads end-of-stream where the response should be and
raises RemoteDisconnected. urllib3 checks a pooled connection before reusing it:
it sees the FIN, closes the connection and opens a new one, so the race only
hits it when the FIN is still on its way.
"""

import http.client
import logging
import re
from http.server import BaseHTTPRequestHandler, HTTPServer

import urllib3

TITLE = "Keep-alive race: a reused connection was closed by the server"
PHASE = "established"
HOSTS = ("client", "server")

IDLE_TIMEOUT = 0.3  # the server's keep-alive timeout: the scenario's own protocol delay
PROGRAMS_IDLE_TIMEOUT = 0.05  # the same, in the programs' run (they wait for the lab, not for it)


# the programs' run: the server's FIN to the program's first connection is held back (dropped on
# its way out) so that it is still on its way when the program sends its second request
FIN_IN_FLIGHT = """
table ip fin_in_flight {{
    chain out {{
        type filter hook output priority 0; policy accept;
        tcp sport 8080 tcp dport {port} tcp flags & fin != 0 counter drop
    }}
}}
"""


def http_server(server, idle_timeout, programs=False):
    """http.server on port 8080, keeping connections open between requests for idle_timeout,
    logging into the transcript. programs: only the first connection it accepts is closed
    when idle, its timer started by its response (a program may be slow to send its first
    request), and its FIN never leaves the server (FIN_IN_FLIGHT); later ones stay open
    until the client closes them."""
    accepted = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep the connection open between requests
        timeout = None if programs else idle_timeout  # an idle connection is closed after this long

        def setup(self):
            accepted.append(self.client_address)
            self.first = len(accepted) == 1
            if programs and self.first:
                server.nft(FIN_IN_FLIGHT.format(port=self.client_address[1]))
            super().setup()

        def do_GET(self):
            body = b"hello\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if programs and self.first:
                self.connection.settimeout(idle_timeout)

        def log_message(self, format, *args):  # http.server logs to stderr; keep the line
            server.note("log", format % args)

    with server:
        return HTTPServer((server.ip, 8080), Handler)


def run(client, server):
    httpd = http_server(server, IDLE_TIMEOUT)
    serving = server.start(httpd.handle_request)  # serves one connection, then closes it

    with client:
        conn = http.client.HTTPConnection(server.ip, 8080)
        # pure ACKs from the client: the handshake's, one for each of the response's two
        # segments (headers, then body), and the one for the server's FIN
        with server.receives(".", source=client, count=4):
            client.record("request('GET', '/first')", conn.request, "GET", "/first")
            response = client.record("getresponse()", conn.getresponse)
            response.read()
        serving.join()  # the idle timeout fired and the server closed the connection

        # the pool reuses the connection: the server is gone, and the request is sent anyway
        client.record("request('GET', '/second')", conn.request, "GET", "/second")
        try:
            client.record("getresponse()", conn.getresponse)
        except http.client.RemoteDisconnected:
            pass

    # the same two requests through urllib3's connection pool
    class LogToTranscript(logging.Handler):  # urllib3 logs at DEBUG what it does with its pool
        def emit(self, record):
            client.note("urllib3 log", record.getMessage())

    urllib3_log = logging.getLogger("urllib3.connectionpool")
    urllib3_log.setLevel(logging.DEBUG)
    urllib3_log.addHandler(LogToTranscript())

    def serve_two_connections():
        httpd.handle_request()  # the pooled connection, closed after the idle timeout
        httpd.handle_request()  # the one urllib3 opens instead

    server.start(serve_two_connections)
    pool = urllib3.HTTPConnectionPool(server.ip, 8080, retries=False)
    with server.receives(".", source=client, count=4):  # as above, up to the ACK of the FIN
        client.record("urllib3: request('GET', '/first')", pool.request, "GET", "/first")
    # urllib3 finds the connection readable (the FIN), closes it and connects again; the wait
    # covers the new connection's handshake, response and idle-timeout FIN, like the first's
    with server.receives(".", source=client, count=4):
        response = client.record("urllib3: request('GET', '/second')", pool.request, "GET", "/second")
    client.note("urllib3: response.status", response.status)
    with client.receives(".", source=server):  # the server acknowledges the client's FIN
        pool.close()
    httpd.server_close()  # port 8080 is the programs' next


def each_program(program, client, server):
    """Each real client makes two requests with one client object: the first opens a connection
    that the server closes after its idle timeout; the second is made once the server has closed
    it, its FIN still on its way (held back). A program that tries again on a new connection is
    served there, and that connection stays open until the program closes it."""
    httpd = http_server(server, PROGRAMS_IDLE_TIMEOUT, programs=True)
    first = server.start(httpd.handle_request)  # the first connection, up to its idle timeout
    url = f"http://{server.ip}:8080"
    running = program.start("GET", f"{url}/first", then=f"{url}/second")
    first.join(program.timeout)
    if first.is_alive():
        raise TimeoutError(f"{program.name}: the first connection was not closed within {program.timeout:g} s")
    with server.serving(httpd, program.timeout):  # a retry on a new connection is served too
        running.proceed()  # the server has closed: the program makes its second request now
        running.wait()
    held = re.search(r"counter packets (\d+)", server.sh("nft", "list", "table", "ip", "fin_in_flight"))
    server.note("FIN segments held back (nftables counter)", int(held.group(1)))
    server.nft("delete table ip fin_in_flight")


def claims(trace):
    # 1. http.client
    trace.handshake("client", "server", name="c1-handshake", what="http.client connects")
    first = trace.next("client", "P.", name="c1-get-first", what="the client sends GET /first")
    headers = one_response(trace, "c1-first")
    fin = trace.next("server", "F.", name="c1-server-fin", after=0.25,
                     what="after its idle timeout the server closes the connection: FIN")
    trace.next("client", ".", name="c1-server-fin-ack", ack=fin.seq + 1,
               what="the client's kernel acknowledges the FIN")
    second = trace.next("client", "P.", name="c1-get-second",
                        what="http.client reuses the connection: GET /second")
    trace.check("the second request is about as long as the first (same request line length)",
                abs(second.payload - first.payload) <= 1, f"{first.payload} and {second.payload} bytes")
    rst = trace.next("server", "R", name="server-rst", seq=second.ack, win=0,
                     what="the server's kernel answers it with [R]: seq = the request's ack, win 0")
    trace.check("the RST has no TCP options (built from the request segment, not a socket)",
                rst.options == (), str(rst.options))
    trace.check("the response headers carried data", headers.payload > 0)

    # 2. urllib3: the same until it reuses the connection
    trace.handshake("client", "server", name="c2-handshake", what="urllib3 connects")
    trace.next("client", "P.", name="c2-get-first", what="urllib3 sends GET /first")
    one_response(trace, "c2-first")
    fin = trace.next("server", "F.", name="c2-server-fin", after=0.25,
                     what="the server's idle timeout closes this connection too")
    trace.next("client", ".", name="c2-server-fin-ack", ack=fin.seq + 1,
               what="the client's kernel acknowledges the FIN")
    drop = trace.next("client", "F.", name="c2-client-fin",
                      what="urllib3 finds the pooled connection readable and closes it: FIN")
    trace.next("server", ".", name="c2-client-fin-ack", ack=drop.seq + 1,
               what="what is left of the server's side acknowledges it")
    trace.handshake("client", "server", name="c3-handshake", what="urllib3 opens a new connection for GET /second")
    trace.next("client", "P.", name="c3-get-second", what="urllib3 sends GET /second on the new connection")
    one_response(trace, "c3-second")
    fin = trace.next("server", "F.", name="c3-server-fin", after=0.25,
                     what="(the end of the run: the server's idle timeout again)")
    trace.next("client", ".", name="c3-server-fin-ack", ack=fin.seq + 1)
    trace.next("client", "F.", name="c3-client-fin", what="the client closes its pool: FIN")
    trace.next("server", ".", name="c3-client-fin-ack")
    resets = [p for p in trace.packets if "R" in p.flags]
    trace.check("the only RST of the run is the one that answered http.client's reuse",
                resets == [rst], ", ".join(trace.label(p) for p in resets))
    trace.no("client", "R", what="the client never sends a RST")

    trace.counter("server", "TcpOutRsts", 1)
    trace.counter("server", "TcpExtTW", 3, what="each closed server socket became a FIN-WAIT-2 time-wait socket")
    trace.counter("client", "TcpEstabResets", 1)

    logs = [o["returned"] for o in trace.calls("server", "log")]
    trace.check("the server logs GET /first twice (once per client)",
                sum('"GET /first HTTP/1.1" 200' in line for line in logs) == 2, " | ".join(logs))
    trace.check("the server logs an idle timeout for each of the three connections",
                sum("Request timed out" in line for line in logs) == 3, " | ".join(logs))
    trace.check("the server logs GET /second once: http.client's never reached it",
                sum('"GET /second HTTP/1.1" 200' in line for line in logs) == 1, " | ".join(logs))

    second_request = trace.calls("client", "request('GET', '/second')")
    trace.check("http.client: the second request() returns normally, the request is sent",
                [r.get("returned") for r in second_request] == ["None"], str(second_request))
    trace.raised("client", "getresponse", "RemoteDisconnected", nth=1)
    urllib3_log = [o["returned"] for o in trace.calls("client", "urllib3 log")]
    trace.check("urllib3 logs that it resets the dropped connection",
                any("Resetting dropped connection" in line for line in urllib3_log), " | ".join(urllib3_log))
    status = [o["returned"] for o in trace.calls("client", "urllib3: response.status")]
    trace.check("urllib3: the second request gets its 200", status == ["200"], str(status))


def one_response(trace, name):
    """http.server's answer: ACK, headers, body, each acknowledged by the client."""
    trace.next("server", ".", name=f"{name}-request-ack")
    headers = trace.next("server", "P.", name=f"{name}-headers",
                         what="the server answers 200 and keeps the connection open: headers...")
    trace.next("client", ".", name=f"{name}-headers-ack")
    trace.next("server", "P.", name=f"{name}-body", payload=6,
               what="...then the 6-byte body (http.server writes them separately)")
    trace.next("client", ".", name=f"{name}-body-ack")
    return headers
