"""A firewall on the path reads the server name in the TLS ClientHello and resets the connection, in both directions.

The TCP handshake completes; the client's first data is a TLS ClientHello
naming the server it wants (SNI). A router between client and server holds
each ClientHello back (nftables) while its inspector (scapy) reads the name:
the name is on its block list, so the ClientHello never reaches the server,
and the inspector forges two RSTs: one to the client in the server's name, one
to the server in the client's. Each is accepted, because each carries exactly
the sequence number its receiver expects next. Python's `ssl` raises
ConnectionResetError (ECONNRESET), curl fails with exit status 35, and the
server's handshake fails the same way. The RST betrays its maker: it arrives
with TTL 64 where the real server's packets have 63, with scapy's IP ID and
without the DF bit the server's packets carry, and no TCP stack sent it.
"""

import socket
import ssl
import threading

from scapy.layers.inet import IP, TCP

TITLE = "TLS ClientHello reset: a server-name filter forges RSTs"
PHASE = "middleboxes"
HOSTS = ("client", "router", "server")
TRACE_OPTIONS = ["-v", "-K"]  # TTL and IP ID betray who sent a segment; -K: veth checksums are offloaded
BLOCKED = "blocked.example"  # the server name on the middlebox's block list
CONNECTIONS = 2  # Python's ssl module, then curl

# the router holds back every TLS ClientHello to port 443 (a handshake record, 0x16, whose
# first message is a ClientHello, 0x01) for its inspector; nothing else is touched
HOLD_CLIENTHELLO = """
table inet middlebox {
    chain forward {
        type filter hook forward priority 0; policy accept;
        tcp dport 443 @ih,0,8 0x16 @ih,40,8 0x01 counter drop
    }
}
"""


def server_name(payload):
    """The server name (SNI) in a TLS ClientHello, or None: the inspector's parser."""
    if len(payload) < 44 or payload[0] != 0x16 or payload[5] != 0x01:
        return None
    at = 43  # record header 5, handshake header 4, version 2, random 32
    at += 1 + payload[at]  # session id
    at += 2 + int.from_bytes(payload[at:at + 2], "big")  # cipher suites
    at += 1 + payload[at]  # compression methods
    end = at + 2 + int.from_bytes(payload[at:at + 2], "big")
    at += 2
    while at + 4 <= end:  # extensions: type, length, data
        kind, size = int.from_bytes(payload[at:at + 2], "big"), int.from_bytes(payload[at + 2:at + 4], "big")
        if kind == 0:  # server_name: list length 2, name type 1 (host_name), name length 2, name
            length = int.from_bytes(payload[at + 7:at + 9], "big")
            return payload[at + 9:at + 9 + length].decode("ascii", "replace")
        at += 4 + size
    return None


def forge_resets(inspector, hello):
    """The middlebox's verdict on a blocked name: a RST to each end, each in the other's name,
    each with exactly the sequence number its receiver expects next."""
    c, s = hello[IP], hello[TCP]
    to_client = IP(src=c.dst, dst=c.src) / TCP(sport=s.dport, dport=s.sport, flags="RA",
                                               seq=s.ack, ack=s.seq + len(s.payload), window=0)
    to_server = IP(src=c.src, dst=c.dst) / TCP(sport=s.sport, dport=s.dport, flags="RA",
                                               seq=s.seq, ack=s.ack, window=0)
    inspector.send(to_client)
    inspector.send(to_server)


