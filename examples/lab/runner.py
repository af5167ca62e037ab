"""Record scenarios: one worker process each, in parallel, checked and published.

A run publishes `build/traces/SLUG.{pcap,txt,json}` only when its worker
finished, its capture is complete and every claim holds. The previous
artifacts of a slug are removed before it runs, so a failed run can never
leave an older trace that looks fresh.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import scenarios
from .capture import TEXT_OPTIONS
from .scenarios import LAB_HOME, load
from .trace import Trace, read_packets, shape

TRACES = LAB_HOME.parent / "build" / "traces"
TOOLS = {"tcpdump": "tcpdump", "nsenter": "util-linux", "nft": "nftables", "ss": "iproute2"}
ARTIFACTS = (".pcap", ".txt", ".json")


class LabUnavailable(RuntimeError):
    """This machine cannot run the lab; the message says what to do."""


def preflight() -> list[str]:
    """Check tools and privileges; return the prefix that runs a worker with enough rights."""
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)]
    if missing:
        raise LabUnavailable("missing " + ", ".join(missing) + ": apt-get install "
                             + " ".join(sorted({TOOLS[m.split()[0]] for m in missing})))
    if os.geteuid() == 0:
        return []
    # rootless: a user namespace gives the worker CAP_NET_ADMIN/CAP_NET_RAW over its own
    # network namespaces while its uid stays ours (tcpdump refuses to run as a fake root)
    prefix = ["unshare", "--user", "--map-current-user", "--net", "--mount", "--keep-caps"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        restricted = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
        hint = ""
        if restricted.exists() and restricted.read_text().strip() == "1":
            hint = (" AppArmor restricts unprivileged user namespaces here (Ubuntu 24.04+):"
                    " run with sudo, or `sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0`.")
        raise LabUnavailable(
            "the lab needs network namespaces: run as root (sudo), or allow unprivileged user"
            f" namespaces. `unshare --user` said: {probe.stderr.strip()}.{hint}")
    return prefix


_tcpdump_version: str | None = None


def tcpdump_version() -> str:
    global _tcpdump_version
    if _tcpdump_version is None:
        out = subprocess.run(["tcpdump", "--version"], capture_output=True, text=True).stdout
        _tcpdump_version = out.splitlines()[0].removeprefix("tcpdump version ").strip()
    return _tcpdump_version


def trace_text(pcap: Path, options: list[str]) -> str:
    """tcpdump's own text for the pcap, exactly as it prints it."""
    argv = ["tcpdump", *TEXT_OPTIONS, "-r", str(pcap), *options]
    if os.geteuid() == 0:
        argv[1:1] = ["-Z", "root"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"tcpdump -r failed: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Result:
    slug: str
    ok: bool
    seconds: float
    problem: str = ""
    shape: list[Any] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    files: Path | None = None  # the run's private folder of artifacts, until published


class Runner:
    def __init__(self, out: Path = TRACES, jobs: int | None = None) -> None:
        self.out = out
        self.jobs = jobs
        self.prefix = preflight()
        self._workers: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._folders: list[Path] = []

    # -- one run -------------------------------------------------------------
    def _work(self, slug: str) -> Result:
        scenario = load(slug)
        tmp = Path(tempfile.mkdtemp(prefix=f".run-{slug}-", dir=self.out))
        with self._lock:
            self._folders.append(tmp)
        started = time.monotonic()
        proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "lab.worker", slug, str(tmp)],
            cwd=LAB_HOME, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as one
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(LAB_HOME), os.environ.get("PYTHONPATH")])), "LAB_EXAMPLES": str(scenarios.EXAMPLES)},
        )
        with self._lock:
            self._workers[proc.pid] = proc
            stopping = self._stopping
        try:
            if stopping:
                raise KeyboardInterrupt
            # the worker dumps its threads' stacks and exits at its own timeout;
            # this one only catches a worker too stuck to do even that
            output, _ = proc.communicate(timeout=scenario.timeout + 10)
        except subprocess.TimeoutExpired:
            output = b"(the worker did not answer its own timeout)"
        finally:
            self._kill(proc)
            with self._lock:
                self._workers.pop(proc.pid, None)
        seconds = time.monotonic() - started
        log = output.decode(errors="replace")
        if log.startswith("Timeout (") or "\nTimeout (" in log:  # faulthandler's header
            return Result(slug, False, seconds,
                          f"timed out after {scenario.timeout:g} s; where each host was:\n{log}")
        report_file = tmp / "worker.json"
        if not report_file.exists():
            return Result(slug, False, seconds, f"worker exited {proc.returncode}:\n{log}")
        report = json.loads(report_file.read_text())
        return self._finish(scenario, tmp, report, seconds)

    def _finish(self, scenario: Any, tmp: Path, report: dict[str, Any], seconds: float) -> Result:
        slug = scenario.slug
        pcap = tmp / f"{slug}.pcap"
        text = trace_text(pcap, scenario.trace_options) if pcap.exists() else ""
        if report["error"]:
            return Result(slug, False, seconds, "the example raised:\n" + report["error"]
                          + "\ncapture so far:\n" + text)
        hosts = report["hosts"]
        packets = read_packets(pcap, hosts)
        by_host: dict[str, list[Any]] = {h: [] for h in hosts}
        for entry in report["outcomes"]:
            by_host[entry["host"]].append({k: v for k, v in entry.items() if k != "host"})
        trace = Trace(packets, report["outcomes"], report["counters"])
        try:
            scenario.module.claims(trace)
        except Exception as exc:  # a claim that cannot even be evaluated is a failed claim
            trace.check(f"claims() ran to the end ({type(exc).__name__}: {exc})", False)
        data = {
            "slug": slug,
            "title": scenario.title,
            "phase": scenario.phase,
            "summary": scenario.summary,
            "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "kernel": report["kernel"],
            "tcpdump_version": tcpdump_version(),
            "hosts": {name: ips[0] for name, ips in hosts.items()},
            "addresses": hosts,
            "captured_on": report["captured_on"],
            "outcomes": by_host,
            "counters": report["counters"],
            "claims": trace.claims,
            "packets": [p.__dict__ for p in packets],
            "shape": [list(s) for s in shape(packets)],
            "pcap_sha256": hashlib.sha256(pcap.read_bytes()).hexdigest(),
            "seconds": round(seconds, 3),
            "timings": report["timings"],
        }
        failed = [c for c in trace.claims if not c["passed"]]
        if failed or not trace.claims:
            lines = [f"claim failed: {c['claim']} -- {c.get('detail', '')}" for c in failed]
            if not trace.claims:
                lines = ["the scenario makes no claims"]
            return Result(slug, False, seconds, "\n".join(lines) + "\ncapture:\n" + text,
                          data["shape"], data)
        (tmp / f"{slug}.txt").write_text(text)
        (tmp / f"{slug}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        return Result(slug, True, seconds, "", data["shape"], data, tmp)

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        """Kill the worker's whole process group and return once all of it is gone."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # orphans (tcpdump...) die asynchronously
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.001)

    def stop_all(self) -> None:
        with self._lock:
            self._stopping = True
            workers = list(self._workers.values())
        for proc in workers:
            self._kill(proc)

    # -- many runs ---------------------------------------------------------------
    def run(self, slugs: list[str], repeat: int = 1, on_result: Any = None) -> list[Result]:
        self.out.mkdir(parents=True, exist_ok=True)
        for slug in slugs:
            for suffix in ARTIFACTS:
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

        try:
            futures = [pool.submit(consecutive, slug) for slug in slugs]
            for future in futures:
                results.extend(future.result())
            pool.shutdown(wait=True)
            self._publish(slugs, results)
        except BaseException:
            self.stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            for folder in self._folders:
                shutil.rmtree(folder, ignore_errors=True)
            self._folders.clear()
        return results

    def _publish(self, slugs: list[str], results: list[Result]) -> None:
        """Publish each slug's first run, only if all its runs passed with one shape."""
        for slug in slugs:
            mine = [r for r in results if r.slug == slug]
            if not all(r.ok for r in mine):
                continue
            shapes = {json.dumps(r.shape) for r in mine}
            if len(shapes) > 1:
                for r in mine:
                    r.ok, r.problem = False, "shapes differ between runs:\n" + format_shapes(mine)
                continue
            assert mine[0].files is not None
            for suffix in ARTIFACTS:  # the json last: its presence means a complete set
                os.replace(mine[0].files / f"{slug}{suffix}", self.out / f"{slug}{suffix}")


def format_shapes(results: list[Result]) -> str:
    distinct: dict[str, int] = {}
    for r in results:
        key = " ".join(f"{s}[{f}]{'+data' if d else ''}" for s, f, d in r.shape)
        distinct[key] = distinct.get(key, 0) + 1
    return "\n".join(f"  {n} run(s): {key}" for key, n in distinct.items())
