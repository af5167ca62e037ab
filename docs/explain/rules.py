"""The rules: which features of the wire point to which page of the catalogue.

The one definition of the rules. connections.py names what the wire shows (a feature and its
evidence text); here each page weighs those features:

    requires   every one must be present, or the page is not a candidate at all
    weights    feature -> points; negative points count against the page

A RST's verdicts are its candidate pages by points, best first; pages with the top score
are a tie. TIES names the pages that are alike on the wire, why, and what to check next.
`packet` is the claim name (examples/SLUG.py claims()) of the packet that explains the
page; the page anchors it as #packet-N, N read from build/traces/SLUG.json, never written here.
"""

from __future__ import annotations

from typing import NamedTuple


class Page(NamedTuple):
    packet: str                  # the claim name of the packet that explains it, on its page
    requires: tuple[str, ...]
    weights: dict[str, int]


_NO_SOCKET_REPLY = {"rst_no_ack": 1, "rst_no_options": 1, "rst_win_zero": 1}
_SOCKET_ABORT = {"socket_abort": 2, "seq_exact": 1, "rst_timestamps": 1, "options_unlike_sender": -4,
                 "ttl_differs": -4, "sender_alive_after": -4, "challenge_ack": -4}
_NO_PROBES = {"probes_unanswered": -4}

