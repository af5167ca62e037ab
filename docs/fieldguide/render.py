"""Turn one recording (lab.artifact.Recording) into page blocks: Markdown and HTML.

Pure functions, no MkDocs: the tests and the placeholders use them alike. Every value
shown comes from the recording; nothing here knows what a scenario "should" look like.

Recorded text (a message, a call, a returned value, a log line) reaches the page only
through `literal()` or `plain()`: every character that Markdown, HTML or the site's
extensions could read as syntax is written as an HTML character reference, so no
recorded string can become markup, whatever it holds.
"""

from __future__ import annotations

import re
from typing import Any

from lab.artifact import Packet, Recording

from .wireshark import RST_FILTER, Frame, View

# a tcpdump record starts with a timestamp; -v continuation lines start with spaces
_RECORD_START = re.compile(r"^\S")
# counters a reader of a TCP page cares about first; the rest go in a fold
_TCP_COUNTER = re.compile(r"^(Tcp|TcpExt)")
# every ASCII character Markdown, HTML or an extension could read as syntax (and line breaks,
# which would end a table row), as a character reference; letters, digits, spaces and
# non-ASCII text stay as they are
_INERT = str.maketrans({c: f"&#{ord(c)};" for c in map(chr, range(128)) if not (c.isalnum() or c == " ")})


# -- recorded text, escaped by construction ------------------------------------------------

def capture_of(slug: str) -> str:
    """The client session's capture of a scenario (`nox -s clients`), as the site publishes it
    (hooks.on_files): what the client programs' lines point into."""
    return f"traces/clients/{slug}.pcap"


def plain(text: object) -> str:
    """Recorded text as inert page text: all ASCII but letters, digits and spaces as &#N;."""
    return str(text).translate(_INERT)


def literal(text: object) -> str:
    """Recorded text as inline code."""
    return f"<code>{plain(text)}</code>"


# -- the text trace -------------------------------------------------------------------------

def records(rec: Recording) -> list[str]:
    """tcpdump's text split into one record per packet (a -v record spans lines)."""
    found: list[str] = []
    for line in rec.text.splitlines(keepends=True):
        if _RECORD_START.match(line) or not found:
            found.append(line)
        else:
            found[-1] += line
    if len(found) != len(rec.packets):
        raise ValueError(f"{rec.slug}: tcpdump's text has {len(found)} packets,"
                         f" the capture read by scapy has {len(rec.packets)}")
    return found


def packet_id(slug: str, number: int, own_page: bool = True) -> str:
    """The anchor of a packet's trace line; another page's trace gets its slug in front."""
    return f"packet-{number}" if own_page else f"{slug}-packet-{number}"


def name_id(rec: Recording, p: Packet, own_page: bool = True) -> str:
    """The anchor of a packet's name (lab.artifact.anchors); another page's gets its slug in front."""
    anchor = rec.anchor(p)
    return anchor if own_page else f"{rec.slug}-{anchor}"


def check_anchors(rec: Recording) -> None:
    """Every packet's two anchors are distinct from every other's (a name must not look
    like packet-N or like a group member's NAME-K)."""
    seen: dict[str, int] = {}
    for p in rec.packets:
        for anchor in (packet_id(rec.slug, p.number), name_id(rec, p)):
            if seen.setdefault(anchor, p.number) != p.number:
                raise ValueError(f"{rec.slug}: packets {seen[anchor]} and {p.number} would share the anchor #{anchor}")


def packet_ref(rec: Recording, name: str, link: str = "") -> str:
    """Inline: the named packet (or group), linked to its line, with what it is."""
    group = rec.named(name)
    first = group[0]
    target = f"{link}#{name_id(rec, first, own_page=not link)}"
    if len(group) == 1:
        return (f"[{plain(name)}]({target}){{ .fg-packet-ref }}"
                f" ({first.sender} → {first.receiver} {literal(describe_packet(rec, first))})")
    flags = ", ".join(f"[{p.flags}]" for p in group)
    numbers = f"packets {group[0].number}–{group[-1].number}" if len(group) > 1 else ""
    return f"[{plain(name)}]({target}){{ .fg-packet-ref }} ({numbers}: {literal(flags)})"


# -- describing packets and calls in words -------------------------------------------

def isn_before(rec: Recording, p: Packet, src: str, sport: int, dst: str, dport: int) -> int | None:
    """The ISN of the latest SYN from src:sport to dst:dport up to packet p (a 4-tuple may be reused)."""
    found = None
    for q in rec.packets[: p.number]:
        if q.proto == "tcp" and "S" in q.flags and (q.src, q.sport, q.dst, q.dport) == (src, sport, dst, dport):
            found = q.seq
    return found