def run(client, router, server):
    router.nft(HOLD_CLIENTHELLO)
    # the inspector is a user process: on a loaded machine it can take longer than the client's
    # retransmission timeout (200 ms at least) to forge its RSTs, and the ClientHello sent again
    # meanwhile would be taken for the next connection's. A minimum RTO of 5 s on the client's
    # route to the server (ip-route(8) rto_min) leaves the inspector that long: nothing is resent
    # (the ClientHello is one segment: no tail loss probe comes sooner).
    subnet = server.ip.rsplit(".", 1)[0] + ".0/24"
    client.sh("ip", "route", "change", *client.sh("ip", "-4", "route", "show", subnet).split(), "rto_min", "5s")
    inspector = router.wiretap()  # sees each ClientHello arrive before the forward hook drops it
    server.sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes", "-subj", f"/CN={BLOCKED}", "-addext", f"subjectAltName=DNS:{BLOCKED}",
              "-days", "1", "-keyout", "key.pem", "-out", "cert.pem")  # a certificate made for this run
    tls_server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_server.load_cert_chain("cert.pem", "key.pem")

    listener = server.socket()
    listener.bind((server.ip, 443))
    listener.listen()
    held = threading.Semaphore(0)  # released when the server application holds a connection
    served = threading.Semaphore(0)  # released when its handshake has failed

    def serve():  # the TLS server: accept, then wait for the client's ClientHello
        for _ in range(CONNECTIONS):
            conn, _ = listener.accept()
            tls = tls_server.wrap_socket(conn._sock, server_side=True, do_handshake_on_connect=False)
            held.release()
            try:
                server.record("do_handshake()", tls.do_handshake)
            except OSError:
                pass
            served.release()

    def inspect():  # the middlebox: read the name, forge a RST each way for a blocked one
        for _ in range(CONNECTIONS):
            hello = inspector.expect(flags="P.", source=client.ip)
            name = server_name(bytes(hello[TCP].payload))
            router.note("the inspector reads the ClientHello's server name", name)
            if name != BLOCKED:
                continue
            # the example's one concession to determinism: a RST that came while the connection
            # still waited in the server's accept queue would end it before its application saw it
            held.acquire()
            forge_resets(inspector, hello)

    server.start(serve)
    router.start(inspect)

    # 1. Python's ssl module
    tls_client = ssl.create_default_context()
    with client:
        sock = socket.create_connection((server.ip, 443))
    client.sockets.append(sock)
    tls = tls_client.wrap_socket(sock, server_hostname=BLOCKED, do_handshake_on_connect=False)
    try:
        client.record("ssl do_handshake()", tls.do_handshake)
    except OSError:
        pass
    served.acquire()  # the server's handshake has failed too

    # 2. curl, a process on the client (its messages go to stderr: 2>&1 puts them in the record)
    client.note("curl --version", client.sh("curl", "--version").splitlines()[0])
    curl = client.process(["sh", "-c", f"curl -sS --noproxy '*' --resolve {BLOCKED}:443:{server.ip}"
                                       f" https://{BLOCKED}/ 2>&1; echo curl exit status $?"])
    curl.wait_for("curl exit status")
    served.acquire()

    router.note("ClientHellos held back by the rule", held_back(router))
    listener.close()  # port 443 is free for each program's server (each_program)


def held_back(router):
    """How many ClientHellos the router's rule has held back so far (its counter)."""
    rule = router.sh("nft", "list", "chain", "inet", "middlebox", "forward")
    return int(rule.split("counter packets ")[1].split()[0])


