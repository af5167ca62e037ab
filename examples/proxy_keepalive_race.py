"""nginx reuses a pooled upstream connection the backend has just closed: a GET is retried on a new connection, a POST gets 502 Bad Gateway.

nginx proxies to a backend with upstream keep-alive (`keepalive` in the upstream
block, HTTP/1.1, an empty `Connection` header), so after a response it keeps the
connection to the backend for the next request. The backend closes idle
connections after 0.5 s, far sooner than nginx gives up on them (60 s by default).
When its idle timeout fires just as nginx picks that connection for a new
request, nginx sends the request into a connection whose other end is gone: the
backend's kernel answers with a RST. nginx reads the backend's FIN where the
response should be and logs "upstream prematurely closed connection". A GET is
then sent again on a fresh connection and the client never knows; a POST is not
(nginx does not repeat a non-idempotent request by default), and the client gets
502 Bad Gateway. The lab decides the race: it pauses nginx's worker (SIGSTOP)
until the client's request and the backend's FIN have both arrived.
"""

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

TITLE = "nginx keep-alive race: 502 Bad Gateway from a pooled upstream connection"
PHASE = "established"
HOSTS = ("client", "proxy", "backend")
CAPTURE_ON = "proxy"
CAPTURE_ALL_LINKS = True  # both sides of the proxy: client-proxy (eth0), proxy-backend (eth1)
TIMEOUT = 30
IDLE_TIMEOUT = 0.5  # the backend's keep-alive timeout: the scenario's own protocol delay
PORT, BACKEND_PORT = 8080, 8080

# the http{} block of nginx's configuration (lab/nginx.py adds the paths of the run's folder)
NGINX = """
upstream backend {{
    server {backend}:{port};
    keepalive 4;                 # keep up to 4 idle connections to the backend per worker
}}
server {{
    listen {proxy}:{listen} deferred;  # accept a connection once its request is there, and read it at once
    location / {{
        proxy_pass http://backend;
        proxy_http_version 1.1;  # keep-alive to the backend needs HTTP/1.1...
        proxy_set_header Connection "";  # ...and no "Connection: close" from nginx
    }}
}}
"""

# the client's close: nginx reads the client's FIN and closes at once, its FIN carrying the ACK;
# but the proxy's kernel acknowledges a FIN by itself once its delayed-ACK timer (40 ms) fires,
# and an nginx worker waiting longer than that for a CPU (a soak with one CPU busy, beside
# another's: 2 client sessions in 12) let that pure ACK go first. While the client closes, a
# pure ACK from nginx's port to the client never leaves the proxy: nginx's FIN is the answer,
# however long nginx takes (short of the client's retransmission timeout, 200 ms at least)
FIN_ANSWERED_BY_NGINX = """
table ip fin_answered_by_nginx {{
    chain out {{
        type filter hook output priority 0; policy accept;
        ip daddr {client} tcp sport {port} tcp flags == ack drop
    }}
}}
"""