def relative(rec: Recording, p: Packet) -> tuple[int, int | None]:
    """seq and ack relative to each side's ISN on this connection (tcpdump itself makes only
    segments with the ACK flag relative: SYNs and bare [R] it prints absolute; see
    reading-tcpdump); absolute where the capture has no SYN from that side. ack is None
    without the ACK flag."""
    mine = isn_before(rec, p, p.src, p.sport, p.dst, p.dport)
    theirs = isn_before(rec, p, p.dst, p.dport, p.src, p.sport)
    seq = (p.seq - mine) % 2**32 if mine is not None else p.seq
    if "." not in p.flags:
        return seq, None
    return seq, (p.ack - theirs) % 2**32 if theirs is not None else p.ack


def describe_packet(rec: Recording, p: Packet) -> str:
    """`[R.] seq 0, ack 1, win 0` -- relative numbers, like tcpdump's default output."""
    if p.proto != "tcp":
        return p.flags
    seq, ack = relative(rec, p)
    parts = [f"[{p.flags}] seq {seq}"]
    if ack is not None:
        parts.append(f"ack {ack}")
    parts.append(f"win {p.win}")
    if p.payload:
        parts.append(f"{p.payload} bytes")
    return ", ".join(parts)


def gap_ms(rec: Recording, p: Packet) -> float:
    """Milliseconds since the previous packet in the capture."""
    if p.number == 1:
        return 0.0
    return (p.time - rec.packets[p.number - 2].time) * 1000


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.2f} ms"


def describe_outcome(entry: dict[str, Any]) -> str:
    """One application call and what it got."""
    if "raised" in entry:
        errno = f" ({plain(entry['errno'])})" if entry.get("errno") else ""
        return f"{literal(entry['call'])} raised {literal(entry['raised'] + ': ' + entry['message'])}{errno}"
    if http_error_status(entry):
        return f"{literal(entry['call'])}: {literal(entry['returned'].strip(chr(39)))} (an HTTP error status)"
    return f"{literal(entry['call'])} returned {literal(entry['returned'])}"


def own_calls(rec: Recording) -> dict[str, list[dict[str, Any]]]:
    """Each host's calls made by the example's own steps: without the client programs' phase
    (their runs and what their servers noted: lab/clients.py; fieldguide/programs.py)."""
    return {host: [e for e in entries if e.get("phase") != "programs"] for host, entries in rec.outcomes.items()}


# a response's status line as a client shows it ("HTTP/1.1 502 Bad Gateway", curl's and
# Python's; "HTTP 502", Node's): group 1 is the status code
HTTP_STATUS_LINE = re.compile(r"^HTTP(?:/\d(?:\.\d)?)? ([1-5]\d\d)\b")


def http_error_status(entry: dict[str, Any]) -> int | None:
    """The 4xx or 5xx status a call returned as a status line (RFC 9110, section 15: the
    request failed, though no call raised), else None."""
    found = HTTP_STATUS_LINE.match(str(entry.get("returned", "")).strip("'\""))
    return int(found.group(1)) if found and int(found.group(1)) >= 400 else None


def what_apps_get(rec: Recording) -> list[str]:
    """Per host: the calls that failed (raised, or read back an HTTP error status), else the
    reads that returned end of stream (b''); a read of data says nothing in a short answer
    (the outcomes table has every call)."""
    lines = []
    for host, entries in own_calls(rec).items():
        if not entries:
            lines.append(f"**{plain(host)}**: no application made a call on this host")
            continue
        failed = [e for e in entries if "raised" in e or http_error_status(e)]
        shown = failed or [e for e in entries if e["call"].startswith("recv") and e.get("returned") == "b''"]
        if not shown:
            lines.append(f"**{plain(host)}**: no call raised an error")
            continue
        lines.append(f"**{plain(host)}**: " + "; ".join(describe_outcome(e) for e in shown))
    return lines


def ttl_anomaly(rec: Recording, p: Packet) -> str:
    """If the other packets from this address arrived with another TTL, say so: another box made this one.

    Compared with the address's packets that are not RSTs: two RSTs forged by the same box
    would otherwise vouch for each other.
    """
    others = sorted({q.ttl for q in rec.packets if q.src == p.src and q.number != p.number and "R" not in q.flags})
    if not others or p.ttl in others:
        return ""
    return f"TTL {p.ttl}, where {p.sender}'s other packets arrived with TTL {', '.join(map(str, others))}"


def apps_in_short(rec: Recording) -> str:
    """For the index: each distinct failure as `call()`: Exception (ERRNO), else what reads returned."""
    seen: list[str] = []
    for host, entries in own_calls(rec).items():
        for e in entries:
            if "raised" in e:
                errno = f" ({plain(e['errno'])})" if e.get("errno") else ""
                line = f"**{plain(host)}** {literal(e['call'].split('(')[0] + '()')}: {plain(e['raised'])}{errno}"
                if line not in seen:
                    seen.append(line)
    if seen:
        return "<br>".join(seen)
    reads = [f"**{plain(h)}** {literal('recv()')} → {literal(e['returned'])}" for h, entries in own_calls(rec).items()
             for e in entries if e["call"].startswith("recv")]
    return "no error" + ("<br>" + "<br>".join(dict.fromkeys(reads)) if reads else "")