PAGES: dict[str, Page] = {
    # -- the opening -----------------------------------------------------------------------
    "closed-port": Page("server-rst", ("answers_syn",),
                        {"rst_ack": 1, "rst_seq_zero": 1, "rst_no_options": 1, "rst_win_zero": 1,
                         "ttl_same": 2, "ttl_differs": -4}),
    "firewall-reject": Page("router-rst", ("answers_syn",),
                            {"rst_ack": 1, "rst_seq_zero": 1, "rst_no_options": 1, "rst_win_zero": 1,
                             "ttl_differs": 4, "ttl_same": -2}),
    "connect-timeout": Page("client-rst", ("answers_synack",),
                            {**_NO_SOCKET_REPLY, "synack_ack_right": 2, "synack_delay": 1,
                             "synack_ack_wrong": -4}),
    "syn-sent-bad-ack": Page("client-rst", ("answers_synack",),
                             {**_NO_SOCKET_REPLY, "synack_ack_wrong": 4, "retry_after": 1,
                              "synack_ack_right": -4}),
    "backlog-overflow": Page("server-rst", ("answers_handshake_ack",),
                             {**_NO_SOCKET_REPLY, "synack_retransmitted": 4, "handshake_ack_wrong": -4}),
    "syn-flood-cookies": Page("server-rst", ("answers_handshake_ack",),
                              {**_NO_SOCKET_REPLY, "handshake_ack_wrong": 4, "syn_burst": 1,
                               "synack_retransmitted": -4}),
    "conntrack-invalid": Page("client-rst", ("stray",),
                              {**_NO_SOCKET_REPLY, "stray_port_in_use": 4}),
    # -- the peer has no socket for an established flow --------------------------------------
    "keepalive-probe-reset": Page("server-rst", ("answers_segment", "keepalive_probe"),
                                  {**_NO_SOCKET_REPLY, "idle_before": 1, "ttl_same": 1,
                                   "ttl_differs": -4, "sender_fin_before": -4}),
    "peer-lost-state": Page("server-rst", ("answers_segment",),
                            {**_NO_SOCKET_REPLY, "answers_data": 2, "idle_before": 1, "ttl_same": 2,
                             "ttl_differs": -4, "sender_fin_before": -4, "keepalive_probe": -2}),
    "idle-timeout-middlebox": Page("router-rst", ("answers_segment",),
                                   {**_NO_SOCKET_REPLY, "answers_data": 2, "idle_before": 1,
                                    "ttl_differs": 2, "ttl_same": -4, "sender_fin_before": -4,
                                    "keepalive_probe": -2}),
    "keepalive-race": Page("server-rst", ("answers_segment", "sender_fin_before"),
                           {**_NO_SOCKET_REPLY, "answers_data": 2, "ttl_differs": -4}),
    "proxy-keepalive-race": Page("up1-rst", ("answers_segment", "sender_fin_before"),
                                 {**_NO_SOCKET_REPLY, "answers_data": 2, "ttl_differs": -4}),
    "write-after-peer-close": Page("c1-server-rst", ("answers_segment", "sender_fin_before"),
                                   {**_NO_SOCKET_REPLY, "answers_data": 2, "ttl_differs": -4}),
    "time-wait-rst": Page("rfc1337-0-server-rst", ("after_close",),
                          {**_NO_SOCKET_REPLY, "old_duplicate": 2, "follows_reset": 1}),
    "lb-idle-reset-both": Page("lb-rst-to-client", ("unprompted",),
                               {**_NO_SOCKET_REPLY, "ttl_differs": 3, "idle_before": 1,
                                "options_unlike_sender": 1, "ttl_same": -2, "socket_abort": -4,
                                "probes_unanswered": -4}),
    # -- forged into a live connection -------------------------------------------------------
    "rst-injection": Page("forged-rst-in-window", ("rst_ack", "options_unlike_sender"),
                          {"challenge_ack": 4, "seq_in_window": 2, "sender_alive_after": 3,
                           "ttl_differs": 1, "rst_win_zero": 1, "answers_first_data": -2}),
    "tls-clienthello-reset": Page("python-forged-rst", ("rst_ack", "options_unlike_sender", "answers_first_data"),
                                  {"ttl_differs": 2, "rst_win_zero": 1, "seq_exact": 1,
                                   "challenge_ack": -4, "sender_alive_after": -2}),
    # -- a socket aborts: tcp_send_active_reset ----------------------------------------------
    "linger-zero": Page("client-rst", ("socket_abort", "no_data"),
                        {**_SOCKET_ABORT, **_NO_PROBES, "sender_initiator": 2}),
    "health-check-linger": Page("check-1-rst", ("socket_abort", "no_data"),
                                {**_SOCKET_ABORT, **_NO_PROBES, "sender_initiator": 2}),
    "ss-kill": Page("server-rst", ("socket_abort", "no_data"),
                    {**_SOCKET_ABORT, **_NO_PROBES, "sender_acceptor": 2}),
    "listener-closed-queue": Page("first-rst", ("socket_abort", "sender_acceptor"),
                                  {**_SOCKET_ABORT, **_NO_PROBES, "no_data": 2, "peer_data_unanswered": 2,
                                   "sender_data_then_rst": -4,   # a queued connection was never accepted
                                   "resets_together": 4, "peer_fin_before": -4, "sender_fin_then_rst": -4,
                                   "idle_before": -1}),
    "unread-data-close": Page("server-rst", ("socket_abort", "peer_data_unanswered"),
                              {**_SOCKET_ABORT, "sender_acceptor": 2, "peer_fin_before": -2}),
    "process-killed": Page("c2-server-rst", ("socket_abort", "peer_data_unanswered"),
                           {**_SOCKET_ABORT, "sender_acceptor": 2, "peer_fin_before": -2}),
    "accepted-then-reset": Page("python-rst", ("socket_abort", "peer_data_unanswered"),
                                {**_SOCKET_ABORT, "sender_acceptor": 2, "peer_fin_before": -2}),
    # an accepted connection answered (part of) a response, then aborted: SO_LINGER 0 and close()
    # in the backend behind a proxy (__tcp_close() in net/ipv4/tcp.c calls tcp_disconnect())
    "proxy-upstream-reset": Page("python-up-rst", ("socket_abort", "sender_data_then_rst"),
                                 {**_SOCKET_ABORT, **_NO_PROBES, "sender_acceptor": 2, "sender_data_then_rst": 2,
                                  "peer_fin_before": -2}),
    "half-close-misread": Page("c1-server-rst", ("socket_abort", "peer_fin_before"),
                               {**_SOCKET_ABORT, "sender_acceptor": 1, "peer_data_unanswered": 1}),
    "early-response-lost": Page("c1-server-rst", ("socket_abort", "sender_fin_then_rst"),
                                {**_SOCKET_ABORT, "sender_acceptor": 1}),
    "keepalive-timeout": Page("client-rst", ("socket_abort", "probes_unanswered"),
                              {**_SOCKET_ABORT, "idle_before": 1, "unprompted": 1}),
}