def backend_handler(backend, idle_timeout, opened=None):
    """http.server's handler for the backend: 200 "done" to any GET or POST, on a connection
    kept open between requests and closed once idle for `idle_timeout` seconds (None: when
    the lab shuts its reading side, each connection being appended to `opened`)."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep the connection open between requests
        timeout = idle_timeout  # an idle connection is closed after this long

        def setup(self):
            super().setup()
            if opened is not None:
                opened.append(self.connection)

        def respond(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            body = b"done\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = respond

        def log_message(self, format, *args):  # http.server logs to stderr; keep the line
            backend.note("log", format % args)

    return Handler


def start_nginx(proxy, backend):
    return proxy.nginx(NGINX.format(backend=backend.ip, port=BACKEND_PORT, proxy=proxy.ip, listen=PORT))


def run(client, proxy, backend):
    with backend:
        httpd = HTTPServer((backend.ip, BACKEND_PORT), backend_handler(backend, IDLE_TIMEOUT))

    def serve_two_connections():
        httpd.handle_request()  # the connection nginx pools, closed by the idle timeout
        httpd.handle_request()  # the one nginx opens to repeat the GET, closed the same way

    server_thread = backend.start(serve_two_connections)
    nginx = start_nginx(proxy, backend)

    web = http.client.HTTPConnection(proxy.ip, PORT, timeout=10)
    # nginx's pure ACKs to the backend on one upstream connection: the handshake's, one for
    # each of the response's two segments (headers, then body), and the one for the FIN
    pooled = backend.expects(".", source=proxy, count=4)
    acked = proxy.expects(".", source=client, count=2)  # the client's handshake ACK, its response's
    client.record("request('GET', '/first')", web.request, "GET", "/first")
    read_response(client, web, acked)
    retried, acked = race(client, proxy, backend, nginx, web, pooled, "GET", "/second")
    read_response(client, web, acked)
    _, acked = race(client, proxy, backend, nginx, web, retried, "POST", "/order", b"item=1")
    read_response(client, web, acked)
    proxy.nft(FIN_ANSWERED_BY_NGINX.format(client=client.ip, port=PORT))
    with proxy.receives(".", source=client):  # the client acknowledges nginx's FIN
        web.close()
    proxy.nft("delete table ip fin_answered_by_nginx")
    server_thread.join(5)
    httpd.server_close()
    for line in nginx.error_log():
        proxy.note("nginx error.log", line)
    nginx.stop()  # each program gets an nginx and an error log of its own (each_program)


def each_program(program, client, proxy, backend):
    """Each real client, three times, through an nginx of its own: GET /first fills nginx's
    pool; then GET /second and POST /order each meet the race, decided as above: nginx's
    worker is stopped until the program's whole request and the backend's FIN on the pooled
    connection have both arrived, in that order (lab/nginx.py serve(), which also stops the
    program until nginx has answered). Here the backend closes the idle connection
    when the lab says (its reading side shut, as its idle timeout would), since a program's
    start-up takes longer than any idle timeout worth waiting for. nginx's error log lines
    are recorded with each run."""
    opened, closed = [], [threading.Event(), threading.Event()]
    with backend:
        httpd = HTTPServer((backend.ip, BACKEND_PORT), backend_handler(backend, None, opened))

    def serve_two_connections():
        for done in closed:  # the connection nginx pools; the one it opens to repeat the GET
            httpd.handle_request()
            done.set()

    serving = backend.start(serve_two_connections)
    nginx = start_nginx(proxy, backend)
    url = f"http://{proxy.ip}:{PORT}"
    seen = len(nginx.error_log())
    nginx.serve(program, client, "GET", f"{url}/first", client_closes=True)
    for method, path, body, done in (("GET", "/second", 0, closed[0]), ("POST", "/order", 6, closed[1])):
        seen = note_new_lines(proxy, nginx, seen)

        def idle_timeout(done=done):  # while nginx's worker is stopped, behind the program's request
            with proxy.receives("F.", source=backend):  # the backend's FIN has reached the proxy
                opened[-1].shutdown(socket.SHUT_RD)  # idle: its handler reads the end, closes
            if not done.wait(5):  # the backend's socket is closed: nginx's request will draw a RST
                raise TimeoutError("the backend did not close its idle connection within 5 s")
        nginx.serve(program, client, method, f"{url}{path}", body, meanwhile=idle_timeout, client_closes=True)
    note_new_lines(proxy, nginx, seen)
    serving.join(5)
    httpd.server_close()
    nginx.stop()


def note_new_lines(proxy, nginx, seen):
    """Record the lines nginx's error log gained since it had `seen` lines; return its length."""
    lines = nginx.error_log()
    for line in lines[seen:]:
        proxy.note("nginx error.log", line)
    return len(lines)


def read_response(client, web, acked):
    """The response, its status line recorded; then the client's kernel's ACK of it (waited
    for, so that it is never folded into the client's next segment)."""
    with client:
        response = client.record("getresponse()", web.getresponse)
        client.note("status line", f"HTTP/{response.version // 10}.{response.version % 10}"
                                   f" {response.status} {response.reason}")
        client.note("Server header", response.getheader("Server"))
        client.record("response.read()", response.read)
    acked.wait(5)


def race(client, proxy, backend, nginx, web, pooled, method, path, body=None):
    """Both events wait for nginx's worker, in this order: the client's request, then the
    backend's idle-timeout FIN on the pooled connection. Returns what to expect once nginx
    resumes, armed before it does: nginx's ACKs on the connection it may open next, and the
    client's ACK of the response."""
    nginx.pause_worker()
    segments = 2 if body else 1  # http.client sends a body in a segment of its own
    with client, client.receives(".", source=proxy, count=segments):  # the proxy's kernel ACKs it
        client.record(f"request('{method}', '{path}')", web.request, method, path, body)
    pooled.wait(5)  # the backend's FIN has arrived, and the proxy's kernel has acknowledged it
    following = backend.expects(".", source=proxy, count=4)
    acked = proxy.expects(".", source=client)
    nginx.resume_worker()
    return following, acked