def resets_in_short(rec: Recording) -> str:
    """For the index: who sent each RST, and a TTL that gives a forger away."""
    lines = []
    for p in rec.resets():
        seen_ttls = sorted({q.ttl for q in rec.packets if q.src == p.src and q.number != p.number
                            and "R" not in q.flags} - {p.ttl})
        who = (f"{p.sender}'s address {literal('[' + p.flags + ']')}, TTL {p.ttl} ≠ {', '.join(map(str, seen_ttls))}"
               if ttl_anomaly(rec, p) else f"{p.sender} {literal('[' + p.flags + ']')}")
        if who not in lines:
            lines.append(who)
    return "<br>".join(lines) or "nobody (no RST)"


def who_resets(rec: Recording) -> list[str]:
    """Each RST in words: who sent it, to whom, with what, and how long after the packet before it."""
    lines = []
    for p in rec.resets():
        anomaly = ttl_anomaly(rec, p)
        sender = (f"a packet with **{p.sender}**'s address ({p.src})" if anomaly else f"**{p.sender}** ({p.src})")
        lines.append(
            f"{sender} sends {literal(describe_packet(rec, p))} to {p.receiver}: "
            f"[{plain(p.name or 'packet ' + str(p.number))}](#{name_id(rec, p)}), "
            f"{_ms(gap_ms(rec, p))} after the packet before it" + (f"; {anomaly}" if anomaly else "")
            + (f"; {kernel_says(rec, p)}" if rec.tracing.get("recorded") else ""))
    return lines


def kernel_says(rec: Recording, p: Packet) -> str:
    """A RST in the kernel's words: the tcp_send_reset that made it, or that none did."""
    if p.kernel is None:
        return "**no TCP stack sent it**: no host's kernel recorded a " + literal("tcp_send_reset") + " for it"
    return (f"{plain(p.kernel['host'])}'s kernel records reason {literal(p.kernel['reason'])},"
            f" its socket in {literal(p.kernel['state'])}")


# -- blocks --------------------------------------------------------------------------

def indent(text: str, spaces: int = 4) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else "" for line in text.splitlines())


def short_answer(rec: Recording, why: str, fix: str = "") -> str:
    """What you see, who sends the RST, why, what the applications get, and last the fix (the
    page's own "In short", linked to its section): the reader's answer in the first screens."""
    resets = who_resets(rec) or ["**nobody**: no RST in this capture"]
    body = [f"**What you see**: {rec.summary}", ""]
    body += ["**Who sends the RST**:", ""] + [f"- {line}" for line in resets] + [""]
    if why:
        body += [f"**Why**: {why}", ""]
    body += ["**What the applications get**:", ""] + [f"- {line}" for line in what_apps_get(rec)]
    if fix:
        body += ["", f"**Fix**: {fix} [How to fix or avoid it](#fix-or-avoid)"]
    return '!!! abstract "The short answer"\n\n' + indent("\n".join(body)) + "\n"


# tcpdump's text inside the trace's <pre>: HTML's three, and what Markdown or an extension
# would read as syntax in it (a trace line can hold a payload tcpdump decoded, e.g. FTP's)
_PRE_INERT = str.maketrans({c: f"&#{ord(c)};" for c in "&<>`*_[]\\{}:|~^=!#"})


def _escape_pre(text: str) -> str:
    return text.translate(_PRE_INERT)


def trace_html(rec: Recording, own_page: bool = True) -> str:
    """tcpdump's text, one anchored line per packet, each marked with its name (or noise);
    the block's text content is exactly SLUG.txt (numbers and names are drawn by CSS)."""
    lines = []
    for p, record in zip(rec.packets, records(rec), strict=True):
        anchor = packet_id(rec.slug, p.number, own_page)
        named = name_id(rec, p, own_page)
        mark = p.name or "noise"
        kind = " fg-rst" if p.is_rst else ""
        first, rest = (record.split("\n", 1) + [""])[:2]
        spoken = f"packet {p.number}, {mark}" + (", a reset" if p.is_rst else "")
        title = f"{mark}: {p.noise}" if p.noise else mark
        if p.is_rst and rec.tracing.get("recorded"):
            title += f" (tcp_send_reset: {p.kernel['reason']} in {p.kernel['state']})" if p.kernel else " (no tcp_send_reset)"
        # the name's anchor is a span: Material hides every a[id] inside highlighted code
        lines.append(
            f'<span class="fg-packet{kind}" id="{anchor}"><span class="fg-anchor" id="{named}"></span>'
            f'<a class="fg-packet-number" href="#{named}" data-packet="{p.number}"'
            f' aria-label="{plain(spoken)}" title="link to this packet (click to copy it)"></a>'
            f"{_escape_pre(first)}"
            f'<a class="fg-packet-name" href="#{named}" data-name="{plain(mark)}" tabindex="-1"'
            f' title="{plain(title)}" aria-hidden="true"></a>'
            f"\n{_escape_pre(rest)}</span>")
    return (f'<div class="highlight fg-trace" data-slug="{rec.slug}"><pre><code>'
            + "".join(lines) + "</code></pre></div>")


