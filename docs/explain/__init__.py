"""rst_explain: name, for each RST of a capture, the catalogue pages that explain it.

Pure standard library, so the same files run in the browser under Pyodide.

Interface
---------
``explain(data: bytes, name: str = "-") -> dict``
    The whole document for a capture held in memory (pcap, pcapng or tcpdump's text)::

        {"rsts": [{"packet": 12,             # number in the capture (1-based, as tcpdump -# counts)
                   "time": 1.018,            # seconds as the capture gives them
                   "at": "1970-01-01 00:00:01.018000 UTC",  # the same on a clock (UTC), or as
                                                            # pasted text printed it: "22:18:34.089114"
                   "src": "192.0.2.2.8888",  # address.port of the RST's sender, as tcpdump writes it
                   "dst": "192.0.2.1.40001",
                   "flags": "R",             # tcpdump's spelling: R or R.
                   "verdicts": [             # best first; the first ones with equal score are a tie
                       {"slug": "backlog-overflow",   # the page: docs/scenarios/SLUG.md
                        "score": 8,                   # points (rules.py); only order and ties matter
                        "packet_name": "server-rst",  # the claim naming the packet that explains it
                                                      # on that page (build/traces/SLUG.json packets[].name
                                                      # gives its number N: the page's #packet-N)
                        "evidence": ["...", ...],     # what on the wire supports it
                        "against": ["...", ...]},     # what on the wire speaks against it
                       ...],
                   "tie": ["slug", ...],     # the pages tied for first (one slug: no tie)
                   "next": ["...", ...]}],   # what to capture or check next to tell a tie apart
         "notes": [{"text": "...",           # connections without RST, and what the capture lacks
                    "count": 3,              # connections noted so
                    "packet": 1,             # the first packet of the first such connection
                    "verdicts": [...]}]}     # as above, possibly empty

``explain_stream(stream, name="-") -> Iterator[dict]``
    The same, streamed from a binary file object: yields each RST's dict in packet order as
    soon as it is settled, then one last ``{"notes": [...]}``. Memory grows with the
    connections open at once, not with the file.

``ExplainError``
    Raised for input that cannot be explained (not a capture, cut short, no TCP); its message
    is meant for the user, as is.

``TIES``
    Pages alike on the wire: ``[{"slugs": [...], "why": "...", "next": [...]}]`` (rules.py).

``PAGES``
    slug -> rules.Page(packet, requires, weights): every page the tool can name.

The command line: ``rst-explain FILE...`` (``python -m rst_explain``), ``--json``.
"""

from __future__ import annotations

import datetime
import heapq
import io
from typing import IO, Iterator

from .capture import ExplainError, flag_text, segments
from .connections import Finding, Tracker
from .rules import NO_RST_NOTES, PAGES, SILENT_DROP_BONUS, TIES

__all__ = ["explain", "explain_stream", "ExplainError", "TIES", "PAGES", "verdicts"]


_REQUIRES = {slug: frozenset(page.requires) for slug, page in PAGES.items()}
_SCORED: dict[frozenset, list] = {}   # feature names -> [(slug, score, evidence, against)]: rules
                                      # depend on names only, and few combinations occur


def _score(names: frozenset) -> list:
    found = _SCORED.get(names)
    if found is None:
        found = []
        for slug, page in PAGES.items():
            if not _REQUIRES[slug] <= names:
                continue
            score = 2 * len(page.requires)
            evidence, against = list(page.requires), []
            for feature, points in page.weights.items():
                if feature in names and feature not in page.requires:
                    score += points
                    (evidence if points > 0 else against).append(feature)
            found.append((slug, score, evidence, against))
        found.sort(key=lambda v: -v[1])
        _SCORED[names] = found
    return found


def verdicts(features: dict[str, str]) -> list[dict]:
    """Every page whose required features are all present, best first."""
    return [{"slug": slug, "score": score, "packet_name": PAGES[slug].packet,
             "evidence": [features[f] for f in evidence], "against": [features[f] for f in against]}
            for slug, score, evidence, against in _score(frozenset(features))]


