"""The client gives up on connect() before a slow server's SYN-ACK arrives.

The client allows 100 ms for connect() and then closes the socket. The server is
far away: its SYN-ACK arrives 250 ms after the SYN. By then the client's kernel
has no socket for that port any more, so it answers the late SYN-ACK with a bare
RST (`[R]`, no ACK flag) whose seq is the SYN-ACK's ack, window 0.
"""

import random
import time

from scapy.layers.inet import IP, TCP

TITLE = "Connect timeout: the late SYN-ACK is answered with RST"
PHASE = "opening"
HOSTS = ("client", "server")
SERVER_DELAY = 0.25  # the far-away server answers 250 ms after the SYN


def run(client, server):
    far_server = server.raw_peer()  # the server's TCP is played with scapy

    sock = client.socket()
    sock.settimeout(0.1)
    try:
        sock.connect((server.ip, 22))  # the SYN leaves; no answer within 100 ms
    except TimeoutError:
        pass
    sock.close()  # the application gives up: the kernel forgets the connection

    syn = far_server.expect(flags="S")
    time.sleep(max(0.0, syn.time + SERVER_DELAY - time.time()))  # the long way back
    far_server.send(IP(src=server.ip, dst=client.ip)
                    / TCP(sport=22, dport=syn.sport, flags="SA", seq=random.randrange(2**32), ack=syn.seq + 1,
                          window=64240, options=[("MSS", 1460)]))
    far_server.expect(flags="R")  # the client's kernel answers


def claims(trace):
    syn = trace.next("client", "S", name="client-syn")
    synack = trace.next("server", "S.", name="late-syn-ack", ack=syn.seq + 1, after=SERVER_DELAY * 0.9,
                        what="the server's SYN-ACK arrives about 250 ms after the SYN")
    rst = trace.next("client", "R", name="client-rst", seq=synack.ack, win=0, within=0.05,
                     what="the client answers the SYN-ACK at once with a bare [R], seq = its ack, win 0")
    trace.check("the RST carries no TCP option: no socket made it", rst.options == (), f"options {rst.options}")
    trace.no("client", ".", what="the client never acknowledges the SYN-ACK")
    trace.raised("client", "connect", "TimeoutError")
    trace.counter("client", "TcpOutRsts", 1)
    trace.counter("server", "TcpOutRsts", 1, what="the server's own kernel answered the SYN with a RST"
                  " (no listener on the port); nftables dropped it, the scapy peer plays the server")