# A connection without RST: note kind -> (text, [(slug, claim name, points, evidence)])
NO_RST_NOTES: dict[str, tuple[str, list[tuple[str, str, int, str]]]] = {
    "graceful": ("closed gracefully: a FIN each way, each acknowledged, no RST",
                 [("graceful-close", "server-fin", 3, "a FIN each way, both acknowledged")]),
    "synack_again": ("the SYN-ACK was sent again although the client had acknowledged it: the "
                     "listener dropped the ACK (accept queue full: tcp_check_req() in "
                     "net/ipv4/tcp_minisocks.c), no RST",
                     [("backlog-overflow-default", "syn-ack-again", 3,
                       "SYN-ACK retransmitted after the handshake's ACK")]),
    "silent_drop": ("data sent again and again with no answer: a silent drop, no RST",
                    [("lb-idle-silent-drop", "retransmission-1", 3, "retransmitted data, never acknowledged"),
                     ("user-timeout", "retransmission-1", 3, "retransmitted data, never acknowledged")]),
    "syn_unanswered": ("SYN sent again with no answer: dropped on the way (no page shows this alone)", []),
    "open": ("connections opened and served, still open at the end of the capture: never reset",
             [("listener-closed-queue-migrate", "second-response", 1,
               "accepted and served; no FIN, no RST")]),
}
# bonus points for silent drops, by what came before (connections.py's note details)
# (the peer had answered with data before the silence: the path worked, then forgot the flow)
SILENT_DROP_BONUS = {"answered_before": {"lb-idle-silent-drop": 1}}

