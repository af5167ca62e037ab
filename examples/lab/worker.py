"""Run one scenario, confined (lab/sandbox.py): import it, build its hosts, capture, run it,
check its claims, and leave its artifacts in the run's folder.

    python -m lab.worker SLUG FOLDER [--programs]

Writes FOLDER/SLUG.{pcap,txt,json} when every claim holds, and FOLDER/worker.json
(`{"ok": ..., "problem": ...}`) in every case it can. The runner's zygote forks each
worker into a process group of its own and calls record(); the example is imported
there, never in the runner or the zygote, so an example that exits or loops at import
fails only its own run. `python -m lab.worker` runs one the same way, by hand.
"""

from __future__ import annotations

import datetime as dt
import faulthandler
import hashlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from . import clients
from . import hosts as lab_hosts
from . import kernel_events, pyfork, sandbox, scenarios, tracer
from .artifact import FOLDER_FILES, Recording, shape_of
from .capture import Capture, first_packet_time, read_packets, tcpdump_version, trace_text
from .recording import Transcript
from .process import SLOW
from .scenarios import Scenario, load
from .trace import evaluate

# seconds an example may take to import (its own TIMEOUT starts after); tests shorten it
IMPORT_TIMEOUT = float(os.environ.get("LAB_IMPORT_TIMEOUT", 20.0)) * SLOW
STATUS = "worker.json"
SCENARIO = "scenario.json"  # written once the example is imported: what the runner may quote


def counter_deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] != before.get(k, 0)}


def run(scenario: Scenario, folder: Path) -> dict[str, Any]:
    """Build the hosts, capture, run the example; what happened (no judgement yet)."""
    slug = scenario.slug
    timings: dict[str, float] = {}
    report: dict[str, Any] = {"kernel": platform.release(), "error": None}
    mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        timings[name] = round(now - mark, 4)
        mark = now

    transcript = Transcript()
    captures: list[Capture] = []

    def start_capture(host: lab_hosts.Host) -> None:  # tcpdump starts while the rest is built
        captures.append(Capture(host.fd, "any" if scenario.capture_all_links else "eth0", folder / f"{slug}.pcap"))

    built = lab_hosts.build(scenario.hosts, transcript, (scenario.capture_on, start_capture))
    report["hosts"] = {h.name: h.addresses for h in built}
    links = [ifname for ifname, _, _ in lab_hosts.address_plan(len(built))[scenario.hosts.index(scenario.capture_on)]]
    report["captured_on"] = f"{scenario.capture_on} {' and '.join(links) if scenario.capture_all_links else 'eth0'}"
    (capture,) = captures
    before = {h.name: h.counters() for h in built}
    lap("hosts")
    capture.wait_ready()
    lap("capture_start")
    tracer.wait_attached(folder)  # bpftrace attached its probes while the hosts were built
    lap("tracer_wait")
    transcript.start = time.monotonic()
    try:
        try:
            scenario.module.run(*built)
            for h in built:
                h.join_threads(timeout=scenario.timeout)
            # the counters are the scenario's own: its programs' runs come after
            report["counters"] = {h.name: counter_deltas(before[h.name], h.counters()) for h in built}
            lap("scenario")
            report["own_calls"] = len(transcript.entries)  # what came later is the programs' phase
            if scenario.runs_programs:
                for h in built:  # no ACK from a timer to cross a FIN sent from a process (Host.ack_at_once)
                    h.ack_at_once()
                for program in clients.each(built[0]):  # each real program, as the client, in turn
                    scenario.module.each_program(program, *built)
                    for h in built:
                        h.join_threads(timeout=scenario.timeout)
                for entry in transcript.entries[report["own_calls"]:]:  # the programs' and their servers'
                    entry["phase"] = "programs"
                lap("programs")
        except BaseException as exc:
            report["error"] = "".join(traceback.format_exception(exc))
        if "scenario" not in timings:
            lap("scenario")
        capture.stop(also_close=[s for h in built for s in h.packet_sockets()])
        lap("capture_stop")
        # what the kernel said in these hosts' namespaces, up to now (lab/tracer.py)
        until = time.monotonic_ns()
        report["clock_offset_ns"] = kernel_events.clock_offset_ns()
        report["traced"] = tracer.ask(folder, {h.netns_inode: (h.name, h.made_ns) for h in built}, until)
        lap("kernel_events")
    finally:
        capture.kill()
        for h in built:
            h.close()
    lap("teardown")
    report["outcomes"] = transcript.entries
    report["timings"] = timings
    return report


