"""Record scenarios: one worker process each, in parallel, checked and published.

A run publishes `build/traces/SLUG.{pcap,txt,json}` only when its worker
finished, its capture is complete, every claim holds, every packet is named or
declared noise, and its shape is the committed one (lab/shapes.py). The previous
artifacts of a slug are removed before it runs, so a failed run can never leave an
older trace that looks fresh.

keep_failed (a run on another kernel, lab/matrix.py): a recording whose claims failed or
whose shape differs is published too, the claims' outcomes in it: on that kernel, the
difference is the finding. A run that recorded nothing (the example raised, a timeout)
still publishes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import clients, shapes, tracer, worker
from .artifact import CLIENT_TRACES, SUFFIXES, TRACES, Recording, key, locked, seal
from .preflight import preflight
from .process import SLOW, kill_group
from .scenarios import MAX_TIMEOUT, runs_clients
from .zygote import Zygote


@dataclass
class Result:
    slug: str
    ok: bool
    seconds: float
    problem: str = ""
    shape: list[Any] = field(default_factory=list)
    recording: Recording | None = None
    files: Path | None = None  # the run's private folder of artifacts, until published

    @property
    def timings(self) -> dict[str, float]:
        return self.recording.timings if self.recording else {}


class Runner:
    def __init__(self, out: Path | None = None, jobs: int | None = None, update: bool = False,
                 keep_failed: bool = False, programs: bool = False, failures: Path | None = None,
                 after: Path | None = None) -> None:
        # programs: the client session (each real client program after the example's steps,
        # lab/clients.py), only for the scenarios with a client, into its own folder with its
        # own shapes; the catalogue's run leaves them out (their start-up, the JVMs' and Node's
        # above all, would stretch it)
        self.programs = programs
        self.out = out or (CLIENT_TRACES if programs else TRACES)
        self.jobs = jobs
        self.keep_failed = keep_failed
        self.update = update  # accept a new shape (`--update`) instead of failing on it
        # failures: where a failed run's private folder (its pcap, text, json, worker.log) is
        # copied before it is removed, for a post-mortem (`python -m lab soak`)
        self.failures = failures
        # after: a folder another run records into; this one holds its own folder at once and
        # starts once that run has let its folder go (`nox -s docs`: the client session after the
        # catalogue, whose timers then have the CPUs to themselves, and the site's build never
        # finds the client session's folder free between the two runs)
        self.after = after
        self.prefix = preflight()
        self._zygote: Zygote | None = None
        self._lock = threading.Lock()
        self._folders: list[Path] = []
        self._tracer: tracer.Tracer | None = None

    # -- one run -------------------------------------------------------------
    def _work(self, slug: str) -> Result:
        """One confined run of the slug in a fresh worker; the example is imported only there."""
        tmp = Path(tempfile.mkdtemp(prefix=f".run-{slug}-{os.getpid()}-", dir=self.out))
        with self._lock:
            self._folders.append(tmp)
        result = self._record(slug, tmp)
        if not result.ok and self.failures is not None:
            kept = Path(tempfile.mkdtemp(prefix=f"{slug}-", dir=self.failures))
            shutil.copytree(tmp, kept, dirs_exist_ok=True, ignore=_special_files)
            (kept / "problem.txt").write_text(result.problem)
        return result

    def _record(self, slug: str, tmp: Path) -> Result:
        assert self._zygote is not None
        started = time.monotonic()
        assert self._tracer is not None
        answering = tracer.Server(self._tracer, tmp)  # the worker asks it for its kernel events
        try:
            child = self._zygote.fork(slug, tmp, self.programs)
            try:
                # the worker dumps its threads' stacks and exits at its own timeout;
                # this one only catches a worker too stuck to do even that
                code = child.wait(timeout=worker.IMPORT_TIMEOUT + MAX_TIMEOUT * SLOW + 10)
            finally:
                kill_group(child.pid)
        finally:
            answering.close()
        seconds = time.monotonic() - started
        log_file = tmp / "worker.log"
        log = log_file.read_text(errors="replace") if log_file.exists() else ""
        if code is None:
            log += "\n(the worker did not answer its own timeout)"
        status = worker.status_of(tmp)
        if status is None:
            if log.startswith("Timeout (") or "\nTimeout (" in log:  # faulthandler's header
                try:
                    limit = f"timed out after {json.loads((tmp / worker.SCENARIO).read_text())['timeout']:g} s"
                except (OSError, ValueError, KeyError):
                    limit = f"importing the example took longer than {worker.IMPORT_TIMEOUT:g} s"
                return Result(slug, False, seconds, f"{limit}; where each host was:\n{log}")
            return Result(slug, False, seconds, f"worker exited {code}:\n{log}")
        rec = worker.recording_of(tmp, slug)
        kept = tmp if self.keep_failed and rec is not None else None
        if not status["ok"]:
            return Result(slug, False, seconds, status["problem"], rec.shape if rec else [], rec, kept)
        assert rec is not None
        difference = "" if self.update else shapes.difference(slug, rec.shape, self.programs)
        if difference:
            return Result(slug, False, seconds, difference, rec.shape, rec, kept)
        return Result(slug, True, seconds, "", rec.shape, rec, tmp)

    # -- many runs ---------------------------------------------------------------
    def run(self, slugs: list[str], repeat: int = 1, on_result: Any = None,
            on_locked: Any = None) -> list[Result]:
        """Record each slug `repeat` times; publish those that passed. on_locked() is called
        once the run holds its folder (a build started after that waits for the run)."""
        if not slugs or repeat < 1 or len(set(slugs)) != len(slugs) or (self.jobs is not None and self.jobs < 1):
            raise ValueError("slugs must be distinct and given, repeat and jobs at least 1")
        if self.programs and not all(runs_clients(slug) for slug in slugs):
            raise ValueError("the client session records only scenarios with a client: "
                             + ", ".join(s for s in slugs if not runs_clients(s)) + " has none")
        try:
            with locked(self.out, exclusive=True,
                        on_wait=lambda message: print(message, file=sys.stderr, flush=True)):
                key(self.out, create=True)  # a broken key is reported before any trace is removed
                if on_locked:
                    on_locked()
                if self.after is not None:  # nothing of this run (not even its tracer) meets that one's timers
                    with locked(self.after):  # shared: granted once that run's exclusive lock is gone
                        pass
                return self._run_locked(slugs, repeat, on_result)
        finally:
            # the recordings are published and their folder let go: the site's build may read
            # them while bpftrace's probes detach (it began once every run had its events)
            if self._tracer:
                self._tracer.close()
                self._tracer = None

    def _run_locked(self, slugs: list[str], repeat: int, on_result: Any) -> list[Result]:
        self._remove_orphaned_folders()
        slugs = self._longest_first(slugs)
        for slug in slugs:
            for suffix in SUFFIXES:
                (self.out / f"{slug}{suffix}").unlink(missing_ok=True)
        # a slug's repeats run one after another; different slugs run at once
        jobs = self.jobs or min(len(slugs), 24)
        results: list[Result] = []
        pool = ThreadPoolExecutor(max_workers=jobs)

        def consecutive(slug: str) -> list[Result]:
            mine = []
            for _ in range(repeat):
                try:
                    mine.append(self._work(slug))
                except Exception:  # a bug of the lab itself fails this slug, not the others
                    mine.append(Result(slug, False, 0.0, "the lab failed:\n" + traceback.format_exc()))
                if on_result:
                    on_result(mine[-1])
            return mine

        self._tracer = tracer.Tracer.launch()  # attaches its probes while the first hosts are built
        self._tracer.expect(len(slugs) * repeat)
        threading.Thread(target=self._tracer.ready, daemon=True).start()
        if self.programs:
            clients.prepare()  # builds Go and Java once (if their sources changed), reads the versions
        try:
            self._zygote = Zygote(self.prefix, self.programs)
            futures = [pool.submit(consecutive, slug) for slug in slugs]
            for future in futures:
                results.extend(future.result())
            pool.shutdown(wait=True)
            self._publish(slugs, results)
        except BaseException:
            if self._zygote:
                self._zygote.close()  # kills every worker: the waiting threads return at once
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            if self._zygote:
                self._zygote.close()
            for folder in self._folders:
                shutil.rmtree(folder, ignore_errors=True)
            self._folders.clear()
        return results

    def _remove_orphaned_folders(self) -> None:
        """Remove the private folders of runs whose runner was killed (SIGKILL: no cleanup)."""
        for folder in self.out.glob(".run-*-*-*"):
            pid = folder.name.rsplit("-", 2)[-2]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(folder, ignore_errors=True)

    def _longest_first(self, slugs: list[str]) -> list[str]:
        """Start the scenarios with long timers first, so their waiting overlaps the others'
        work. The hint is the previous recording's duration, read before it is removed."""
        def previous(slug: str) -> float:
            try:
                return float(json.loads((self.out / f"{slug}.json").read_text())["timings"]["scenario"])
            except (OSError, ValueError, KeyError, TypeError):
                return 0.0
        return sorted(slugs, key=previous, reverse=True)

    def _publish(self, slugs: list[str], results: list[Result]) -> None:
        """Publish each slug's first run, only if all its runs passed with one shape, the
        committed one (each run was compared with it; with update, that shape is accepted),
        sealed with the key of the folder it is published in."""
        secret = b""
        for slug in slugs:
            mine = [r for r in results if r.slug == slug]
            if not all(r.ok for r in mine) and not (self.keep_failed and mine[0].files):
                continue
            if len({json.dumps(r.shape) for r in mine}) > 1:
                _fail(mine, "shapes differ between runs:\n" + format_shapes(mine))
                continue
            if self.update:
                shapes.accept(slug, mine[0].shape, self.programs)
            first = mine[0]
            assert first.files is not None and first.recording is not None
            secret = secret or key(self.out, create=True)
            files = {suffix: first.files / f"{slug}{suffix}" for suffix in SUFFIXES}
            first.recording.signature = seal(first.recording, files[".txt"].read_bytes(),
                                             files[".pcap"].read_bytes(), secret)
            files[".json"].write_text(first.recording.to_json())
            for suffix in SUFFIXES:  # the json last: its presence means a complete set
                os.replace(files[suffix], self.out / f"{slug}{suffix}")


def _special_files(folder: str, names: list[str]) -> list[str]:
    """What copytree cannot copy: sockets and pipes a run leaves in its folder."""
    return [n for n in names if not (os.path.isfile(os.path.join(folder, n)) or os.path.isdir(os.path.join(folder, n)))]


def _fail(results: list[Result], problem: str) -> None:
    for r in results:
        r.ok, r.problem = False, problem


def failures(results: list[Result]) -> str:
    """Each failed slug's problem (the failed claim, the shape diff), its first run's when it
    ran several times, as `python -m lab run` prints them; "" if none failed."""
    first: dict[str, Result] = {}
    for r in results:
        if not r.ok:
            first.setdefault(r.slug, r)
    return "\n\n".join(f"--- {r.slug} failed ---\n{r.problem.rstrip()}" for r in first.values())


def format_shapes(results: list[Result]) -> str:
    distinct: dict[str, int] = {}
    for r in results:
        key = " ".join(f"{s}[{f}]{'+data' if d else ''}{'(' + n[0] + ')' if n else ''}" for s, f, d, *n in r.shape)
        distinct[key] = distinct.get(key, 0) + 1
    return "\n".join(f"  {n} run(s): {key}" for key, n in distinct.items())
