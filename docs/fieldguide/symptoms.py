"""What readers saw (an exception, a log line) -> the scenarios that produce it.

Readers arrive with an error string, not a scenario name. This hook builds, from the
recordings in build/traces/SLUG.json and nothing typed by hand:

- `{{ symptom_index }}` (docs/symptoms.md): every failure an application met in this
  build's runs, grouped by errno (or by exception class when there is none), each linked
  to the scenario page and to the packet that explains it;
- a "You may have seen" section at the end of every scenario page, the same entries for
  that scenario.

What a run captured: every call a host's application made that raised (class, errno,
message: the `outcomes` of SLUG.json), and the log lines the example noted
(`host.note("log", ...)`) that name a Python exception, the error lines nginx wrote as the
proxy of the proxy-* scenarios (`host.note("nginx error.log", ...)`, with the `nginx -v`
its run noted: LOG_FORMATS), and what each real client program printed (curl, Node.js, Go,
Java, Python's libraries: lab/clients.py), and a 5xx status line a client received (a proxy's
502: `host.note("status line", ...)`, or a program's first line). Lines printed by
software the lab cannot run (Envoy, a cloud's load balancer) are quoted in
quoted_symptoms.yml, each with its version and public source, and shown beside the
captured ones that share their errno.

The packet that explains a failure follows from what the kernel does with it:
ECONNRESET, EPIPE and ECONNREFUSED come from a RST the host received, ECONNABORTED from
one it sent itself (a local abort), an end of stream (RemoteDisconnected) from the FIN it
received, a timeout from the SYN (or FIN) it sent and whose answer never came in time.
The hook picks the first such packet in the capture; the page's own trace anchors it.

It reads the recordings recordings.py has loaded and checked; the index is the placeholder
{{ symptom_index }} (placeholders.py), and "You may have seen" is added by expand_page().
"""

from __future__ import annotations

import errno as errno_module
import os
import re
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import yaml
from lab.artifact import Packet, Recording

from .render import HTTP_STATUS_LINE, capture_of, literal, name_id, plain

OWN_WORDING = "本指南用语"  # "this guide's wording": beside a name that is ours, not glibc's

QUOTED = Path(__file__).with_name("quoted_symptoms.yml")

# a noted log line is a symptom when it names a Python exception (ConnectionResetError: ...)
_EXCEPTION_IN_LOG = re.compile(r"\b[A-Z]\w*(?:Error|Exception)\b")

# nginx's error.log line: "<date> <time> [<level>] <pid>#<tid>: *<connection> <message>, client: ..."
# (ngx_log_error_core(), src/core/ngx_log.c; ", client: ..." is ngx_http_log_error()'s, in
# src/http/ngx_http_request.c). The message is what a reader searches for; the rest is this run's.
_NGINX_ERROR = re.compile(r"^\S+ \S+ \[(?:error|crit|alert|emerg)\] \d+#\d+: (?:\*\d+ )?(?P<message>.+?)(?:, client: .*)?$")
_NGINX_ERRNO = re.compile(r"\((\d+): [^)]*\)")  # "(104: Connection reset by peer)": the kernel's errno

# (direction, flag) of the packet that explains a failure, tried in order
_EXPLAINED_BY: dict[str, list[tuple[str, str]]] = {
    "ECONNRESET": [("received", "R")],
    "EPIPE": [("received", "R")],
    "ECONNREFUSED": [("received", "R")],
    "ECONNABORTED": [("sent", "R")],
    "RemoteDisconnected": [("received", "F")],
    "TimeoutError": [("sent", "S"), ("sent", "F")],
}
_HTTP_EXPLAINED_BY = [("received", "P")]  # an HTTP 5xx: the response segment that carried it
_WHY = {
    ("received", "R"): "the RST it received",
    ("sent", "R"): "the RST it sent",
    ("received", "F"): "the FIN it received",
    ("sent", "S"): "the SYN it sent",
    ("sent", "F"): "the FIN it sent",
    ("received", "P"): "the response it received",
}


