"""A warm parent that forks one worker per scenario run.

    python -m lab.zygote        (started by the runner; JSON lines on stdin/stdout)

Python's start-up, the lab's modules and the examples' own imports (scapy,
urllib3...) cost a worker more CPU than most scenarios do; paid once here, a
fork inherits them. Each child starts a session of its own (the runner kills
its whole process group) and writes its output to its run's folder.

Requests:  {"id": 7, "slug": "closed-port", "folder": "...", "examples": "..."}
Replies:   {"ready": true} once warm; {"id": 7, "pid": 1234}; {"id": 7, "exit": 0}
When stdin closes, every child still running is killed and the zygote exits.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import traceback
from pathlib import Path

from . import scenarios, worker


def _send(message: dict) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def _warm() -> None:
    for slug in scenarios.all_slugs():
        try:
            scenarios.load(slug)
        except Exception:  # the child that runs it will report the error
            pass


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
        code = worker.record(request["slug"], folder)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides when runs stop
    _warm()
    _send({"ready": True})
    children: dict[int, tuple[int, int]] = {}  # pidfd -> (request id, pid)
    pending = b""
    while True:
        ready, _, _ = select.select([0, *children], [], [])
        for fd in ready:
            if fd != 0:
                run_id, pid = children.pop(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                _send({"id": run_id, "exit": os.waitstatus_to_exitcode(status)})
                continue
            data = os.read(0, 65536)
            if not data:  # the runner is gone or done: nothing may outlive it
                for _, pid in children.values():
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(request, list(children))
                children[os.pidfd_open(pid)] = (request["id"], pid)
                _send({"id": request["id"], "pid": pid})


if __name__ == "__main__":
    main()
