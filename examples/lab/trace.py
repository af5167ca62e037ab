"""A recorded capture, read with scapy, and the claims a scenario makes about it.

A claim reads like the page it backs:

    syn = trace.next("client", "S")
    trace.next("server", "R.", seq=0, ack=syn.seq + 1, win=0)
    trace.raised("client", "connect", "ECONNREFUSED")

Each check is recorded as a claim with pass/fail; the run fails if any fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# tcpdump's order and letters for TCP flags; an ACK is shown as "."
_FLAG_LETTERS = (("F", 0x01), ("S", 0x02), ("R", 0x04), ("P", 0x08), ("U", 0x20),
                 ("E", 0x40), ("W", 0x80), (".", 0x10))


def tcpdump_flags(bits: int) -> str:
    shown = "".join(letter for letter, bit in _FLAG_LETTERS if bits & bit)
    return shown or "none"


@dataclass(frozen=True)
class Packet:
    """One captured TCP segment (or ICMP message), as a reader needs it."""

    number: int  # 1-based, as in the trace text
    time: float  # seconds since the first packet
    sender: str  # host name owning the source address ("?" if none)
    receiver: str
    src: str
    dst: str
    sport: int
    dport: int
    flags: str  # tcpdump notation: "S", "S.", "R.", "P.", "F." ...
    seq: int
    ack: int
    win: int
    payload: int
    ttl: int
    ip_id: int
    proto: str = "tcp"
    options: tuple[str, ...] = ()  # TCP option kinds in order, tcpdump's names: "mss", "TS", "nop"...

    def has(self, letters: str) -> bool:
        return all(letter in self.flags for letter in letters)

    def label(self) -> str:
        return f"#{self.number} {self.sender} [{self.flags}]"


# scapy's option names -> tcpdump's
_OPTION_NAMES = {"MSS": "mss", "SAckOK": "sackOK", "SAck": "sack", "Timestamp": "TS", "NOP": "nop",
                 "WScale": "wscale", "EOL": "eol", "MD5": "md5", "AO": "tcp-ao", "TFO": "tfo"}


def read_packets(pcap: Path, hosts: dict[str, list[str]]) -> list[Packet]:
    from scapy.layers.inet import ICMP, IP, TCP
    from scapy.utils import PcapReader

    owner = {ip: name for name, ips in hosts.items() for ip in ips}
    packets: list[Packet] = []
    with PcapReader(str(pcap)) as reader:
        for frame in reader:
            if IP not in frame:
                continue
            ip = frame[IP]
            when = float(frame.time)
            common = dict(
                number=len(packets) + 1, time=when, src=ip.src, dst=ip.dst,
                sender=owner.get(ip.src, "?"), receiver=owner.get(ip.dst, "?"),
                ttl=ip.ttl, ip_id=ip.id,
            )
            if TCP in ip:
                tcp = ip[TCP]
                packets.append(Packet(
                    **common, sport=tcp.sport, dport=tcp.dport, flags=tcpdump_flags(int(tcp.flags)),
                    seq=tcp.seq, ack=tcp.ack, win=tcp.window, payload=len(tcp.payload),
                    options=tuple(_OPTION_NAMES.get(name, str(name)) for name, _ in tcp.options)))
            elif ICMP in ip:
                packets.append(Packet(**common, sport=0, dport=0, flags=f"icmp {ip[ICMP].type}/{ip[ICMP].code}",
                                      seq=0, ack=0, win=0, payload=0, proto="icmp"))
    start = packets[0].time if packets else 0.0
    return [Packet(**{**p.__dict__, "time": round(p.time - start, 6)}) for p in packets]


def shape(packets: list[Packet]) -> list[tuple[str, str, bool]]:
    """What must not change between runs: who sent which flags, with data or not."""
    return [(p.sender, p.flags, p.payload > 0) for p in packets]


class ClaimFailed(AssertionError):
    pass


@dataclass
class Trace:
    """The packets of one run plus what each application saw, with claims on both."""

    packets: list[Packet]
    outcomes: list[dict[str, Any]]
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # host -> nstat deltas
    claims: list[dict[str, Any]] = field(default_factory=list)
    cursor: int = 0  # packets before this index are behind the timeline

    # -- recording ------------------------------------------------------------
    def _claim(self, text: str, ok: bool, detail: str = "", packet: Packet | None = None) -> bool:
        entry: dict[str, Any] = {"claim": text, "passed": bool(ok)}
        if detail:
            entry["detail"] = detail
        if packet is not None:
            entry["packet"] = packet.number
        self.claims.append(entry)
        return bool(ok)

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.claims)

    # -- packets ---------------------------------------------------------------
    def next(self, sender: str, flags: str, *, within: float | None = None,
             after: float | None = None, what: str = "", **fields: int) -> Packet:
        """The next packet `sender` sends on the timeline has exactly these flags and fields.

        within/after: seconds since the previous matched packet (a bound on timing).
        Returns the packet (a placeholder that fails later claims if there is none).
        """
        wanted = ", ".join(f"{k} {v}" for k, v in fields.items())
        text = what or f"{sender} sends [{flags}]" + (f" ({wanted})" if wanted else "")
        previous = self.packets[self.cursor - 1] if self.cursor else None
        for i in range(self.cursor, len(self.packets)):
            p = self.packets[i]
            if p.sender != sender:
                continue
            self.cursor = i + 1
            problems = [] if p.flags == flags else [f"flags [{p.flags}]"]
            problems += [f"{k} {getattr(p, k)}" for k, v in fields.items() if not _same(k, getattr(p, k), v)]
            gap = p.time - previous.time if previous else p.time
            if within is not None and gap > within:
                problems.append(f"came {gap * 1000:.1f} ms after the previous step, not within {within * 1000:.0f} ms")
            if after is not None and gap < after:
                problems.append(f"came {gap * 1000:.1f} ms after the previous step, not after {after * 1000:.0f} ms")
            detail = f"packet {p.number}" + (": " + ", ".join(problems) if problems else "")
            self._claim(text, not problems, detail, p)
            return p
        self._claim(text, False, f"{sender} sent nothing more")
        self.cursor = len(self.packets)
        return _MISSING

    def no(self, sender: str, flag: str, what: str = "") -> None:
        """`sender` never sends a packet carrying `flag` (e.g. "F" or "R") in the whole trace."""
        found = [p for p in self.packets if p.sender == sender and flag in p.flags]
        self._claim(what or f"{sender} never sends a packet with flag {flag}",
                    not found, ", ".join(p.label() for p in found))

    def count(self, sender: str, flags: str, expected: int, what: str = "") -> None:
        found = [p for p in self.packets if p.sender == sender and p.flags == flags]
        self._claim(what or f"{sender} sends [{flags}] {expected} time(s)",
                    len(found) == expected, f"{len(found)} found")

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        """Any other claim, stated in words."""
        return self._claim(what, ok, detail)

    def counter(self, host: str, name: str, expected: int, what: str = "") -> None:
        """The host's kernel counter `name` (nstat's name) grew by exactly `expected` in the run."""
        got = self.counters.get(host, {}).get(name, 0)
        self._claim(what or f"{host}'s {name} grows by {expected}", got == expected, f"{name} +{got}")


    # -- applications ------------------------------------------------------------
    def calls(self, host: str, call: str) -> list[dict[str, Any]]:
        return [o for o in self.outcomes if o["host"] == host and o["call"].startswith(call)]

    def raised(self, host: str, call: str, error: str, nth: int = 0) -> None:
        """The host's `nth` call starting with `call` raised this errno (or exception class)."""
        found = self.calls(host, call)
        got = found[nth] if len(found) > nth else None
        shown = (got.get("raised") or f"returned {got.get('returned')}") if got else "no such call"
        which = f" (call {nth + 1})" if nth else ""
        self._claim(f"{host}'s {call}(){which} fails with {error}",
                    bool(got) and error in (got.get("errno"), got.get("raised")),
                    f"{shown} {got.get('errno') or ''}".strip() if got else shown)

    def returned(self, host: str, call: str, value: str, nth: int = 0) -> None:
        found = self.calls(host, call)
        got = found[nth] if len(found) > nth else None
        self._claim(f"{host}'s {call}() returns {value}", bool(got) and got.get("returned") == value,
                    (got.get("raised") or got.get("returned")) if got else "no such call")


def _same(field_name: str, got: int, wanted: int) -> bool:
    if field_name in ("seq", "ack"):  # sequence space wraps at 2**32
        return (got - wanted) % 2**32 == 0
    return got == wanted


_MISSING = Packet(0, float("nan"), "?", "?", "", "", 0, 0, "", -1, -1, -1, -1, -1, -1)