def claims_list(rec: Recording, own_page: bool = True) -> str:
    """What this build checked against the capture: the example's claims(), each with its packet."""
    items = []
    for claim in rec.claims:
        mark = {True: ":material-check:", False: ":material-close:"}.get(claim["passed"],
                                                                      ":material-help-circle-outline: not checked:")
        where = ""
        if claim.get("packet"):
            p = rec.packets[claim["packet"] - 1]
            where = f" ([{plain(p.name or 'packet ' + str(p.number))}](#{name_id(rec, p, own_page)}))"
        elif claim.get("detail"):
            where = f" ({literal(claim['detail'])})"
        items.append(f"- {mark} {plain(claim['claim'])}{where}")
    return "\n".join(items)


def _packet_link(rec: Recording, number: int | None, own_page: bool = True) -> str:
    if not number:
        return "not on the wire"
    p = rec.packets[number - 1]
    return f"[{plain(p.name or 'packet ' + str(p.number))}](#{name_id(rec, p, own_page)})"


def not_traced(rec: Recording) -> str:
    """Why the kernel's events are missing from this recording ("" if none is)."""
    t = rec.tracing
    if not t.get("recorded"):
        return "The kernel's events were not recorded in this build: " + plain(t.get("why") or "no reason given") + "."
    gaps = [f"{literal(e)} ({plain(why)})" for e, why in t.get("missing", {}).items()]
    gaps += [plain(t["incomplete"])] if t.get("incomplete") else []
    return ("Not recorded: " + "; ".join(gaps) + ".") if gaps else ""


def kernel_word(rec: Recording, own_page: bool = True) -> str:
    """What the kernel's tracepoints said during the run: each RST sent (tcp_send_reset, its
    reason and the sending socket's state) and accepted (tcp_receive_reset), each drop
    (skb:kfree_skb, its reason and function), each error reported to a socket."""
    missing = not_traced(rec)
    if not rec.tracing.get("recorded"):
        return f'!!! warning "The kernel\'s own word: not recorded"\n\n    {missing}\n'
    out = []
    sent = [e for e in rec.kernel_events if e["event"] == "tcp_send_reset"]
    resets = rec.resets()
    if resets or sent:
        out += ["| RST | sent by | tcp_send_reset: reason | state of the socket (UNKNOWN: none) | accepted by (tcp_receive_reset) |",
                "|---|---|---|---|---|"]
        for p in resets:
            who = (f"{plain(p.kernel['host'])}'s kernel", literal(p.kernel["reason"]), literal(p.kernel["state"])) \
                if p.kernel else ("**no TCP stack**", "no event", "")
            got = (f"{plain(p.received['host'])}, in {literal(p.received['state'])}" if p.received
                   else "no " + literal("tcp_receive_reset"))
            out.append(f"| {_packet_link(rec, p.number, own_page)} | {' | '.join(who)} | {got} |")
        for e in sent:
            if not e.get("packet"):
                out.append(f"| not on this link | {plain(e['host'])}'s kernel | {literal(e['reason'])}"
                           f" | {literal(e['state'])} | |")
        for e in rec.kernel_events:
            if e["event"] == "tcp_receive_reset" and not e.get("packet"):
                out.append(f"| not on this link | | | | {plain(e['host'])}, in {literal(e['state'])} |")
        out.append("")
        if any(p.received is None for p in resets):
            out += ["No `tcp_receive_reset` for a RST: no socket took it as a reset. A TIME-WAIT socket"
                    " ([`tcp_timewait_state_process()`](https://elixir.bootlin.com/linux/v6.18/source/net/ipv4/tcp_minisocks.c))"
                    " or a request socket handles a RST without that event, and a RST that is dropped"
                    " or ignored has none.", ""]
    drops = [e for e in rec.kernel_events if e["event"] == "kfree_skb"]
    if drops:
        out += ["| dropped | by | skb:kfree_skb reason | in |", "|---|---|---|---|"]
        out += [f"| {_packet_link(rec, e.get('packet'), own_page)} | {plain(e['host'])} | {literal(e['reason'])}"
                f" | {literal(e['location'] + '()')} |" for e in drops]
        out.append("")
    errors = [e for e in rec.kernel_events if e["event"] == "inet_sk_error_report"]
    if errors:
        out += ["| error reported to | errno (inet_sk_error_report) |", "|---|---|"]
        out += [f"| {plain(e['host'])} " + (
                    literal(f"{e['src']}.{e['sport']} > {e['dst']}.{e['dport']}") if e["dport"]
                    else f"{literal(e['src'] + '.' + str(e['sport']))}, its peer's address already cleared")
                + f" | {literal(e['errno'])} ({e['error']}) |" for e in errors]
        out.append("")
    if not out:
        out = ["No RST, drop or socket error was recorded by the kernel in this run.", ""]
    if missing:
        out += [missing, ""]
    off_wire = sum(1 for e in sent if not e.get("packet"))
    counts = [f"{len(resets)} RST{'s' if len(resets) != 1 else ''} on the wire"]
    counts += [f"{off_wire} sent but not on this link"] if off_wire else []
    counts += [f"{len(drops)} drop{'s' if len(drops) != 1 else ''}", f"{len(errors)} error{'s' if len(errors) != 1 else ''}"]
    which = "" if own_page else f" ({rec.slug})"
    return (f'???+ abstract "The kernel\'s own word{which}: {", ".join(counts)}"\n\n'
            + indent("\n".join(out)) + "\n")


