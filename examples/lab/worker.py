"""Run one scenario in this process: build its hosts, capture, run it, report.

    python -m lab.worker SLUG OUTDIR

Writes OUTDIR/SLUG.pcap and OUTDIR/worker.json. The runner's zygote forks
each worker into a process group of its own and calls record(), so a timeout
or Ctrl-C kills it with everything it started; its namespaces die with it.
`python -m lab.worker` runs one the same way, by hand, for debugging.
"""

from __future__ import annotations

import faulthandler
import json
import platform
import sys
import time
import traceback
from pathlib import Path

from . import hosts as lab_hosts
from .capture import Capture
from .recording import Transcript
from .scenarios import load


def counter_deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] != before.get(k, 0)}


def run(slug: str, outdir: Path) -> dict:
    timings: dict[str, float] = {}
    report: dict = {"slug": slug, "kernel": platform.release(), "error": None}
    mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        timings[name] = round(now - mark, 4)
        mark = now

    scenario = load(slug)
    transcript = Transcript()
    captures: list[Capture] = []

    def start_capture(host: lab_hosts.Host) -> None:  # tcpdump starts while the rest is built
        captures.append(Capture(host.fd, "eth0", outdir / f"{slug}.pcap"))

    built = lab_hosts.build(scenario.hosts, transcript, (scenario.capture_on, start_capture))
    report["hosts"] = {h.name: h.addresses for h in built}
    report["captured_on"] = f"{scenario.capture_on} eth0"
    (capture,) = captures
    before = {h.name: h.counters() for h in built}
    lap("hosts")
    capture.wait_ready()
    lap("capture_start")
    transcript.start = time.monotonic()
    try:
        try:
            scenario.module.run(*built)
            for h in built:
                h.join_threads(timeout=scenario.timeout)
        except BaseException as exc:
            report["error"] = "".join(traceback.format_exception(exc))
        lap("scenario")
        report["counters"] = {h.name: counter_deltas(before[h.name], h.counters()) for h in built}
        capture.stop(also_close=[s for h in built for s in h.packet_sockets()])
        lap("capture_stop")
    finally:
        capture.kill()
        for h in built:
            h.close()
    lap("teardown")
    report["outcomes"] = transcript.entries
    report["timings"] = timings
    return report


def record(slug: str, outdir: Path) -> int:
    """Run the scenario under a watchdog and write OUTDIR/worker.json; the exit code."""
    # a hung example: print where every host's thread is stuck, then exit
    faulthandler.dump_traceback_later(load(slug).timeout, exit=True)
    report = run(slug, outdir)
    (outdir / "worker.json").write_text(json.dumps(report, indent=1))
    return 1 if report["error"] else 0


if __name__ == "__main__":
    sys.exit(record(sys.argv[1], Path(sys.argv[2])))
