"""Record every scenario fresh, then the client session, and build the site (--strict),
overlapped: what `nox -s docs` runs.

    python -m fieldguide.build [--no-programs] [MKDOCS BUILD OPTIONS]

Two runs record, one after the other: the catalogue (`python -m lab run`, build/traces/),
then the client session (`python -m lab run --programs`, build/client-traces/: the real
client programs), which holds its folder from the catalogue's start on. The site's build
starts as soon as both hold their folders: MkDocs, the search's dictionary, sharkd and the
notebook's kernel load while the lab records, and the build reads each run's recordings once
that run lets them go (their lock, artifact.locked): the catalogue's, which sharkd and the
notebook then read while the client session records, and the client session's. A failed
scenario fails the build, naming it (a failed catalogue stops the client session: the build
has failed already). `--no-programs` (for authors) records the catalogue
alone and builds without the programs' lines (hooks.py). The last line gives the times,
which `nox -s bench` reads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

from lab.artifact import CLIENT_TRACES, ROOT, TRACES
from lab.process import die_with_parent

from . import NO_PROGRAMS, PROGRAMS_ENV

LOCKED = "recording into "  # what a run prints once it holds its folder (lab/__main__.py)
FAILED = "failed: "  # the runner's last line on stderr when scenarios failed: their slugs


class Recording:
    """One run of the lab, its output passed on line by line (prefix: whose it is)."""

    def __init__(self, name: str, argv: list[str], prefix: str, command: str = "run") -> None:
        self.name, self.prefix = name, prefix
        self.locked = threading.Event()  # it holds its folder, or it ended without
        self.failed = ""  # the slugs it said failed, or its last line on stderr
        self.ended = 0.0
        self.proc = subprocess.Popen([sys.executable, "-m", "lab", command, *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [threading.Thread(target=self._pass, args=(self.proc.stdout, sys.stdout), daemon=True),
                         threading.Thread(target=self._pass, args=(self.proc.stderr, sys.stderr), daemon=True)]
        for thread in self._threads:
            thread.start()

    def _pass(self, stream: IO[str], to: IO[str]) -> None:
        for line in stream:
            print(self.prefix + line, end="", file=to, flush=True)
            if to is sys.stdout and line.startswith(LOCKED):
                self.locked.set()
            elif to is sys.stderr and line.strip():
                self.failed = line.strip().removeprefix(FAILED)
        if to is sys.stdout:
            self.locked.set()

    def wait(self) -> bool:
        """Whether the run passed; its end's time in self.ended."""
        code = self.proc.wait()
        for thread in self._threads:
            thread.join()
        self.ended = self.ended or time.monotonic()
        return code == 0


def main(argv: list[str]) -> int:
    # killing nox (its parent) stops this, and this stops every child: nothing records on
    die_with_parent(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    programs = NO_PROGRAMS not in argv
    mkdocs_args = [a for a in argv if a != NO_PROGRAMS]
    children: list[subprocess.Popen[str]] = []
    try:
        return _record_and_build(programs, mkdocs_args, children)
    except KeyboardInterrupt:
        print("interrupted: the recordings and the build were stopped", file=sys.stderr)
        return 130
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()  # the runner cleans up on SIGTERM
                child.wait()


def _record_and_build(programs: bool, mkdocs_args: list[str], children: list[subprocess.Popen[str]]) -> int:
    started = time.monotonic()
    runs = [Recording("the catalogue", [], "")]
    children.append(runs[0].proc)
    runs[0].locked.wait()
    if programs:
        # it holds its folder now, but records after the catalogue (--after): beside it, the two
        # runs' timing races failed 4 builds in 12 on 2 CPUs (after it: none in 9), and both
        # ways took about 30 s
        runs.append(Recording("the client session", ["--programs", "--after", str(TRACES)], "[clients] "))
        children.append(runs[1].proc)
        runs[1].locked.wait()
    # rst-explain --live's own recording for docs/watch.md (lab/live_record.py), once the runs
    # before it have ended (their timers are not shared with it): namespaces of its own, seconds
    after = CLIENT_TRACES if programs else TRACES
    runs.append(Recording("rst-explain --live's recording", ["--after", str(after)], "[live] ", command="live"))
    children.append(runs[-1].proc)
    runs[-1].locked.wait()
    build = None
    if all(run.proc.poll() is None or run.proc.returncode == 0 for run in runs):  # each holds its folder
        build = subprocess.Popen([sys.executable, "-m", "mkdocs", "build", "--strict", *mkdocs_args], cwd=ROOT,
                                 env={**os.environ, "NO_MKDOCS_2_WARNING": "1", PROGRAMS_ENV: str(int(programs))},
                                 preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        children.append(build)
    failed = [] if runs[0].wait() else runs[:1]
    if failed and programs:  # the build fails already: recording the programs would only delay it
        runs[1].proc.terminate()
        runs[1].wait()
    failed += [run for run in runs[1:] if not failed and not run.wait()]
    build_failed = build is None or build.wait() != 0
    done = time.monotonic()
    for run in failed:
        print(f"{run.name}'s recording failed ({run.failed or 'see above'}): the site was not built from it",
              file=sys.stderr)
    if failed:
        return 1
    if build_failed:
        print("mkdocs build failed (above)", file=sys.stderr)
        return 1
    recorded = max(run.ended for run in runs)
    times = {"recording_s": round(runs[0].ended - started, 3),
             "programs_s": round(runs[1].ended - started, 3) if programs else None,
             "rendering_s": round(done - recorded, 3), "total_s": round(done - started, 3)}
    print(f"catalogue {times['recording_s']:.1f} s, "
          + (f"client session after it, to {times['programs_s']:.1f} s" if programs else "without the client programs")
          + f"; rendering {times['rendering_s']:.1f} s after them (started alongside), total {times['total_s']:.1f} s")
    print(json.dumps(times))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
