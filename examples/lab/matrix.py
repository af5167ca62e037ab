"""`python -m lab matrix`: the whole catalogue on other kernels, one guest boot per kernel.

Each kernel of KERNELS (Debian's packages: the image in /boot, its modules in /lib/modules)
is booted once under QEMU by virtme-ng (`vng`, PyPI), with this machine's root filesystem
shared read-only, so the guest runs this very checkout, venv and tools. Inside, the same
lab records every scenario (`python -m lab run --keep-failed`) into a folder the guest may
write (`vng --rwdir`): a private one under build/traces/, moved to build/traces/KERNEL/ only
when the guest's run completed. A failed claim or a changed shape is published there: on
that kernel it is the finding; the site's Kernels sections compare it with this machine's.
A guest that does not boot or does not finish leaves nothing, and the error names the kernel.

The machine's own kernel is not in the list: `nox -s examples` records it, and the pages
embed that recording.

Emulation, not KVM, by default: on this project's machine a KVM guest hung at boot
(2026-12, 6.1 and 6.12 both; the virtual CPU's MSRs), plain emulation works. `--kvm` uses
KVM where the host has it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from . import scenarios
from .artifact import MATRIX, RESULTS, ROOT, TRACES, locked


@dataclass(frozen=True)
class Kernel:
    name: str  # its release (uname -r): the folder build/traces/NAME/
    package: str  # the Debian package that installs it
    why: str  # what a reader on it runs

    @property
    def image(self) -> Path:
        return Path("/boot") / f"vmlinuz-{self.name}"


# The kernels the matrix records, besides the machine's own. Not the -cloud- flavour: it
# lacks the 9p module virtme-ng mounts the root filesystem with (the guest panics).
KERNELS = (
    Kernel("6.1.0-57-amd64", "linux-image-6.1.0-57-amd64", "Debian 12's own kernel (Linux 6.1 LTS)"),
    Kernel("6.12.117+deb12-amd64", "linux-image-6.12.117+deb12-amd64",
           "Linux 6.12 LTS, as Debian 12 offers it (and Debian 13's kernel line)"),
)
BOOTED = "lab-matrix: booted"  # the guest's first words: the boot is over
DONE = "lab-matrix: done"  # its last: the catalogue is over (with the lab's exit status)
GUEST_MEMORY = "2G"
GUEST_SLOW = 10  # the lab's start-up waits and watchdogs in an emulated guest (lab/process.py's SLOW)
# scenarios at once in the guest: 24 at once on two emulated CPUs starved every run's host
# building past its watchdog (2026-12: all 31 timed out on 6.1 and on 6.12)
GUEST_JOBS = 4
GUEST_TIMEOUT = float(os.environ.get("LAB_GUEST_TIMEOUT", 3600))  # seconds, boot and catalogue
# seconds until the guest's first words: QEMU given something that is not a bootable kernel
# does not exit, it hangs (a zero-filled image did); the boots measured here took 28-335 s
BOOT_TIMEOUT = float(os.environ.get("LAB_BOOT_TIMEOUT", 900))


class MatrixError(RuntimeError):
    """A kernel could not be recorded; the message names it and says why."""


def by_name(names: list[str]) -> list[Kernel]:
    """KERNELS, or those named; a path to an image stands for a kernel of its own."""
    if not names:
        return list(KERNELS)
    known = {k.name: k for k in KERNELS}
    chosen = []
    for name in names:
        if name in known:
            chosen.append(known[name])
        elif "/" in name:
            release = Path(name).name.removeprefix("vmlinuz-")
            chosen.append(_AtPath(release, f"a kernel image at {name}", "given by path", Path(name)))
        else:
            raise MatrixError(f"unknown kernel {name!r}: lab/matrix.py's KERNELS are "
                              + ", ".join(known) + " (or give a path to a kernel image)")
    return chosen


@dataclass(frozen=True)
class _AtPath(Kernel):
    path: Path = Path()

    @property
    def image(self) -> Path:
        return self.path


def tools() -> dict[str, str]:
    """The programs the guests need, by path; MatrixError naming the package of each missing one."""
    bin_dir = str(Path(sys.executable).parent)  # vng runs virtme-run from the same venv
    path = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    wanted = {"vng": "virtme-ng (PyPI: `nox -s matrix` installs it; or `pip install virtme-ng`)",
              "qemu-system-x86_64": "qemu-system-x86 (Debian)",
              "busybox": "busybox-static (Debian; virtme-ng builds the guest's initramfs with it)"}
    found = {tool: shutil.which(tool, path=path) for tool in wanted}
    missing = [wanted[t] for t, p in found.items() if not p]
    if missing:
        raise MatrixError("the matrix needs " + " and ".join(missing) + ": install it and run again")
    return {t: str(p) for t, p in found.items()}


def check_kernel(kernel: Kernel) -> None:
    if not kernel.image.is_file():
        hint = (f" (install the Debian package {kernel.package}: `apt-get install {kernel.package}`)"
                if kernel in KERNELS else "")
        raise MatrixError(f"kernel {kernel.name}: no image {kernel.image}{hint}")


def record(kernel: Kernel, found: dict[str, str], nice: int = 15, kvm: bool = False,
           out: Path | None = None, slugs: tuple[str, ...] = (), boot_timeout: float = BOOT_TIMEOUT) -> dict:
    """Boot `kernel` once, record the catalogue inside, publish OUT/NAME (default
    build/traces/NAME) whole or not at all; its figures (matrix.json)."""
    check_kernel(kernel)
    base = out or TRACES
    base.mkdir(parents=True, exist_ok=True)
    final = base / kernel.name
    tmp = base / f".matrix-{kernel.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # the guest records on its own tmpfs (the runner's Unix sockets cannot be bound on the 9p
    # share: ENXIO), then copies the set into the share, the last step before DONE
    lab = (f"LAB_SLOW={GUEST_SLOW:g} {shlex.quote(sys.executable)} -m lab run --keep-failed"
           f" --jobs {GUEST_JOBS} --out \"$out\" "
           + " ".join(map(shlex.quote, slugs)))
    script = (f"echo {shlex.quote(BOOTED)}; out=$(mktemp -d /run/lab-matrix.XXXXXX) && {lab}"
              f" && cp -a \"$out\"/. {shlex.quote(str(tmp))}/; echo {shlex.quote(DONE)} $?")
    argv = ["nice", "-n", str(nice), found["vng"], "--run", str(kernel.image), "--rwdir", str(tmp),
            "--memory", GUEST_MEMORY, "--cpus", str(min(2, os.cpu_count() or 1)), "--cwd", str(ROOT),
            *([] if kvm else ["--disable-kvm"]), "--exec", script]
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(found["vng"]).parent), os.environ.get("PATH", "")])}
    try:
        figures = _boot(kernel, argv, env, tmp, boot_timeout)
        with locked(base, exclusive=True):  # a build reading build/traces/ sees the old set or the new
            old = base / f".matrix-old-{kernel.name}-{os.getpid()}"
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        return figures
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_guest(proc: subprocess.Popen, tmp: Path, wait: bool = True) -> None:
    """End vng, virtme-run and QEMU, however the run ends. vng starts virtme-run in a session
    of its own, out of reach of proc's process group: each of them is found by the run's own
    share, tmp, on its command line (no other process has that path), and killed by its id."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    marker = str(tmp).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    if wait:
        proc.wait()


