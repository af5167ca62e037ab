"""A port-forwarding proxy accepts the connection, cannot reach the application behind it, and closes: the client's handshake succeeded, its request draws a RST.

A userland proxy (here a thread standing in for Docker's docker-proxy) listens
on the host's published port 8080 and, for each connection it accepts, dials
the container's address, port 80. The application in the container listens on
127.0.0.1 only, so the container's kernel refuses the proxy's SYN with a RST
and the proxy's connect() raises ConnectionRefusedError. The proxy then closes
the client's connection, as docker-proxy does (a plain close, no SO_LINGER).
By then the client's request has arrived and nobody has read it: closing a
socket with unread data makes Linux send a RST instead of a FIN. The client's
connect() had succeeded; its first read fails with ECONNRESET: Python's
http.client raises ConnectionResetError, curl exits with an error (both
recorded below), where a refused port would have failed at connect().
"""

import http.client
import select
import socket

TITLE = "Accepted, then reset: a port-forwarding proxy with nothing behind it"
PHASE = "opening"
HOSTS = ("client", "server", "container")
PUBLISHED, APP_PORT = 8080, 80


def proxy(server, listener, backend_address, connections):
    """docker-proxy's loop (cmd/docker-proxy/tcp_proxy.go): accept, dial the backend; if
    the dial fails, close the client's connection and carry on."""
    for _ in range(connections):
        conn, _ = listener.accept()
        backend = server.socket()
        try:
            backend.connect(backend_address)
        except ConnectionRefusedError:
            # the lab decides a race here: the client's request has arrived (and is unread)
            # before the proxy gives up; a faster proxy closes first (a FIN, then a RST)
            select.select([conn], [], [], 5)
            conn.close()
            backend.close()
            continue


def run(client, server, container):
    app = container.socket()
    app.bind(("127.0.0.1", APP_PORT))  # the mistake: loopback only, inside the container
    app.listen()

    listener = server.socket()
    listener.bind((server.ip, PUBLISHED))
    listener.listen()
    forwarder = server.start(proxy, server, listener, (container.ip, APP_PORT), 2)

    # 1. Python's http.client
    with client:
        web = http.client.HTTPConnection(server.ip, PUBLISHED, timeout=5)
        client.record("HTTPConnection.connect()", web.connect)
        client.record("HTTPConnection.request('GET', '/')", web.request, "GET", "/")
        try:
            client.record("HTTPConnection.getresponse()", web.getresponse)
        except ConnectionResetError:
            pass
        web.close()

    # 2. curl (Debian's /usr/bin/curl), a process on the client host: what it prints, and its exit status
    out = client.sh("sh", "-c", f"curl -sS http://{server.ip}:{PUBLISHED}/ 2>&1; echo \"exit status $?\"")
    for line in out.splitlines():
        client.note("curl prints", line)
    forwarder.join(5)


def claims(trace):
    for n, who in ((1, "python"), (2, "curl")):
        trace.handshake("client", "server", name=f"{who}-handshake",
                        what=f"{who}: the proxy's listener completes the handshake")
        request = trace.next("client", "P.", name=f"{who}-request", what=f"{who} sends its request")
        trace.next("server", ".", name=f"{who}-request-ack", ack=request.seq + request.payload,
                   what="the proxy's kernel acknowledges it; nobody reads it")
        trace.next("server", "R.", name=f"{who}-rst", seq=request.ack, ack=request.seq + request.payload,
                   within=1.0,  # a user process reacts (its dial refused, it closes): late on a loaded machine (173 ms seen)
                   what="the proxy closes the connection with the request unread: a RST, not a FIN")
    trace.no("server", "F", what="the proxy never sends a FIN")
    trace.raised("server", "connect", "ECONNREFUSED", nth=0)
    trace.raised("server", "connect", "ECONNREFUSED", nth=1)
    trace.returned("client", "HTTPConnection.connect", "None")
    trace.raised("client", "HTTPConnection.getresponse", "ECONNRESET")
    curl = [o["returned"] for o in trace.calls("client", "curl prints")]
    trace.check("curl reports a failed receive and exits with status 56",
                len(curl) == 2 and "Recv failure" in curl[0] and curl[1] == "'exit status 56'", " / ".join(curl))
    # the kernel's reason for both RSTs, and for the container's refusals, which never reach this link
    sent = [e for e in trace.events if e["event"] == "tcp_send_reset" and e["host"] == "server"]
    trace.kernel_check("the proxy host's kernel sent two RSTs, both for TCP_ABORT_ON_CLOSE, from closed sockets",
                        "tcp_send_reset", lambda: [(e["reason"], e["state"]) for e in sent]
                        == [("TCP_ABORT_ON_CLOSE", "TCP_CLOSE")] * 2,
                        ", ".join(f"{e['reason']} in {e['state']}" for e in sent) or "no event",
                        reason="TCP_ABORT_ON_CLOSE")
    refused = [e for e in trace.events if e["event"] == "tcp_send_reset" and e["host"] == "container"]
    trace.kernel_check("the container's kernel refused the proxy's two SYNs for NO_SOCKET", "tcp_send_reset",
                        lambda: [e["reason"] for e in refused] == ["NO_SOCKET"] * 2,
                        ", ".join(str(e["reason"]) for e in refused) or "no event", reason="NO_SOCKET")
    trace.counter("server", "TcpExtTCPAbortOnClose", 2,
                  what="the proxy host counts two connections aborted on close with unread data")
    trace.counter("container", "TcpOutRsts", 2, what="the container's kernel refused the proxy's two SYNs")
    trace.counter("client", "TcpEstabResets", 2, what="the client lost two established connections to a RST")


def forward_until_closed(server, listener, backend_address):
    """docker-proxy's loop for one program's connections, until the listener is shut down."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # shut down: the program has exited
            return
        backend = server.socket()
        try:
            backend.connect(backend_address)
        except ConnectionRefusedError:
            select.select([conn], [], [], 5)  # the same race, decided the same way
            conn.close()
            backend.close()


def each_program(program, client, server, container):
    """Each real client asks the published port for a page; the proxy has nothing behind it."""
    listener = server.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((server.ip, PUBLISHED + 1))
    listener.listen()
    forwarder = server.start(forward_until_closed, server, listener, (container.ip, APP_PORT))
    program.get(f"http://{server.ip}:{PUBLISHED + 1}/")
    listener.shutdown(socket.SHUT_RDWR)  # wakes the proxy's accept()
    forwarder.join(5)
    listener.close()
