"""`python -m lab soak [N] [SLUG ...]`: the catalogue and the client session recorded again and
again with one CPU kept busy, to find what a single run cannot: a race.

N catalogue runs (default 10), each the whole catalogue at once as the build records it, and
one client session (`--programs`) for every three of them, rounded up (30 runs: 10 sessions;
`--sessions K` for another number, 0 for none);
SLUG... narrows both (a slug without a client is left out of the sessions). Nothing is
published where the site reads (build/traces/ stays as it is): the recordings go to
build/soak/, and each failed run's folder (pcap, text, json, worker.log, problem.txt) is kept
in build/soak/failures/ for a post-mortem.

Prints, per scenario and per program session, how many runs failed and each failure's first
line, and writes build/soak.json. Exits 1 if any run failed.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from .artifact import ROOT
from .runner import Result, Runner
from .scenarios import all_slugs, check, client_slugs, runs_clients

SOAK = ROOT / "build" / "soak"
REPORT = ROOT / "build" / "soak.json"


def first_line(problem: str) -> str:
    return next((line.strip() for line in problem.splitlines() if line.strip()), "(no message)")


def soak(runs: int, slugs: list[str], busy: int, sessions: int | None = None, on_line: Any = print) -> dict[str, Any]:
    catalogue = check(slugs) if slugs else all_slugs()
    with_clients = [s for s in catalogue if runs_clients(s)] if slugs else client_slugs()
    sessions = (math.ceil(runs / 3) if sessions is None else sessions) if with_clients else 0
    shutil.rmtree(SOAK, ignore_errors=True)
    failures = SOAK / "failures"
    failures.mkdir(parents=True)
    report: dict[str, Any] = {"runs": runs, "sessions": sessions, "busy_cpus": busy,
                              "catalogue": {s: {"runs": 0, "failed": 0, "failures": []} for s in catalogue},
                              "client_session": {s: {"runs": 0, "failed": 0, "failures": []} for s in with_clients}}
    started = time.monotonic()

    def record(kind: str, runner: Runner, chosen: list[str], round_: int) -> None:
        t0 = time.monotonic()
        results: list[Result] = runner.run(chosen)
        bad = [r for r in results if not r.ok]
        on_line(f"{kind:<15} run {round_:>3}: {len(results) - len(bad)}/{len(results)} passed"
                f" in {time.monotonic() - t0:5.1f} s" + (f"; failed: {', '.join(r.slug for r in bad)}" if bad else ""))
        for r in results:
            entry = report[kind][r.slug]
            entry["runs"] += 1
            for claim in (r.recording.claims if r.recording else []):
                if "timing" in claim:  # each timing bound's measured gaps, run after run
                    bound = entry.setdefault("timings", {}).setdefault(claim.get("name") or claim["claim"], {
                        **{k: v for k, v in claim["timing"].items() if k != "gap"}, "gaps": []})
                    bound["gaps"].append(claim["timing"]["gap"])
            unchecked = [c for c in (r.recording.claims if r.recording else [])
                         if c["passed"] is None and "not_applicable" not in c]
            if unchecked and r.ok:  # judged neither way in this run, and why (the tracer lost the event)
                entry.setdefault("not_checked", []).append({"run": round_, "claim": unchecked[0]["claim"],
                                                            "detail": unchecked[0]["detail"]})
            if not r.ok:
                entry["failed"] += 1
                entry["failures"].append({"run": round_, "first_line": first_line(r.problem),
                                          "problem": r.problem[:4000]})

    # the runners are made once: their preflight and key are not what is soaked
    runner = Runner(out=SOAK / "traces", failures=failures)
    programs = Runner(out=SOAK / "client-traces", programs=True, failures=failures) if sessions else None
    # the sessions spread evenly among the catalogue's runs (after runs 1, 4, 7... for N/3)
    after = {1 + (k * runs) // sessions for k in range(sessions)} if sessions else set()
    done = 0
    for i in range(1, runs + 1):
        record("catalogue", runner, catalogue, i)
        if programs and i in after:
            done += 1
            record("client_session", programs, with_clients, done)
    while programs and done < sessions:  # more sessions than catalogue runs
        done += 1
        record("client_session", programs, with_clients, done)
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def summary(report: dict[str, Any]) -> list[str]:
    lines = []
    for kind, label in (("catalogue", "catalogue"), ("client_session", "client session")):
        for slug, entry in report[kind].items():
            if not entry["runs"]:
                continue
            lines.append(f"{'ok  ' if not entry['failed'] else 'FAIL'} {label:<15} {slug:<30}"
                         f" {entry['failed']}/{entry['runs']} failed")
            seen = set()
            for failure in entry["failures"]:
                if failure["first_line"] not in seen:
                    seen.add(failure["first_line"])
                    lines.append(f"       run {failure['run']}: {failure['first_line']}")
            for unchecked in entry.get("not_checked", []):
                lines.append(f"       run {unchecked['run']}: not checked: {unchecked['claim']}"
                             f" -- {unchecked['detail'][:160]}")
    lines.append("timing bounds (seconds since the previous step): the largest gap measured, and its bound")
    for kind in ("catalogue", "client_session"):
        for slug, entry in report[kind].items():
            for name, bound in entry.get("timings", {}).items():
                gaps = sorted(bound["gaps"])
                limits = ", ".join(f"{k} {v:g}" for k, v in bound.items() if k != "gaps")
                lines.append(f"  {slug:<30} {name:<28} max {gaps[-1]:.3f}  min {gaps[0]:.3f}"
                             f"  n {len(gaps):>3}  ({limits})")
    failed = sum(e["failed"] for kind in ("catalogue", "client_session") for e in report[kind].values())
    lines.append(f"{report['runs']} catalogue run(s) and {report['sessions']} client session(s)"
                 f" with {report['busy_cpus']} CPU(s) busy in {report['seconds']} s: {failed} failed run(s)"
                 + (f"; their folders in {SOAK / 'failures'}" if failed else ""))
    return lines


def main(runs: int, slugs: list[str], busy: int, sessions: int | None = None) -> int:
    report = soak(runs, slugs, busy, sessions)
    REPORT.write_text(json.dumps(report, indent=1) + "\n")
    for line in summary(report):
        print(line, flush=True)
    print(f"written: {REPORT}")
    failed = any(e["failed"] for kind in ("catalogue", "client_session") for e in report[kind].values())
    return 1 if failed else 0

