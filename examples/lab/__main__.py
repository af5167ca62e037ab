"""Command line of the lab.

    python -m lab run [--repeat N] [--jobs J] [--update] [SLUG ...]   record scenarios (default: all)
    python -m lab run --programs [SLUG ...]                the client session: the scenarios with a client again,
                                                           each real client program after their steps
                                                           (build/client-traces/, examples/shapes/clients/)
    python -m lab run --programs --after build/traces      the same, recording once the catalogue's run has ended
    python -m lab list                                     the known slugs
    python -m lab run --keep-failed --out DIR              publish failed claims too, with RESULTS (lab/matrix.py)
    python -m lab matrix [--kernel NAME ...]               the catalogue on other kernels (build/traces/KERNEL/)
    python -m lab bench                                    timing figures (build/bench/)
    python -m lab live [--after build/traces]              rst-explain --live watching causes of its own
                                                           (build/live/, for docs/watch.md)
    python -m lab soak [N] [SLUG ...]                      N catalogue runs and N/3 client sessions, one CPU
                                                           busy; failures per scenario (build/soak.json)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from . import scenarios
from .artifact import CLIENT_TRACES, RESULTS, ROOT, TRACES, ArtifactError
from .preflight import LabUnavailable
from .process import die_with_parent
from .runner import Result, Runner, failures, format_shapes
from .scenarios import UnknownScenario, all_slugs, check, client_slugs, runs_clients


_printing = threading.Lock()  # results arrive from the runner's threads


def _print_result(result: Result) -> None:
    mark = "ok  " if result.ok else "FAIL"
    with _printing:
        print(f"{mark} {result.slug:<24} {result.seconds:6.2f} s", flush=True)


@contextlib.contextmanager
def busy_cpus(count: int) -> Iterator[None]:
    """Busy-loop processes for the duration, to show a trace does not depend on an idle machine.
    Each dies with the runner, however the runner ends."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                              preexec_fn=lambda: die_with_parent(signal.SIGKILL)) for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


class Interrupted(KeyboardInterrupt):
    pass


class BadInput(ValueError):
    pass


def stop_on_signals() -> None:
    """SIGINT and SIGTERM stop the run and its cleanup runs to the end (a second signal, as
    nox sends SIGTERM 0.3 s after SIGINT, is ignored); the parent's end is a SIGTERM."""
    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    die_with_parent(signal.SIGTERM)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def cpus(text: str) -> int:
    value = int(text)
    available = len(os.sched_getaffinity(0))
    if not 0 <= value <= available:
        raise argparse.ArgumentTypeError(f"must be between 0 and this machine's {available} CPUs, not {value}")
    return value


def refuse_repeated(slugs: list[str], hint: str = "") -> None:
    repeated = sorted({s for s in slugs if slugs.count(s) > 1})
    if repeated:
        raise BadInput(f"given more than once: {', '.join(repeated)}{hint}")


def cmd_run(args: argparse.Namespace) -> int:
    # every input is checked before anything is touched or deleted
    refuse_repeated(args.slugs, " (use --repeat N)")
    slugs = check(args.slugs) if args.slugs else (client_slugs() if args.programs else all_slugs())
    if args.programs:
        without = [s for s in slugs if not runs_clients(s)]
        if without:
            raise BadInput(f"--programs: {', '.join(without)} has no client (no each_program());"
                           f" the scenarios with one: {', '.join(client_slugs())}")
        if args.keep_failed:
            raise BadInput("--programs records this machine's client session: not with --keep-failed")
    out = (args.out or (CLIENT_TRACES if args.programs else TRACES)).resolve()
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {args.out} is not a folder")
    for kept in (scenarios.EXAMPLES, ROOT / "docs"):
        if out.is_relative_to(kept):
            raise BadInput(f"--out {args.out} is inside {kept}: recordings go elsewhere (build/traces)")
    if args.keep_failed and (args.update or args.repeat > 1):
        raise BadInput("--keep-failed records each scenario once, as it is: not with --update or --repeat")
    runner = Runner(out=out, jobs=args.jobs, update=args.update, keep_failed=args.keep_failed, programs=args.programs,
                    after=args.after.resolve() if args.after else None)
    started = time.monotonic()

    def announce() -> None:  # `nox -s docs` starts the site's build once it reads this line
        print(f"recording into {out}", flush=True)

    with busy_cpus(args.busy):
        results = runner.run(slugs, repeat=args.repeat, on_locked=announce,
                             on_result=_print_result if args.repeat == 1 else None)
    failed = [r for r in results if not r.ok]
    if args.repeat > 1:
        for slug in slugs:
            mine = [r for r in results if r.slug == slug]
            bad = [r for r in mine if not r.ok]
            print(f"{'ok  ' if not bad else 'FAIL'} {slug:<24} {len(mine) - len(bad)}/{len(mine)} runs,"
                  f" {len({str(r.shape) for r in mine})} shape(s)")
            if len({str(r.shape) for r in mine}) > 1:
                print(format_shapes(mine))
    if failed:
        print("\n" + failures(failed), file=sys.stderr)
    print(f"{len(results) - len(failed)}/{len(results)} runs passed in {time.monotonic() - started:.2f} s")
    if failed:
        print("failed: " + ", ".join(sorted({r.slug for r in failed})), file=sys.stderr)
    if args.keep_failed:  # every outcome is a finding on that kernel; what ran is in RESULTS
        (out / RESULTS).write_text(json.dumps({
            "kernel": platform.release(), "seconds": round(time.monotonic() - started, 2),
            "results": {r.slug: {"recorded": r.files is not None, "ok": r.ok, "seconds": round(r.seconds, 2),
                                 "problem": r.problem[:4000]} for r in results}}, indent=1) + "\n")
        return 0
    return 1 if failed else 0


