"""Turn one recorded run (build/traces/SLUG.{txt,json}) into page blocks.

Pure functions from the lab's artifacts to Markdown/HTML; no MkDocs here, so
tests and the notebook can use them too. Every value shown comes from the
recording: nothing here knows what a scenario "should" look like.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# a tcpdump record starts with a timestamp; -v continuation lines start with spaces
_RECORD_START = re.compile(r"^\S")
# counters a reader of a TCP page cares about first; the rest go in a fold
_TCP_COUNTER = re.compile(r"^(Tcp|TcpExt)")


@dataclass(frozen=True)
class Recording:
    """One scenario's artifacts, as the lab published them."""

    slug: str
    data: dict[str, Any]
    text: str  # tcpdump's own text, exactly as recorded
    pcap: Path

    @property
    def packets(self) -> list[dict[str, Any]]:
        return self.data["packets"]

    @property
    def title(self) -> str:
        return self.data["title"]

    @property
    def phase(self) -> str:
        return self.data["phase"]

    @property
    def summary(self) -> str:
        return self.data["summary"]

    def packet(self, number: int) -> dict[str, Any]:
        if not 1 <= number <= len(self.packets):
            raise LookupError(f"{self.slug}: there is no packet {number} (the capture has {len(self.packets)})")
        return self.packets[number - 1]

    def resets(self) -> list[dict[str, Any]]:
        return [p for p in self.packets if p.get("proto") == "tcp" and "R" in p["flags"]]

    def records(self) -> list[str]:
        """tcpdump's text split into one record per packet (a -v record spans lines)."""
        records: list[str] = []
        for line in self.text.splitlines(keepends=True):
            if _RECORD_START.match(line) or not records:
                records.append(line)
            else:
                records[-1] += line
        if len(records) != len(self.packets):
            raise ValueError(f"{self.slug}: tcpdump's text has {len(records)} packets,"
                             f" the capture read by scapy has {len(self.packets)}")
        return records


def packet_id(slug: str, number: int, own_page: bool = True) -> str:
    """The anchor of a packet's trace line; another page's trace gets its slug in front."""
    return f"packet-{number}" if own_page else f"{slug}-packet-{number}"


# -- describing packets and calls in words -------------------------------------------

def isn_before(rec: Recording, p: dict[str, Any], src: str, sport: int, dst: str, dport: int) -> int | None:
    """The ISN of the latest SYN from src:sport to dst:dport up to packet p (a 4-tuple may be reused)."""
    found = None
    for q in rec.packets[: p["number"]]:
        if (q.get("proto") == "tcp" and "S" in q["flags"]
                and (q["src"], q["sport"], q["dst"], q["dport"]) == (src, sport, dst, dport)):
            found = q["seq"]
    return found


def relative(rec: Recording, p: dict[str, Any]) -> tuple[int, int | None]:
    """seq and ack relative to each side's ISN on this connection, as tcpdump shows them;
    absolute where the capture has no SYN from that side. ack is None without the ACK flag."""
    mine = isn_before(rec, p, p["src"], p["sport"], p["dst"], p["dport"])
    theirs = isn_before(rec, p, p["dst"], p["dport"], p["src"], p["sport"])
    seq = (p["seq"] - mine) % 2**32 if mine is not None else p["seq"]
    if "." not in p["flags"]:
        return seq, None
    return seq, (p["ack"] - theirs) % 2**32 if theirs is not None else p["ack"]


def describe_packet(rec: Recording, p: dict[str, Any]) -> str:
    """`[R.] seq 0, ack 1, win 0` -- relative numbers, like tcpdump's default output."""
    if p.get("proto") != "tcp":
        return p["flags"]
    seq, ack = relative(rec, p)
    parts = [f"[{p['flags']}] seq {seq}"]
    if ack is not None:
        parts.append(f"ack {ack}")
    parts.append(f"win {p['win']}")
    if p["payload"]:
        parts.append(f"{p['payload']} bytes")
    return ", ".join(parts)


def gap_ms(rec: Recording, p: dict[str, Any]) -> float:
    """Milliseconds since the previous packet in the capture."""
    if p["number"] == 1:
        return 0.0
    return (p["time"] - rec.packet(p["number"] - 1)["time"]) * 1000


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.2f} ms"


def describe_outcome(entry: dict[str, Any]) -> str:
    """One application call and what it got, as Markdown."""
    if "raised" in entry:
        errno = f" ({entry['errno']})" if entry.get("errno") else ""
        return f"`{entry['call']}` raised `{entry['raised']}: {entry['message']}`{errno}"
    return f"`{entry['call']}` returned `{entry['returned']}`"