def judge(scenario: Scenario, folder: Path, report: dict[str, Any], started: float) -> tuple[bool, str]:
    """Check the claims against the capture; write SLUG.txt and SLUG.json (the claims' outcomes
    in it, failed ones too: a run on another kernel publishes them, lab/matrix.py)."""
    slug = scenario.slug
    pcap = folder / f"{slug}.pcap"
    text = trace_text(pcap, scenario.trace_options) if pcap.exists() else ""
    if report["error"]:
        return False, "the example raised:\n" + report["error"] + "\ncapture so far:\n" + text
    addresses = report["hosts"]
    traced = report["traced"]
    recorded = traced["tracing"]["recorded"]
    first = first_packet_time(pcap)
    events = kernel_events.timed(traced["events"], report["clock_offset_ns"], first) if recorded else []
    packets = kernel_events.annotate(read_packets(pcap, addresses), events, recorded)
    runs = clients.attribute(report["outcomes"], packets, events, first)  # each program's packets
    by_host: dict[str, list[Any]] = {h: [] for h in addresses}
    for entry in report["outcomes"]:
        by_host[entry["host"]].append({k: v for k, v in entry.items() if k != "host"})
    trace = evaluate(scenario, packets, report["outcomes"], report["counters"], traced["tracing"], events, runs,
                     own_calls=report["own_calls"])
    packets = trace.named_packets()
    rec = Recording(
        slug=slug, title=scenario.title, phase=scenario.phase, summary=scenario.summary,
        recorded_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        kernel=report["kernel"], tcpdump_version=tcpdump_version(),
        hosts={name: ips[0] for name, ips in addresses.items()}, addresses=addresses,
        captured_on=report["captured_on"], outcomes=by_host, counters=report["counters"],
        claims=trace.claims, packets=packets, shape=shape_of(packets, [entry for entry, _ in runs]),
        pcap_sha256=hashlib.sha256(pcap.read_bytes()).hexdigest(),
        seconds=round(time.monotonic() - started, 3), timings=report["timings"],
        sources_sha256=scenarios.sources_digest(slug, scenario.programs),
        # (the kernel's lists of reasons served the claims: not repeated in every recording)
        tracing={**{k: v for k, v in traced["tracing"].items() if k != "reasons"}, "kernel": report["kernel"]},
        states=kernel_events.states(events), kernel_events=kernel_events.strip(events),
    )
    (folder / f"{slug}.txt").write_text(text)
    (folder / f"{slug}.json").write_text(rec.to_json())
    failed = [c for c in trace.claims if c["passed"] is False]
    if failed:
        lines = [f"claim failed: {c['claim']} -- {c.get('detail', '')}" for c in failed]
        return False, "\n".join(lines) + "\ncapture:\n" + numbered(text, packets)
    return True, ""


def numbered(text: str, packets: list[Any]) -> str:
    """The trace text with each record's number and name (or noise) in front, for a failure."""
    records: list[str] = []
    for line in text.splitlines():
        if line[:1].strip() or not records:
            records.append(line)
        else:
            records[-1] += "\n" + line
    out = []
    for i, record in enumerate(records):
        p = packets[i] if i < len(packets) else None
        tag = (p.name or ("noise" if p.noise else "UNCLAIMED")) if p else "?"
        out.append(f"{i + 1:>3} {tag:<18} {record}")
    return "\n".join(out) + "\n"


def _inside(slug: str, folder: Path, programs: bool) -> int:
    """PID 1 of the run's namespaces: import the example, run it, judge it."""
    started = time.monotonic()
    status: dict[str, Any] = {"ok": False, "problem": ""}
    faulthandler.dump_traceback_later(IMPORT_TIMEOUT, exit=True)  # an example that loops at import
    try:
        scenario = load(slug, programs)
    except BaseException as exc:  # SystemExit too: an example must not end the run's process
        status["problem"] = (f"examples/{scenarios.path_of(slug).name} cannot be loaded:\n"
                             + "".join(traceback.format_exception(exc)))
        (folder / STATUS).write_text(json.dumps(status))
        return 1
    (folder / SCENARIO).write_text(json.dumps({"timeout": scenario.timeout}))
    if scenario.runs_programs:  # while this process is single-threaded (lab/pyfork.py)
        pyfork.start()
    # a hung example: print where every host's thread is stuck, then exit
    # (its hosts are built under this watchdog too: stretched in a slow guest, lab/process.py)
    faulthandler.dump_traceback_later(scenario.timeout * SLOW, exit=True)
    report = run(scenario, folder)
    faulthandler.cancel_dump_traceback_later()
    status["ok"], status["problem"] = judge(scenario, folder, report, started)
    (folder / STATUS).write_text(json.dumps(status))
    return 0 if status["ok"] else 1


def record(slug: str, folder: Path, programs: bool = False) -> int:
    """Run the scenario in its sandbox (this process must be single-threaded); the exit code.
    programs: run each real client program after the example's steps (the client session)."""
    code = sandbox.run_confined(lambda: _inside(slug, folder, programs), writable=folder,
                                hidden=[folder.parent / FOLDER_FILES[1]])  # the sealing key
    return code if code >= 0 else 128 - code  # killed by a signal: 128 + its number


def status_of(folder: Path) -> dict[str, Any] | None:
    """What the worker left in its folder: worker.json, or None if it left nothing."""
    try:
        return json.loads((folder / STATUS).read_text())
    except (OSError, ValueError):
        return None


def recording_of(folder: Path, slug: str) -> Recording | None:
    path = folder / f"{slug}.json"
    return Recording.from_json(path.read_text(), slug) if path.is_file() else None


if __name__ == "__main__":
    sys.exit(record(sys.argv[1], Path(sys.argv[2]).resolve(), sys.argv[3:] == ["--programs"]))

