"""A RST reaches a socket in TIME-WAIT: by default it ends TIME-WAIT at once ("TIME-WAIT
assassination"); with net.ipv4.tcp_rfc1337=1 the kernel ignores it.

The side that closes first waits in TIME-WAIT (60 s on Linux) to re-acknowledge
a retransmitted FIN and to absorb old duplicate segments. A RST whose seq is
exactly the next expected byte kills that TIME-WAIT socket early when
net.ipv4.tcp_rfc1337 is 0 (the default), the hazard RFC 1337 describes; the
FIN the peer retransmits next is then answered by a RST instead of an ACK. With
tcp_rfc1337=1 the kernel ignores the RST and TIME-WAIT goes on.
"""

from scapy.layers.inet import IP, TCP

TITLE = "RST in TIME-WAIT: assassination, unless tcp_rfc1337=1"
PHASE = "closing"
HOSTS = ("client", "server")


def run(client, server):
    listener = server.socket()
    listener.bind((server.ip, 8888))
    listener.listen()
    wire = server.raw_peer()  # after its close, the server's side is played by hand (scapy)

    for rfc1337 in (0, 1):
        client.sysctl("net.ipv4.tcp_rfc1337", rfc1337)
        sock = client.socket()
        sock.connect((server.ip, 8888))
        conn, _ = listener.accept()
        port = sock.getsockname()[1]

        # the client closes first, so its side of the connection ends in TIME-WAIT
        with client.receives(".", source=server):  # the server acknowledges the client's FIN
            sock.close()
        conn.recv(1024)  # b"": end of stream
        with server.receives(".", source=client):  # the client acknowledges the server's FIN
            conn.close()
        fin = wire.expect(flags="FA", source=client.ip)
        last_ack = wire.expect(flags="A", source=client.ip)
        client.note(f"rfc1337={rfc1337}: TIME-WAIT sockets before the RST", time_wait(client, port))

        # a RST at exactly the TIME-WAIT socket's next expected byte (its last ACK's ack)
        with client.receives("R", source=server):
            wire.send(IP(src=server.ip, dst=client.ip)
                      / TCP(sport=8888, dport=port, flags="R", seq=last_ack[TCP].ack, window=0))
        client.note(f"rfc1337={rfc1337}: TIME-WAIT sockets after the RST", time_wait(client, port))

        # the server's FIN again, as if the last ACK had been lost: TIME-WAIT exists to re-ACK it
        wire.send(IP(src=server.ip, dst=client.ip)
                  / TCP(sport=8888, dport=port, flags="FA", seq=last_ack[TCP].ack - 1, ack=fin[TCP].seq + 1,
                        window=64))
        answer = wire.expect(source=client.ip)
        client.note(f"rfc1337={rfc1337}: the retransmitted FIN is answered with", str(answer[TCP].flags))


def time_wait(host, port):
    """How many TIME-WAIT sockets `ss` lists for this local port."""
    return len(host.sh("ss", "-Htan", "state", "time-wait", "sport", "=", f":{port}").splitlines())


def claims(trace):
    for rfc1337 in (0, 1):
        trace.next("client", "S")
        trace.next("server", "S.")
        trace.next("client", ".")
        client_fin = trace.next("client", "F.", what="the client closes first")
        trace.next("server", ".", ack=client_fin.seq + 1)
        fin = trace.next("server", "F.", what="the server closes in turn")
        last = trace.next("client", ".", ack=fin.seq + 1, what="the client's last ACK: it is now in TIME-WAIT")
        trace.next("server", "R", seq=last.ack, what=f"[rfc1337={rfc1337}] a RST at exactly the next expected seq")
        again = trace.next("server", "F.", seq=fin.seq, what="the server's FIN arrives again (a retransmission)")
        before = trace.calls("client", f"rfc1337={rfc1337}: TIME-WAIT sockets before")
        after = trace.calls("client", f"rfc1337={rfc1337}: TIME-WAIT sockets after")
        trace.check(f"[rfc1337={rfc1337}] ss lists the TIME-WAIT socket before the RST",
                    [o["returned"] for o in before] == ["1"], str(before))
        if rfc1337 == 0:
            trace.check("[rfc1337=0] the RST killed it: ss lists no TIME-WAIT socket after the RST",
                        [o["returned"] for o in after] == ["0"], str(after))
            trace.next("client", "R", seq=again.ack, win=0, within=0.05,
                       what="[rfc1337=0] with no socket left, the client answers the FIN with a bare [R]")
        else:
            trace.check("[rfc1337=1] the RST was ignored: ss still lists the TIME-WAIT socket",
                        [o["returned"] for o in after] == ["1"], str(after))
            trace.next("client", ".", ack=fin.seq + 1, within=0.05,
                       what="[rfc1337=1] TIME-WAIT is still there and re-acknowledges the FIN")
    trace.counter("client", "TcpOutRsts", 1, what="the client sends exactly one RST (rfc1337=0's answer to the FIN)")
    trace.counter("client", "TcpExtTW", 2,
                  what="TcpExtTW counts sockets entering TIME-WAIT (2), not how they end: no counter shows the kill")
