"""A thread that lives in one host's network namespace, and whether it sleeps in the kernel."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from . import netns


class HostThread(threading.Thread):
    def __init__(self, host: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        super().__init__(name=f"{host.name}:{fn.__name__}", daemon=True)
        self.host, self.fn, self.args = host, fn, args
        self.result: Any = None
        self.error: BaseException | None = None
        self._task = ""  # this thread's folder in /proc, as /proc numbers it
        self._proc_known = threading.Event()

    def wait_blocked(self, timeout: float = 5.0) -> None:
        """Wait until this thread sleeps in the kernel (a blocked recv, accept...).

        Read from /proc: the thread's state is S and it waits on something else
        than a futex (the Python interpreter's own locks).
        """
        # the run is PID 1 of its own PID namespace: its thread ids are not /proc's, so the
        # thread tells its /proc folder itself (/proc/thread-self, read from inside it)
        self._proc_known.wait(timeout)
        task = self._task
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(f"{task}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                with open(f"{task}/wchan") as f:
                    wchan = f.read()
            except FileNotFoundError:  # the thread has already finished
                raise RuntimeError(f"{self.name} ended before blocking") from None
            if state == "S" and wchan and not wchan.startswith("futex"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not block within {timeout:g} s")
            time.sleep(0.001)  # /proc offers no event for "now sleeping"; poll it

    def run(self) -> None:
        self._task = os.path.realpath("/proc/thread-self")
        self._proc_known.set()
        netns.enter_for_good(self.host.fd)
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:  # reported by join_threads
            self.error = exc
