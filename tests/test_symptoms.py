"""The symptom index's rules, on small hand-made recordings (the real ones are checked in
the browser: every symptom's packet link lands on an anchored trace line)."""

from __future__ import annotations

import re
from typing import Any

from fieldguide import symptoms
from lab.artifact import Packet, Recording


def packet(number: int, sender: str, receiver: str, flags: str, port: int = 40000) -> Packet:
    addresses = {"client": "192.0.2.1", "server": "192.0.2.2"}
    client_side = sender == "client"
    return Packet(number, 0.0, sender, receiver, addresses[sender], addresses[receiver],
                  port if client_side else 80, 80 if client_side else port, flags, 0, 0, 0, 0, 64, 0,
                  name=f"p{number}")


def recording(packets: list[Packet], outcomes: dict[str, list[dict[str, Any]]]) -> Recording:
    return Recording("made-up", "Made up", "closing", "", "", "", "", {}, {}, "", outcomes, {}, [],
                     packets, [], "", 0.0, {})


def reset(call: str) -> dict[str, Any]:
    return {"call": call, "raised": "ConnectionResetError", "errno": "ECONNRESET",
            "message": "[Errno 104] Connection reset by peer"}


def test_the_last_rst_of_a_connection_explains_its_reset() -> None:
    """A forged RST that was ignored (challenge ACK) comes first; the one after it killed."""
    data = recording([packet(1, "client", "server", "S"), packet(2, "server", "client", "R."),
                      packet(3, "client", "server", "."), packet(4, "server", "client", "R.")],
                     {"client": [reset("recv(1024)")], "server": []})
    [seen] = symptoms.seen_in(data)
    assert (seen.packet.number, seen.anchor, seen.why, seen.key) == (4, "p4", "the RST it received", "ECONNRESET")
    assert seen.text == "ConnectionResetError: [Errno 104] Connection reset by peer"


def test_each_failed_call_gets_its_own_connection() -> None:
    refused = {"raised": "ConnectionRefusedError", "errno": "ECONNREFUSED", "message": "[Errno 111] Connection refused"}
    data = recording([packet(1, "client", "server", "S", 1), packet(2, "server", "client", "R.", 1),
                      packet(3, "client", "server", "S", 2), packet(4, "server", "client", "R.", 2)],
                     {"client": [{"call": "connect(('192.0.2.2', 80))", **refused},
                                 {"call": "connect(('192.0.2.2', 9))", **refused}]})
    assert [s.packet.number for s in symptoms.seen_in(data)] == [2, 4]


def test_a_timeout_is_explained_by_the_syn_not_the_syn_ack() -> None:
    timeout = {"raised": "TimeoutError", "errno": None, "message": "timed out"}
    data = recording([packet(1, "client", "server", "S"), packet(2, "server", "client", "S."),
                      packet(3, "server", "client", "F.")],
                     {"client": [{"call": "connect(('192.0.2.2', 80))", **timeout}],
                      "server": [{"call": "log", "returned": repr("Request timed out: TimeoutError('timed out')")}]})
    client, server = symptoms.seen_in(data)
    assert (client.packet.number, client.why) == (1, "the SYN it sent")
    assert (server.packet.number, server.why, server.source) == (3, "the FIN it sent", "log")
    assert server.text == "Request timed out: TimeoutError('timed out')"


def test_log_lines_without_an_exception_are_not_symptoms() -> None:
    data = recording([packet(1, "client", "server", "S")],
                     {"server": [{"call": "log", "returned": repr('"GET / HTTP/1.1" 200 -')}]})
    assert symptoms.seen_in(data) == []


def test_a_logged_errno_is_read_from_the_line() -> None:
    data = recording([packet(1, "client", "server", "S"), packet(2, "client", "server", "R.")],
                     {"server": [{"call": "log", "returned": repr("ConnectionResetError: [Errno 104] Connection reset by peer")}]})
    [seen] = symptoms.seen_in(data)
    assert (seen.key, seen.packet.number) == ("ECONNRESET", 2)


def test_every_quoted_line_has_an_https_source_and_matches_something_we_record() -> None:
    quoted = symptoms.load_quoted()
    known = {"ECONNRESET", "ECONNREFUSED", "EPIPE", "ECONNABORTED", "RemoteDisconnected", "TimeoutError"}
    for entry in quoted:
        assert entry["source"].startswith("https://"), entry
        assert set(entry["matches"]) <= known, entry


def program_run(packets: list[int], output: list[str], **fields: Any) -> dict[str, Any]:
    return {"call": "curl: GET http://192.0.2.2:80/", "program": {"name": "curl", "version": "curl 7.88.1", "id": "curl"},
            "output": output, "exit_status": 56, "raised": output[0], "message": "exit status 56",
            "packets": packets, "connections": 1, "kernel_errors": [], **fields}


