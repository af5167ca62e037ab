"""`python -m lab bench`: what the lab itself costs, and what the catalogue costs.

1. The lab's overhead: an empty scenario (two hosts, a link, a capture, nothing
   sent) recorded ROUNDS times one after another; its median wall time.
2. Each scenario alone: wall time, inherent time (the time spent inside its
   run(): its own timeouts and delays), and the rest, the lab's share.
3. The whole catalogue, serial (one at a time) and parallel (all at once),
   against the target: parallel <= 1.3 x slowest scenario + 1 s.
6. The client session (`nox -s clients`, lab/clients.py): the scenarios with a client
   again, each real client program after their steps, in parallel; its wall time and the
   programs' share. It is a session of its own: the programs' start-up (JVMs, Node.js,
   Python) took the 2 CPUs from the catalogue's timers and stretched its parallel run
   from about 4 s to 22 s, past its target.
5. rst-explain against `tcpdump -r FILE -nn` printing the same capture of 1 million packets
   (bench_explain.py), side by side: target rst-explain <= 3 x tcpdump. Alone:
   `nox -s bench -- --explain-only`.
7. `rst-explain --live` under a storm of RSTs made in namespaces (bench_live.py): the watcher's
   CPU, the events bpftrace lost, its memory, what it printed and counted. Alone:
   `nox -s bench -- --live-only`.
4. The whole `nox -s docs` (the catalogue, the client session and `mkdocs build --strict`,
   overlapped), warm, against the target: <= 20 s on 2 CPUs; the client programs' CPU
   seconds in it, per program.

5. Other kernels (lab/matrix.py): each one's boot time, its catalogue time in the guest,
   and the ratio to this machine's parallel catalogue. `--kernels` boots each kernel now
   (into build/bench/kernels/, not the site's recordings); without it, the figures of the
   last `nox -s matrix` (build/traces/KERNEL/matrix.json) are reported, with their date.
   `--kernels-only` skips 1-4 but the parallel catalogue the ratio needs.

Figures are printed and written to build/bench/bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from . import scenarios, shapes
from .artifact import ROOT
from .runner import Result, Runner

BENCH = ROOT / "build" / "bench"
EMPTY = '''"""Nothing happens: two hosts, a link, a capture."""
TITLE, PHASE, HOSTS = "empty", "opening", ("client", "server")


def run(client, server):
    pass


def claims(trace):
    trace.check("nothing was sent", not trace.packets)
'''


def _inherent(result: Result) -> float:
    return float(result.timings.get("scenario", 0.0))


def _programs(result: Result) -> float:
    """The time a client scenario spent running the real client programs (lab/clients.py)."""
    return float(result.timings.get("programs", 0.0))


CLIENT_SESSION_WHY = ("its own session: the programs' start-up (JVMs, Node.js, Python) takes the CPUs from"
                      " the catalogue's timers and would stretch its parallel run past its target")


def measure_clients(rounds: int = 3) -> dict:
    """The client session (`python -m lab run --programs`), parallel, `rounds` times."""
    slugs = scenarios.client_slugs()
    walls, results = [], []
    for _ in range(rounds):
        started = time.monotonic()
        results = Runner(out=BENCH / "client-traces", programs=True).run(slugs)
        walls.append(time.monotonic() - started)
        _fail(results)
    return {"count": len(slugs), "parallel_s": round(statistics.median(walls), 3), "parallel_runs_s": walls,
            "programs_s": {r.slug: round(_programs(r), 3) for r in results},
            "slowest": max(results, key=_own).slug, "slowest_s": round(max(_own(r) for r in results), 3),
            "why_own_session": CLIENT_SESSION_WHY}


def _own(result: Result) -> float:
    """A run's wall time but the wait for the runner's kernel tracer, which the catalogue
    pays once (measure_tracer()), whichever run happens to wait for it."""
    return result.seconds - float(result.timings.get("tracer_wait", 0.0))


def measure_tracer(rounds: int = 3) -> dict:
    """The kernel tracer's fixed cost per run of the catalogue: bpftrace attaching its
    probes, and detaching them (the kernel waits for each tracepoint to be quiet)."""
    from .tracer import Tracer

    attach, detach = [], []
    for _ in range(rounds):
        started = time.monotonic()
        tracer = Tracer.launch().ready()
        attach.append(time.monotonic() - started)
        started = time.monotonic()
        tracer.close()
        detach.append(time.monotonic() - started)
        if not tracer.status["recorded"]:
            return {"recorded": False, "why": tracer.status.get("why", "")}
    return {"recorded": True, "attach_s": statistics.median(attach), "detach_s": statistics.median(detach)}


def _fail(results: list[Result]) -> None:
    bad = [r for r in results if not r.ok]
    if bad:
        raise SystemExit(f"bench: {bad[0].slug} failed:\n{bad[0].problem}")


def measure_overhead(rounds: int, out: Path) -> dict:
    default = scenarios.EXAMPLES
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "empty.py").write_text(EMPTY)
        (Path(folder) / "shapes").mkdir()
        (Path(folder) / "shapes" / "empty.txt").write_text(shapes.as_text("empty", []))
        scenarios.use_examples(Path(folder))
        try:
            runner = Runner(out=out, jobs=1)
            results = [runner.run(["empty"])[0] for _ in range(rounds)]
        finally:
            scenarios.use_examples(default)
    _fail(results)
    walls = [_own(r) for r in results]
    stages = {k: statistics.median(r.timings[k] for r in results) for k in results[0].timings}
    return {"rounds": rounds, "median_s": statistics.median(walls), "min_s": min(walls),
            "max_s": max(walls), "median_stage_s": stages}


DOCS_TARGET_S = 20.0  # the whole `nox -s docs`, the client programs included, warm, on 2 CPUs


def program_cpu(folder: Path) -> dict[str, float]:
    """CPU seconds (user + system) of each client program in a client session's recordings,
    summed over its runs in every scenario (each run's `cpu_s`, lab/clients.py)."""
    cpu: dict[str, float] = {}
    for path in sorted(folder.glob("*.json")):
        for entries in json.loads(path.read_text()).get("outcomes", {}).values():
            for entry in entries:
                if "cpu_s" in entry and entry.get("program"):
                    name = entry["program"]["id"]
                    cpu[name] = round(cpu.get(name, 0.0) + entry["cpu_s"], 3)
    return dict(sorted(cpu.items(), key=lambda item: -item[1]))


def measure_docs(recording_target: float, rounds: int = 3) -> dict:
    """The whole `nox -s docs` (nox's start, the catalogue, the client session and the site's
    build, overlapped: fieldguide/build.py), `rounds` times, warm (the first run is not
    counted when it installs); its wall and CPU seconds, its own split, and the client
    programs' CPU seconds (build/client-traces/)."""
    from .artifact import CLIENT_TRACES

    runs = []
    with tempfile.TemporaryDirectory() as site:
        for _ in range(rounds):
            before = os.times()
            started = time.monotonic()
            proc = subprocess.run(["nox", "-s", "docs", "--", "--site-dir", site],
                                  check=True, capture_output=True, text=True, cwd=ROOT)
            wall = time.monotonic() - started
            after = os.times()
            split = json.loads(proc.stdout.strip().splitlines()[-1])
            cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
            runs.append({**split, "nox_docs_s": round(wall, 3), "cpu_s": round(cpu, 3),
                         "program_cpu_s": program_cpu(CLIENT_TRACES)})
    total = statistics.median(r["nox_docs_s"] for r in runs)
    recording = statistics.median(r["recording_s"] for r in runs)
    return {"runs": runs, "nox_docs_s": total, "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "recording_s": recording, "programs_s": statistics.median(r["programs_s"] for r in runs),
            "rendering_s": statistics.median(r["rendering_s"] for r in runs),
            "program_cpu_s": runs[-1]["program_cpu_s"], "target_s": DOCS_TARGET_S,
            "target_met": total <= DOCS_TARGET_S, "recording_target_met": recording <= recording_target}


def report_explain() -> dict:
    from .bench_explain import measure
    figures = measure(BENCH)
    print(f"rst-explain on {figures['packets']} packets ({figures['explain_command']}): CPU "
          f"{figures['explain_cpu_s']:.2f} s, wall {figures['explain_wall_s']:.2f} s; tcpdump printing it "
          f"({figures['tcpdump_command']}): CPU {figures['tcpdump_cpu_s']:.2f} s, wall "
          f"{figures['tcpdump_wall_s']:.2f} s (medians of {len(figures['explain_runs'])} runs side by side, "
          f"load average {figures['load_average'][0]:.1f})")
    print(f"ratio on CPU time {figures['ratio_cpu']:.2f} (on wall {figures['ratio_wall']:.2f}); judged on "
          f"{figures['judged_on']}; target <= {figures['target_ratio']:g}: "
          f"{'met' if figures['target_met'] else 'MISSED'}")
    return figures


def measure_kernels(host_catalogue_s: float, boot: bool, nice: int = 15) -> dict:
    """Each kernel of lab/matrix.py: boot, catalogue, ratio to this machine's catalogue."""
    from . import matrix
    from .artifact import MATRIX, TRACES

    found: dict = {}
    for kernel in matrix.KERNELS:
        try:
            if boot:
                figures = matrix.record(kernel, matrix.tools(), nice=nice, out=BENCH / "kernels")
            else:
                figures = json.loads((TRACES / kernel.name / MATRIX).read_text())
        except (matrix.MatrixError, OSError, ValueError) as exc:
            found[kernel.name] = {"error": str(exc).splitlines()[0]}
            print(f"kernel {kernel.name}: {found[kernel.name]['error']}")
            continue
        ratio = figures["catalogue_seconds"] / host_catalogue_s
        found[kernel.name] = {"boot_s": figures["boot_seconds"], "catalogue_s": figures["catalogue_seconds"],
                              "ratio_to_host": round(ratio, 2), "emulated": figures["emulated"],
                              "measured_at": figures["recorded_at"], "booted_by_bench": boot}
        print(f"kernel {kernel.name}: boot {figures['boot_seconds']:.1f} s, catalogue {figures['catalogue_seconds']:.1f} s"
              f" = {ratio:.1f} x this machine's {host_catalogue_s:.2f} s"
              f" ({'emulated' if figures['emulated'] else 'KVM'};"
              f" {'booted now' if boot else 'from nox -s matrix at ' + figures['recorded_at']})")
    return found


def _publish(name: str, figures: dict, after_blank_line: bool = False) -> None:
    """Write the figures to build/bench/NAME and say where."""
    BENCH.mkdir(parents=True, exist_ok=True)
    (BENCH / name).write_text(json.dumps(figures, indent=1) + "\n")
    print(("\n" if after_blank_line else "") + f"written: {BENCH / name}")


def report_live() -> dict:
    from . import bench_live
    figures = bench_live.measure()
    bench_live.report(figures)
    return figures


def main(args: argparse.Namespace) -> int:
    if getattr(args, "live_only", False):
        figures = report_live()
        _publish("live.json", figures)
        return 0
    if getattr(args, "explain_only", False):
        figures = report_explain()
        _publish("explain.json", figures)
        return 0
    out = BENCH / "traces"
    slugs = scenarios.all_slugs()
    if args.kernels_only:
        walls = []
        for _ in range(3):
            started = time.monotonic()
            _fail(Runner(out=out).run(slugs))
            walls.append(time.monotonic() - started)
        host = statistics.median(walls)
        print(f"catalogue of {len(slugs)} on this machine ({platform.release()}): parallel {host:.2f} s (median of 3)")
        figures = {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "kernel": platform.release(),
                   "catalogue": {"parallel_s": round(host, 3), "parallel_runs_s": walls},
                   "kernels": measure_kernels(host, args.kernels, args.nice)}
        _publish("kernels.json", figures, after_blank_line=True)
        return 0
    overhead = measure_overhead(args.rounds, out)
    print(f"lab overhead (empty scenario, {args.rounds} rounds): median {overhead['median_s'] * 1000:.0f} ms"
          f" (min {overhead['min_s'] * 1000:.0f}, max {overhead['max_s'] * 1000:.0f}); by stage: "
          + ", ".join(f"{k} {v * 1000:.0f}" for k, v in overhead["median_stage_s"].items()))

    serial_runner = Runner(out=out, jobs=1)
    started = time.monotonic()
    serial = serial_runner.run(slugs)
    serial_wall = time.monotonic() - started
    _fail(serial)
    print(f"\n{'scenario':<32}{'wall':>8}{'inherent':>10}{'lab':>8}")
    per_scenario = {}
    for r in serial:
        inherent = _inherent(r)
        per_scenario[r.slug] = {"wall_s": round(_own(r), 3), "inherent_s": round(inherent, 3),
                                "lab_s": round(_own(r) - inherent, 3)}
        print(f"{r.slug:<32}{_own(r):8.2f}{inherent:10.2f}{_own(r) - inherent:8.2f}")

    parallel_walls = []
    for _ in range(3):
        started = time.monotonic()
        _fail(Runner(out=out).run(slugs))
        parallel_walls.append(time.monotonic() - started)
    parallel_wall = statistics.median(parallel_walls)
    slowest = max(serial, key=_own)
    target = 1.3 * _own(slowest) + 1.0
    tracer = measure_tracer()
    print("kernel tracer (once per catalogue, included below): " + (
        f"attach {tracer['attach_s']:.2f} s, detach {tracer['detach_s']:.2f} s" if tracer["recorded"]
        else f"not recorded: {tracer['why']}"))
    print(f"\ncatalogue of {len(slugs)}: serial {serial_wall:.2f} s, parallel {parallel_wall:.2f} s"
          f" (median of 3); slowest scenario {slowest.slug} {_own(slowest):.2f} s;"
          f" target 1.3 x slowest + 1 s = {target:.2f} s: {'met' if parallel_wall <= target else 'MISSED'}")
    print(f"lab overhead target 150 ms: {'met' if overhead['median_s'] <= 0.150 else 'MISSED'}")
    docs = measure_docs(target)
    print(f"nox -s docs, programs included (median of {len(docs['runs'])}): {docs['nox_docs_s']:.2f} s wall,"
          f" {docs['cpu_s']:.1f} CPU-s; catalogue recorded at {docs['recording_s']:.2f} s, client session at"
          f" {docs['programs_s']:.2f} s, rendering {docs['rendering_s']:.2f} s after them;"
          f" target <= {DOCS_TARGET_S:g} s: {'met' if docs['target_met'] else 'MISSED'},"
          f" catalogue <= {target:.2f} s: {'met' if docs['recording_target_met'] else 'MISSED'}")
    print("client programs' CPU seconds in that session: "
          + ", ".join(f"{name} {cpu:.2f}" for name, cpu in docs["program_cpu_s"].items()))

    clients = measure_clients()
    print(f"client session (nox -s clients, {clients['count']} scenarios, median of 3): parallel"
          f" {clients['parallel_s']:.2f} s, slowest {clients['slowest']} {clients['slowest_s']:.2f} s,"
          f" the programs {sum(clients['programs_s'].values()):.2f} s of it in all; {CLIENT_SESSION_WHY}")

    figures = {
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(), "cpus": len(os.sched_getaffinity(0)),
        "overhead": overhead, "scenarios": per_scenario,
        "catalogue": {"count": len(slugs), "serial_s": round(serial_wall, 3),
                      "parallel_s": round(parallel_wall, 3), "parallel_runs_s": parallel_walls,
                      "slowest": slowest.slug, "slowest_s": round(_own(slowest), 3),
                      "target_s": round(target, 3), "target_met": parallel_wall <= target},
        "docs": docs, "clients": clients, "tracer": tracer, "explain": report_explain(), "live": report_live(),
        "kernels": measure_kernels(parallel_wall, args.kernels, args.nice),
    }
    _publish("bench.json", figures, after_blank_line=True)
    return 0