def _boot(kernel: Kernel, argv: list[str], env: dict[str, str], tmp: Path, boot_timeout: float) -> dict:
    """Run the guest; its figures, written into tmp/matrix.json; MatrixError if it failed."""
    started = time.monotonic()
    marks: dict[str, float] = {}
    tail: deque[str] = deque(maxlen=40)
    status = None
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", env=env, start_new_session=True)
    timer = threading.Timer(GUEST_TIMEOUT, proc.kill)
    timer.start()

    def not_booted() -> None:  # ends the guest: its output closes, the loop below ends
        if "booted" not in marks:
            _kill_guest(proc, tmp, wait=False)

    boot_timer = threading.Timer(boot_timeout, not_booted)
    boot_timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if line.strip() == BOOTED and "booted" not in marks:
                marks["booted"] = time.monotonic()
                print(f"  {kernel.name}: booted in {marks['booted'] - started:.1f} s", flush=True)
            elif line.startswith(DONE):
                marks["done"] = time.monotonic()
                status = line[len(DONE):].strip()
            elif re.match(r"^(ok  |FAIL) ", line):
                print(f"  {kernel.name}: {line}", flush=True)
        code = proc.wait()
    finally:
        timer.cancel()
        boot_timer.cancel()
        _kill_guest(proc, tmp)
    console = "\n".join(f"    {line}" for line in tail)
    if "booted" not in marks:
        how = (f"no word from it in {boot_timeout:g} s" if time.monotonic() - started >= boot_timeout
               else f"vng exited {code}")
        raise MatrixError(f"kernel {kernel.name} did not boot ({kernel.image}; {how}); the end of"
                          f" its console:\n{console}")
    if "done" not in marks or status != "0" or not (tmp / RESULTS).is_file():
        why = (f"timed out after {GUEST_TIMEOUT:g} s" if "done" not in marks and time.monotonic() - started >= GUEST_TIMEOUT
               else f"the lab exited {status}" if status else "the guest stopped before the catalogue's end")
        raise MatrixError(f"kernel {kernel.name}: booted, but its catalogue did not complete ({why}); the end of"
                          f" its console:\n{console}")
    results = json.loads((tmp / RESULTS).read_text())
    (tmp / RESULTS).unlink()
    if not any(r["recorded"] for r in results["results"].values()):  # the lab's failure, not a finding
        first = next(iter(results["results"].items()), ("", {"problem": "no scenario ran"}))
        raise MatrixError(f"kernel {kernel.name}: booted, but no scenario was recorded; {first[0]}:"
                          f" {first[1]['problem'][:1500]}")
    figures = {"kernel": kernel.name, "release": results["kernel"], "package": kernel.package, "why": kernel.why,
               "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "emulated": "--disable-kvm" in argv,
               "boot_seconds": round(marks["booted"] - started, 2),
               "catalogue_seconds": round(marks["done"] - marks["booted"], 2),
               "results": results["results"]}
    (tmp / MATRIX).write_text(json.dumps(figures, indent=1) + "\n")
    return figures


