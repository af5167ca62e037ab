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

    # -- many runs ---------------------------------------------------------------
    def run(self, slugs: list[str], repeat: int = 1, on_result: Any = None) -> list[Result]:
        self.out.mkdir(parents=True, exist_ok=True)
        self._remove_orphaned_folders()
        slugs = self._longest_first(slugs)
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


def kill_group(pgid: int, leader: subprocess.Popen[bytes] | None = None) -> None:
    """SIGKILL a process group and return once every member is gone.

    A leader that is our own child is reaped first: a zombie still counts as a member."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if leader is not None:
        leader.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # members die asynchronously; no event says when
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.001)


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

    def __init__(self, prefix: list[str]) -> None:
        path = os.pathsep.join(filter(None, [str(LAB_HOME), os.environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "lab.zygote"], cwd=LAB_HOME,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "PYTHONPATH": path},
        )
        self._children: dict[int, _Child] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._log: list[str] = []
        self._ready = threading.Event()
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(120) or self.proc.poll() is not None:
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

    def fork(self, slug: str, folder: Path) -> _Child:
        with self._lock:
            if self._closed:
                raise KeyboardInterrupt
            self._next += 1
            child = self._children[self._next] = _Child()
            request = {"id": self._next, "slug": slug, "folder": str(folder),
                       "examples": str(scenarios.EXAMPLES)}
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
            for child in self._children.values():
                if child.pid and not child.exited.is_set():
                    kill_group(child.pid)
        kill_group(self.proc.pid, leader=self.proc)
        self.proc.wait()


def format_shapes(results: list[Result]) -> str:
    distinct: dict[str, int] = {}
    for r in results:
        key = " ".join(f"{s}[{f}]{'+data' if d else ''}" for s, f, d in r.shape)
        distinct[key] = distinct.get(key, 0) + 1
    return "\n".join(f"  {n} run(s): {key}" for key, n in distinct.items())