def what_apps_get(rec: Recording) -> list[str]:
    """Per host: the calls that failed, else what its reads returned."""
    lines = []
    for host, entries in rec.data["outcomes"].items():
        if not entries:
            lines.append(f"**{host}**: no application made a call on this host")
            continue
        failed = [e for e in entries if "raised" in e]
        shown = failed or [e for e in entries if e["call"].startswith("recv")]
        if not shown:
            lines.append(f"**{host}**: every call succeeded")
            continue
        lines.append(f"**{host}**: " + "; ".join(describe_outcome(e) for e in shown))
    return lines


def ttl_anomaly(rec: Recording, p: dict[str, Any]) -> str:
    """If the other packets from this address arrived with another TTL, say so: another box made this one.

    Compared with the address's packets that are not RSTs: two RSTs forged by the same box
    would otherwise vouch for each other.
    """
    others = sorted({q["ttl"] for q in rec.packets
                     if q["src"] == p["src"] and q["number"] != p["number"] and "R" not in q["flags"]})
    if not others or p["ttl"] in others:
        return ""
    return f"TTL {p['ttl']}, where {p['sender']}'s other packets arrived with TTL {', '.join(map(str, others))}"


def apps_in_short(rec: Recording) -> str:
    """For the index: each distinct failure as `call()`: Exception (ERRNO), else what reads returned."""
    seen: list[str] = []
    for host, entries in rec.data["outcomes"].items():
        for e in entries:
            if "raised" in e:
                errno = f" ({e['errno']})" if e.get("errno") else ""
                line = f"**{host}** `{e['call'].split('(')[0]}()`: {e['raised']}{errno}"
                if line not in seen:
                    seen.append(line)
    if seen:
        return "<br>".join(seen)
    reads = [f"**{h}** `recv()` → `{e['returned']}`" for h, entries in rec.data["outcomes"].items()
             for e in entries if e["call"].startswith("recv")]
    return "no error" + ("<br>" + "<br>".join(dict.fromkeys(reads)) if reads else "")


def resets_in_short(rec: Recording) -> str:
    """For the index: who sent each RST, and a TTL that gives a forger away."""
    lines = []
    for p in rec.resets():
        seen_ttls = sorted({q["ttl"] for q in rec.packets if q["src"] == p["src"] and q["number"] != p["number"]})
        who = (f"{p['sender']}'s address `[{p['flags']}]`, TTL {p['ttl']} ≠ {', '.join(map(str, seen_ttls))}"
               if ttl_anomaly(rec, p) else f"{p['sender']} `[{p['flags']}]`")
        if who not in lines:
            lines.append(who)
    return "<br>".join(lines) or "nobody (no RST)"


def who_resets(rec: Recording, link: str = "#") -> list[str]:
    """Each RST in words: who sent it, to whom, with what, and how long after the packet before it."""
    lines = []
    for p in rec.resets():
        address = p["src"]
        anomaly = ttl_anomaly(rec, p)
        sender = (f"a packet with **{p['sender']}**'s address ({address})" if anomaly
                  else f"**{p['sender']}** ({address})")
        lines.append(
            f"{sender} sends `{describe_packet(rec, p)}` to {p['receiver']}: "
            f"[packet {p['number']}]({link}{packet_id(rec.slug, p['number'])}), "
            f"{_ms(gap_ms(rec, p))} after the packet before it" + (f"; {anomaly}" if anomaly else ""))
    return lines


# -- blocks --------------------------------------------------------------------------

def _indent(text: str, spaces: int = 4) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else "" for line in text.splitlines())


def short_answer(rec: Recording, why: str) -> str:
    resets = who_resets(rec) or ["**nobody**: no RST in this capture"]
    body = [f"**What you see**: {rec.summary}", ""]
    body += ["**Who sends the RST**:", ""] + [f"- {line}" for line in resets] + [""]
    if why:
        body += [f"**Why**: {why}", ""]
    body += ["**What the applications get**:", ""] + [f"- {line}" for line in what_apps_get(rec)]
    return '!!! abstract "The short answer"\n\n' + _indent("\n".join(body)) + "\n"


def trace_html(rec: Recording, own_page: bool = True) -> str:
    """tcpdump's text, one anchored line per packet; the text content is exactly SLUG.txt."""
    lines = []
    for number, record in enumerate(rec.records(), start=1):
        anchor = packet_id(rec.slug, number, own_page)
        lines.append(
            f'<span class="fg-packet" id="{anchor}">'
            f'<a class="fg-packet-number" href="#{anchor}" data-packet="{number}"'
            f' title="packet {number}" aria-label="packet {number}"></a>'
            f"{html.escape(record, quote=False)}</span>")
    return (f'<div class="highlight fg-trace" data-slug="{rec.slug}"><pre><code>'
            + "".join(lines) + "</code></pre></div>")


