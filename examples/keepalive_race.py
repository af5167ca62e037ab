"""A pooling HTTP client reuses a kept-alive connection the server has just closed.

After the first response the connection stays open (HTTP/1.1 keep-alive) and
idle. The server's idle timeout fires and it closes the connection: a FIN. The
client does not look at the socket before reusing it and sends its next request;
the server has no socket open for it any more, so its kernel answers with a RST
(`[R]`). http.client then reads end-of-stream where the response should be and
raises RemoteDisconnected.
"""

import http.client
from http.server import BaseHTTPRequestHandler, HTTPServer

TITLE = "Keep-alive race: a reused connection was closed by the server"
PHASE = "established"
HOSTS = ("client", "server")

IDLE_TIMEOUT = 0.3  # the server's keep-alive timeout: the scenario's own protocol delay


def run(client, server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep the connection open between requests
        timeout = IDLE_TIMEOUT  # an idle connection is closed after this long

        def do_GET(self):
            body = b"hello\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # http.server logs to stderr; keep the line
            server.note("log", format % args)

    with server:
        httpd = HTTPServer((server.ip, 8080), Handler)
    serving = server.start(httpd.handle_request)  # serves one connection, then closes it

    with client:
        conn = http.client.HTTPConnection(server.ip, 8080)
        # pure ACKs from the client: the handshake's, one for each of the response's two
        # segments (headers, then body), and the one for the server's FIN
        with server.receives(".", source=client, count=4):
            conn.request("GET", "/first")
            response = client.record("getresponse()", conn.getresponse)
            response.read()
        serving.join()  # the idle timeout fired and the server closed the connection

        conn.request("GET", "/second")  # the pool reuses the connection: the server is gone
        try:
            client.record("getresponse()", conn.getresponse)
        except http.client.RemoteDisconnected:
            pass


def claims(trace):
    trace.next("client", "S")
    trace.next("server", "S.")
    trace.next("client", ".")
    first = trace.next("client", "P.", what="the client sends GET /first")
    trace.next("server", ".")
    headers = trace.next("server", "P.", what="the server answers 200 and keeps the connection open: headers...")
    trace.next("client", ".")
    trace.next("server", "P.", payload=6, what="...then the 6-byte body (http.server writes them separately)")
    trace.next("client", ".")
    fin = trace.next("server", "F.", after=0.25,
                     what="after its idle timeout the server closes the connection: FIN")
    trace.next("client", ".", ack=fin.seq + 1, what="the client's kernel acknowledges the FIN")
    second = trace.next("client", "P.", what="the client reuses the connection: GET /second")
    trace.check("the second request is about as long as the first (same request line length)",
                abs(second.payload - first.payload) <= 1, f"{first.payload} and {second.payload} bytes")
    trace.next("server", "R", seq=second.ack, win=0,
               what="the server's kernel answers it with [R]: seq = the request's ack, win 0")
    trace.no("server", "R.", what="the server sends no [R.]")
    trace.no("client", "R", what="the client sends no RST")
    trace.no("client", "F", what="the client never closed its side")
    trace.check("the response headers carried data", headers.payload > 0)

    trace.returned("server", "log", '\'"GET /first HTTP/1.1" 200 -\'')
    logs = [o["returned"] for o in trace.calls("server", "log")]
    trace.check("the server logs the idle timeout", any("Request timed out" in line for line in logs),
                " | ".join(logs))
    trace.check("the server never logs the second request", not any("/second" in line for line in logs))
    first_response = trace.calls("client", "getresponse()")[:1]
    trace.check("the first getresponse() returns a response",
                bool(first_response) and "HTTPResponse" in first_response[0].get("returned", ""))
    trace.raised("client", "getresponse()", "RemoteDisconnected", nth=1)
