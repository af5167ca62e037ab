"""A firewall on the path rejects the connection with a RST it forges in the server's name; its IP header gives it away.

A router between client and server runs nftables with `reject with tcp reset`
for port 8080. The client's SYN never reaches the server, although a service
listens there: the router answers it with a RST whose source address is the
server's. Its TCP header is exactly that of a closed port's RST (`[R.]`,
seq 0, ack = ISN + 1, win 0), and the client sees the same
ConnectionRefusedError. Only the IP header tells them apart: the router's RST
arrives with TTL 64, while everything the real server sends has crossed one
router and arrives with TTL 63.
"""

import re

TITLE = "Firewall reject: a RST forged by a router"
PHASE = "middleboxes"
HOSTS = ("client", "router", "server")
TRACE_OPTIONS = ["-v", "-K"]  # TTL and IP ID; no checksum checks (veth leaves them to "hardware")

FIREWALL = """
table inet firewall {
    chain forward {
        type filter hook forward priority 0; policy accept;
        tcp dport 8080 counter reject with tcp reset
    }
}
"""


def run(client, router, server):
    router.nft(FIREWALL)
    for port in (80, 8080):  # the server really serves both ports; nothing listens on 9
        listener = server.socket()
        listener.bind((server.ip, port))
        listener.listen()

    served = client.socket()
    served.connect((server.ip, 80))  # port 80 passes the firewall: the real server answers

    blocked = client.socket()
    try:
        blocked.connect((server.ip, 8080))  # the router answers in the server's name
    except ConnectionRefusedError:
        pass

    closed = client.socket()
    try:
        closed.connect((server.ip, 9))  # passes the firewall; the server has no socket for it
    except ConnectionRefusedError:
        pass

    rule = router.sh("nft", "list", "chain", "inet", "firewall", "forward")  # what an operator checks
    router.note("packets counted by the reject rule", int(re.search(r"counter packets (\d+)", rule).group(1)))


def claims(trace):
    _, synack, _ = trace.handshake("client", "server", name="port-80-handshake",
                                   what="to port 80, which the firewall lets through")
    trace.check("the real server's packets arrive with TTL 63: one router has decremented it",
                synack.ttl == 63, f"TTL {synack.ttl}")

    syn = trace.next("client", "S", name="port-8080-syn",
                     what="the client connects to port 8080, which the firewall rejects")
    forged = trace.next("server", "R.", name="router-rst", reason=None, seq=0, ack=syn.seq + 1, win=0, options=(), within=0.05,
                        what="a RST comes back from the server's address: [R.] seq 0, ack ISN + 1, win 0, no options")
    trace.check("that RST arrives with TTL 64: it was made one hop away, by the router",
                forged.ttl == 64, f"TTL {forged.ttl}")

    syn9 = trace.next("client", "S", name="port-9-syn",
                      what="for comparison, the client connects to port 9, where nothing listens")
    real = trace.next("server", "R.", name="server-rst", reason="NO_SOCKET", seq=0, ack=syn9.seq + 1, win=0, options=(), within=0.05,
                      what="the real server's RST for a closed port has the very same TCP header")
    trace.check("but the real server's RST arrives with TTL 63", real.ttl == 63, f"TTL {real.ttl}")
    trace.check("the IP ID does not tell them apart here: both RSTs have IP ID 0",
                forged.ip_id == 0 and real.ip_id == 0, f"router's {forged.ip_id}, server's {real.ip_id}")

    trace.counter("server", "TcpOutRsts", 1, what="the server's kernel sent only one RST: the one for port 9")
    trace.counter("server", "TcpPassiveOpens", 1, what="and accepted only the connection to port 80")
    trace.returned("client", "connect", "None", nth=0)
    trace.raised("client", "connect", "ECONNREFUSED", nth=1)
    trace.raised("client", "connect", "ECONNREFUSED", nth=2)
    counted = trace.calls("router", "packets counted by the reject rule")
    trace.check("the reject rule's own counter matched exactly one packet",
                bool(counted) and counted[0]["returned"] == "1", counted[0]["returned"] if counted else "not read")


def each_program(program, client, router, server):
    """Each real client asks the blocked port for a page: the router answers for the server."""
    program.get(f"http://{server.ip}:8080/")
