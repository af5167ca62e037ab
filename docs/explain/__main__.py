"""rst-explain FILE...: for each RST, the catalogue pages that explain it (see __init__)."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path
from typing import IO, Iterator

from . import ExplainError, explain_stream



def _site() -> str:
    """Where the pages are: the site's address, the one setting the site is built with
    (FIELDGUIDE_SITE_URL, mkdocs.yml); unset, a page's path from the site's root, never a
    made-up host."""
    address = os.environ.get("FIELDGUIDE_SITE_URL", "").strip()
    return address.rstrip("/") + "/" if address else ""


def _packet_numbers() -> dict[str, dict[str, int]]:
    """slug -> claim name -> packet number, from the catalogue's recordings when present
    (build/traces/SLUG.json beside a source checkout, or $RST_EXPLAIN_TRACES)."""
    folder = Path(os.environ.get("RST_EXPLAIN_TRACES", Path(__file__).resolve().parents[2] / "build" / "traces"))
    numbers: dict[str, dict[str, int]] = {}
    if folder.is_dir():
        for path in folder.glob("*.json"):
            try:
                packets = json.loads(path.read_text())["packets"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            numbers[path.stem] = {p["name"]: p["number"] for p in packets if p.get("name")}
    return numbers


def _link(slug: str, packet_name: str | None, numbers: dict[str, dict[str, int]]) -> str:
    number = numbers.get(slug, {}).get(packet_name or "")
    return f"{_site()}scenarios/{slug}/" + (f"#packet-{number}" if number else "")


def _print_text(items: Iterator[dict], name: str, out: IO[str], numbers: dict) -> None:
    print(f"== {name}", file=out)
    for item in items:
        lines = []   # one write per RST: a capture may hold many thousands
        add = lines.append
        if "notes" in item:
            for note in item["notes"]:
                where = f" (packet {note['packet']})" if note.get("packet") else ""
                add(f"note: {note['text']}{where}")
                for v in note["verdicts"]:
                    add(f"    {v['slug']:<28} {v['score']:>3}  {_link(v['slug'], v['packet_name'], numbers)}")
            out.write("".join(line + "\n" for line in lines))
            continue
        add(f"packet {item['packet']}  {item['src']} > {item['dst']}  [{item['flags']}]  at {item['at']}")
        if not item["verdicts"]:
            add("    no page matches")
        tie = item["tie"]
        for rank, v in enumerate(item["verdicts"][:4]):
            mark = "=" if len(tie) > 1 and v["slug"] in tie else " "
            add(f"  {mark}{rank + 1}. {v['slug']:<26} score {v['score']:>3}  "
                f"{_link(v['slug'], v['packet_name'], numbers)}")
            if rank == 0 or v["slug"] in tie:
                lines += [f"        + {e}" for e in v["evidence"]]
                lines += [f"        - {e}" for e in v["against"]]
        if len(tie) > 1:
            add(f"    tie: {', '.join(tie)}: alike on the wire; to tell them apart:")
        lines += [f"      * {step}" for step in item["next"]]
        out.write("".join(line + "\n" for line in lines))


def _print_json(items: Iterator[dict], out: IO[str]) -> None:
    # written as it streams: each RST as soon as it is settled
    out.write('{"rsts": [')
    first = True
    for item in items:
        if "notes" in item:
            out.write('], "notes": ' + json.dumps(item["notes"]) + "}\n")
            return
        out.write(("" if first else ",\n") + json.dumps(item))
        first = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rst-explain",
        description="For each TCP RST in a capture (pcap, pcapng, or tcpdump's text; - for stdin), "
                    "the pages of the TCP Reset Field Guide that explain it, with the evidence.")
    parser.add_argument("files", nargs="*", metavar="FILE")
    parser.add_argument("--json", action="store_true",
                        help="one JSON document per file (--live: one JSON object per RST, then a summary)")
    live = parser.add_argument_group("watching this machine (root, bpftrace)")
    live.add_argument("--live", action="store_true",
                      help="watch every network namespace of this machine and explain each RST as it happens, "
                           "with the kernel's word (tracepoints tcp:tcp_send_reset and others)")
    live.add_argument("--netns", action="append", metavar="PATH",
                      help="only this network namespace (/run/netns/NAME, /proc/PID/ns/net; repeatable)")
    live.add_argument("--port", action="append", type=int, metavar="P", help="only RSTs to or from this port")
    live.add_argument("--host", action="append", metavar="ADDR", help="only RSTs to or from this IPv4 address")
    live.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds")
    live.add_argument("--count", type=int, metavar="N", help="stop after N RSTs")
    live.add_argument("--rate", type=int, default=50, metavar="N",
                      help="print at most N RSTs a second (default 50); the rest are counted in the summary")
    args = parser.parse_args(argv)
    if args.live:
        if args.files:
            parser.error("--live reads no file")
        from . import live as live_mode
        return live_mode.run(args)
    if not args.files:
        parser.error("give a capture (FILE, or - for standard input), or --live")
    if any(getattr(args, name) for name in ("netns", "port", "host", "seconds", "count")):
        parser.error("--netns, --port, --host, --seconds and --count are for --live")
    # the tracker keeps many small objects alive (open and recently closed connections), and
    # the cycle collector's rescans of them cost up to half the run; rst_explain frees by
    # reference counts alone (it breaks its one cycle itself; tests/test_explain.py checks)
    gc.disable()
    numbers = _packet_numbers()
    status = 0
    for name in args.files:
        try:
            stream = sys.stdin.buffer if name == "-" else open(name, "rb")
        except OSError as exc:
            print(f"rst-explain: {name}: {exc.strerror}", file=sys.stderr)
            status = 1
            continue
        try:
            with stream:
                items = explain_stream(stream, name)
                if args.json:
                    # fail before writing anything when the input is not a capture
                    head = next(items)
                    _print_json(_chain(head, items), sys.stdout)
                else:
                    _print_text(items, name, sys.stdout, numbers)
        except ExplainError as exc:
            print(f"rst-explain: {exc}", file=sys.stderr)
            status = 1
    return status


def _chain(head: dict, rest: Iterator[dict]) -> Iterator[dict]:
    yield head
    yield from rest


if __name__ == "__main__":
    sys.exit(main())