def test_a_program_line_is_explained_by_a_packet_of_its_own_connections() -> None:
    """The scenario's own RST (packet 2) is not the program's: its own (packet 4) is."""
    data = recording([packet(1, "client", "server", "S", 1), packet(2, "server", "client", "R.", 1),
                      packet(3, "client", "server", "S", 2), packet(4, "server", "client", "R.", 2)],
                     {"client": [program_run([3, 4], ["curl: (56) Recv failure: Connection reset by peer"],
                                             kernel_errors=["ECONNRESET"])]})
    [seen] = symptoms.seen_in(data)
    assert (seen.packet.number, seen.key, seen.source, seen.call) == (4, "ECONNRESET", "program", "curl (curl 7.88.1)")
    assert seen.text == "curl: (56) Recv failure: Connection reset by peer"


def test_a_program_without_an_errno_that_met_a_fin_is_keyed_as_an_end_of_stream() -> None:
    data = recording([packet(1, "client", "server", "S"), packet(2, "server", "client", "F.")],
                     {"client": [program_run([1, 2], ["curl: (52) Empty reply from server"])]})
    [seen] = symptoms.seen_in(data)
    assert (seen.key, seen.packet.number, seen.why) == ("RemoteDisconnected", 2, "the FIN it received")


def test_no_quoted_line_is_of_a_program_the_lab_runs() -> None:
    for entry in symptoms.load_quoted():
        assert entry["version"].strip(), entry
        assert not re.search(r"\b(curl|Node\.js|Go|Java|requests|httpx|aiohttp|nginx)\b", entry["software"]), entry


def test_nginx_error_lines_are_recorded_symptoms_with_nginx_version() -> None:
    """nginx's error.log lines (lab/nginx.py) are read for their message and errno; its
    notice lines and other hosts' notes are not symptoms."""
    log = "2026/12/01 22:15:21 [{level}] 11#11: *1 {message}, client: 192.0.2.1, server: , request: \"GET / HTTP/1.1\""
    data = recording([packet(1, "client", "server", "S"), packet(2, "client", "server", "R."),
                      packet(3, "client", "server", "F.", 40001)],
                     {"server": [{"call": "nginx -v", "returned": repr("nginx version: nginx/1.22.1")},
                                 {"call": "nginx error.log", "returned": repr(log.format(
                                     level="error", message="readv() failed (104: Connection reset by peer) while reading upstream"))},
                                 {"call": "nginx error.log", "returned": repr(log.format(
                                     level="error", message="upstream prematurely closed connection while reading response header from upstream"))},
                                 {"call": "nginx error.log", "returned": repr(log.format(level="notice", message="start worker processes"))}]})
    reset, closed = symptoms.seen_in(data)
    assert (reset.text, reset.key, reset.packet.number, reset.source) == (
        "readv() failed (104: Connection reset by peer) while reading upstream", "ECONNRESET", 2, "log")
    assert (closed.text, closed.key, closed.packet.number, closed.why) == (
        "upstream prematurely closed connection while reading response header from upstream",
        "RemoteDisconnected", 3, "the FIN it received")
    assert reset.logged_by == "nginx (nginx version: nginx/1.22.1)"


def test_a_5xx_status_line_is_a_symptom_and_programs_meet_python_in_one_group() -> None:
    """A proxy's 502 reaches its client as a response, not an error: http.client's noted status
    line and a program's printed one are both symptoms, keyed by code and RFC 9110's phrase, and
    explained by the response segment the client received; a 200 is none."""
    answered = program_run([3, 4], ["HTTP 502"], exit_status=0, returned="HTTP 502")
    del answered["raised"], answered["message"]  # exit status 0: lab/clients.py's Run.wait() records a return
    data = recording([packet(1, "client", "server", "S"), packet(2, "server", "client", "P."),
                      packet(3, "client", "server", "S", 40001), packet(4, "server", "client", "P.", 40001)],
                     {"client": [{"call": "status line", "returned": repr("HTTP/1.1 200 OK")},
                                 {"call": "status line", "returned": repr("HTTP/1.1 502 Bad Gateway")}, answered]})
    noted, printed = symptoms.seen_in(data)
    assert (noted.text, noted.key, noted.source, noted.packet.number, noted.why) == (
        "HTTP/1.1 502 Bad Gateway", "HTTP 502 Bad Gateway", "response", 2, "the response it received")
    assert (printed.text, printed.key, printed.source, printed.packet.number) == ("HTTP 502", "HTTP 502 Bad Gateway", "program", 4)
    assert symptoms.http_error("HTTP 200") is None and symptoms.http_error("HTTP/2 503") == "HTTP 503 Service Unavailable"
