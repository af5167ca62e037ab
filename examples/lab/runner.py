"""Record scenarios: one worker process each, in parallel, checked and published.

A run publishes `build/traces/SLUG.{pcap,txt,json}` only when its worker
finished, its capture is complete, every claim holds, every packet is named or
declared noise, and its shape is the committed one (lab/shapes.py). The previous
artifacts of a slug are removed before it runs, so a failed run can never leave an
older trace that looks fresh.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import shapes
from .artifact import SUFFIXES, TRACES, Recording, shape_of
from .capture import read_packets, tcpdump_version, trace_text
from .preflight import preflight
from .process import kill_group
from .scenarios import Scenario, load
from .trace import evaluate
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
    def __init__(self, out: Path = TRACES, jobs: int | None = None, update: bool = False) -> None:
        self.out = out
        self.jobs = jobs
        self.update = update  # accept a new shape (`--update`) instead of failing on it
        self.prefix = preflight()
        self._zygote: Zygote | None = None
        self._lock = threading.Lock()
        self._folders: list[Path] = []

    # -- one run -------------------------------------------------------------
    def _work(self, slug: str) -> Result:
        scenario = load(slug)
        tmp = Path(tempfile.mkdtemp(prefix=f".run-{slug}-{os.getpid()}-", dir=self.out))
        with self._lock:
            self._folders.append(tmp)
        assert self._zygote is not None
        started = time.monotonic()
        child = self._zygote.fork(slug, tmp)
        try:
            # the worker dumps its threads' stacks and exits at its own timeout;
            # this one only catches a worker too stuck to do even that
            code = child.wait(timeout=scenario.timeout + 10)
        finally:
            kill_group(child.pid)
        seconds = time.monotonic() - started
        log_file = tmp / "worker.log"
        log = log_file.read_text(errors="replace") if log_file.exists() else ""
        if code is None:
            log += "\n(the worker did not answer its own timeout)"
        if log.startswith("Timeout (") or "\nTimeout (" in log:  # faulthandler's header
            return Result(slug, False, seconds,
                          f"timed out after {scenario.timeout:g} s; where each host was:\n{log}")
        report_file = tmp / "worker.json"
        if not report_file.exists():
            return Result(slug, False, seconds, f"worker exited {code}:\n{log}")
        report = json.loads(report_file.read_text())
        return self._finish(scenario, tmp, report, seconds)

    def _finish(self, scenario: Scenario, tmp: Path, report: dict[str, Any], seconds: float) -> Result:
        slug = scenario.slug
        pcap = tmp / f"{slug}.pcap"
        text = trace_text(pcap, scenario.trace_options) if pcap.exists() else ""
        if report["error"]:
            return Result(slug, False, seconds, "the example raised:\n" + report["error"]
                          + "\ncapture so far:\n" + text)
        hosts = report["hosts"]
        by_host: dict[str, list[Any]] = {h: [] for h in hosts}
        for entry in report["outcomes"]:
            by_host[entry["host"]].append({k: v for k, v in entry.items() if k != "host"})
        trace = evaluate(scenario, read_packets(pcap, hosts), report["outcomes"], report["counters"])
        packets = trace.named_packets()
        rec = Recording(
            slug=slug, title=scenario.title, phase=scenario.phase, summary=scenario.summary,
            recorded_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            kernel=report["kernel"], tcpdump_version=tcpdump_version(),
            hosts={name: ips[0] for name, ips in hosts.items()}, addresses=hosts,
            captured_on=report["captured_on"], outcomes=by_host, counters=report["counters"],
            claims=trace.claims, packets=packets, shape=shape_of(packets),
            pcap_sha256=hashlib.sha256(pcap.read_bytes()).hexdigest(),
            seconds=round(seconds, 3), timings=report["timings"],
        )
        failed = [c for c in trace.claims if not c["passed"]]
        if failed:
            lines = [f"claim failed: {c['claim']} -- {c.get('detail', '')}" for c in failed]
            return Result(slug, False, seconds, "\n".join(lines) + "\ncapture:\n" + _numbered(text, packets),
                          rec.shape, rec)
        difference = "" if self.update else shapes.difference(slug, rec.shape)
        if difference:
            return Result(slug, False, seconds, difference, rec.shape, rec)
        (tmp / f"{slug}.txt").write_text(text)
        (tmp / f"{slug}.json").write_text(rec.to_json())
        return Result(slug, True, seconds, "", rec.shape, rec, tmp)

    # -- many runs ---------------------------------------------------------------
    def run(self, slugs: list[str], repeat: int = 1, on_result: Any = None) -> list[Result]:
        self.out.mkdir(parents=True, exist_ok=True)
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

        self._zygote = Zygote(self.prefix)
        try:
            futures = [pool.submit(consecutive, slug) for slug in slugs]
            for future in futures:
                results.extend(future.result())
            pool.shutdown(wait=True)
            self._publish(slugs, results)
        except BaseException:
            self._zygote.close()  # kills every worker: the waiting threads return at once
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
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
        committed one (each run was compared with it; with update, that shape is accepted)."""
        for slug in slugs:
            mine = [r for r in results if r.slug == slug]
            if not all(r.ok for r in mine):
                continue
            if len({json.dumps(r.shape) for r in mine}) > 1:
                _fail(mine, "shapes differ between runs:\n" + format_shapes(mine))
                continue
            if self.update:
                shapes.accept(slug, mine[0].shape)
            assert mine[0].files is not None
            for suffix in SUFFIXES:  # the json last: its presence means a complete set
                os.replace(mine[0].files / f"{slug}{suffix}", self.out / f"{slug}{suffix}")


def _fail(results: list[Result], problem: str) -> None:
    for r in results:
        r.ok, r.problem = False, problem


def _numbered(text: str, packets: list[Any]) -> str:
    """The trace text with each record's number and name (or noise) in front, for a failure."""
    records: list[str] = []
    for line in text.splitlines():
        if line[:1].strip() or not records:
            records.append(line)
        else:
            records[-1] += "\n" + line
    out = []
    for i, record in enumerate(records):
        p = packets[i] if i < len(packets) else None
        tag = (p.name or ("noise" if p.noise else "UNCLAIMED")) if p else "?"
        out.append(f"{i + 1:>3} {tag:<18} {record}")
    return "\n".join(out) + "\n"


def format_shapes(results: list[Result]) -> str:
    distinct: dict[str, int] = {}
    for r in results:
        key = " ".join(f"{s}[{f}]{'+data' if d else ''}{'(' + n[0] + ')' if n else ''}" for s, f, d, *n in r.shape)
        distinct[key] = distinct.get(key, 0) + 1
    return "\n".join(f"  {n} run(s): {key}" for key, n in distinct.items())
