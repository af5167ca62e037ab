"""Record every scenario fresh and build the site (--strict), at once: what `nox -s docs` runs.

    python -m fieldguide.build [MKDOCS BUILD OPTIONS]

The site's build starts as soon as the run holds the recordings' folder: MkDocs, the
search's dictionary and the notebook's kernel load while the lab records, and the build
reads the recordings once the run lets them go (their lock, artifact.locked). A failed
scenario fails both, naming it. The last line gives the times, which `nox -s bench` reads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from lab.artifact import ROOT
from lab.process import die_with_parent


def main(mkdocs_args: list[str]) -> int:
    # killing nox (its parent) stops this, and this stops both children: nothing records on
    die_with_parent(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    children: list[subprocess.Popen[str]] = []
    try:
        return _record_and_build(mkdocs_args, children)
    except KeyboardInterrupt:
        print("interrupted: the recording and the build were stopped", file=sys.stderr)
        return 130
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()  # the runner cleans up on SIGTERM
                child.wait()


def _record_and_build(mkdocs_args: list[str], children: list[subprocess.Popen[str]]) -> int:
    started = time.monotonic()
    run = subprocess.Popen([sys.executable, "-m", "lab", "run"], stdout=subprocess.PIPE, text=True,
                           preexec_fn=lambda: die_with_parent(signal.SIGTERM))
    children.append(run)
    assert run.stdout is not None
    for line in run.stdout:  # until the run holds build/traces (or ends without it)
        print(line, end="", flush=True)
        if line.startswith("recording into "):
            break
    build = subprocess.Popen([sys.executable, "-m", "mkdocs", "build", "--strict", *mkdocs_args], cwd=ROOT,
                             env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                             preexec_fn=lambda: die_with_parent(signal.SIGTERM))
    children.append(build)
    for line in run.stdout:
        print(line, end="", flush=True)
    recorded = time.monotonic()
    recording_failed = run.wait() != 0
    build_failed = build.wait() != 0
    done = time.monotonic()
    if recording_failed:
        print("the recording failed (above): the site was not built from it", file=sys.stderr)
        return 1
    if build_failed:
        print("mkdocs build failed (above)", file=sys.stderr)
        return 1
    times = {"recording_s": round(recorded - started, 3), "rendering_s": round(done - recorded, 3),
             "total_s": round(done - started, 3)}
    print(f"recording {times['recording_s']:.1f} s, rendering {times['rendering_s']:.1f} s after it"
          f" (started alongside), total {times['total_s']:.1f} s")
    print(json.dumps(times))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