@dataclass(frozen=True)
class Seen:
    """One failure an application of a scenario met, as the run recorded it."""

    slug: str
    title: str
    host: str
    call: str  # the recorded call, e.g. "recv(1024)", or "log" for a noted log line
    text: str  # what the application shows: "ConnectionResetError: [Errno 104] ..."
    key: str  # errno name, or the exception class when there is no errno
    source: str  # "Python", "log", "response" (a status line received) or "program"
    packet: Packet | None  # the packet that explains it (anchored on the scenario page)
    why: str  # "the RST it received"...
    anchor: str  # its anchor on the scenario page (its name), or the trace's
    # a client program's line (the client session, `nox -s clients`): its capture, as the site
    # publishes it (programs.capture_of()); its packet is that session's trace's, which the
    # scenario's page shows under the programs' rows (anchor: programs.session_id())
    capture: str = ""
    logged_by: str = ""  # a log line's writer, as the index names it: "the server application"

    @property
    def packet_label(self) -> str:
        if self.packet is None:
            return "the trace"
        return self.packet.name or f"packet {self.packet.number}"


# -- from a recording to what its applications saw -------------------------------------------

def explaining_packets(rec: Recording, host: str, key: str,
                       among: set[int] | None = None) -> tuple[list[Packet], str]:
    """Per connection, the packet that explains `key` on `host` (in capture order), and why.

    A connection can see several RSTs (a forged one may be ignored, the next one kills it):
    the last one the host received is the one it died of. A timeout is explained by the
    first SYN (or FIN) the host sent on the connection.
    """
    for direction, flag in _HTTP_EXPLAINED_BY if http_status(key) else _EXPLAINED_BY.get(key, []):
        side = "receiver" if direction == "received" else "sender"
        chosen: dict[tuple[Any, ...], Packet] = {}
        for p in rec.packets:
            if p.proto != "tcp" or getattr(p, side) != host or (among is not None and p.number not in among):
                continue
            if (p.flags == "S") if flag == "S" else (flag in p.flags):
                connection = tuple(sorted([(p.src, p.sport), (p.dst, p.dport)]))
                if flag == "S":
                    chosen.setdefault(connection, p)
                else:
                    chosen[connection] = p
        if chosen:
            return sorted(chosen.values(), key=lambda p: p.number), _WHY[(direction, flag)]
    return [], "the trace"


def http_error(line: str) -> str | None:
    """A 5xx status line's key: "HTTP 502 Bad Gateway" (the reason phrase is RFC 9110's, read
    from Python's http.HTTPStatus, so that curl's "HTTP/1.1 502 Bad Gateway" and Node's
    "HTTP 502" meet in one group)."""
    found = HTTP_STATUS_LINE.match(line.strip())
    if not found or not found.group(1).startswith("5"):  # a 5xx: what a proxy answers when its upstream failed
        return None
    code = int(found.group(1))
    try:
        return f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


def http_status(key: str) -> bool:
    return key.startswith("HTTP ")


def _errno_of(text: str) -> str | None:
    found = re.search(r"\[Errno (\d+)\]", text)
    return errno_module.errorcode.get(int(found.group(1))) if found else None


def _python_failure(line: str) -> tuple[str, str] | None:
    """A Python application's log line naming an exception: the line, keyed by its errno or class."""
    exception = _EXCEPTION_IN_LOG.search(line)
    return (line, _errno_of(line) or exception.group(0)) if exception else None


def _nginx_failure(line: str) -> tuple[str, str] | None:
    """nginx's error-level line: its message, keyed by the errno it prints; a message without
    one is an end of stream when nginx says the upstream closed (ngx_http_upstream.c logs
    "upstream prematurely closed connection" when recv() returns 0: the upstream's FIN)."""
    found = _NGINX_ERROR.match(line)
    if not found:
        return None
    message = found.group("message")
    number = _NGINX_ERRNO.search(message)
    if number:
        return message, errno_module.errorcode.get(int(number.group(1)), number.group(1))
    if "upstream prematurely closed connection" in message:
        return message, "RemoteDisconnected"
    return None


@dataclass(frozen=True)
class LogFormat:
    """A kind of log line the examples note (host.note(NAME, line)), read for failures."""

    note: str  # the note's name in SLUG.json's outcomes
    logged_by: str  # who wrote it, as the index says
    version_note: str | None  # the note holding the writer's version, on the same host
    failure: Any  # line -> (text shown, key), or None when the line is no failure


STATUS_NOTE = "status line"  # a client's note of a response's status line (host.note("status line", ...))

