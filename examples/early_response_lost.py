"""A server answers an upload early (413) and closes without reading the rest.

The server reads the request headers, sees a body larger than it accepts,
answers `413` and closes. Part of the body was already in its receive queue,
unread, so its kernel ends the connection with a RST (`[R.]`) right after the
FIN. The client is still uploading: its next write raises BrokenPipeError. An
application that gives up there never sees the 413. Yet on Linux the response
is not destroyed: data that arrived before the RST stays readable, and
`getresponse()` on the same connection still returns it. urllib3 (under
requests) does just that: it ignores the failed write and returns the 413.
"""

import fcntl
import http.client
import re
import socket
import struct
import termios
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import urllib3

TITLE = "Early response lost? 413, close, RST while the client uploads"
PHASE = "established"
HOSTS = ("client", "server")

LIMIT = 1024  # the largest body the server accepts
PART = b"x" * 4096  # the client uploads 4 KiB at a time
SIZE = 16 * len(PART)  # the 64 KiB upload the client announces


TCP_FIN_WAIT2 = 5  # include/net/tcp_states.h


def tcp_state(sock):
    """The socket's TCP state: the first byte of its struct tcp_info (TCP_INFO)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


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

    class Server(HTTPServer):
        def shutdown_request(self, request):  # socketserver's: shutdown(SHUT_WR), then close()
            request.shutdown(socket.SHUT_WR)  # the FIN...
            # ...acknowledged before the close: a client ACK left to its delayed-ACK timer (40 ms)
            # came before the RST or not, as the server was fast or slow to close
            server.until("the client's kernel acknowledged the FIN", lambda: tcp_state(request) == TCP_FIN_WAIT2)
            self.close_request(request)

    client.ack_at_once()  # its ACK of the FIN at once, not after the delayed-ACK timer
    with server:
        httpd = Server((server.ip, 8080), Handler)

    # 1. http.client, as an application would use it for a streamed upload
    with client:
        conn = http.client.HTTPConnection(server.ip, 8080)
        conn.connect()
        conn.putrequest("POST", "/upload")
        conn.putheader("Content-Length", str(SIZE))
        # the upload goes at the pace the server's kernel acknowledges it; the server
        # application is busy and reads nothing yet
        with client.receives(".", source=server):
            client.record("endheaders()", conn.endheaders)
        for _ in range(3):
            with client.receives(".", source=server):
                client.record(f"send(<{len(PART)} bytes>)", conn.send, PART)

        with client.receives("R.", source=server):
            server.start(httpd.handle_request)  # now it reads the headers, answers 413, closes

        try:
            client.record(f"send(<{len(PART)} bytes>)", conn.send, PART)  # the upload goes on
        except BrokenPipeError:
            pass  # an application that stops here never sees the 413...
        response = client.record("getresponse()", conn.getresponse)  # ...yet it is still there
        client.note("response.status", response.status)

    # 2. the same upload through urllib3, the library under requests
    first_parts_sent, reset_arrived = threading.Event(), threading.Event()

    class RecordedConnection(urllib3.connection.HTTPConnection):  # shows each write urllib3 makes
        def send(self, data):
            return client.record(f"urllib3: send(<{len(data)} bytes>)", super().send, data)

    def upload_with_urllib3():
        pool = urllib3.HTTPConnectionPool(server.ip, 8080, retries=False)
        pool.ConnectionCls = RecordedConnection
        head_acknowledged = client.expects(".", source=server)  # armed before the head is sent

        def body():  # the same paced upload, as a generator urllib3 sends part by part
            head_acknowledged.wait()
            for _ in range(3):
                with client.receives(".", source=server):
                    yield PART
            first_parts_sent.set()
            reset_arrived.wait()
            yield PART  # its send fails; urllib3 goes on to read the response

        response = client.record("urllib3: urlopen('POST', '/upload')", pool.urlopen, "POST", "/upload",
                                 body=body(), headers={"Content-Length": str(SIZE)})
        client.note("urllib3: response.status", response.status)

    client.start(upload_with_urllib3)
    first_parts_sent.wait()
    with client.receives("R.", source=server):
        server.start(httpd.handle_request)
    reset_arrived.set()


def claims(trace):
    for n, library in ((1, "http.client"), (2, "urllib3")):
        c = f"c{n}"  # connection n's packets: c1-..., c2-...
        trace.handshake("client", "server", name=f"{c}-handshake", what=f"connection {n}: {library}")
        trace.next("client", "P.", name=f"{c}-head",
                   what="the client sends the request head: POST /upload, Content-Length: 65536")
        trace.next("server", ".", name=f"{c}-head-ack")
        for part in (1, 2, 3):
            trace.next("client", "P.", name=f"{c}-body-{part}", payload=4096, what=f"body part {part}: 4096 bytes")
            last = trace.next("server", ".", name=f"{c}-body-{part}-ack",
                              what="the server's kernel acknowledges it (the application reads nothing yet)")
        response = trace.next("server", "P.", name=f"{c}-response",
                              what="the server reads the head and answers 413 at once")
        trace.next("client", ".", name=f"{c}-response-ack", ack=response.seq + response.payload,
                   what="the client's kernel acknowledges the 413")
        fin = trace.next("server", "F.", name=f"{c}-server-fin",
                         what="the server closes: FIN first (http.server shuts down writing)...")
        trace.next("client", ".", name=f"{c}-fin-ack", ack=fin.seq + 1,
                   what="the client's kernel acknowledges the FIN (at once: its route's quickack)")
        rst = trace.next("server", "R.", name=f"{c}-server-rst", seq=fin.seq + 1, ack=last.ack,
                         what="...then [R.]: close() found body bytes it never read; the RST acknowledges them all")
        trace.check(f"connection {n}: a live socket's RST, with window and timestamp option",
                    rst.win > 0 and "TS" in rst.options, f"win {rst.win}, options {rst.options}")
        later = [p for p in trace.packets if p.time > rst.time and p.sport == rst.dport and p.dport == rst.sport]
        trace.check(f"connection {n}: the client's failed write sent nothing, no packet after the RST",
                    not later, ", ".join(trace.label(p) for p in later))
    trace.no("client", "R", what="the client never sends a RST")
    trace.no("client", "F", what="nor a FIN")

    for n in range(3):
        trace.returned("client", "send", "None", nth=n)
    trace.raised("client", "send", "EPIPE", nth=3)
    trace.raised("client", "send", "BrokenPipeError", nth=3)
    statuses = {o["call"]: o.get("returned") for o in trace.calls("client", "") if "status" in o["call"]}
    trace.check("http.client: getresponse() after the failed write still returns the server's 413",
                statuses.get("response.status") == "413", str(statuses))
    trace.raised("client", "urllib3: send", "EPIPE", nth=4)
    trace.check("urllib3: urlopen() returns the 413, the failed write hidden",
                statuses.get("urllib3: response.status") == "413", str(statuses))
    trace.counter("server", "TcpExtTCPAbortOnClose", 2, what="the server counts each close with unread data")
    trace.counter("server", "TcpOutRsts", 2)
    trace.counter("client", "TcpEstabResets", 2)
    logs = [o["returned"] for o in trace.calls("server", "log")]
    trace.check("the server logs both requests with status 413",
                sum('"POST /upload HTTP/1.1" 413' in line for line in logs) == 2, " | ".join(logs))


UPLOAD = 64 * 1024  # each program's upload, as the example's own
PROGRAM_PORT = 8081


def answer_early(server, listener, program_done):
    """The server's part for one program: wait until the whole request (head and body) has
    arrived, read the head only, answer 413 and shut down writing (a FIN), then close once
    the program has exited: with the body unread, that close is a RST (tcp_close() in
    net/ipv4/tcp.c resets a connection whose receive queue still holds data).

    Both races a real client meets here are decided, in the same direction for every
    program. FIN or RST: a server that closed before any body byte arrived would send a FIN
    alone; this one always has the whole body unread. And what a client shows when the 413,
    the FIN or the RST come while it is still writing depends on its threads (a client that
    reads while it writes sees the 413 or a failed write, whichever its reader or its writer
    meets first; Go's roundTrip picks at random between a response and a write error that
    are both ready): here they come after its last write, so each program shows whether it
    reads a response that came before anyone read its upload. The example's own steps,
    above, show the RST meeting a write."""
    conn, _ = listener.accept()

    def whole_request_queued():
        try:
            queued = conn.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        end = queued.find(b"\r\n\r\n")
        if end < 0:
            return False
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", queued[:end])
        unread = struct.unpack("i", fcntl.ioctl(conn, termios.FIONREAD, b"\0" * 4))[0]
        return length is not None and unread >= end + 4 + int(length.group(1))

    server.until("the whole request is queued, unread", whole_request_queued, timeout=30)
    queued = conn.recv(65536, socket.MSG_PEEK)
    conn.recv(queued.index(b"\r\n\r\n") + 4)  # the head only
    # the 413 and the FIN in one segment: a client that reads the 413 and closes at once
    # would otherwise race the server's shutdown() with its own FIN
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    conn.sendall(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    conn.shutdown(socket.SHUT_WR)  # as http.server does: FIN first (the corked 413 leaves with it)...
    program_done.wait()
    conn.close()  # ...and the close, with the body unread


def each_program(program, client, server):
    """Each real client uploads the same 1 MB body; the server answers 413 early."""
    # the server's receive buffers (per namespace: min, default, max) hold the whole upload, unread
    server.sysctl("net.ipv4.tcp_rmem", f"4096 {8 * UPLOAD} {8 * UPLOAD}")
    listener = server.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((server.ip, PROGRAM_PORT))
    listener.listen()
    done = threading.Event()
    answering = server.start(answer_early, server, listener, done)
    program.post(f"http://{server.ip}:{PROGRAM_PORT}/upload", UPLOAD)
    done.set()
    answering.join(5)
    listener.close()
