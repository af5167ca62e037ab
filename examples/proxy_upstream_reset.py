"""The backend behind nginx resets its connection halfway through a response: nginx logs "readv() failed (104: Connection reset by peer)" and cuts the client's response short.

nginx proxies to a backend that sends the headers of a response announcing 1000
bytes, then 100 bytes of the body, and then aborts: `SO_LINGER` with a zero
timeout and `close()`, so its kernel sends a RST instead of a FIN (a process
that crashes, or a server that aborts a request it cannot finish, does the
same). nginx passes the status line and headers on to the client (200 OK); its
read of the rest from the backend fails with ECONNRESET, it logs the error and
closes the client's connection short. The client cannot be given a 502 any more:
it sees a 200 whose body ends early, which Python's http.client reports as
IncompleteRead and curl as a transfer closed with bytes remaining. Whether the
100 bytes of body reach the client depends on one thing: whether nginx's worker
finds the response and the RST in the same wake-up (it relays them) or reads the
response first (it drops them).

The lab decides it, both ways: for Python's request nginx's worker is stopped
while both arrive, for curl's it has read the response before the RST comes.
"""

import http.client
import itertools
import re
import socket
import struct

TITLE = "Upstream reset mid-response: nginx logs readv() failed (104), the client gets a short body"
PHASE = "established"
HOSTS = ("client", "proxy", "backend")
CAPTURE_ON = "proxy"
CAPTURE_ALL_LINKS = True  # both sides of the proxy: client-proxy (eth0), proxy-backend (eth1)
PORT, BACKEND_PORT = 8080, 8080
LENGTH, SENT = 1000, 100  # the body the headers announce, and the part sent before the reset

# the http{} block of nginx's configuration (lab/nginx.py adds the paths of the run's folder)
NGINX = """
upstream backend {{
    server {backend}:{port};
}}
server {{
    listen {proxy}:{listen};
    location / {{
        proxy_pass http://backend;
    }}
}}
"""

# ngx_event_pipe_read_upstream(), ngx_event_pipe_write_to_downstream() (src/event/ngx_event_pipe.c)
DEBUG_STEPS = ("pipe read upstream:", "pipe preread:", "pipe recv chain:", "pipe write downstream flush in")
HEAD = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {LENGTH}\r\n\r\n".encode()


def backend_server(backend, listener, proxy, nginx, at_once):
    """One request per item of `at_once` (or until the listener is shut down), each answered
    with headers and the first 100 bytes of the body, then aborted. at_once: whether nginx's
    worker gets the response and the RST in one wake-up (it is stopped while both arrive), or
    reads the response before the RST."""
    for together in at_once:
        try:
            conn, _ = listener.accept()
        except OSError:  # shut down: no more requests
            return
        request = conn.recv(4096)
        backend.note("backend received", request.split(b"\r\n", 1)[0].decode())
        if together:
            nginx.pause_worker()
        with backend.receives(".", source=proxy):  # nginx's kernel acknowledges the response
            conn.sendall(HEAD + b"x" * SENT)
        if not together:  # nginx's recv() has emptied the socket: it has read the response
            proxy.until("nginx has read the response", lambda: unread(proxy, backend) == 0)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with proxy.receives("R.", source=backend):  # the RST has reached the proxy
            conn.close()  # SO_LINGER {on, 0}: a RST, not a FIN
        if together:
            nginx.resume_worker()


def unread(proxy, backend):
    """Bytes waiting in nginx's connection to the backend (ss's Recv-Q)."""
    rows = proxy.sh("ss", "-tnH", "state", "established", "dst", f"{proxy.facing(backend)}:{BACKEND_PORT}")
    return sum(int(row.split()[0]) for row in rows.splitlines())


def start(proxy, backend):
    """nginx and the backend's listener. At debug level (Debian's nginx is built --with-debug)
    nginx's log shows how it read each response."""
    listener = backend.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((backend.ip, BACKEND_PORT))
    listener.listen()
    nginx = proxy.nginx(NGINX.format(backend=backend.ip, port=BACKEND_PORT, proxy=proxy.ip, listen=PORT), "debug")
    return nginx, listener


