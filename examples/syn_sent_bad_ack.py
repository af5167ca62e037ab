"""The client's SYN is answered by a SYN-ACK that acknowledges the wrong sequence
number: the client resets it and keeps trying.

A SYN-ACK must acknowledge exactly the client's ISN + 1. This server (a
confused peer, or a stale connection on the same ports) acknowledges something
else. The client's kernel answers with a bare RST (`[R]`) whose seq is that
bad ack, as RFC 793 says, retransmits its SYN almost at once, and keeps
waiting: connect() does not fail. Here every answer is wrong, so the
application's own 600 ms timeout ends the attempt.
"""

import random

from scapy.layers.inet import IP, TCP

TITLE = "SYN-ACK with a wrong ack: the client resets it and retries"
PHASE = "opening"
HOSTS = ("client", "server")
WRONG_BY = 100_000  # the SYN-ACK acknowledges 100 000 bytes more than the client ever sent
# the timeout sits between two clocks: the server, played by scapy (a user process), must
# have answered both SYNs (it took 320 ms on a loaded machine, past the 300 ms this was: its
# SYN-ACK then found the socket closed), and the kernel's third SYN comes 1 s after the second
# (measured by hand with a longer timeout: tcp_retransmit_timer() in net/ipv4/tcp_timer.c does
# not back off the first SYN timeouts, tcp_syn_linear_timeouts), which the application's own
# wake-up, late on a loaded machine too, must precede
CONNECT_TIMEOUT = 0.6


def answer_wrongly(peer, server, client, syns):
    """The server's TCP, played by hand: every SYN gets a SYN-ACK with a wrong ack."""
    isn = random.randrange(2**32)
    for _ in range(syns):
        syn = peer.expect(flags="S")
        peer.send(IP(src=server.ip, dst=client.ip)
                  / TCP(sport=80, dport=syn.sport, flags="SA", seq=isn, ack=syn.seq + 1 + WRONG_BY,
                        window=64240, options=[("MSS", 1460)]))
        peer.expect(flags="R")  # the client's kernel rejects it


def run(client, server):
    peer = server.raw_peer()  # the server's kernel stays silent
    server.start(answer_wrongly, peer, server, client, 2)  # the first SYN and its quick retry

    sock = client.socket()
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect((server.ip, 80))  # no error from the RSTs: connect just keeps waiting
    except TimeoutError:
        pass
    sock.close()


def claims(trace):
    syn = trace.next("client", "S", name="client-syn", what="the client sends its SYN")
    bad = trace.next("server", "S.", name="bad-syn-ack", ack=syn.seq + 1 + WRONG_BY,
                     what="the server's SYN-ACK acknowledges the wrong sequence number")
    trace.next("client", "R", name="client-rst", seq=bad.ack, win=0, options=(), within=0.05,
               what="the client answers with a bare [R] whose seq is the bad ack, win 0, no options")
    retry = trace.next("client", "S", name="syn-again", seq=syn.seq, within=0.1,
                       what="and retransmits its SYN a few milliseconds later, not after the usual 1 s")
    bad2 = trace.next("server", "S.", name="bad-syn-ack-again", ack=retry.seq + 1 + WRONG_BY,
                      what="the server answers wrongly again")
    trace.next("client", "R", name="client-rst-again", seq=bad2.ack, win=0, options=(), within=0.05,
               what="the client resets that one too")
    trace.count("client", "S", 2, what=f"within the {CONNECT_TIMEOUT:g} s timeout the client sends its SYN twice")
    trace.no("client", ".", what="the client never acknowledges a bad SYN-ACK")
    trace.raised("client", "connect", "TimeoutError")