def states_table(rec: Recording) -> str:
    """Each socket's path through the TCP states, as sock:inet_sock_set_state recorded it."""
    if not rec.tracing.get("recorded") or "inet_sock_set_state" not in rec.tracing.get("events", []):
        return f"<small>Socket states: {not_traced(rec) or 'not recorded.'}</small>"
    if not rec.states:
        return "<small>No socket changed state in this run.</small>"
    rows = ["| socket | its states, in order (sock:inet_sock_set_state) |", "|---|---|"]
    for label, path in rec.states.items():
        rows.append(f"| {literal(label)} | " + " → ".join(literal(s.removeprefix("TCP_")) for s in path) + " |")
    rows += ["", "<small>A socket that enters `TIME-WAIT` ends here at `CLOSE`: the kernel hands the"
             " connection to a time-wait socket of its own"
             " ([`tcp_time_wait()`](https://elixir.bootlin.com/linux/v6.18/source/net/ipv4/tcp_minisocks.c)),"
             " whose states raise no event.</small>"]
    return "\n".join(rows) + "\n"


def trace_block(rec: Recording, own_page: bool = True, pcap_link: str = "") -> str:
    note = (f"Captured on the {plain(rec.captured_on)} by tcpdump {plain(rec.tcpdump_version)};"
            f" each line is numbered in the margin and named by its claim at the end; both link to it.")
    if pcap_link:
        assert rec.pcap is not None
        note += (f" [Download {rec.slug}.pcap]({pcap_link}){{ .fg-pcap download=\"{rec.slug}.pcap\" }}"
                 f" ({len(rec.packets)} packets, {rec.pcap.stat().st_size} bytes; opens in Wireshark"
                 + (", [what it shows](#wireshark)" if own_page else "") + ").")
    # a keyboard reader passes a long trace in one step (each packet's number is a tab stop)
    after = f"after-trace-{rec.slug}"
    return "\n".join([
        f'<a class="fg-skip" href="#{after}">Skip the trace ({len(rec.packets)} packets)</a>'
        + trace_html(rec, own_page) + f'<span id="{after}" tabindex="-1"></span>', "",
        f"<small>{note}</small>", "",
        kernel_word(rec, own_page), "",
        f'??? success "What this build checked against the {rec.slug} capture"', "",
        indent(claims_list(rec, own_page)), ""])


def own_packets(rec: Recording) -> list[Packet]:
    """The packets of the example's own steps: without the client programs' (lab/clients.py),
    which the trace lists and fieldguide/programs.py tabulates."""
    theirs = {n for entries in rec.outcomes.values() for e in entries if "program" in e for n in e["packets"]}
    return [p for p in rec.packets if p.number not in theirs]


def mermaid(rec: Recording) -> str:
    """A sequenceDiagram of the example's own packets (own_packets()): one numbered arrow per
    packet. A RST ends in a cross, its label starts with "RST" and a tinted band marks it, in
    either palette. Participants are h0, h1... with the host's name as label (a name like
    "end" is Mermaid's)."""
    ids = {name: f"h{i}" for i, name in enumerate(rec.hosts)}
    packets = own_packets(rec)
    resets = [p for p in packets if p.is_rst]
    programs = f" The client programs' {len(rec.packets) - len(packets)} packets are in the trace only." \
        if len(packets) < len(rec.packets) else ""
    lines = ["```mermaid", "sequenceDiagram", "    autonumber",
             f"    accTitle: The {len(packets)} packets of the {rec.slug} example, in order",
             "    accDescr: " + _mermaid_text(
                 f"Between {', '.join(rec.hosts)}. "
                 + ("RSTs: " + "; ".join(f"{p.name or p.number} from {p.sender} to {p.receiver}" for p in resets)
                    if resets else "No RST.") + " The trace above lists every packet as text." + programs)]
    for name, ip in rec.hosts.items():
        lines.append(f"    participant {ids[name]} as {name} {ip}")
    if any(p.sender not in ids or p.receiver not in ids for p in packets):
        lines.append("    participant unknown as unknown address")
    for p in packets:
        sender, receiver = ids.get(p.sender, "unknown"), ids.get(p.receiver, "unknown")
        if p.number > 1 and gap_ms(rec, p) >= 10:
            lines.append(f"    Note over {sender},{receiver}: {_ms(gap_ms(rec, p))} later")
        arrow = "-x" if p.is_rst else "->>"
        label = ("RST " if p.is_rst else "") + describe_packet(rec, p)
        if p.number > 1:
            label += f", +{_ms(gap_ms(rec, p))}"
        label += f" ({p.name or 'noise'})"
        if p.is_rst:
            lines.append("    rect rgba(229, 57, 53, 0.18)")
        lines.append(f"    {sender}{arrow}{receiver}: {label}")
        if p.is_rst and ttl_anomaly(rec, p):  # over the arrow: as wide as it, on a phone too
            lines.append(f"    Note over {sender},{receiver}: {ttl_anomaly(rec, p)}")
        if p.is_rst:
            lines.append("    end")
    lines.append("```")
    return "\n".join(lines)