def run(client, proxy, backend):
    # every segment the client receives is acknowledged at once (the route's quickack): a
    # delayed ACK would otherwise race the client's own close and make the trace vary
    client.sh("ip", "route", "replace", "192.0.2.0/24", "dev", "eth0", "src", client.ip, "quickack", "1")
    nginx, listener = start(proxy, backend)
    # Python's http.client: the response and the RST reach nginx in one wake-up; curl: nginx has
    # read the response when the RST comes
    serving = backend.start(backend_server, backend, listener, proxy, nginx, (True, False))

    # 1. Python's http.client
    with client:
        web = http.client.HTTPConnection(proxy.ip, PORT, timeout=10)
        web.request("GET", "/report")
        response = client.record("getresponse()", web.getresponse)
        client.note("status line", f"HTTP/{response.version // 10}.{response.version % 10}"
                                   f" {response.status} {response.reason}")
        client.note("Content-Length", response.getheader("Content-Length"))
        try:
            client.record("response.read()", response.read)
        except http.client.IncompleteRead:
            pass
        with client.receives(".", source=proxy):  # nginx's kernel acknowledges the client's FIN
            web.close()

    # 2. curl (Debian's), a process on the client host: what it prints, and its exit status
    with client.receives(".", source=proxy, count=2):  # nginx's ACKs: of the request, of curl's FIN
        out = client.sh("sh", "-c", "curl -sS -o /dev/null -w 'HTTP status %{http_code}, %{size_download} bytes\\n'"
                                    f" http://{proxy.ip}:{PORT}/report 2>&1; echo \"exit status $?\"")
    for line in out.splitlines():
        client.note("curl prints", line)
    serving.join(5)
    client.note("curl --version", client.sh("curl", "--version").splitlines()[0])
    note_log(proxy, nginx)
    nginx.stop()  # each program gets an nginx and an error log of its own (each_program)
    listener.close()


def note_log(proxy, nginx):
    """nginx's error lines (what its log holds at the default level, `error`), and the debug
    lines of its reading the response body: whether the socket was still readable (`pipe read
    upstream: 1`) when it took the body bytes that came with the headers, and whether it
    flushed them to the client on the error (`flush in`). A debug entry may run over several
    lines (a request's headers); only an entry's first line says its level."""
    for line in nginx.error_log():
        level = re.match(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(\w+)\]", line)
        if level and level.group(1) in ("error", "crit", "alert", "emerg"):
            proxy.note("nginx error.log", line)
        elif level and level.group(1) == "debug" and any(step in line for step in DEBUG_STEPS):
            proxy.note("nginx debug log", line)


def each_program(program, client, proxy, backend):
    """Each real client asks nginx for the report; the backend sends the headers and 100
    bytes of the body and resets, while nginx's worker is stopped (python's case above).
    The program is stopped from its request until nginx has closed (lab/nginx.py serve()).
    nginx's log lines of the program's request are recorded with it."""
    nginx, listener = start(proxy, backend)
    serving = backend.start(backend_server, backend, listener, proxy, nginx, itertools.repeat(True))
    nginx.serve(program, client, "GET", f"http://{proxy.ip}:{PORT}/report")
    listener.shutdown(socket.SHUT_RDWR)  # wakes the backend's accept()
    serving.join(5)
    listener.close()
    note_log(proxy, nginx)
    nginx.stop()


RELAYED = {
    "python": f"nginx relays the 200 and the {SENT} bytes of body: its one wake-up read them and the RST",
    "curl": "nginx relays the 200 alone: the body it had read waits in its buffer and is dropped",
}