def claims_list(rec: Recording, own_page: bool = True) -> str:
    """What this build checked against the capture: the example's claims(), each with its packet."""
    items = []
    for claim in rec.data["claims"]:
        mark = ":material-check:" if claim["passed"] else ":material-close:"
        where = ""
        if claim.get("packet"):
            where = f" ([packet {claim['packet']}](#{packet_id(rec.slug, claim['packet'], own_page)}))"
        elif claim.get("detail"):
            where = f" (`{claim['detail']}`)"
        items.append(f"- {mark} {claim['claim']}{where}")
    return "\n".join(items)


def trace_block(rec: Recording, own_page: bool = True) -> str:
    note = (f"Captured on the {rec.data['captured_on']} by tcpdump {rec.data['tcpdump_version']};"
            f" the numbers in the margin link to each packet.")
    return "\n".join([
        trace_html(rec, own_page), "",
        f"<small>{note}</small>", "",
        f'??? success "What this build checked against the {rec.slug} capture"', "",
        _indent(claims_list(rec, own_page)), ""])


def mermaid(rec: Recording) -> str:
    """A sequenceDiagram of the capture: one numbered arrow per packet, RSTs end in a cross."""
    hosts = rec.data["hosts"]
    lines = ["```mermaid", "sequenceDiagram", "    autonumber"]
    for name, ip in hosts.items():
        lines.append(f"    participant {name} as {name} {ip}")
    for p in rec.packets:
        sender = p["sender"] if p["sender"] in hosts else "unknown"
        receiver = p["receiver"] if p["receiver"] in hosts else "unknown"
        if p["number"] > 1 and gap_ms(rec, p) >= 10:
            lines.append(f"    Note over {sender},{receiver}: {_ms(gap_ms(rec, p))} later")
        arrow = "-x" if "R" in p["flags"] else "->>"
        label = describe_packet(rec, p)
        if p["number"] > 1:
            label += f", +{_ms(gap_ms(rec, p))}"
        lines.append(f"    {sender}{arrow}{receiver}: {label}")
        if "R" in p["flags"] and ttl_anomaly(rec, p):
            lines.append(f"    Note over {sender}: {ttl_anomaly(rec, p)}")
    lines.append("```")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def outcomes_table(rec: Recording) -> str:
    rows = []
    for host, entries in rec.data["outcomes"].items():
        for e in entries:
            result = (f"raised `{e['raised']}`" + (f" ({e['errno']})" if e.get("errno") else "")
                      + f" <br><small>{html.escape(e['message'])}</small>") if "raised" in e else (
                f"returned `{e['returned']}`")
            rows.append((e["t_ms"], host, e["call"], result))
    if not rows:
        return "_No application call was recorded._"
    rows.sort(key=lambda r: r[0])
    out = ["| ms | host | call | result |", "|---:|---|---|---|"]
    out += [f"| {t:.1f} | {h} | `{_cell(c)}` | {_cell(r)} |" for t, h, c, r in rows]
    quiet = [h for h, entries in rec.data["outcomes"].items() if not entries]
    if quiet:
        out += ["", "No application call on " + ", ".join(quiet) + ": only the kernel answered there."]
    return "\n".join(out)


def counters_table(rec: Recording) -> str:
    counters: dict[str, dict[str, int]] = rec.data["counters"]
    hosts = list(counters)
    names = sorted({n for c in counters.values() for n in c})
    tcp = [n for n in names if _TCP_COUNTER.match(n)]
    other = [n for n in names if n not in tcp]

    def table(rows: list[str]) -> str:
        head = "| counter | " + " | ".join(hosts) + " |\n|---|" + "---:|" * len(hosts)
        body = [f"| `{n}` | " + " | ".join(str(counters[h].get(n, "")) for h in hosts) + " |" for n in rows]
        return "\n".join([head, *body])

    out = [table(tcp) if tcp else "_No TCP counter moved._"]
    if other:
        out += ["", f'??? note "IP counters ({len(other)})"', "", _indent(table(other))]
    return "\n".join(out)


def provenance(rec: Recording, pcap_link: str) -> str:
    d = rec.data
    body = "\n".join([
        f"- **Recorded at**: {d['recorded_at']}, by this build",
        f"- **Kernel**: Linux {d['kernel']}",
        f"- **tcpdump**: {d['tcpdump_version']}, capturing on the {d['captured_on']}",
        (f"- **Capture**: [{rec.slug}.pcap]({pcap_link}) ({len(rec.packets)} packets,"
         f" {rec.pcap.stat().st_size} bytes; opens in Wireshark)"),
        f'- **SHA-256**: <code class="fg-sha256">{d["pcap_sha256"]}</code>',
    ])
    return '!!! info "Provenance"\n\n' + _indent(body) + "\n"