def _mermaid_text(text: str) -> str:
    """One line of plain text for Mermaid: no line break, no statement separator."""
    return " ".join(text.replace(";", ",").replace("#", "").split())


def outcomes_table(rec: Recording) -> str:
    """The example's own calls (the client programs' runs are programs.program_row()'s)."""
    rows = []
    for host, entries in rec.outcomes.items():
        for e in own_calls(rec)[host]:
            if "raised" in e:
                errno = f" ({plain(e['errno'])})" if e.get("errno") else ""
                result = f"raised {literal(e['raised'])}{errno} <br><small>{plain(e['message'])}</small>"
            else:
                result = f"returned {literal(e['returned'])}"
            rows.append((e["t_ms"], host, e["call"], result))
    if not rows:
        return "_No application call was recorded._"
    rows.sort(key=lambda r: r[0])
    out = ["| ms | host | call | result |", "|---:|---|---|---|"]
    out += [f"| {t:.1f} | {plain(h)} | {literal(c)} | {r} |" for t, h, c, r in rows]
    quiet = [h for h, entries in rec.outcomes.items() if not entries]
    if quiet:
        out += ["", "No application call on " + ", ".join(map(plain, quiet)) + ": only the kernel answered there."]
    return "\n".join(out)


def counters_table(rec: Recording) -> str:
    counters = rec.counters
    hosts = list(counters)
    names = sorted({n for c in counters.values() for n in c})
    tcp = [n for n in names if _TCP_COUNTER.match(n)]
    other = [n for n in names if n not in tcp]

    def table(rows: list[str]) -> str:
        head = "| counter | " + " | ".join(map(plain, hosts)) + " |\n|---|" + "---:|" * len(hosts)
        body = [f"| {literal(n)} | " + " | ".join(str(counters[h].get(n, "")) for h in hosts) + " |" for n in rows]
        return "\n".join([head, *body])

    out = [table(tcp) if tcp else "_No TCP counter moved._"]
    if other:
        out += ["", f'??? note "IP counters ({len(other)})"', "", indent(table(other))]
    return "\n".join(out)


def provenance(rec: Recording, pcap_link: str) -> str:
    assert rec.pcap is not None
    body = "\n".join([
        f"- **Recorded at**: {plain(rec.recorded_at)}, by this build",
        f"- **Kernel**: Linux {plain(rec.kernel)}",
        f"- **tcpdump**: {plain(rec.tcpdump_version)}, capturing on the {plain(rec.captured_on)}",
        (f"- **Capture**: [{rec.slug}.pcap]({pcap_link}) ({len(rec.packets)} packets,"
         f" {rec.pcap.stat().st_size} bytes; opens in Wireshark)"),
        f'- **SHA-256**: <code class="fg-sha256">{rec.pcap_sha256}</code>',
        "- **The kernel's events**: " + (
            f"tracepoints {', '.join(literal(e) for e in rec.tracing.get('events', []))} recorded by"
            f" {plain(rec.tracing.get('by', ''))} on Linux {plain(rec.tracing.get('kernel', rec.kernel))}"
            + (f"; {not_traced(rec)}" if not_traced(rec) else "")
            if rec.tracing.get("recorded") else not_traced(rec)),
    ])
    return '!!! info "Provenance"\n\n' + indent(body) + "\n"


# -- Wireshark's view (fieldguide/wireshark.py asked its dissectors) -------------------------

WIRESHARK_TCP = "https://gitlab.com/wireshark/wireshark/-/blob/{tag}/epan/dissectors/packet-tcp.c"
_TCPDUMP_SEQ = re.compile(r"\bseq (\d+)")
_TCPDUMP_ACK = re.compile(r"\back (\d+)")


def _frame_link(rec: Recording, number: int) -> str:
    p = rec.packets[number - 1]
    return f"[{number}](#{packet_id(rec.slug, number)}) {plain(p.name or 'noise')}"