def claims(trace):
    relayed = {}
    for who in ("python", "curl"):
        trace.handshake("client", "proxy", name=f"{who}-handshake", what=f"{who} connects to nginx")
        trace.next("client", "P.", name=f"{who}-request", what=f"{who}: GET /report")
        trace.next("proxy", ".", name=f"{who}-request-ack", receiver="client")
        trace.handshake("proxy", "backend", name=f"{who}-up-handshake", what="nginx connects to the backend")
        trace.next("proxy", "P.", name=f"{who}-up-request", receiver="backend", what="nginx forwards the request")
        trace.next("backend", ".", name=f"{who}-up-request-ack")
        partial = trace.next("backend", "P.", name=f"{who}-up-partial", payload=len(HEAD) + SENT,
                             what=f"the backend sends its headers (Content-Length: {LENGTH}) and {SENT} bytes of body")
        trace.next("proxy", ".", name=f"{who}-up-partial-ack", receiver="backend",
                   ack=partial.seq + partial.payload)
        trace.next("backend", "R.", name=f"{who}-up-rst", seq=partial.seq + partial.payload,
                   reason="TCP_STATE", what="the backend aborts: SO_LINGER 0 and close() send a RST")
        relayed[who] = trace.next("proxy", "P.", name=f"{who}-relayed", receiver="client", what=RELAYED[who])
        trace.next("client", ".", name=f"{who}-relayed-ack")
        trace.next("proxy", "F.", name=f"{who}-proxy-fin", receiver="client",
                   what="nginx's next read from the backend fails: it closes the client's connection, body unfinished")
        trace.next("client", ".", name=f"{who}-proxy-fin-ack")
        trace.next("client", "F.", name=f"{who}-client-fin", what="the client gives up on the body and closes")
        trace.next("proxy", ".", name=f"{who}-client-fin-ack", receiver="client")
    trace.no("proxy", "R", what="nginx's host never sends a RST: it ends the client's connection with a FIN")

    statuses = [o["returned"] for o in trace.calls("client", "status line")]
    trace.check("http.client gets 200 OK: the status line was relayed before the reset",
                statuses == ["'HTTP/1.1 200 OK'"], " / ".join(statuses))
    trace.raised("client", "response.read", "IncompleteRead")
    read = trace.calls("client", "response.read")
    message = str(read[0].get("message")) if read else "no read"
    trace.check(f"http.client's IncompleteRead: {SENT} bytes read, the rest of {LENGTH} still expected",
                message == f"IncompleteRead({SENT} bytes read, {LENGTH - SENT} more expected)", message)
    trace.check(f"nginx sent curl the same head without the {SENT} bytes of body",
                relayed["curl"].payload == relayed["python"].payload - SENT,
                f"{relayed['python'].payload} bytes to python, {relayed['curl'].payload} to curl")
    curl = [o["returned"] for o in trace.calls("client", "curl prints")]
    trace.check(f"curl reports the transfer closed with all {LENGTH} bytes remaining, exit status 18"
                " (CURLE_PARTIAL_FILE)",
                len(curl) == 3 and f"curl: (18) transfer closed with {LENGTH} bytes remaining" in curl[0]
                and "0 bytes" in curl[1] and curl[2] == "'exit status 18'", " / ".join(curl))
    debug = [o["returned"] for o in trace.calls("proxy", "nginx debug log")]
    for who, request, steps in (("python", "*1", ["pipe read upstream: 1", "pipe preread: 100", "pipe recv chain: -1",
                                                  "pipe write downstream flush in"]),
                                ("curl", "*3", ["pipe read upstream: 0", "pipe preread: 100", "pipe read upstream: 0",
                                                "pipe read upstream: 1", "pipe recv chain: -1"])):
        seen = [line.split(f"{request} ", 1)[1].strip("'") for line in debug if f" {request} " in line]
        trace.check(f"nginx's debug log for {who}'s request: " + ", ".join(steps), seen == steps, " / ".join(seen))
    logs = [o["returned"] for o in trace.calls("proxy", "nginx error.log")]
    # readv(): nginx reads a response body into several buffers at once (ngx_readv_chain)
    reset = [line for line in logs if "readv() failed (104: Connection reset by peer) while reading upstream" in line]
    trace.check("nginx logs readv() failed (104: Connection reset by peer) while reading upstream, for each request",
                len(reset) == 2, " | ".join(logs))
    trace.counter("backend", "TcpOutRsts", 2, what="the backend's kernel sent both RSTs")
    trace.counter("proxy", "TcpEstabResets", 2, what="nginx's host lost two established connections to a RST")
    trace.counter("proxy", "TcpOutRsts", 0, what="nginx's host sent no RST")