LOG_FORMATS = {f.note: f for f in [
    LogFormat("log", "the server application", None, _python_failure),
    LogFormat("nginx error.log", "nginx", "nginx -v", _nginx_failure),  # lab/nginx.py's error_log()
]}


def _logged_by(form: LogFormat, entries: list[dict[str, Any]]) -> str:
    """"nginx (nginx version: nginx/1.22.1)": the writer, with the version its run noted."""
    versions = [_unquote(e["returned"]) for e in entries if form.version_note and e["call"] == form.version_note]
    return f"{form.logged_by} ({versions[0]})" if versions else form.logged_by


def program_key(rec: Recording, host: str, entry: dict[str, Any]) -> str:
    """A client program's failure, keyed as a Python one is: the errno the program printed,
    else the last one the kernel reported to its sockets (inet_sk_error_report), else
    RemoteDisconnected when its connection ended with a FIN, else its own first word."""
    if entry.get("errno") or entry.get("kernel_errors"):
        return entry.get("errno") or entry["kernel_errors"][-1]
    mine = set(entry["packets"])
    if any("F" in p.flags for p in rec.packets if p.number in mine and p.receiver == host):
        return "RemoteDisconnected"
    return entry["raised"].split(":")[0]


def seen_in(rec: Recording, capture: str = "") -> list[Seen]:
    """Every failure the recording holds, once per (host, call, text). capture: rec is the
    client session's (published there): only its programs' lines are taken, the rest is
    the catalogue's recording's."""
    found: dict[tuple[str, str, str], Seen] = {}
    failures: dict[tuple[str, str, str], int] = {}  # (host, errno, call name) -> failures so far
    for host, entries in rec.outcomes.items():
        for entry in entries:
            if "program" in entry:  # a real client program (lab/clients.py): its own first line
                status = http_error(entry["output"][0]) if entry["output"] and "raised" not in entry else None
                if "raised" not in entry and not status:
                    continue
                key = status or program_key(rec, host, entry)
                shown = entry["output"][0] if status else entry["raised"]
                packets, why = explaining_packets(rec, host, key, among=set(entry["packets"]))
                packet = packets[-1] if packets else None
                program = f"{entry['program']['name']} ({entry['program']['version']})"
                found[(host, entry["call"], shown)] = Seen(
                    rec.slug, rec.title, host, program, shown, key, "program", packet, why,
                    name_id(rec, packet, own_page=False) if packet else "the-trace", capture)
                continue
            if entry.get("phase") == "programs" or capture:  # the servers' side of the programs' runs
                continue
            logged_by = ""
            if "raised" in entry:
                text = f"{entry['raised']}: {entry['message']}" if entry["message"] else entry["raised"]
                key, source = entry.get("errno") or entry["raised"], "Python"
            elif entry["call"] == STATUS_NOTE and http_error(_unquote(entry.get("returned", ""))):
                text = _unquote(entry["returned"])
                key, source = http_error(text), "response"
            elif entry["call"] in LOG_FORMATS and "returned" in entry:
                form = LOG_FORMATS[entry["call"]]
                failure = form.failure(_unquote(entry["returned"]))
                if failure is None:
                    continue
                (text, key), source, logged_by = failure, "log", _logged_by(form, entries)
            else:
                continue
            # the n-th failure of one call (connect, recv, log...) died on the n-th connection
            # that saw the explaining packet: firewall-reject's two refused connects
            kind = (host, key, re.split(r"[(:]", entry["call"])[0])
            nth = failures.get(kind, 0)
            failures[kind] = nth + 1
            if (host, entry["call"], text) in found:
                continue
            packets, why = explaining_packets(rec, host, key)
            packet = packets[min(nth, len(packets) - 1)] if packets else None
            anchor = name_id(rec, packet) if packet else "the-trace"
            found[(host, entry["call"], text)] = Seen(
                rec.slug, rec.title, host, entry["call"], text, key, source, packet, why, anchor,
                logged_by=logged_by)
    return list(found.values())


def _unquote(shown: str) -> str:
    """A noted value is recorded as its repr(); a log line reads better without the quotes."""
    if len(shown) >= 2 and shown[0] == shown[-1] and shown[0] in "'\"":
        return shown[1:-1]
    return shown


