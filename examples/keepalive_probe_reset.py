"""An idle client's keepalive probe finds that the server lost the connection: the probe draws a RST.

The server host lost its connection state without a word (a reboot), and the
client has nothing to send: it waits in `recv()`. With SO_KEEPALIVE on, after
TCP_KEEPIDLE seconds of silence the client's kernel sends a probe, an empty ACK
one byte behind what the server already acknowledged. The server's kernel has
no socket for it and answers with a bare RST (`[R]`, seq = the probe's ack,
window 0). The blocked `recv()` raises ConnectionResetError (ECONNRESET) though
the application never sent a byte.
"""

import socket

TITLE = "Keepalive probe answered with RST: the idle peer is gone"
PHASE = "established"
HOSTS = ("client", "server")
KEEPIDLE = 1  # seconds of silence before the first probe (Linux default: 7200)

def run(client, server):
    listener = server.socket()
    listener.bind((server.ip, 8888))
    listener.listen()

    sock = client.socket()
    sock.connect((server.ip, 8888))
    conn, _ = listener.accept()

    # the server host "reboots": its kernel forgets the connection and tells no one
    server.lose_state(8888)  # listener and connection, destroyed without a word

    # keepalive on the idle client (set after the reboot, so the first probe surely follows it)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPIDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    try:
        sock.recv(1024)  # waits for the server, which will never speak: the probe finds out
    except ConnectionResetError:
        pass


def claims(trace):
    _, synack, ack = trace.handshake("client", "server")
    probe = trace.next("client", ".", name="keepalive-probe", payload=0, seq=ack.seq - 1, ack=synack.seq + 1,
                       after=KEEPIDLE * 0.9,
                       what=f"after {KEEPIDLE} s of silence the client sends a keepalive probe:"
                            " an empty ACK whose seq is one byte behind (snd_una - 1)")
    rst = trace.next("server", "R", name="server-rst", seq=probe.ack, win=0, within=0.05,
                     what="the server answers the probe at once with a bare [R]: seq = the probe's ack, win 0")
    trace.check("the RST has no TCP options: no socket made it", rst.options == (), f"options {rst.options}")
    trace.no("client", "P", what="the client never sends any data")
    trace.no("server", "F", what="the server never sent a FIN: the reboot was silent")
    trace.raised("client", "recv", "ECONNRESET")
    trace.counter("client", "TcpExtTCPKeepAlive", 1, what="the client's kernel counts one keepalive probe sent")
    trace.counter("client", "TcpEstabResets", 1, what="and one established connection reset")
