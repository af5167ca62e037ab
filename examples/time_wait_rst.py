"""A RST reaches a socket in TIME-WAIT: by default it ends TIME-WAIT at once ("TIME-WAIT
assassination"); with net.ipv4.tcp_rfc1337=1 the kernel ignores it.

The side that closes first waits in TIME-WAIT (60 s on Linux) to re-acknowledge
a retransmitted FIN and to absorb old duplicate segments. RFC 1337 describes how
it can die early: an old duplicate segment arrives, TIME-WAIT answers it with an
ACK, and the peer, which has no connection any more, answers that ACK with a RST
whose seq is exactly what TIME-WAIT expects next. With net.ipv4.tcp_rfc1337=0
(the default) that RST kills the TIME-WAIT socket; a FIN the peer retransmits
next is then answered by a RST instead of an ACK. With tcp_rfc1337=1 the kernel
ignores the RST and TIME-WAIT goes on.
"""

from scapy.layers.inet import IP, TCP

TITLE = "RST in TIME-WAIT: assassination, unless tcp_rfc1337=1"
PHASE = "closing"
HOSTS = ("client", "server")


def run(client, server):
    listener = server.socket()
    listener.bind((server.ip, 8888))
    listener.listen()
    network = server.wiretap()  # late and repeated segments "from the server", made with scapy

    for rfc1337 in (0, 1):
        client.sysctl("net.ipv4.tcp_rfc1337", rfc1337)
        sock = client.socket()
        sock.connect((server.ip, 8888))
        conn, _ = listener.accept()
        port = sock.getsockname()[1]
        with server.receives(".", source=client):  # the client acknowledges the data
            conn.sendall(b"hello")
        sock.recv(1024)

        # the client closes first, so its side of the connection ends in TIME-WAIT
        with client.receives(".", source=server):  # the server acknowledges the client's FIN
            sock.close()
        conn.recv(1024)  # b"": end of stream
        with server.receives(".", source=client):  # the client acknowledges the server's FIN
            conn.close()
        client_fin = network.expect(flags="F.", source=client.ip)
        last_ack = network.expect(flags=".", source=client.ip)
        server_next = last_ack[TCP].ack  # the next seq TIME-WAIT expects: after "hello" and the FIN
        client.note(f"rfc1337={rfc1337}: TIME-WAIT sockets before the old duplicate", time_wait(client, port))

        # an old duplicate of the server's "hello" arrives late; TIME-WAIT acknowledges it,
        # and the server's kernel, which has no such connection any more, answers with a RST
        with client.receives("R", source=server):
            network.send(IP(src=server.ip, dst=client.ip)
                         / TCP(sport=8888, dport=port, flags="PA", seq=server_next - 6, ack=client_fin[TCP].seq,
                               window=64) / b"hello")
        client.note(f"rfc1337={rfc1337}: TIME-WAIT sockets after the RST", time_wait(client, port))

        # the server's FIN again, as if the last ACK had been lost: TIME-WAIT exists to re-ACK it.
        # Without TIME-WAIT the client's RST ends the exchange; with it, its ACK draws one more RST.
        last = client.receives("R", source=server) if rfc1337 else server.receives("R", source=client)
        with last:
            network.send(IP(src=server.ip, dst=client.ip)
                         / TCP(sport=8888, dport=port, flags="FA", seq=server_next - 1, ack=client_fin[TCP].seq + 1,
                               window=64))


def time_wait(host, port):
    """How many TIME-WAIT sockets `ss` lists for this local port."""
    return len(host.sh("ss", "-Htan", "state", "time-wait", "sport", "=", f":{port}").splitlines())


def claims(trace):
    for rfc1337 in (0, 1):
        case = f"[rfc1337={rfc1337}]"
        c = f"rfc1337-{rfc1337}"  # this case's packets: rfc1337-0-..., rfc1337-1-...
        trace.handshake("client", "server", name=f"{c}-handshake")
        hello = trace.next("server", "P.", name=f"{c}-server-data", payload=5)
        trace.next("client", ".", name=f"{c}-server-data-ack", ack=hello.seq + 5)
        client_fin = trace.next("client", "F.", name=f"{c}-client-fin", what="the client closes first")
        trace.next("server", ".", name=f"{c}-client-fin-ack", ack=client_fin.seq + 1)
        fin = trace.next("server", "F.", name=f"{c}-server-fin", seq=hello.seq + 5, what="the server closes in turn")
        last = trace.next("client", ".", name=f"{c}-last-ack", ack=fin.seq + 1,
                          what="the client's last ACK: it is now in TIME-WAIT")
        trace.next("server", "P.", name=f"{c}-old-duplicate", seq=hello.seq, payload=5,
                   what=f"{case} an old duplicate of the server's data")
        tw_ack = trace.next("client", ".", name=f"{c}-time-wait-ack", seq=last.seq, ack=fin.seq + 1, within=0.05,
                            what=f"{case} TIME-WAIT acknowledges it: its ack is the next seq it expects")
        rst = trace.next("server", "R", name=f"{c}-server-rst", seq=tw_ack.ack, win=0, within=0.05,
                         what=f"{case} the server's kernel has no connection: a bare [R], seq = that ack, exact")
        trace.check(f"{case} that RST has no TCP options: no socket made it", rst.options == (), str(rst.options))
        again = trace.next("server", "F.", name=f"{c}-server-fin-again", seq=fin.seq,
                           what=f"{case} the server's FIN arrives again")
        before = trace.calls("client", f"rfc1337={rfc1337}: TIME-WAIT sockets before")
        after = trace.calls("client", f"rfc1337={rfc1337}: TIME-WAIT sockets after")
        trace.check(f"{case} ss lists the TIME-WAIT socket before the old duplicate",
                    [o["returned"] for o in before] == ["1"], str(before))
        if rfc1337 == 0:
            trace.check("[rfc1337=0] the RST killed it: ss lists no TIME-WAIT socket after the RST",
                        [o["returned"] for o in after] == ["0"], str(after))
            rst = trace.next("client", "R", name=f"{c}-client-rst", seq=again.ack, win=0, within=0.05,
                             what="[rfc1337=0] with no socket left, the client answers the FIN with a bare [R]")
            trace.check("[rfc1337=0] the client's RST has no TCP options", rst.options == (), str(rst.options))
        else:
            trace.check("[rfc1337=1] the RST was ignored: ss still lists the TIME-WAIT socket",
                        [o["returned"] for o in after] == ["1"], str(after))
            ack = trace.next("client", ".", name=f"{c}-time-wait-ack-again", ack=fin.seq + 1, within=0.05,
                             what="[rfc1337=1] TIME-WAIT is still there and re-acknowledges the FIN")
            trace.check("[rfc1337=1] TIME-WAIT's ACK carries the connection's timestamp option",
                        "TS" in ack.options, str(ack.options))
            trace.next("server", "R", name=f"{c}-server-rst-again", seq=ack.ack, win=0, within=0.05,
                       what="[rfc1337=1] the server's kernel resets again, and TIME-WAIT ignores it again")
    trace.counter("client", "TcpOutRsts", 1, what="the client sends exactly one RST (rfc1337=0's answer to the FIN)")
    trace.counter("client", "TcpExtTW", 2,
                  what="TcpExtTW counts sockets entering TIME-WAIT (2), not how they end: no counter shows the kill")