def _frames_shown(rec: Recording, numbers: list[int]) -> str:
    if not numbers:
        return "no packet"
    return ", ".join(_frame_link(rec, n) for n in numbers)


def _numbers(seq: object, ack: object) -> str:
    return literal(f"seq {seq}" + (f", ack {ack}" if ack is not None else ""))


def wireshark_base(rec: Recording, p: Packet, src: str, sport: int, dst: str, dport: int) -> tuple[Packet, int] | None:
    """The packet from which Wireshark took the base of src's relative numbers, up to p, and the base.
    Wireshark 4.0's dissect_tcp() (packet-tcp.c, "initialize base_seq numbers") sets it once per
    side: from that side's first segment (its seq if a SYN, else seq - 1), or, if the other side's
    segment with the ACK flag comes first, from that segment's ack - 1. A pure SYN may start a new
    conversation (port reuse), so the search starts at the latest one."""
    tuple_ = {(src, sport, dst, dport), (dst, dport, src, sport)}
    own = [q for q in rec.packets[: p.number] if q.proto == "tcp" and (q.src, q.sport, q.dst, q.dport) in tuple_]
    syns = [i for i, q in enumerate(own) if "S" in q.flags and "." not in q.flags]
    for q in own[syns[-1] if syns else 0:]:
        if (q.src, q.sport) == (src, sport):
            return q, q.seq if "S" in q.flags else (q.seq - 1) % 2**32
        if "." in q.flags:
            return q, (q.ack - 1) % 2**32
    return None


def _why_numbers(rec: Recording, p: Packet, f: Frame, tcp_source: str, reading_tcpdump: str) -> str:
    """Why Wireshark's relative numbers for p are what they are, next to this page's and tcpdump's,
    said from what the capture holds (a SYN from each side, or none) and checked against what
    Wireshark showed: a reason that does not give Wireshark's number is not given."""
    seq, ack = relative(rec, p)
    mine = isn_before(rec, p, p.src, p.sport, p.dst, p.dport)
    theirs = isn_before(rec, p, p.dst, p.dport, p.src, p.sport)
    function = f"[`dissect_tcp()`]({tcp_source})"
    why = []
    if f.seq != seq:
        base = wireshark_base(rec, p, p.src, p.sport, p.dst, p.dport) if mine is None else None
        if base and f.seq == (p.seq - base[1]) % 2**32:
            q = base[0]
            why.append(f"{plain(p.sender)} sent no SYN in this capture, so Wireshark counts its sequence numbers"
                       + (f" from one less than its first segment's, {_frame_link(rec, q.number)}, which reads Seq=1"
                          if (q.src, q.sport) == (p.src, p.sport) else
                          f" from one less than the first ack {plain(p.receiver)} sent, {_frame_link(rec, q.number)}")
                       + f" ({function})")
        else:
            why.append(f"Wireshark's tcp.seq is not this page's ({function})")
        why.append("this page, with no ISN to count from, gives the number on the wire" if mine is None else "")
    if ack is not None and f.ack != ack:
        base = wireshark_base(rec, p, p.dst, p.dport, p.src, p.sport) if theirs is None else None
        if base and f.ack == (p.ack - base[1]) % 2**32:
            q = base[0]
            why.append(f"{plain(p.receiver)} sent no SYN in this capture, so Wireshark counts the ack"
                       + (f" from one less than the first ack {plain(p.sender)} sent, {_frame_link(rec, q.number)}"
                          if (q.src, q.sport) == (p.src, p.sport) else
                          f" from one less than {plain(p.receiver)}'s first segment's seq, {_frame_link(rec, q.number)}")
                       + f" ({function})")
        else:
            why.append(f"Wireshark's tcp.ack is not this page's ({function})")
    if not [w for w in why if w]:
        why.append(f"Wireshark's relative numbers are this page's: both count from each side's SYN ({function})"
                   if mine is not None and (ack is None or theirs is not None) else
                   "Wireshark's numbers are this page's")
    record = records(rec)[p.number - 1]
    printed = [(int(m.group(1)), shown, raw) for m, shown, raw in
               ((_TCPDUMP_SEQ.search(record), f.seq, f.seq_raw), (_TCPDUMP_ACK.search(record), f.ack, f.ack_raw)) if m]
    unlike = [(number, raw) for number, shown, raw in printed if number != shown]
    if unlike:
        scale = "as on the wire" if all(number == raw for number, raw in unlike) else "counted from another packet"
        why.append(f"tcpdump prints {'them' if len(unlike) > 1 else 'it'} {scale} ([why]({reading_tcpdump}))")
    return "; ".join(w for w in why if w) + "."


def recommended_filter(rec: Recording, display_filter: str, shown: list[int] | None) -> str:
    """A filter the page's prose recommends, as inline code, with what it showed in this
    capture beside it (None: expanded outside a build, nothing asked)."""
    code = f'<code class="fg-wireshark-filter">{plain(display_filter)}</code>'
    if shown is None:
        return code
    return f'{code} <span class="fg-wireshark-shows">(in this capture: {_frames_shown(rec, shown)})</span>'