def claims(trace):
    # GET /first: a fresh upstream connection, which nginx keeps afterwards
    trace.handshake("client", "proxy", name="client-handshake", what="the client connects to nginx")
    trace.next("client", "P.", name="get-first", what="GET /first")
    trace.next("proxy", ".", name="get-first-ack", receiver="client")
    trace.handshake("proxy", "backend", name="up1-handshake", what="nginx opens an upstream connection")
    trace.next("proxy", "P.", name="up1-get-first", receiver="backend", what="nginx forwards GET /first")
    idle_since = backend_response(trace, "up1-first")
    trace.next("proxy", "P.", name="first-response", receiver="client",
               what="nginx relays the 200 to the client and keeps the upstream connection")
    trace.next("client", ".", name="first-response-ack")
    # the race, with a GET
    trace.next("client", "P.", name="get-second", what="GET /second, while nginx's worker is paused")
    trace.next("proxy", ".", name="get-second-ack", receiver="client",
               what="the proxy's kernel acknowledges it; nginx has not read it yet")
    fin = trace.next("backend", "F.", name="up1-idle-fin",
                     what="the backend's idle timeout closes the pooled connection: FIN")
    idle_for(trace, fin, idle_since)
    trace.next("proxy", ".", name="up1-idle-fin-ack", receiver="backend", ack=fin.seq + 1,
               what="the proxy's kernel acknowledges the FIN; nginx has not looked yet")
    reused = trace.next("proxy", "P.", name="up1-get-second", receiver="backend",
                        what="nginx resumes, reads GET /second and sends it on the pooled connection")
    trace.next("backend", "R", name="up1-rst", seq=reused.ack, win=0, reason="TCP_TIMEWAIT_SOCKET",
               what="the backend has closed that connection: its kernel answers with a RST")
    trace.handshake("proxy", "backend", name="up2-handshake",
                    what="nginx sends the GET again, on a new upstream connection")
    trace.next("proxy", "P.", name="up2-get-second", receiver="backend", what="GET /second again")
    idle_since = backend_response(trace, "up2-second")
    trace.next("proxy", "P.", name="second-response", receiver="client", what="the client gets its 200")
    trace.next("client", ".", name="second-response-ack")
    # the race, with a POST
    trace.next("client", "P.", name="post-order", what="POST /order (headers), while nginx's worker is paused")
    trace.next("proxy", ".", name="post-order-ack", receiver="client")
    trace.next("client", "P.", name="post-order-body", payload=6, what="its 6-byte body")
    trace.next("proxy", ".", name="post-order-body-ack", receiver="client")
    fin = trace.next("backend", "F.", name="up2-idle-fin",
                     what="the backend's idle timeout closes the new pooled connection: FIN")
    idle_for(trace, fin, idle_since)
    trace.next("proxy", ".", name="up2-idle-fin-ack", receiver="backend", ack=fin.seq + 1)
    reused = trace.next("proxy", "P.", name="up2-post-order", receiver="backend",
                        what="nginx resumes and sends POST /order on the pooled connection")
    trace.next("backend", "R", name="up2-rst", seq=reused.ack, win=0, reason="TCP_TIMEWAIT_SOCKET",
               what="the backend's kernel answers with a RST")
    trace.next("proxy", "P.", name="bad-gateway", receiver="client",
               what="no second try for a POST: nginx answers 502 Bad Gateway")
    trace.next("client", ".", name="bad-gateway-ack")
    trace.next("client", "F.", name="client-fin", what="the client closes its connection")
    trace.next("proxy", "F.", name="proxy-fin", receiver="client")
    trace.next("client", ".", name="proxy-fin-ack")
    trace.no("proxy", "R", what="nginx's host never sends a RST")
    statuses = [o["returned"] for o in trace.calls("client", "status line")]
    trace.check("the client got 200, 200 (the GET repeated by nginx), then 502 for the POST",
                statuses == ["'HTTP/1.1 200 OK'", "'HTTP/1.1 200 OK'", "'HTTP/1.1 502 Bad Gateway'"],
                " / ".join(statuses))
    logs = [o["returned"] for o in trace.calls("proxy", "nginx error.log")]
    premature = [line for line in logs if "upstream prematurely closed connection while reading response header" in line]
    trace.check("nginx logs 'upstream prematurely closed connection' twice: for GET /second, then POST /order",
                len(premature) == 2 and "GET /second" in premature[0] and "POST /order" in premature[1],
                " | ".join(logs))
    backend_log = [o["returned"] for o in trace.calls("backend", "log")]
    trace.check("the backend served GET /first and GET /second, never the POST",
                sum('"GET /' in line for line in backend_log) == 2
                and not any("POST" in line for line in backend_log), " | ".join(backend_log))
    trace.check("the backend closed both pooled connections on its idle timeout",
                sum("Request timed out" in line for line in backend_log) == 2, " | ".join(backend_log))
    trace.counter("backend", "TcpOutRsts", 2, what="the backend's kernel sent two RSTs, one for each reused connection")
    trace.counter("proxy", "TcpOutRsts", 0, what="the proxy sent none")


def backend_response(trace, name):
    """http.server's answer: ACK, headers, body, each acknowledged by nginx's kernel."""
    trace.next("backend", ".", name=f"{name}-request-ack")
    trace.next("backend", "P.", name=f"{name}-headers", what="the backend answers 200: headers...")
    trace.next("proxy", ".", name=f"{name}-headers-ack", receiver="backend")
    body = trace.next("backend", "P.", name=f"{name}-body", payload=5, what="...then the 5-byte body")
    trace.next("proxy", ".", name=f"{name}-body-ack", receiver="backend")
    return body


def idle_for(trace, fin, since):
    """The idle timer counts from the backend's last byte sent, not from whatever the client
    did meanwhile (its request may come at any time before the FIN)."""
    idle = fin.time - since.time
    trace.check(f"the FIN comes after {IDLE_TIMEOUT} s idle since the backend's last response byte",
                idle >= IDLE_TIMEOUT * 0.9, f"{idle * 1000:.1f} ms")
