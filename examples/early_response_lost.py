"""A server answers an upload early (413) and closes without reading the rest.

The server reads the request headers, sees a body larger than it accepts,
answers `413` and closes. Part of the body was already in its receive queue,
unread, so its kernel ends the connection with a RST (`[R.]`) right after the
FIN. The client is still uploading: its next write raises BrokenPipeError. An
application that gives up there never sees the 413. Yet on Linux the response
is not destroyed: data that arrived before the RST stays readable, and
`getresponse()` on the same connection still returns it.
"""

import http.client
from http.server import BaseHTTPRequestHandler, HTTPServer

TITLE = "Early response lost? 413, close, RST while the client uploads"
PHASE = "established"
HOSTS = ("client", "server")

LIMIT = 1024  # the largest body the server accepts
PART = b"x" * 4096  # the client uploads 4 KiB at a time
SIZE = 16 * len(PART)  # the 64 KiB upload the client announces


def run(client, server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            if int(self.headers["Content-Length"]) > LIMIT:  # answer before reading the body
                self.send_response(413)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()

        def log_message(self, format, *args):  # http.server logs to stderr; keep the line
            server.note("log", format % args)

    with server:
        httpd = HTTPServer((server.ip, 8080), Handler)

    with client:
        conn = http.client.HTTPConnection(server.ip, 8080)
        conn.connect()
        conn.putrequest("POST", "/upload")
        conn.putheader("Content-Length", str(SIZE))
        # the upload goes at the pace the server's kernel acknowledges it; the server
        # application is busy and reads nothing yet
        with client.receives(".", source=server):
            conn.endheaders()
        for _ in range(3):
            with client.receives(".", source=server):
                conn.send(PART)

        with client.receives("R.", source=server):
            server.start(httpd.handle_request)  # now it reads the headers, answers 413, closes

        try:
            client.record(f"send(<{len(PART)} bytes>)", conn.send, PART)  # the upload goes on
        except BrokenPipeError:
            pass  # an application that stops here never sees the 413...
        response = client.record("getresponse()", conn.getresponse)  # ...yet it is still there
        client.note("response.status", response.status)


def claims(trace):
    trace.next("client", "S")
    trace.next("server", "S.")
    trace.next("client", ".")
    trace.next("client", "P.", what="the client sends the request head: POST /upload, Content-Length: 65536")
    trace.next("server", ".")
    for n in (1, 2, 3):
        trace.next("client", "P.", payload=4096, what=f"body part {n}: 4096 bytes")
        last = trace.next("server", ".", what="the server's kernel acknowledges it (the application reads nothing yet)")
    response = trace.next("server", "P.", what="the server reads the head and answers 413 at once")
    trace.next("client", ".", ack=response.seq + response.payload, what="the client's kernel acknowledges the 413")
    fin = trace.next("server", "F.", what="the server closes: FIN first (http.server shuts down writing)...")
    trace.next("server", "R.", seq=fin.seq + 1, ack=last.ack,
               what="...then [R.]: close() found body bytes it never read; the RST acknowledges them all")
    trace.no("client", "R", what="the client sends no RST")
    trace.no("client", "F", what="the client never closes")

    trace.raised("client", "send", "EPIPE")
    trace.raised("client", "send", "BrokenPipeError")
    trace.check("the client's failed write sent nothing: no packet after the RST",
                trace.packets[-1].flags == "R.", trace.packets[-1].label())
    trace.returned("client", "response.status", "413")
    trace.returned("server", "log", '\'"POST /upload HTTP/1.1" 413 -\'')
