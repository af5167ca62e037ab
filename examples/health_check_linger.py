"""A load balancer's TCP health check connects and closes with SO_LINGER 0.

Many health checkers only want to know that the handshake completes, and close
at once with a zero linger time so that no TIME-WAIT state is left behind on
their side. That close sends a RST (`[R.]`) instead of a FIN. The server's
kernel has completed the handshake and queued the connection, so the server
application accepts it and its first read raises ConnectionResetError
(ECONNRESET): a server that logs errors logs one for every check.
"""

import contextlib
import io
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

TITLE = "Health checks that close with RST: ECONNRESET in the server's log"
PHASE = "established"
HOSTS = ("client", "server")  # the client is the load balancer's health checker

ABORT_ON_CLOSE = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}


def run(client, server):
    accepted = threading.Semaphore(0)  # released each time the server holds a check's connection

    class Handler(BaseHTTPRequestHandler):
        def setup(self):
            super().setup()
            accepted.release()

        def handle(self):  # http.server reads the request line, and would answer it
            server.record("handle(): read the request line", super().handle)

    class LoggingHTTPServer(HTTPServer):
        def get_request(self):
            return server.record("accept()", self.socket.accept)

        def handle_error(self, request, client_address):  # socketserver prints to stderr
            log = io.StringIO()
            with contextlib.redirect_stderr(log):
                super().handle_error(request, client_address)
            lines = log.getvalue().splitlines()
            server.note("log", lines[1])  # Exception occurred during processing of request from ...
            server.note("log", lines[-2])  # the exception, last line of its traceback

    with server:
        httpd = LoggingHTTPServer((server.ip, 8080), Handler)

    def serve_two_checks():
        httpd.handle_request()
        httpd.handle_request()

    # check 1 connects and resets before the server application has accepted it
    with server.receives("R.", source=client):
        check = client.socket()
        check.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT_ON_CLOSE)
        check.connect((server.ip, 8080))
        check.close()  # RST while the connection waits in the accept queue
    server.start(serve_two_checks)  # the server accepts it only now
    accepted.acquire()

    # check 2: the server has accepted it and waits for a request when the RST comes
    check = client.socket()
    check.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT_ON_CLOSE)
    check.connect((server.ip, 8080))
    accepted.acquire()
    check.close()


def claims(trace):
    for n in (1, 2):
        _, _, hs = trace.handshake("client", "server", name=f"check-{n}-handshake", what=f"check {n} connects")
        rst = trace.next("client", "R.", name=f"check-{n}-rst", seq=hs.seq, ack=hs.ack,
                         what=f"check {n} closes with SO_LINGER 0: [R.], no FIN")
        trace.check(f"check {n}: a live socket's RST, with window and timestamp option",
                    rst.win > 0 and "TS" in rst.options, f"win {rst.win}, options {rst.options}")
    trace.no("client", "F", what="the health checker never sends a FIN")
    trace.no("server", "R", what="the server sends no RST")
    trace.no("server", "F", what="nor a FIN: its sockets are already reset when it closes them")
    accepts = trace.calls("server", "accept()")
    trace.check("the server accepts both checks, even the one reset while queued",
                len(accepts) == 2 and all("returned" in a for a in accepts),
                "; ".join(a.get("returned") or a.get("errno") for a in accepts))
    trace.counter("client", "TcpExtTCPAbortOnData", 2, what="the checker's kernel counts each zero-linger close")
    trace.counter("client", "TcpOutRsts", 2)
    trace.counter("server", "TcpEstabResets", 2)
    trace.counter("server", "TcpOutRsts", 0)
    trace.raised("server", "handle", "ECONNRESET", nth=0)
    trace.raised("server", "handle", "ECONNRESET", nth=1)
    log = [o["returned"] for o in trace.calls("server", "log")]
    trace.check("the server logs an exception for each check (socketserver's handle_error)",
                sum("Exception occurred during processing of request" in line for line in log) == 2,
                " | ".join(log))
    trace.check("each logged exception is ConnectionResetError: [Errno 104]",
                sum("ConnectionResetError: [Errno 104] Connection reset by peer" in line for line in log) == 2,
                " | ".join(log))
