"""One set-up step: .ci/setup is the project's only package list, and a second run installs nothing.

The script runs here against fakes of apt-get, sudo, debconf, systemctl and dpkg-query, put first
on PATH, which record their calls: no root, no package is installed, a second or so each.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fieldguide import wireshark
from lab import clients, matrix, nginx
from lab.preflight import TOOLS

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / ".ci" / "setup"
README = ROOT / "README.md"
WORKFLOW = ROOT / ".github" / "workflows" / "pages.yml"
REAL_PYTHON = shutil.which("python3") or sys.executable


def listed(*args: str) -> list[str]:
    proc = subprocess.run(["sh", str(SETUP), "--list", *args], capture_output=True, text=True, check=True)
    return proc.stdout.split()


# the fakes of what installs: each logs its name and arguments, one call a line, and with
# FAKE_FAIL=1 fails too; sudo runs its command (after -n), as for the script's user
LOGGED = """#!/bin/sh
printf '%s\\n' "{name} $*" >> "$FAKE_LOG"
{body}
[ -z "${{FAKE_FAIL:-}}" ]
"""
INSTALLERS = {
    "apt-get": 'echo "DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-}" >> "$FAKE_LOG"',
    "debconf-set-selections": 'sed "s/^/  /" >> "$FAKE_LOG"',
    "systemctl": "",
    "invoke-rc.d": "",
    "pipx": "",
    "sudo": '[ -z "${FAKE_FAIL:-}" ] || exit 1; [ "$1" != -n ] || shift; exec "$@"',
}
# Python, except that installing with pip is logged (and fails with FAKE_FAIL=1)
PIP = 'case "$1 $2" in "-m pip") echo "pip $*" >> "$FAKE_LOG"; [ -z "${FAKE_FAIL:-}" ]; exit ;; esac'


def script(body: str) -> str:
    return f"#!/bin/sh\n{body}\n"


def fake_bin(folder: Path, **quiet: str) -> Path:
    """INSTALLERS, python3, and the unlogged fakes given (name: shell body)."""
    folder.mkdir()
    files = {name: LOGGED.format(name=name, body=body) for name, body in INSTALLERS.items()}
    files["python3"] = script(f'{PIP}\nexec {REAL_PYTHON} "$@"')
    files.update({name: script(body) for name, body in quiet.items()})
    for name, text in files.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def run_setup(tmp_path: Path, path: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SETUP), *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL,
                          env={"PATH": path, "HOME": str(tmp_path), "FAKE_LOG": str(tmp_path / "log"), **env})


def test_the_script_parses_as_posix_sh() -> None:
    proc = subprocess.run(["sh", "-n", str(SETUP)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert SETUP.read_text().startswith("#!/bin/sh\n") and os.access(SETUP, os.X_OK)


def test_the_list_has_every_debian_package_the_project_names() -> None:
    packages = listed()
    assert len(packages) == len(set(packages)), "a package is listed twice"
    named = set(TOOLS.values()) | {nginx.PACKAGE, wireshark.PACKAGE}  # what the lab and the build ask for
    named |= {p.package.removesuffix(" (Debian)") for p in clients.PROGRAMS if p.package.endswith(" (Debian)")}
    # tests/test_kernels.py starts a guest (matrix.tools() names these); conftest.py's browser and fonts
    named |= {"qemu-system-x86", "busybox-static", "chromium", "fonts-wqy-microhei"}
    assert named - set(packages) == set()
    assert not set(matrix.packages()) & set(packages), "the kernels are for `nox -s matrix` only"
    assert listed("--kernels") == packages + matrix.packages()


def test_the_kernels_packages_are_read_with_the_standard_library_alone() -> None:
    """.ci/setup --kernels reads them before the project (or anything from PyPI) is installed."""
    proc = subprocess.run([REAL_PYTHON, "-S", "-m", "lab.matrix", "--packages"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "examples")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [k.package for k in matrix.KERNELS]
    assert all(p.startswith("linux-image-") for p in proc.stdout.split())


def test_readme_workflow_and_ci_run_keep_no_package_list_of_their_own() -> None:
    for path in (README, WORKFLOW, ROOT / ".ci" / "run"):
        text = path.read_text()
        assert not re.search(r"\bapt(-get)? +install\b", text), f"{path.name} installs packages itself"
        assert not re.search(r"\bpip[x3]? +install\b[^\n]*\bnox\b", text) and "debconf" not in text, path.name
    assert ".ci/setup" in README.read_text()


def commands(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_ci_run_sets_up_then_runs_the_readmes_test_command() -> None:
    run = [c for c in commands(ROOT / ".ci" / "run") if c not in ("set -eu", 'cd "$(dirname "$0")/.."')]
    assert run == ["./.ci/setup", "nox -s tests"]


def test_readmes_run_it_is_two_commands_set_up_and_build_then_test() -> None:
    section = README.read_text().split("## Run it")[1].split("\n## ")[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert [b.strip() for b in blocks] == [".ci/setup && nox -s docs", "nox -s tests"]
    assert "`.ci/setup --kernels`" in section  # the matrix's packages


def test_the_workflows_jobs_set_up_with_the_script() -> None:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    for job, command in (("matrix", "./.ci/setup --kernels"), ("build", "./.ci/setup")):
        runs = [s.get("run", "") for s in jobs[job]["steps"]]
        assert command in [r.strip() for r in runs], f"{job} does not run {command}"
        assert not any("apt-get" in r for r in runs), f"{job} installs packages itself"
    # setup-node's npm is on PATH there: the script must keep it (Debian's npm conflicts with it)
    assert any(s.get("uses", "").startswith("actions/setup-node@") for s in jobs["build"]["steps"])


def test_a_second_run_on_this_set_up_machine_installs_nothing(tmp_path: Path) -> None:
    """Run after .ci/setup (as CI does): apt-get, sudo, debconf, systemctl, pip and pipx all fail if called."""
    fakes = fake_bin(tmp_path / "bin")
    started = time.monotonic()
    proc = run_setup(tmp_path, f"{fakes}:{os.environ['PATH']}", FAKE_FAIL="1", HOME=os.environ.get("HOME", ""))
    elapsed = time.monotonic() - started
    assert calls(tmp_path / "log") == [], ("this machine is not set up (run .ci/setup), or a second run would"
                                           " install again:\n" + proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 10, f"a run with nothing to do took {elapsed:.1f} s"


# a machine with nothing installed: dpkg knows no package, its python3 has neither pip nor ensurepip
# (as Debian's alone), nox and uv are there (their install is tested on its own), and only these
# of the machine's tools are on PATH
TOOLS_ON_PATH = ("sh", "id", "dirname", "grep", "env", "getent", "cut", "sed", "mkdir", "chmod")
BARE = {"dpkg-query": "exit 0", "nox": "", "uv": "",
        "python3": f'{PIP}\ncase "$1" in -c) exit 1 ;; esac\nexec {REAL_PYTHON} "$@"'}


INSTALLED = 'for p in "$@"; do echo "$p installed"; done'  # dpkg-query: every package is


def bare_path(tmp_path: Path, **quiet: str) -> str:
    fakes = fake_bin(tmp_path / "bin", **{**BARE, **quiet})
    for tool in TOOLS_ON_PATH:
        if not (fakes / tool).exists():
            (fakes / tool).symlink_to(shutil.which(tool) or pytest.fail(f"{tool} is not on PATH"))
    return str(fakes)


def installs(log: Path) -> list[list[str]]:
    """The packages of each apt-get install, in order."""
    return [[w for w in call.split()[1:] if not w.startswith("-") and w != "install"]
            for call in calls(log) if call.startswith("apt-get install")]


@pytest.mark.parametrize("uid", ["0", "1000"], ids=["root", "user-with-sudo"])
def test_a_fresh_machine_gets_the_whole_list_without_a_prompt(tmp_path: Path, uid: str) -> None:
    path = bare_path(tmp_path, id=f'[ "$1" = -u ] && echo {uid} || echo someone')
    proc = run_setup(tmp_path, path)
    assert proc.returncode == 0, proc.stderr
    log = calls(tmp_path / "log")
    (packages,) = installs(tmp_path / "log")
    assert set(listed()) - set(packages) == {"python3"}, packages  # on PATH: the fake's
    install = next(i for i, c in enumerate(log) if c.startswith("apt-get install"))
    assert {"-y", "--no-install-recommends"} <= set(log[install].split())
    assert log[install + 1] == "DEBIAN_FRONTEND=noninteractive"  # however sudo treats the environment
    assert log.index("apt-get update -qq") < install
    assert "  wireshark-common wireshark-common/install-setuid boolean false" in log[:install]
    stop = next(i for i, c in enumerate(log) if c in ("systemctl disable --now nginx", "invoke-rc.d nginx stop"))
    assert stop > install, "the nginx service is stopped after it is installed"
    privileged = [c for c in log if c.split()[0] in ("apt-get", "debconf-set-selections", "systemctl", "invoke-rc.d")]
    sudo = [c for c in log if c.startswith("sudo ")]
    if uid == "0":
        assert sudo == []
    else:  # each through sudo; no terminal: sudo -n, which fails rather than waits for a password
        assert len(sudo) == len(privileged) and all(c.startswith("sudo -n ") for c in sudo), sudo


def test_tools_from_elsewhere_on_path_are_not_installed_again(tmp_path: Path) -> None:
    """Node.js with npm (NodeSource, setup-node), a JDK, Go, chromium and curl of another source."""
    elsewhere = {tool: "" for tool in ("node", "npm", "javac", "java", "go", "chromium", "curl")}
    proc = run_setup(tmp_path, bare_path(tmp_path, **elsewhere))
    assert proc.returncode == 0, proc.stderr
    (packages,) = installs(tmp_path / "log")
    kept = {"nodejs", "npm", "default-jdk-headless", "golang-go", "chromium", "curl"}
    assert kept & set(packages) == set()
    assert set(listed()) - set(packages) == kept | {"python3"}


def test_java_needs_both_javac_and_java_and_node_both_node_and_npm(tmp_path: Path) -> None:
    proc = run_setup(tmp_path, bare_path(tmp_path, java="", node=""))  # a JRE alone; Node.js without npm
    assert proc.returncode == 0, proc.stderr
    (packages,) = installs(tmp_path / "log")
    assert {"default-jdk-headless", "nodejs", "npm"} <= set(packages)


def test_kernels_adds_the_matrixs_kernels_once_python_is_there(tmp_path: Path) -> None:
    proc = run_setup(tmp_path, bare_path(tmp_path), "--kernels")
    assert proc.returncode == 0, proc.stderr
    assert installs(tmp_path / "log")[1:] == [matrix.packages()]
    assert calls(tmp_path / "log").count("apt-get update -qq") == 1


@pytest.mark.parametrize("who", ["root", "user-pipx", "user-pip"])
def test_nox_and_uv_are_installed_where_missing_and_found_by_a_second_run(tmp_path: Path, who: str) -> None:
    """Where Python refuses a plain pip install (PEP 668): root installs system-wide
    (--break-system-packages); a user gets them in ~/.local/bin, by pipx where it is, else
    pip --user, and is told if that is off their PATH."""
    user_bin = tmp_path / ".local" / "bin"
    make = (f'mkdir -p {user_bin}; for t in nox uv; do printf "#!/bin/sh\\n" > {user_bin}/$t;'
            f' chmod +x {user_bin}/$t; done')  # (system-wide too: the test only needs them somewhere)
    uid = "0" if who == "root" else "1000"
    path = Path(bare_path(tmp_path, id=f'[ "$1" = -u ] && echo {uid} || echo someone', **{"dpkg-query": INSTALLED}))
    for tool in ("nox", "uv", "pipx"):
        (path / tool).unlink()
    if who == "user-pipx":
        (path / "pipx").write_text(LOGGED.format(name="pipx", body=make))
        (path / "pipx").chmod(0o755)
    python = path / "python3"
    python.write_text(python.read_text().replace(
        '[ -z "${FAKE_FAIL:-}" ]; exit',
        f'case "$*" in *--user*|*--break-system-packages*) {make} ;; *) exit 1 ;; esac; exit'))
    proc = run_setup(tmp_path, str(path))
    assert proc.returncode == 0, proc.stderr
    log = calls(tmp_path / "log")
    assert log[0] == "pip -m pip install -q nox uv"  # first, as into a venv's or setup-python's Python
    assert log[1:] == {"root": ["pip -m pip install -q --break-system-packages nox uv"],
                       "user-pipx": ["pipx install nox", "pipx install uv"],
                       "user-pip": ["pip -m pip install -q --user nox uv"]}[who]
    assert "not on your PATH" in proc.stderr and ".local/bin" in proc.stderr
    (tmp_path / "log").unlink()
    proc = run_setup(tmp_path, str(path), FAKE_FAIL="1")
    assert proc.returncode == 0 and calls(tmp_path / "log") == [], proc.stderr