def recommended_field(field: str) -> str:
    return f'<code class="fg-wireshark-field">{plain(field)}</code>'


def wireshark_view(rec: Recording, view: View, pcap_link: str, reading_tcpdump: str) -> str:
    """What Wireshark's dissectors said of this capture : the display
    filters with the packets each shows, the Info column, the expert info, and where its
    sequence numbers differ from this page's and tcpdump's."""
    tcp_source = WIRESHARK_TCP.format(tag=view.tag() or "master")
    expert_of: dict[int, list[Any]] = {}  # frame -> its entries
    for e in view.expert:
        expert_of.setdefault(e.frame, []).append(e)
    out = [f"Open [{rec.slug}.pcap]({pcap_link}) in Wireshark and this is what it says; recorded by this"
           f" build, which had Wireshark's own dissectors read this capture (sharkd {literal(view.version)},"
           " default preferences). Wireshark's frame numbers are the trace's packet numbers; each links to"
           " its line.", ""]
    out += ["| display filter | shows in this capture |", "|---|---|"]
    for display_filter, shown in view.filters.items():
        what = "the RSTs: " if display_filter == RST_FILTER else "the conversation of a RST: "
        out.append(f"| {literal(display_filter)} | {what}{_frames_shown(rec, shown)} |")
    for display_filter, shown in view.recommended.items():
        if display_filter not in view.filters:
            out.append(f"| {literal(display_filter)} | recommended on this page: {_frames_shown(rec, shown)} |")
    out.append("")
    marked = [f for f in view.frames if rec.packets[f.number - 1].is_rst
              or any(e.severity != "Chat" for e in expert_of.get(f.number, []))]

    def rows(frames: list[Frame]) -> list[str]:
        return ["| No. | Protocol | Info |", "|---:|---|---|"] + [
            f"| {_frame_link(rec, f.number)} | {plain(f.protocol)} | {literal(f.info)} |" for f in frames]

    if marked:
        out += ["The Info column of each RST and of each packet with expert info above *Chat*:", ""]
        out += rows(marked) + [""]
    # every packet's Info line repeats the trace: kept out of the search index (which every page
    # loads), like the sequence-number table below; the RSTs' lines and the expert info stay searchable
    out += ['<div data-search-exclude markdown>', "",
            f'??? note "Every packet\'s Info column ({len(view.frames)})"', "", indent("\n".join(rows(view.frames))), "",
            "</div>", ""]
    if view.expert:
        out += ["Expert info (*Analyze › Expert Information*), as Wireshark words it:", "",
                "| packet | severity | group | message |", "|---|---|---|---|"]
        out += [f"| {_frame_link(rec, e.frame)} | {plain(e.severity)} | {plain(e.group)} | {literal(e.message)} |"
                for e in view.expert]
        out.append("")
    else:
        out += ["Wireshark has no expert info for this capture.", ""]
    differing = []
    for p, f in zip(rec.packets, view.frames, strict=True):
        if p.proto != "tcp":
            continue
        seq, ack = relative(rec, p)
        if p.is_rst or f.seq != seq or (ack is not None and f.ack != ack):
            differing.append((p, f))
    if differing:
        out += ['<div data-search-exclude markdown>', ""]
        out += ["Sequence numbers: Wireshark's `tcp.seq` and `tcp.ack` are relative by default (its preferences"
                " *Analyze TCP sequence numbers* and *Relative sequence numbers* default to on:"
                f" `tcp_analyze_seq` and `tcp_relative_seq` in [packet-tcp.c]({tcp_source}));"
                " `tcp.seq_raw` and `tcp.ack_raw` are the numbers on the wire. For each RST, and each packet"
                " whose relative numbers are not this page's:", "",
                "| packet | tcpdump's line | this page | Wireshark (tcp.seq, tcp.ack) | on the wire (raw) |",
                "|---|---|---|---|---|"]
        for p, f in differing:
            seq, ack = relative(rec, p)
            has_ack = "." in p.flags
            record = records(rec)[p.number - 1]
            printed_seq, printed_ack = _TCPDUMP_SEQ.search(record), _TCPDUMP_ACK.search(record)
            tcpdump = literal(", ".join(m.group(0) for m in (printed_seq, printed_ack) if m) or "no numbers")
            out.append(f"| {_frame_link(rec, p.number)} | {tcpdump} | {_numbers(seq, ack)}"
                       f" | {_numbers(f.seq, f.ack if has_ack else None)}"
                       f" | {_numbers(f.seq_raw, f.ack_raw if has_ack else None)} |")
        out.append("")
        out += [f"- {_frame_link(rec, p.number)}: {_why_numbers(rec, p, f, tcp_source, reading_tcpdump)}"
                for p, f in differing]
        out += ["", "</div>", ""]
    return "\n".join(out)