def cmd_soak(args: argparse.Namespace) -> int:
    from .soak import main as soak_main
    words = list(args.runs_and_slugs)
    runs = positive(words.pop(0)) if words and words[0].isdigit() else 10
    refuse_repeated(words)
    check(words)  # an unknown slug is refused before anything runs
    with busy_cpus(args.busy):
        if args.sessions is not None and args.sessions < 0:
            raise BadInput(f"--sessions must be 0 or more, not {args.sessions}")
        return soak_main(runs, words, args.busy, args.sessions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description="Record TCP reset scenarios.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="record scenarios and check their claims")
    run.add_argument("--repeat", type=positive, default=1, help="record each N times; shapes must agree")
    run.add_argument("--jobs", type=positive, default=None, help="scenarios run at once")
    run.add_argument("--busy", type=cpus, default=0, metavar="N",
                     help="keep N CPUs busy meanwhile (determinism under load; at most the CPUs there are)")
    run.add_argument("--out", type=Path, default=None,
                     help="where artifacts go (build/traces; build/client-traces with --programs)")
    run.add_argument("--programs", action="store_true",
                     help="the client session: run each real client program (lab/clients.py) after the steps"
                          " of the scenarios with a client (default: all of those)")
    run.add_argument("--after", type=Path, default=None, metavar="DIR",
                     help="hold the output folder at once, but record once the run recording into DIR has"
                          " ended (`nox -s docs`: the client session after the catalogue)")
    run.add_argument("--update", action="store_true",
                     help="accept each recorded shape into examples/shapes/ instead of failing on a change")
    run.add_argument("--keep-failed", action="store_true",
                     help="publish recordings whose claims failed or whose shape differs too (another kernel's run)")
    run.add_argument("slugs", nargs="*")
    matrix = sub.add_parser("matrix", help="record the catalogue on each kernel of lab/matrix.py, in a guest")
    matrix.add_argument("--kernel", action="append", default=[], metavar="NAME",
                        help="only this kernel (a name of lab/matrix.py's KERNELS, or a path to an image)")
    matrix.add_argument("--nice", type=int, default=15, help="the guests' niceness (QEMU emulation is CPU-heavy)")
    matrix.add_argument("--kvm", action="store_true", help="use KVM (default: emulation, see lab/matrix.py)")
    matrix.add_argument("slugs", nargs="*", help="only these scenarios (default: all; a partial set replaces the folder)")
    soak = sub.add_parser("soak", help="record the catalogue N times and the client session N/3 times, one CPU busy")
    soak.add_argument("--busy", type=cpus, default=1, metavar="N", help="CPUs kept busy meanwhile (default 1)")
    soak.add_argument("--sessions", type=int, default=None, metavar="K",
                      help="client sessions among the runs (default: N/3, rounded up; 0: none)")
    soak.add_argument("runs_and_slugs", nargs="*", metavar="[N] [SLUG]",
                      help="catalogue runs (default 10), then the scenarios (default: all)")
    sub.add_parser("list", help="the known scenario slugs")
    live = sub.add_parser("live", help="record rst-explain --live watching the causes of lab/live_causes.py"
                                       " (build/live/, the page docs/watch.md)")
    live.add_argument("--out", type=Path, default=None, help="the folder (default build/live)")
    live.add_argument("--after", type=Path, default=None, metavar="DIR",
                      help="record once DIR's run has ended (its folder held meanwhile)")
    bench = sub.add_parser("bench", help="measure the lab's own cost and the catalogue's")
    bench.add_argument("--rounds", type=int, default=20)
    bench.add_argument("--live-only", action="store_true",
                       help="only rst-explain --live under a storm of RSTs (build/bench/live.json)")
    bench.add_argument("--explain-only", action="store_true",
                       help="only rst-explain against tcpdump -r on a capture of 1 million packets")
    bench.add_argument("--kernels", action="store_true",
                       help="boot each kernel of lab/matrix.py now (default: report the last `nox -s matrix`)")
    bench.add_argument("--kernels-only", action="store_true",
                       help="only this machine's parallel catalogue and the other kernels' figures")
    bench.add_argument("--nice", type=int, default=15, help="the guests' niceness (with --kernels)")
    args = parser.parse_args(argv)
    stop_on_signals()
    try:
        if args.command == "list":
            print("\n".join(all_slugs()))
            return 0
        if args.command == "matrix":
            from .matrix import main as matrix_main
            return matrix_main(args)
        if args.command == "soak":
            return cmd_soak(args)
        if args.command == "bench":
            from .bench import main as bench_main
            return bench_main(args)
        if args.command == "live":
            from .live_record import LIVE, record
            status = record(args.out or LIVE, args.after)
            print("recorded" if status["recorded"] else f"not recorded: {status['why']}", flush=True)
            return 0
        return cmd_run(args)
    except (UnknownScenario, BadInput) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (LabUnavailable, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted: every worker was stopped and its files removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
