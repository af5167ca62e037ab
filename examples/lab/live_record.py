"""`python -m lab live`: record what `rst-explain --live` prints while the causes of
lab/live_causes.py happen in two namespaces of their own, for the page "Watch your own machine"
(docs/watch.md, the placeholder {{ live_watch }}).

Into build/live/ (held as a run holds build/traces: artifact.locked):

    watch.txt    what `rst-explain --live` printed on standard output, every cause, then its summary
    watch.json   what `rst-explain --live --json --count 1` printed for one cause (closed port)
    status.json  {"recorded": true, "command", "kernel", "bpftrace", "causes", "watching", "recorded_at"}
                 or {"recorded": false, "why": the tool's own line}

`--after DIR` records once DIR's run has ended (the catalogue's), its folder held meanwhile.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

from . import live_causes
from .artifact import ROOT, locked

LIVE = ROOT / "build" / "live"
FILES = ("watch.txt", "watch.json", "status.json")


def _shown(argv: list[str]) -> str:
    """The command as a reader types it (the namespaces' paths are this run's own)."""
    shown, skip = ["rst-explain"], False
    for i, arg in enumerate(argv[3:]):
        if skip:
            skip = False
            continue
        if arg == "--netns":
            shown += ["--netns", "CLIENT" if "--netns" not in shown else "SERVER"]
            skip = True
        else:
            shown.append(arg)
    return " ".join(shown)


def record(out: Path = LIVE, after: Path | None = None) -> dict:
    with locked(out, exclusive=True):
        print(f"recording into {out}", flush=True)
        if after is not None:
            with locked(after):  # shared: once the run holding it has ended
                pass
        for name in FILES:
            (out / name).unlink(missing_ok=True)
        status = _record(out)
        (out / "status.json").write_text(json.dumps(status, indent=1) + "\n")
        return status


def _record(out: Path) -> dict:
    pair = live_causes.make_pair()
    watch = one = None
    try:
        paths = [pair.path(pair.client), pair.path(pair.server)]
        watch = live_causes.Watching(paths, json_=False)
        # the --json example's watcher attaches meanwhile (bpftrace's compile and attach, about
        # 1.2 s each, overlap); its port (--port 47101) is used only once `watch` has stopped
        one = live_causes.Watching(paths, "--count", "1", "--port", "47101")
        if not watch.attached.wait(90) or watch.proc.poll() is not None:
            watch.proc.wait(timeout=30)
            return {"recorded": False, "why": "".join(watch.stderr).strip()}
        lines: list[str] = []
        for cause in live_causes.CAUSES:
            cause.run(pair, cause.port)
            while True:  # its block begins with a line naming both ends, the cause's port one of them
                line = watch.next()
                lines.append(line)
                if f":{cause.port} " in line and not line.startswith(" "):
                    break
        watch.stop()
        while (line := watch.objects.get(timeout=30)) is not None:
            lines.append(line)
        if watch.proc.returncode != 0:
            raise RuntimeError(f"rst-explain --live exited {watch.proc.returncode}: {''.join(watch.stderr)}")
        (out / "watch.txt").write_text("".join(lines))
        watching = next(line for line in watch.stderr if line.startswith("watching")).strip()
        command = _shown(watch.argv)

        if not one.attached.wait(90):
            raise RuntimeError("".join(one.stderr))
        live_causes.closed_port(pair, 47101)
        objects = [one.next(), one.next()]
        one.proc.wait(timeout=30)
        (out / "watch.json").write_text("".join(json.dumps(o, indent=1) + "\n" for o in objects))
        version = subprocess.run(["bpftrace", "--version"], capture_output=True, text=True, check=False).stdout
        return {"recorded": True, "command": command, "json_command": _shown(one.argv),
                "kernel": platform.release(), "bpftrace": version.strip(), "watching": watching,
                "causes": [{"name": c.name, "page": c.page, "port": c.port} for c in live_causes.CAUSES],
                "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    finally:
        for watcher in (watch, one):
            if watcher is not None:
                watcher.kill()
