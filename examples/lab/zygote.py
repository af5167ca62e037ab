"""A warm parent that forks one worker per scenario run.

    python -m lab.zygote        (started by the runner; JSON lines on stdin/stdout)

Python's start-up, the lab's modules and the examples' own imports (scapy,
urllib3...) cost a worker more CPU than most scenarios do; paid once here, a
fork inherits them. Each child starts a session of its own (the runner kills
its whole process group) and writes its output to its run's folder.

Requests:  {"id": 7, "slug": "closed-port", "folder": "...", "examples": "..."}
Replies:   {"ready": true} once warm; {"id": 7, "pid": 1234}; {"id": 7, "exit": 0}
When stdin closes, every child still running is killed and the zygote exits.

`Zygote` (below main()) is the runner's side of that protocol.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

from . import scenarios, worker
from .process import SLOW
from .process import kill_group, kill_groups


def _send(message: dict) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def _warm(programs: bool = False) -> None:
    """Import the libraries the examples import (read from their source, not by running them):
    an example, and any module of the examples' own folder, is executed only in its worker,
    confined, so one that exits or loops at import fails its own run, not the zygote."""
    import scapy.layers.inet  # noqa: F401  (the lab's raw peers and wiretaps: lab/peer.py, lab/wire.py)

    if programs:  # the client session: the Python client programs fork from the worker (lab/pyfork.py)
        from . import pyfork
        pyfork.warm()

    names = {m for slug in scenarios.all_slugs() for m in _imports(scenarios.path_of(slug))}
    for name in sorted(names):
        if name in sys.modules or name.split(".")[-1] == "__main__":  # a __main__ runs a program
            continue
        try:
            spec = importlib.util.find_spec(name.split(".")[0])
            origin = Path(spec.origin).resolve() if spec and spec.origin else None
            if origin is None or origin.is_relative_to(scenarios.EXAMPLES):
                continue  # not an installed library: the examples' own code
            importlib.import_module(name)
        except BaseException:  # even SystemExit: the worker that imports the example reports it
            pass


def _imports(path: Path) -> set[str]:
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def _child(request: dict, inherited: list[int]) -> None:
    """In the forked child: become the run's worker, then exit without returning."""
    code = 1
    try:
        os.setsid()
        for fd in inherited:
            os.close(fd)
        folder = Path(request["folder"])
        log = os.open(folder / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        scenarios.use_examples(Path(request["examples"]))
        code = worker.record(request["slug"], folder, request.get("programs", False))
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides when runs stop
    _warm(programs="--programs" in sys.argv[1:])
    _send({"ready": True})
    children: dict[int, tuple[int, int, str]] = {}  # pidfd -> (request id, pid, run folder)
    pending = b""
    while True:
        ready, _, _ = select.select([0, *children], [], [])
        for fd in ready:
            if fd != 0:
                run_id, pid, _ = children.pop(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                _send({"id": run_id, "exit": os.waitstatus_to_exitcode(status)})
                continue
            data = os.read(0, 65536)
            if not data:  # the runner is gone (even SIGKILLed) or done: nothing may outlive it
                pids = [pid for _, pid, _ in children.values()]
                for pid in pids:
                    os.killpg(pid, signal.SIGKILL)  # each leads its group until reaped below
                for pid in pids:
                    os.waitpid(pid, 0)  # a zombie leader would keep its group alive
                kill_groups(pids)  # and wait for the rest of each group
                for _, _, folder in children.values():
                    shutil.rmtree(folder, ignore_errors=True)  # nobody is left to read it
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(request, list(children))
                children[os.pidfd_open(pid)] = (request["id"], pid, request["folder"])
                _send({"id": request["id"], "pid": pid})


# -- the runner's side -------------------------------------------------------------

class _Child:
    def __init__(self) -> None:
        self.pid = 0
        self.code: int | None = None
        self.started = threading.Event()
        self.exited = threading.Event()

    def wait(self, timeout: float) -> int | None:
        self.exited.wait(timeout)
        return self.code


class Zygote:
    """The warm parent of this run's workers (lab/zygote.py), and its protocol."""

    def __init__(self, prefix: list[str], programs: bool = False) -> None:
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "lab.zygote", *(["--programs"] if programs else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._children: dict[int, _Child] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._log: list[str] = []
        self._ready = threading.Event()
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(120 * SLOW) or self.proc.poll() is not None:
            self.close()
            raise RuntimeError("the lab's zygote did not start:\n" + "".join(self._log))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            try:
                message = json.loads(line)
            except ValueError:
                self._log.append(line)
                continue
            if message.get("ready"):
                self._ready.set()
                continue
            child = self._children[message["id"]]
            if "pid" in message:
                child.pid = message["pid"]
                child.started.set()
            else:
                child.code = message["exit"]
                child.exited.set()
        self._ready.set()
        for child in self._children.values():  # the zygote is gone: so are its children
            child.started.set()
            child.exited.set()

    def fork(self, slug: str, folder: Path, programs: bool = False) -> _Child:
        with self._lock:
            if self._closed:
                raise KeyboardInterrupt
            self._next += 1
            child = self._children[self._next] = _Child()
            request = {"id": self._next, "slug": slug, "folder": str(folder),
                       "examples": str(scenarios.EXAMPLES), "programs": programs}
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        child.started.wait()
        if not child.pid:
            raise RuntimeError("the lab's zygote died:\n" + "".join(self._log))
        return child

    def close(self) -> None:
        """Kill every worker and the zygote; return once all of them are gone."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            kill_groups([c.pid for c in self._children.values() if c.pid and not c.exited.is_set()])
        kill_group(self.proc.pid, leader=self.proc)
        self.proc.wait()


if __name__ == "__main__":
    main()
