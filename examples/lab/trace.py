"""The claims a scenario makes about its run: a timeline of named packets, like a packetdrill script.

    syn, _, _ = trace.handshake("client", "server")                       # a group claim: 3 packets
    trace.next("server", "R.", name="server-rst", seq=0, ack=syn.seq + 1)  # one packet, named
    trace.noise("client", ".", reason="...")                               # expected, not the story
    trace.raised("client", "connect", "ECONNREFUSED")
    trace.next("client", "R", name="client-rst", reason="TCP_ABORT_ON_DATA")  # the kernel's reason
    trace.dropped("server", "TCP_LISTEN_OVERFLOW", packet=ack)            # skb:kfree_skb's reason

Every claim is recorded with pass/fail; the run fails if any fails. A claim on the kernel's
tracepoints (reason, state, dropped) is recorded as not checked (passed None) where they
were not traced: never as passed; and as not applicable (passed None, `not_applicable`:
why) on a kernel without what it asserts (a RST reason before Linux 6.10, a drop reason
the kernel's enum lacks): that kernel is not wrong, the claim does not apply to it. Strict: every captured
packet must be named by a claim or declared noise, or `finish()` fails the run naming it.
Names are short, lower-case and hyphenated, unique in a scenario (a group claim gives
its packets one name); pages refer to packets by them: {{ packet server-rst }}.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from .artifact import Packet, anchors

# where a tracepoint's reason field comes from (tracer.OPTIONAL), for a claim not applicable without it
REASON_FIELD_SINCE = {"tcp_send_reset": "it came with Linux 6.10"}
NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
MAX_NAME = 40
_UNSET: Any = object()  # a keyword not given (None means something)


@dataclass
class Trace:
    """The packets of one run plus what each application saw, with claims on both."""

    packets: list[Packet]
    outcomes: list[dict[str, Any]]
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # host -> nstat deltas
    claims: list[dict[str, Any]] = field(default_factory=list)
    tracing: dict[str, Any] = field(default_factory=dict)  # what the kernel's tracepoints recorded, or why not
    events: list[dict[str, Any]] = field(default_factory=list)  # the run's kernel events (lab/tracer.py)
    cursor: int = 0  # packets before this index are behind the timeline
    names: dict[int, str] = field(default_factory=dict)  # packet number -> name
    noises: dict[int, str] = field(default_factory=dict)  # packet number -> why it is noise
    groups: dict[str, int] = field(default_factory=dict)  # name -> the one group claim that gave it
    _group_claims: int = 0
    _program_runs: dict[str, int] = field(default_factory=dict)  # program -> its runs named so far

    # -- recording ------------------------------------------------------------
    def _claim(self, text: str, ok: bool, detail: str = "", packet: Packet | None = None,
               timing: dict[str, float] | None = None) -> bool:
        entry: dict[str, Any] = {"claim": text, "passed": bool(ok)}
        if detail:
            entry["detail"] = detail
        if timing:  # a bound on timing and what was measured: `python -m lab soak` reports its spread
            entry["timing"] = timing
        if packet is not None and packet.number:
            entry["packet"] = packet.number
            entry["name"] = self.names.get(packet.number)
        self.claims.append(entry)
        return bool(ok)

    @property
    def passed(self) -> bool:
        return all(c["passed"] is not False for c in self.claims)

    def _unchecked(self, event: str) -> str:
        """Why claims on this tracepoint cannot be checked in this run ("" if they can)."""
        if not self.tracing.get("recorded"):
            return "not checked: " + (self.tracing.get("why") or "the kernel's events were not recorded")
        if event not in self.tracing.get("events", []):
            return f"not checked: {event} was not recorded ({self.tracing.get('missing', {}).get(event, '')})"
        return ""

    def not_applicable(self, event: str, reason: str | None = None) -> str:
        """Why a claim on `event` (with this reason) does not apply to this kernel ("" if it
        does): the event lacks the field, or the kernel's enum lacks the reason. Known only
        where the tracepoint was recorded."""
        if self._unchecked(event) or reason is None:
            return ""
        if "reason" in self.tracing.get("lacking", {}).get(event, []):
            return f"this kernel's {event} has no reason field ({REASON_FIELD_SINCE.get(event, '')})"
        known = self.tracing.get("reasons", {}).get(event)
        if known is not None and reason not in known:
            return f"this kernel's {event} reasons have no {reason}"
        return ""

    def kernel_check(self, text: str, event: str, ok: Any, detail: str = "", packet: Packet | None = None,
                     reason: str | None = None) -> bool:
        """Any other claim on the kernel's events (`trace.events`, of tracepoint `event`):
        ok() is called only where that tracepoint was recorded; elsewhere the claim is
        recorded as not checked. reason: the reason the claim asserts, if any (a kernel
        without it makes the claim not applicable)."""
        why = self._unchecked(event)
        lacking = self.not_applicable(event, reason)
        missed = self.tracing.get("missed", 0)
        unseen = self.tracing.get("unseen", {}).get(event, 0)
        if not why and not lacking and (missed or unseen) and not ok():
            # the event may be one the kernel did not let the tracer see (lab/tracer.py misses(),
            # lab/witness.py): absent, it proves nothing either way
            why = (f"not checked: the kernel skipped the tracer's probes {missed} time(s) during this run"
                   " (a tracepoint that fires while a kprobe or tracepoint BPF program runs on the same CPU is not run:"
                   " trace_call_bpf() in kernel/trace/bpf_trace.c), and this event is not among those seen"
                   if missed else
                   f"not checked: ftrace recorded {unseen} {event} event(s) during this run that never reached the"
                   " tracer's BPF program (measured on this project's machine: a tracepoint in a softirq on"
                   " top of the guest agent's threads; lab/witness.py), and this event is not among those seen")
        if why or lacking:
            entry: dict[str, Any] = {"claim": text, "passed": None, "detail": why or f"not applicable: {lacking}"}
            if lacking:
                entry["not_applicable"] = lacking
            if packet is not None and packet.number:
                entry.update(packet=packet.number, name=self.names.get(packet.number))
            self.claims.append(entry)
            return True
        return self._claim(text, bool(ok()), detail, packet)

    def _give(self, packet: Packet, name: str, group: int = 0) -> str:
        """Name a packet (group: the group claim's number, 0 for none); the problem, if the
        name is malformed or already taken (by another claim, or another group claim)."""
        if not NAME.match(name) or len(name) > MAX_NAME:
            return f"name {name!r} is not short (at most {MAX_NAME}), lower-case and hyphenated"
        if name.startswith(("packet-", "noise-")):
            return f"name {name!r} looks like a numbered anchor (packet-N, noise-N)"
        taken = [n for n, given in self.names.items() if given == name]
        if taken and not (group and self.groups.get(name) == group):
            return f"name {name!r} already names packet {taken[0]}"
        if group:
            self.groups[name] = group
        if packet.number:
            self.names[packet.number] = name
        return ""

    def label(self, p: Packet) -> str:
        """A packet as a failed claim shows it: number, name (as claimed so far), sender, flags."""
        return _describe(p, self.names.get(p.number), self.noises.get(p.number))

    # -- packets ---------------------------------------------------------------
    def next(self, sender: str, flags: str, *, name: str, within: float | None = None,
             after: float | None = None, what: str = "", reason: Any = _UNSET, state: str | None = None,
             _group: int = 0, **fields: Any) -> Packet:
        """The next packet `sender` sends on the timeline has exactly these flags and fields;
        it is called `name` from now on (in later claims, on the page, in SLUG.json).

        within/after: seconds since the previous matched packet (a bound on timing).
        reason, state (a RST): the kernel's tcp_send_reset for it gave this reason (and the
        sending socket's state); reason=None: no TCP stack sent it (no such event).
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
            naming = self._give(p, name, _group)
            if naming:
                problems.append(naming)
            detail = f"packet {p.number}" + (": " + ", ".join(problems) if problems else "")
            bounds = {k: v for k, v in (("within", within), ("after", after)) if v is not None}
            self._claim(text, not problems, detail, p, {"gap": round(gap, 6), **bounds} if bounds else None)
            if reason is not _UNSET or state is not None:
                self.sent_by(p, reason, state)
            return p
        self._claim(text, False, f"{sender} sent nothing more (wanted [{flags}], to be named {name!r})")
        self.cursor = len(self.packets)
        return _MISSING

    def handshake(self, client: str, server: str, *, name: str = "handshake",
                  what: str = "") -> tuple[Packet, Packet, Packet]:
        """A group claim: the three-way handshake [S], [S.], [.], its SYN-ACK acknowledging
        the SYN and the ACK the SYN-ACK; the three packets share `name`."""
        about = f" ({what})" if what else ""
        self._group_claims += 1
        group = self._group_claims
        syn = self.next(client, "S", name=name, _group=group, what=f"{name}: {client} sends its SYN{about}")
        synack = self.next(server, "S.", name=name, _group=group, ack=syn.seq + 1,
                           what=f"{name}: {server} answers with a SYN-ACK")
        ack = self.next(client, ".", name=name, _group=group, ack=synack.seq + 1,
                        what=f"{name}: {client} completes the handshake")
        return syn, synack, ack

    def noise(self, sender: str, flags: str, *, reason: str, count: int = 1) -> list[Packet]:
        """The next `count` packets `sender` sends on the timeline have these flags and are
        expected but not part of the story: declared noise, with `reason` shown beside them."""
        found = []
        for _ in range(count):
            p = next((q for q in self.packets[self.cursor:] if q.sender == sender), None)
            problems = [] if p is None or p.flags == flags else [f"flags [{p.flags}]"]
            problems += [] if reason.strip() else ["no reason given"]
            if p is None:
                problems.append(f"{sender} sent nothing more")
            else:
                self.cursor = self.packets.index(p) + 1
                self.noises[p.number] = reason
                found.append(p)
            self._claim(f"expected noise: {sender} sends [{flags}] ({reason})", not problems,
                        (f"packet {p.number}" if p else "") + (": " + ", ".join(problems) if problems else ""), p)
        return found

    def finish(self) -> None:
        """Strict: every packet is named by a claim or declared noise, and every name's
        anchor on the page is its own."""
        unclaimed = [p for p in self.packets if p.number not in self.names and p.number not in self.noises]
        self._claim("every captured packet is named by a claim or declared noise", not unclaimed,
                    "unclaimed: " + "; ".join(self.label(p) for p in unclaimed) if unclaimed else "")
        given = anchors(self.named_packets())
        clashes = sorted({a for a in given.values() if list(given.values()).count(a) > 1}
                         | {a for a in given.values() if re.fullmatch(r"packet-\d+", a)})
        self._claim("every packet's name gives it an anchor of its own", not clashes,
                    "shared anchors: " + ", ".join(clashes) if clashes else "")

    def program(self, entry: dict[str, Any], packets: list[Packet]) -> None:
        """A real client program's run (lab/clients.py): its packets, one group named after
        it (curl-1, curl-2...; its second run in the scenario curl-run2), and that it ended by
        itself within its time."""
        name = entry["program"]["id"]
        runs = self._program_runs[name] = self._program_runs.get(name, 0) + 1
        if runs > 1:  # the scenario runs the program again (a request that meets what the first left)
            name += f"-run{runs}"
        self._group_claims += 1
        problems = [self._give(p, name, self._group_claims) for p in packets]
        status = entry["exit_status"]
        line = entry.get("returned") or entry.get("raised")
        self._claim(f"{entry['program']['name']} ({entry['program']['version']}) ran as the client:"
                    f" {line!r}, exit status {status}, {entry['connections']} connection(s)",
                    isinstance(status, int) and not any(problems),
                    "; ".join(filter(None, problems)) or f"packets {', '.join(map(str, entry['packets'])) or 'none'}",
                    packets[0] if packets else None)

    def named_packets(self) -> list[Packet]:
        """The packets with the names and noise reasons the claims gave them."""
        return [dataclasses.replace(p, name=self.names.get(p.number),
                                    noise=None if p.number in self.names else self.noises.get(p.number))
                for p in self.packets]

    # -- the kernel's own word (tracepoints) ----------------------------------------------
    def sent_by(self, p: Packet, reason: Any = _UNSET, state: str | None = None) -> None:
        """The kernel's tcp_send_reset for RST `p` gave this reason (and the sending socket's
        state); reason=None: no TCP stack of the lab sent it (nftables, a forged segment)."""
        name = self.names.get(p.number) or f"packet {p.number}"
        kernel = p.kernel
        got = "no tcp_send_reset event" if kernel is None else f"{kernel['reason'] or 'no reason'} in {kernel['state']}"
        if reason is None:
            self.kernel_check(f"no TCP stack sent {name} (no tcp_send_reset event)", "tcp_send_reset",
                               lambda: kernel is None, got, p)
            return
        wanted = " and ".join(x for x in (reason if reason is not _UNSET else "", state or "") if x)
        self.kernel_check(f"the kernel sent {name} for {wanted}", "tcp_send_reset",
                           lambda: kernel is not None and (reason is _UNSET or kernel["reason"] == reason)
                           and (state is None or kernel["state"] == state), got, p,
                           reason=None if reason is _UNSET else reason)

    def dropped(self, host: str, reason: str, packet: Packet | None = None, what: str = "") -> None:
        """The kernel of `host` dropped a TCP segment with this skb:kfree_skb reason (that
        packet of the capture, if given)."""
        found = [e for e in self.events if e["event"] == "kfree_skb" and e["host"] == host]
        if packet is not None:
            found = [e for e in found if e.get("packet") == packet.number]
        which = f" {self.names.get(packet.number) or f'packet {packet.number}'}" if packet is not None else " a segment"
        self.kernel_check(what or f"{host}'s kernel dropped{which} for {reason}", "kfree_skb",
                           lambda: any(e["reason"] == reason for e in found),
                           ", ".join(f"{e['reason']} at {e['location']}" for e in found) or "no such drop", packet,
                           reason=reason)

    def no(self, sender: str, flag: str, what: str = "") -> None:
        """`sender` never sends a packet carrying `flag` (e.g. "F" or "R") in the whole trace."""
        found = [p for p in self.packets if p.sender == sender and flag in p.flags]
        self._claim(what or f"{sender} never sends a packet with flag {flag}",
                    not found, ", ".join(self.label(p) for p in found))

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


def _describe(p: Packet, name: str | None, noise: str | None) -> str:
    return f"packet {p.number} ({name or ('noise' if noise else 'unnamed')}) {p.sender} [{p.flags}]"


def _same(field_name: str, got: Any, wanted: Any) -> bool:
    if field_name in ("seq", "ack"):  # sequence space wraps at 2**32
        return (got - wanted) % 2**32 == 0
    return got == wanted


_MISSING = Packet(0, float("nan"), "?", "?", "", "", 0, 0, "", -1, -1, -1, -1, -1, -1)


def evaluate(scenario: Any, packets: list[Packet], outcomes: list[dict[str, Any]],
             counters: dict[str, dict[str, int]], tracing: dict[str, Any] | None = None,
             events: list[dict[str, Any]] | None = None,
             programs: list[tuple[dict[str, Any], list[Packet]]] | None = None,
             own_calls: int | None = None) -> Trace:
    """Run the scenario's claims() on its own run, then name each client program's packets
    (programs: each program's outcome and packets, lab/clients.py), then the strictness check.
    The scenario's claims see only its own packets, calls (the first own_calls outcomes) and
    kernel events: the programs ran after it."""
    programs = programs or []
    theirs = {p.number for _, mine in programs for p in mine}
    began = min((p.time for _, mine in programs for p in mine), default=float("inf"))
    events = events or []
    trace = Trace([p for p in packets if p.number not in theirs], outcomes[:own_calls],
                  counters, tracing=tracing or {}, events=[e for e in events if e.get("time", 0) < began])
    try:
        scenario.module.claims(trace)
    except Exception as exc:  # a claim that cannot even be evaluated is a failed claim
        trace.check(f"claims() ran to the end ({type(exc).__name__}: {exc})", False)
    trace.packets, trace.outcomes, trace.events = packets, outcomes, events
    for entry, mine in programs:
        trace.program(entry, mine)
    trace.finish()
    return trace
