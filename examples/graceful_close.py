"""The server reads everything the client sent, then closes: no RST anywhere.

This is the baseline the reset scenarios differ from. With an empty receive
queue, `close()` sends a FIN; the client reads end-of-stream (`b""`), closes in
turn, and the four-way FIN/ACK exchange ends the connection.
"""

TITLE = "Graceful close: FIN, not RST"
PHASE = "closing"
HOSTS = ("client", "server")


def run(client, server):
    listener = server.socket()
    listener.bind((server.ip, 8888))
    listener.listen()

    sock = client.socket()
    sock.connect((server.ip, 8888))
    sock.sendall(b"hello")

    conn, _ = listener.accept()
    conn.recv(1024)  # the server reads all 5 bytes
    with server.receives(".", source=client):  # the client's kernel acknowledges the FIN
        conn.close()  # empty receive queue: FIN

    sock.recv(1024)  # b"": the server's FIN is end-of-stream
    with client.receives(".", source=server):  # the server acknowledges the client's FIN
        sock.close()


def claims(trace):
    trace.handshake("client", "server")
    trace.next("client", "P.", name="request", payload=5, what="the client sends 5 bytes")
    trace.next("server", ".", name="request-ack", what="the server's kernel acknowledges them")
    fin = trace.next("server", "F.", name="server-fin", what="the server's close() sends a FIN")
    trace.next("client", ".", name="server-fin-ack", ack=fin.seq + 1,
               what="the client's kernel acknowledges the FIN")
    client_fin = trace.next("client", "F.", name="client-fin", what="the client's close() sends its own FIN")
    trace.next("server", ".", name="client-fin-ack", ack=client_fin.seq + 1,
               what="the server acknowledges the client's FIN")
    trace.no("server", "R", what="no RST from the server")
    trace.no("client", "R", what="no RST from the client")
    trace.returned("client", "recv", "b''")
    trace.counter("client", "TcpOutRsts", 0, what="the client's kernel sends no RST")
    trace.counter("server", "TcpOutRsts", 0, what="the server's kernel sends no RST")