def load_quoted() -> list[dict[str, Any]]:
    """Lines of software the lab does not run, each with its public source."""
    entries = yaml.safe_load(QUOTED.read_text())
    for entry in entries:
        missing = {"software", "version", "text", "matches", "source"} - set(entry)
        if missing or not str(entry["source"]).startswith("https://"):
            raise ValueError(f"{QUOTED.name}: entry {entry.get('text')!r} lacks {missing or 'an https source'}")
    return entries


# -- Markdown ---------------------------------------------------------------------------------

def _link(src: str, target: str) -> str:
    return "../" * src.count("/") + target


def describe_key(key: str) -> str:
    """ECONNRESET -> "ECONNRESET (104, Connection reset by peer)"; a class name stays as it is."""
    number = getattr(errno_module, key, None)
    if isinstance(number, int):
        return f"{key} ({number}, {os.strerror(number)})"
    return key


def group_id(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-") or "other"


def _where(seen: Seen, src: str, own_page: bool) -> str:
    call = (f"log, written by {plain(seen.logged_by)}" if seen.logged_by != LOG_FORMATS["log"].logged_by
            else "log") if seen.source == "log" else "response" if seen.source == "response" else literal(seen.call)
    target = f"#{seen.anchor}" if own_page else _link(src, f"scenarios/{seen.slug}.md") + f"#{seen.anchor}"
    if seen.source == "program":  # its packet is on the page's fold of the client session's trace
        return (f"{plain(seen.call)}, run as the client, explained by {seen.why}:"
                f" [{plain(seen.packet_label)}]({target}) of the client session's trace")
    return f"the {plain(seen.host)}'s {call}, explained by {seen.why}: [{plain(seen.packet_label)}]({target})"


def _quoted_for(quoted: list[dict[str, Any]], keys: set[str]) -> list[dict[str, Any]]:
    return [q for q in quoted if keys & set(q["matches"])]


def _quoted_line(q: dict[str, Any]) -> str:
    note = f" ({plain(q['note'])})" if q.get("note") else ""
    return f"{plain(q['software'])}: {literal(q['text'])}{note} ([source, {plain(q['version'])}]({q['source']}))"


def _all_seen(recordings: dict[str, Recording], programs: dict[str, Recording] | None) -> list[Seen]:
    """The catalogue's failures, and the client programs' (programs: the client session's
    recordings, when the build has them)."""
    return ([s for rec in recordings.values() for s in seen_in(rec)]
            + [s for rec in (programs or {}).values() for s in seen_in(rec, capture_of(rec.slug))])


def _groups(recordings: dict[str, Recording], programs: dict[str, Recording] | None = None
            ) -> tuple[dict[str, list[Seen]], list[str]]:
    """Every captured failure by errno (or exception class), and the keys, most scenarios first."""
    groups: dict[str, list[Seen]] = {}
    for seen in _all_seen(recordings, programs):
        groups.setdefault(seen.key, []).append(seen)
    if not groups:
        raise ValueError("no recording holds a failed call; run `nox -s docs`")
    return groups, sorted(groups, key=lambda k: (-len({s.slug for s in groups[k]}), k))


def _chinese(key: str, chinese: dict[str, Any]) -> str:
    text = chinese.get("messages", {}).get(key)
    return f' <span lang="zh-CN">{literal(text)}</span>' if text else ""


def errno_names(recordings: dict[str, Recording]) -> list[str]:
    """The errno names among the failures the scenarios met (ECONNRESET, ...)."""
    groups, _ = _groups(recordings)
    return [k for k in groups if isinstance(getattr(errno_module, k, None), int)]


def symptom_summary(recordings: dict[str, Recording], src: str, chinese: dict[str, Any] | None = None) -> str:
    """For the home page: each error the scenarios met, linked to its part of the index."""
    groups, order = _groups(recordings)
    out = []
    for key in order:
        count = len({s.slug for s in groups[key]})
        out.append(f"- [**{plain(describe_key(key))}**]({_link(src, 'symptoms.md')}#{group_id(key)}):"
                   f" {count} scenario{'s' if count > 1 else ''}" + _chinese(key, chinese or {}))
    return "\n".join(out)


def symptom_index(recordings: dict[str, Recording], quoted: list[dict[str, Any]], src: str,
                  chinese: dict[str, Any] | None = None, programs: dict[str, Recording] | None = None) -> str:
    """Every captured failure, grouped by errno (or exception class), most scenarios first;
    with glibc's Chinese text of each errno where it was recorded (programs: the client
    session's recordings, when the build has them)."""
    chinese = chinese or {}
    groups, order = _groups(recordings, programs)
    out = []  # a list, not a table: the error texts are long and phones are narrow
    for key in order:
        texts = sorted({s.text for s in groups[key]})
        count = len({s.slug for s in groups[key]})
        out.append(f"- **[{plain(key)}](#{group_id(key)})** ({count} scenario{'s' if count > 1 else ''}): "
                   + ", ".join(literal(t) for t in texts))
    out.append("")
    for key in order:
        # the error's Chinese names in its heading: a heading is what search ranks first (its
        # title field), so a Chinese reader's query for the error lands on this entry. glibc's
        # text is recorded (chinese.glibc_messages); the guide's own wording (chinese.yml's
        # `errors`) is marked as ours, so it is not taken for any program's output
        zh, own = chinese.get("messages", {}).get(key), chinese.get("names", {}).get(key)
        names = ([plain(zh)] if zh else []) + ([f"{plain(own)}（{OWN_WORDING}）"] if own else [])
        named = " · ".join(names)
        named = f' · <span lang="zh-CN">{named}</span>' if named else ""
        out += [f"## {plain(describe_key(key))}{named} {{ #{group_id(key)} }}", ""]
        if zh:
            also = f"; this guide's Chinese pages call it <span lang=\"zh-CN\">{plain(own)}</span>" if own else ""
            out += [f"On a Chinese system ({plain(chinese['by'])}), the same error reads"
                    f"{_chinese(key, chinese)} (中文系统上的报错){also}.", ""]
        by_text: dict[str, list[Seen]] = {}
        for seen in groups[key]:
            by_text.setdefault(seen.text, []).append(seen)
        for text, seens in sorted(by_text.items()):
            kind = (f"logged by {plain(seens[0].logged_by)}" if all(s.source == "log" for s in seens)
                    else "printed by a client program" if all(s.source == "program" for s in seens)
                    else "the status line Python's http.client received" if all(s.source == "response" for s in seens)
                    else "raised in Python")
            out += [f"{literal(text)} ({kind}), in:", ""]
            # the scenarios' titles are not searched here: a search for SO_LINGER should find
            # its scenario's page, not this index that names it
            out += ['<div data-search-exclude markdown>', ""]
            for seen in sorted(seens, key=lambda s: (s.slug, s.host, s.call)):
                page = _link(src, f"scenarios/{seen.slug}.md")
                out.append(f"- [{plain(seen.title)}]({page}): {_where(seen, src, own_page=False)}")
            out += ["", "</div>", ""]
        others = _quoted_for(quoted, {key})
        if others:
            out += ["The same event in software these scenarios do not run (quoted):", ""]
            out += [f"- {_quoted_line(q)}" for q in others]
            out.append("")
    return "\n".join(out)


def you_may_have_seen(rec: Recording, quoted: list[dict[str, Any]], src: str,
                      programs: Recording | None = None) -> str:
    """The end of a scenario page: what its applications met, and the same in other software
    (programs: the client session's recording of the scenario, when the build has it)."""
    found = seen_in(rec) + (seen_in(programs, capture_of(rec.slug)) if programs else [])
    # not searched: every page's list of shared errnos would rank all of them alike; the
    # symptom index is the page a search for an error should find
    out = ["## You may have seen { #you-may-have-seen data-search-exclude }", ""]
    if not found:
        out += ["No application call failed in this scenario's run: the reset (if any) happened where"
                " no application was reading or writing. Its traces are the only symptom; the"
                f" [symptom index]({_link(src, 'symptoms.md')}) lists the failures of the other scenarios."]
        return "\n".join(out)
    for seen in found:
        out.append(f"- {literal(seen.text)}: {_where(seen, src, own_page=True)}"
                   f" ([every scenario with {plain(seen.key)}]({_link(src, 'symptoms.md')}#{group_id(seen.key)}))")
    others = _quoted_for(quoted, {s.key for s in found})
    if others:
        out += ["", "The same event in software this scenario does not run (quoted, not recorded here):", ""]
        out += [f"- {_quoted_line(q)}" for q in others]
    return "\n".join(out)