def claims(trace):
    server_ids = []
    for n, who in ((1, "python"), (2, "curl")):
        _, synack, ack = trace.handshake("client", "server", name=f"{who}-handshake",
                                         what=f"connection {n} ({who}) to port 443, through the router")
        trace.check(f"connection {n}: the real server's SYN-ACK arrives with TTL 63 (one router on the way)",
                    synack.ttl == 63, f"TTL {synack.ttl}")
        server_ids.append(synack.ip_id)
        hello = trace.next("client", "P.", name=f"{who}-clienthello", what=f"{who} sends its TLS ClientHello")
        rst = trace.next("server", "R.", name=f"{who}-forged-rst", reason=None,
                         within=1.0,  # forged by a user process (the inspector): late on a loaded machine (101.5 ms seen)
                         seq=ack.ack, ack=hello.seq + hello.payload, win=0, options=(),
                         what="a RST comes back in the server's name: seq exactly the client's rcv_nxt,"
                              " acking the ClientHello, win 0, no options")
        trace.check(f"connection {n}: the RST arrives with TTL 64: made one hop away, on the router",
                    rst.ttl == 64, f"TTL {rst.ttl}, the server's {synack.ttl}")
        trace.check(f"connection {n}: its IP ID is 1, scapy's default; the server's kernel gave its SYN-ACK 0",
                    rst.ip_id == 1 and synack.ip_id == 0, f"IP ID {rst.ip_id}, the server's SYN-ACK {synack.ip_id}")
        trace.dropped("router", "NETFILTER_DROP", packet=hello,
                      what=f"connection {n}: the router's nftables rule dropped the ClientHello")
    trace.no("client", "R", what="the client sends no RST")
    trace.no("client", "F", what="nor a FIN: the connection dies before anyone closes it")

    trace.raised("client", "ssl do_handshake", "ECONNRESET")
    trace.raised("server", "do_handshake", "ECONNRESET", nth=0)
    trace.raised("server", "do_handshake", "ECONNRESET", nth=1)
    names = [o["returned"] for o in trace.calls("router", "the inspector reads")]
    trace.check("the inspector read the blocked name in both ClientHellos",
                names == [repr("blocked.example")] * 2, ", ".join(names))
    curl = [o["returned"] for o in trace.calls("client", "client process 1 prints")]
    trace.check("curl exits with status 35 (a TLS connect error)", "'curl exit status 35'" in curl, "; ".join(curl))
    held = trace.calls("router", "ClientHellos held back")
    trace.check("the router held back both ClientHellos: the server never received one",
                bool(held) and held[0]["returned"] == "2", held[0]["returned"] if held else "not read")
    trace.counter("server", "TcpOutRsts", 0, what="the server's kernel sent no RST")
    trace.counter("client", "TcpOutRsts", 0, what="nor did the client's")
    trace.counter("client", "TcpEstabResets", 2, what="the client counts two established connections reset")
    trace.counter("server", "TcpEstabResets", 2, what="and so does the server: the RST forged in the client's name")


def serve_until_closed(listener, tls_server, held):
    """The TLS server of one program's connections, until its listener is shut down."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # shut down: the program has exited
            return
        tls = tls_server.wrap_socket(conn._sock, server_side=True, do_handshake_on_connect=False)
        held.release()
        try:
            tls.do_handshake()
        except OSError:
            pass


def each_program(program, client, router, server):
    """Each real client asks for https://blocked.example/, the name resolved its own way (its
    host's /etc/hosts gives the server's address); the inspector resets every connection it
    opens, a retry's too, and checks that each ClientHello names blocked.example."""
    tls_server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_server.load_cert_chain("cert.pem", "key.pem")  # run()'s certificate
    listener = server.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((server.ip, 443))
    listener.listen()
    held = threading.Semaphore(0)
    serving = server.start(serve_until_closed, listener, tls_server, held)
    inspector = router.wiretap()
    before = held_back(router)

    program.resolve(BLOCKED, server.ip)
    running = program.start("GET", f"https://{BLOCKED}/")
    names = []
    for hello in inspector.each_until_exit(running.pid, "P.", source=client.ip, timeout=program.timeout):
        name = server_name(bytes(hello[TCP].payload))
        names.append(name)
        router.note(f"the inspector reads {program.label}'s ClientHello's server name", name)
        if name == BLOCKED and held.acquire(timeout=5):  # the same concession as run()'s
            forge_resets(inspector, hello)
    printed = running.wait()["output"]
    listener.shutdown(socket.SHUT_RDWR)  # wakes the server's accept()
    serving.join(5)
    listener.close()
    held_now = held_back(router) - before
    if not names or names != [BLOCKED] * held_now:
        raise RuntimeError(f"{program.label}: the router held back {held_now} ClientHello(s); the inspector"
                           f" read the server names {names}, not blocked.example in each; it printed {printed}")
