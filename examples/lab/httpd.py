"""A kept-alive HTTP server on a lab host, for the real client programs' two requests
(lab/clients.py): http.server answering every GET with 200 and a 6-byte body, keeping each
connection open after its response (HTTP/1.1), its log lines in the run's transcript."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

BODY = b"hello\n"


def keep_alive_server(host: Any, port: int, answered: threading.Event | None = None,
                      lost: type[BaseException] | None = None) -> HTTPServer:
    """The server, bound on `host` (serve it with host.start(httpd.handle_request) or
    host.serving()). answered: set once a response is written. lost: the error a connection
    raises while the server waits for its next request when the scenario takes it away (a
    RST, a destroyed socket): noted as "the server's wait for the next request", where any
    other error still fails the run."""

    taken_away = (lost,) if lost else ()  # except (): catches nothing

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep the connection open between requests

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
            if answered is not None:
                answered.set()

        def handle(self) -> None:
            try:
                super().handle()
            except taken_away as exc:
                host.note("the server's wait for the next request", repr(exc))

        def log_message(self, format: str, *args: Any) -> None:  # http.server logs to stderr
            host.note("log", format % args)

    with host:
        return HTTPServer((host.ip, port), Handler)