TIES: list[dict] = [
    {"slugs": ["closed-port", "firewall-reject"],
     "why": "a RST with ACK, seq 0, window 0, no option, answering the SYN at once: the kernel's "
            "reply for no socket (tcp_v4_send_reset() in net/ipv4/tcp_ipv4.c) and nftables' "
            "`reject with tcp reset` (nf_reject_ip_tcphdr_put() in net/ipv4/netfilter/nf_reject_ipv4.c) "
            "build the same segment; only a TTL unlike the host's other packets gives the router away",
     "next": ["compare the RST's TTL (tcpdump -v) with a connection to the same host that works",
              "capture on the server: a RST the server never sent was forged on the way",
              "on the server: `ss -ltn` (is anything listening?) and `nft list ruleset` (a reject rule?)"]},
    {"slugs": ["linger-zero", "health-check-linger"],
     "why": "connect, then close() with SO_LINGER 0 and no data: the same handshake and R. with "
            "the socket's window and timestamps; a health checker is just a client that does it",
     "next": ["find the process that owns the client port (`ss -tnp` while it runs)",
              "nstat on the client: TcpExtTCPAbortOnData counts a close() with SO_LINGER 0 "
              "(__tcp_close() in net/ipv4/tcp.c)"]},
    {"slugs": ["unread-data-close", "process-killed", "accepted-then-reset", "listener-closed-queue"],
     "why": "data arrives, is acknowledged, and the receiver's socket answers with R. instead of a "
            "response: close() with unread data (__tcp_close() in net/ipv4/tcp.c), whether the program "
            "called it, died, or is a proxy with nothing behind it; or the connection was never "
            "accepted and its listener closed (inet_csk_listen_stop() in "
            "net/ipv4/inet_connection_sock.c, through tcp_disconnect() in net/ipv4/tcp.c)",
     "next": ["on the server: did the process exit (journal, exit code) or close the socket itself?",
              "`ss -tn` on the server before the close: a non-zero Recv-Q is the unread data",
              "nstat on the server: TcpExtTCPAbortOnClose counts a close() with unread data (__tcp_close() "
              "in net/ipv4/tcp.c); a listener closing its queue does not count there (tcp_disconnect() "
              "counts nothing)",
              "a proxy or port forward in front? its own connection to the backend tells"]},
    {"slugs": ["keepalive-race", "write-after-peer-close", "proxy-keepalive-race"],
     "why": "the sender had sent its FIN and closed; data arriving after it has no reader and is "
            "answered with R (a socket closed for reading refuses new data in tcp_rcv_state_process() "
            "in net/ipv4/tcp_input.c, and tcp_v4_do_rcv() answers with tcp_v4_send_reset() in "
            "net/ipv4/tcp_ipv4.c, as tcp_v4_rcv() does once the socket is gone; an orphaned socket kept "
            "as time-wait answers data with TCP_TW_RST in tcp_timewait_state_process() in "
            "net/ipv4/tcp_minisocks.c): a reused keep-alive connection, a plain late write and a "
            "proxy's pooled upstream connection look alike; the proxy is only a client of the backend",
     "next": ["does the client reuse pooled connections (HTTP keep-alive)? compare the server's "
              "idle timeout with the pool's",
              "the time between the FIN and the data: a request sent just as the server closed",
              "a proxy sends the data? nginx logs 'upstream prematurely closed connection while reading "
              "response header from upstream' (ngx_http_upstream_process_header() in "
              "src/http/ngx_http_upstream.c, nginx release-1.22.1) in its error log",
              "capture both legs of the proxy at once (`tcpdump -i any` on it): a client request just "
              "before the write on the pooled connection, then a retry on a new connection, or a 502 "
              "for a POST (ngx_http_upstream_next() in src/http/ngx_http_upstream.c repeats no "
              "non-idempotent request)"]},
    {"slugs": ["peer-lost-state", "idle-timeout-middlebox"],
     "why": "data after an idle gap answered by R with window 0 and no option: the peer without a "
            "socket (tcp_v4_send_reset() in net/ipv4/tcp_ipv4.c) and a middlebox that forgot the flow "
            "send the same; only the TTL differs, and tcpdump prints it with -v",
     "next": ["print TTLs (`tcpdump -v`) and compare the RST's with the peer's other packets",
              "capture on the peer too: did its kernel send the RST?",
              "look for a NAT, firewall or load balancer idle timeout on the path"]},
    {"slugs": ["ss-kill", "listener-closed-queue"],
     "why": "the accepting side sends R. with its window and timestamps right after the handshake, "
            "no data: `ss -K` and a listener closed with this connection still queued look alike "
            "when a single connection is reset",
     "next": ["several connections to the same port reset at the same moment: the listener closed",
              "on the server, the kernel's stack at the reset, not its reason: both send "
              "SK_RST_REASON_TCP_STATE through tcp_send_active_reset(), `ss -K` from tcp_abort() in "
              "net/ipv4/tcp.c, a closing listener from inet_csk_listen_stop() in "
              "net/ipv4/inet_connection_sock.c (`bpftrace -e 'tracepoint:tcp:tcp_send_reset "
              "{ @[kstack] = count(); }'`)",
              "the service's restart time against the reset's"]},
    {"slugs": ["lb-idle-silent-drop", "user-timeout"],
     "why": "data retransmitted without answer and no RST: the packets die on the way, whether a "
            "load balancer forgot the flow or the peer vanished; TCP_USER_TIMEOUT or the "
            "retransmission limit ends it with ETIMEDOUT (tcp_write_timeout() and tcp_write_err() in "
            "net/ipv4/tcp_timer.c)",
     "next": ["`ss -tio` on the sender: retrans and the timer while it happens",
              "nstat: TcpExtTCPTimeouts and TcpRetransSegs",
              "capture on the other side of the load balancer: did the data get there?"]},
]


# -- the kernel's word (rst-explain --live) ------------------------------------------------
class Kernel(NamedTuple):
    """What the kernel says of a page's RST (its claim `packet`), as the lab records it
    (tcp:tcp_send_reset; tests/test_live.py checks each against the page's recording):
    sent: a TCP stack of the machine sent it (False: nftables or a forged segment, no
    tcp_send_reset event); reason and state: that event's; via: kernel functions that are on
    the sending task's stack (live mode only: the lab records no stack); not_via: ... that are not."""
    sent: bool
    reason: str | None = None
    state: str | None = None
    via: tuple[str, ...] = ()
    not_via: tuple[str, ...] = ()


