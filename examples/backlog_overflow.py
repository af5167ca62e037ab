"""The server's accept queue is full and tcp_abort_on_overflow is on: the handshake's last ACK is answered with a RST.

The server's application is slow to call accept(). Its listener was made with
listen(1), and Linux queues up to backlog + 1 finished connections: two. The
late client's final ACK is held up on the way (standing in for an ACK that
arrives late), two other clients fill the queue, and when the late client's ACK
arrives again (drawn by the server's SYN-ACK retransmission, 1 s later) there
is no room for its connection. With `net.ipv4.tcp_abort_on_overflow=1` the
server's kernel answers that ACK with a bare RST. The client's connect() had
already succeeded; its first recv() raises ConnectionResetError (ECONNRESET).
"""

import socket
import time

TITLE = "Accept queue overflow with tcp_abort_on_overflow: RST after the handshake"
PHASE = "opening"
HOSTS = ("client", "server")
LATE_PORT = 40001  # the client port whose final ACK is held up on the way

# the path loses the late client's handshake ACK (a pure ACK, no data)
HOLD_LATE_ACK = f"""
table ip hold_ack {{
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp sport {LATE_PORT} tcp flags == ack drop
    }}
}}
"""


def run(client, server):
    server.sysctl("net.ipv4.tcp_abort_on_overflow", 1)
    listener = server.socket()
    listener.bind((server.ip, 8888))
    listener.listen(1)  # a small backlog; the application never calls accept()

    server.nft(HOLD_LATE_ACK)
    late = client.socket()
    late.bind((client.ip, LATE_PORT))
    late.connect((server.ip, 8888))  # succeeds for the client; its final ACK is lost on the way
    for _ in range(2):  # Linux queues backlog + 1 finished connections
        early = client.socket()
        early.connect((server.ip, 8888))  # handshake completes: the accept queue is now full
    server.sh("nft", "delete", "table", "ip", "hold_ack")  # the path heals

    try:
        late.recv(1024)  # the server's SYN-ACK retransmission draws the ACK again: RST
    except ConnectionResetError:
        pass


def claims(trace):
    syn = trace.next("client", "S", name="late-syn", what="the late client sends its SYN")
    synack = trace.next("server", "S.", name="late-syn-ack", ack=syn.seq + 1,
                        what="the server answers with a SYN-ACK")
    trace.next("client", ".", name="late-ack", ack=synack.seq + 1,
               what="the late client's final ACK (held up on the way: the server never gets it)")
    for n in (1, 2):
        trace.handshake("client", "server", name=f"early-{n}-handshake",
                        what=f"early client {n}: its connection waits in the accept queue")
    again = trace.next("server", "S.", name="syn-ack-again", seq=synack.seq,
                       what="about 1 s later the server retransmits the late client's SYN-ACK")
    # timed from the first SYN-ACK, where the request's retransmit timer starts (TCP_TIMEOUT_INIT,
    # 1 s), not from the early clients' handshakes just before, whose time depends on the machine's
    # load; a timer fires at most a jiffy early, and the timer wheel's rounding adds at most one
    # level's granularity (32 ms for 1 s at HZ=250, 64 ms at HZ=1000; kernel/time/timer.c)
    gap = again.time - synack.time
    trace.check("the SYN-ACK is sent again 1 s after the first (its timer's initial timeout)",
                0.99 <= gap <= 1.0 * 1.125 + 0.05, f"{gap * 1000:.1f} ms after the first")
    ack = trace.next("client", ".", name="late-ack-again", ack=again.seq + 1,
                     what="the client acknowledges it again")
    trace.next("server", "R", name="server-rst", seq=ack.ack, win=0, options=(), within=0.05,
               what="the accept queue is full: the server answers that ACK with a bare RST, no options")
    trace.counter("server", "TcpExtListenOverflows", 1, what="the server counts one accept queue overflow")
    trace.counter("server", "TcpExtEmbryonicRsts", 1, what="and one half-open connection reset because of it")
    trace.counter("server", "TcpExtSyncookiesSent", 0, what="no SYN cookies were involved")
    trace.counter("client", "TcpExtTCPSYNChallenge", 1,
                  what="the client's ACK to the retransmitted SYN-ACK is a challenge ACK (RFC 5961)")
    trace.returned("client", "connect", "None")
    trace.raised("client", "recv", "ECONNRESET")


# -- the client programs (lab/clients.py) -------------------------------------------------
PROGRAM_PORT = 8889  # each program's listener, listen(1) too
# the path holds back everything the client sends to it but SYNs: the program's handshake ACK
# and its request, as run()'s late ACK (the program's port is not known before it connects)
HOLD_PROGRAM = """
table ip hold_program {{
    chain input {{
        type filter hook input priority 0; policy accept;
        ip saddr {client} tcp dport {port} tcp flags & syn == 0 drop
    }}
}}
"""
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


def catch_up(server, listener):
    """The slow application, at last: it accepts what waits in its queue (the two fillers, closed
    at once), then answers each new connection, until its listener is shut down."""
    while True:
        try:
            conn, (address, _) = listener.accept()
        except OSError:  # shut down: the program has exited
            return
        if address != server.ip:  # not a filler: a program's new connection
            request = b""
            while b"\r\n\r\n" not in request and (chunk := conn.recv(4096)):
                request += chunk
            conn.sendall(RESPONSE)
            while conn.recv(4096):  # the lab decides a race: the program closes first, then the application
                pass
        conn.close()


def each_program(program, client, server):
    """Each real client asks a listener whose accept queue fills between the program's SYN and
    its request: the request draws the RST. A program that connects again finds the queue still
    full (its SYN is dropped and counted, TcpExtListenOverflows: tcp_conn_request() in
    net/ipv4/tcp_input.c); the application then catches up, and the SYN's retransmission
    gets through."""
    listener = server.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((server.ip, PROGRAM_PORT))
    listener.listen(1)
    server.nft(HOLD_PROGRAM.format(client=client.ip, port=PROGRAM_PORT))
    held = server.expects("P.", source=client)
    running = program.start("GET", f"http://{server.ip}:{PROGRAM_PORT}/")
    held.wait(program.timeout)  # its ACK and request are held up: its connection waits half-open
    fillers = []
    for _ in range(2):  # the queue's two other connections, from the server itself (loopback: not on this link)
        filler = server.socket()
        filler.connect((server.ip, PROGRAM_PORT))
        fillers.append(filler)
    reset = client.expects("R", source=server)
    tap = server.wiretap()
    overflows = server.counters()["TcpExtListenOverflows"]
    server.sh("nft", "delete", "table", "ip", "hold_program")  # the path heals: the request's retransmission comes
    reset.wait(5)  # the request met the full queue (one overflow): the RST
    serving = None
    for _ in tap.each_until_exit(running.pid, "S", source=client.ip, timeout=program.timeout):
        # the program connects again; the lab decides a race: its first SYN meets the full queue
        # (dropped, a second overflow) before the application makes room
        wait_for_count(server, "TcpExtListenOverflows", overflows + 2)
        serving = server.start(catch_up, server, listener)
        break
    running.wait()
    listener.shutdown(socket.SHUT_RDWR)  # wakes the application's accept()
    if serving:
        serving.join(5)
    for filler in fillers:
        filler.close()
    listener.close()


def wait_for_count(host, counter, value, timeout=1.0):
    """Until the kernel's counter reaches value: a counter has no event to wait on, so it is read
    again every millisecond (the kernel counts in the softirq that handled the segment)."""
    deadline = time.monotonic() + timeout
    while host.counters()[counter] < value:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{counter} did not reach {value} within {timeout:g} s")
        time.sleep(0.001)