def main(args: argparse.Namespace) -> int:
    try:
        kernels = by_name(args.kernel)
        scenarios.check(args.slugs)
        for kernel in kernels:  # every kernel's image is checked before any guest boots
            check_kernel(kernel)
        found = tools()
    except (MatrixError, scenarios.UnknownScenario) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    failed = []
    for kernel in kernels:
        print(f"kernel {kernel.name}: booting {kernel.image} (every scenario, one boot)", flush=True)
        try:
            figures = record(kernel, found, nice=args.nice, kvm=args.kvm, slugs=tuple(args.slugs))
        except MatrixError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed.append(kernel.name)
            continue
        recorded = sum(r["recorded"] for r in figures["results"].values())
        held = sum(r["ok"] for r in figures["results"].values())
        print(f"kernel {kernel.name}: boot {figures['boot_seconds']} s, catalogue {figures['catalogue_seconds']} s;"
              f" {recorded}/{len(figures['results'])} recorded, {held} as on this machine"
              f" -> {TRACES / kernel.name}", flush=True)
    if failed:
        print("kernels not recorded: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def packages() -> list[str]:
    """The Debian packages of KERNELS, for `.ci/setup --kernels`."""
    return [kernel.package for kernel in KERNELS]


# `PYTHONPATH=examples python3 -m lab.matrix --packages`: .ci/setup --kernels runs it before the
# project is installed, so this module and what it imports stay standard-library only
# (tests/test_setup.py checks it with `python3 -S`)
if __name__ == "__main__":
    if sys.argv[1:] != ["--packages"]:
        sys.exit("usage: python3 -m lab.matrix --packages (the matrix itself: python -m lab matrix)")
    print("\n".join(packages()))