KERNEL_POINTS = 4  # a page whose kernel signature matches the RST's gains this; one that does not is ruled out
_ABORTED = ("TCP_ABORT_ON_CLOSE", "TCP_CLOSE")   # __tcp_close() in net/ipv4/tcp.c: close() with unread data
_TIME_WAIT = ("TCP_TIMEWAIT_SOCKET", "TCP_TIME_WAIT")  # tcp_v4_rcv() in net/ipv4/tcp_ipv4.c: TCP_TW_RST
_DISCONNECT = ("TCP_STATE", "TCP_CLOSE")  # tcp_disconnect() in net/ipv4/tcp.c, once the state is TCP_CLOSE
KERNEL: dict[str, Kernel] = {
    "closed-port": Kernel(True, "NO_SOCKET", "UNKNOWN"),
    "firewall-reject": Kernel(False),
    "connect-timeout": Kernel(True, "NO_SOCKET", "UNKNOWN"),
    "syn-sent-bad-ack": Kernel(True, "TCP_INVALID_ACK_SEQUENCE", "TCP_SYN_SENT"),
    "backlog-overflow": Kernel(True, "INVALID_SYN", "TCP_LISTEN"),
    "syn-flood-cookies": Kernel(True, "TCP_FLAGS", "TCP_LISTEN"),
    "conntrack-invalid": Kernel(True, "NO_SOCKET", "UNKNOWN"),
    "keepalive-probe-reset": Kernel(True, "NO_SOCKET", "UNKNOWN"),
    "peer-lost-state": Kernel(True, "NO_SOCKET", "UNKNOWN"),
    "idle-timeout-middlebox": Kernel(False),
    "keepalive-race": Kernel(True, *_TIME_WAIT),
    "proxy-keepalive-race": Kernel(True, *_TIME_WAIT),
    "write-after-peer-close": Kernel(True, *_TIME_WAIT),
    "time-wait-rst": Kernel(True, "TCP_FLAGS", "TCP_LISTEN"),
    "lb-idle-reset-both": Kernel(False),
    "rst-injection": Kernel(False),
    "tls-clienthello-reset": Kernel(False),
    # SO_LINGER 0: __tcp_close() calls tcp_disconnect() (net/ipv4/tcp.c)
    "linger-zero": Kernel(True, *_DISCONNECT, not_via=("inet_csk_listen_stop",)),
    "health-check-linger": Kernel(True, *_DISCONNECT, not_via=("inet_csk_listen_stop",)),
    "proxy-upstream-reset": Kernel(True, *_DISCONNECT, not_via=("inet_csk_listen_stop",)),
    # `ss -K`: tcp_abort() in net/ipv4/tcp.c resets before it moves the socket to TCP_CLOSE
    "ss-kill": Kernel(True, "TCP_STATE", "TCP_ESTABLISHED", via=("tcp_abort",)),
    # a listener closed with connections queued: inet_csk_listen_stop() in
    # net/ipv4/inet_connection_sock.c, through inet_child_forget() and tcp_disconnect()
    "listener-closed-queue": Kernel(True, *_DISCONNECT, via=("inet_csk_listen_stop",)),
    # a process that dies closes its descriptors from do_exit() (kernel/exit.c)
    "unread-data-close": Kernel(True, *_ABORTED, not_via=("do_exit",)),
    "process-killed": Kernel(True, *_ABORTED, via=("do_exit",)),
    "accepted-then-reset": Kernel(True, *_ABORTED, not_via=("do_exit",)),
    "half-close-misread": Kernel(True, *_ABORTED, not_via=("do_exit",)),
    "early-response-lost": Kernel(True, *_ABORTED, not_via=("do_exit",)),
    # tcp_keepalive_timer() in net/ipv4/tcp_timer.c, its probes unanswered
    "keepalive-timeout": Kernel(True, "TCP_KEEPALIVE_TIMEOUT", "TCP_ESTABLISHED", via=("tcp_keepalive_timer",)),
}
