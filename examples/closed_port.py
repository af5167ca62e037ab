"""A client connects to a port where nothing listens.

The server's kernel finds no socket for the SYN's port and answers at once with
a RST that acknowledges the SYN (`[R.]`, seq 0, ack = the client's ISN + 1,
window 0). The client's `connect()` raises ConnectionRefusedError (ECONNREFUSED).
"""

TITLE = "Connection refused: nothing listens on the port"
PHASE = "opening"
HOSTS = ("client", "server")


def run(client, server):
    sock = client.socket()
    try:
        sock.connect((server.ip, 8080))  # nothing listens on server port 8080
    except ConnectionRefusedError:
        pass
    sock.close()


def claims(trace):
    syn = trace.next("client", "S", name="client-syn")
    rst = trace.next("server", "R.", name="server-rst", reason="NO_SOCKET", seq=0, ack=syn.seq + 1, win=0)
    trace.check("the RST carries no TCP option: no socket made it", rst.options == (), f"options {rst.options}")
    trace.raised("client", "connect", "ECONNREFUSED")
    trace.counter("server", "TcpOutRsts", 1)
    trace.counter("client", "TcpAttemptFails", 1, what="the client counts a failed connection attempt")


def each_program(program, client, server):
    """Each real client (lab/clients.py) asks the same closed port for a page."""
    program.get(f"http://{server.ip}:8080/")