def _next_steps(tie: list[str]) -> list[str]:
    steps: list[str] = []
    for group in TIES:
        if len(set(group["slugs"]) & set(tie)) >= 2:
            steps += [s for s in group["next"] if s not in steps]
    if len(tie) > 1 and not steps:
        steps.append("capture on both sides, and record the kernel's reason for the RST (the reason "
                     "field of tracepoint tcp:tcp_send_reset, which tcp_v4_send_reset() and "
                     "tcp_send_active_reset() fill in Linux 6.18)")
    return steps


def _rst_document(f: Finding) -> dict:
    seg = f.segment
    found = verdicts(f.features)
    if f.earlier is not None:
        # a RST after the connection's first RST is its consequence: that RST's pages apply
        own = {v["slug"]: v for v in found}
        first = f.earlier.segment.number
        for v in verdicts(f.earlier.features):
            if v["slug"] in own and own[v["slug"]]["score"] >= v["score"]:
                continue
            found = [x for x in found if x["slug"] != v["slug"]]
            found.append({**v, "evidence": [f"follows the RST of packet {first}, which this page "
                                             "explains"] + v["evidence"], "against": v["against"]})
        found.sort(key=lambda v: -v["score"])
    top = found[0]["score"] if found else None
    tie = [v["slug"] for v in found if v["score"] == top]
    if not found:
        next_steps = ["no page of the catalogue matches this RST's wire; capture on both sides and "
                      "record the kernel's reason (tracepoint tcp:tcp_send_reset)"]
    else:
        next_steps = _next_steps(tie)
    return {"packet": seg.number, "time": seg.time, "at": seg.at or clock(seg.time), "src": f"{seg.src}.{seg.sport}",
            "dst": f"{seg.dst}.{seg.dport}", "flags": flag_text(seg.flags), "verdicts": found,
            "tie": tie, "next": next_steps, "features": sorted(f.features)}


def clock(seconds: float) -> str:
    """A capture file's time (seconds since the epoch) as a reader's clock shows it, in UTC."""
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def _notes(tracker: Tracker) -> list[dict]:
    notes = []
    for kind, (count, first, details) in tracker.notes.items():
        text, pages = NO_RST_NOTES[kind]
        found = []
        for slug, packet, points, evidence in pages:
            bonus = sum(SILENT_DROP_BONUS.get(d, {}).get(slug, 0) for d in details)
            found.append({"slug": slug, "score": points + bonus, "packet_name": packet,
                          "evidence": [evidence], "against": []})
        found.sort(key=lambda v: -v["score"])
        notes.append({"text": f"{count} connection{'s' if count != 1 else ''} {text}", "count": count,
                      "packet": first, "verdicts": found})
    notes.sort(key=lambda n: n["packet"])
    if not tracker.rsts:
        notes.insert(0, {"text": "no RST in this capture", "count": 0, "packet": None, "verdicts": []})
    return notes


def explain_stream(stream: IO[bytes], name: str = "-") -> Iterator[dict]:
    """Each RST's document in packet order, as soon as settled; then {"notes": [...]}."""
    tracker = Tracker()
    waiting: list[tuple[int, dict]] = []   # heap of (packet number, document) held back
    add = tracker.add

    def in_order(findings: list[Finding], final: bool) -> Iterator[dict]:
        for f in findings:
            heapq.heappush(waiting, (f.segment.number, _rst_document(f)))
        if not waiting:
            return
        # a RST may be settled before an earlier one still watched: hold it back until then
        oldest_open = None if final else tracker.oldest_unsettled()
        while waiting and (oldest_open is None or waiting[0][0] <= oldest_open):
            yield heapq.heappop(waiting)[1]

    for seg in segments(stream, name):
        add(seg)
        if tracker.done:
            yield from in_order(tracker.ready(), False)
    yield from in_order(tracker.finish(), True)
    if not tracker.segments:
        raise ExplainError(f"{name}: no TCP segment in this capture")
    yield {"notes": _notes(tracker)}


def explain(data: bytes, name: str = "-") -> dict:
    """The whole document for a capture in memory (see the module's docstring)."""
    rsts, notes = [], []
    for item in explain_stream(io.BytesIO(data), name):
        if "notes" in item:
            notes = item["notes"]
        else:
            rsts.append(item)
    return {"rsts": rsts, "notes": notes}
