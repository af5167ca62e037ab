"""Bad input gets a clear error, and every ending of a run leaves nothing behind.

Deliberately broken examples live in a temporary folder (LAB_EXAMPLES); each run
is tagged with a marker in its environment, which every process it starts
inherits, so a leftover process (tcpdump, a worker, a peer) cannot hide.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from lab import shapes
from lab.artifact import FOLDER_FILES, ROOT
from lab.scenarios import all_slugs

EXAMPLES = ROOT / "examples"

# a closed port's two packets: the run() and claims() that end the examples which test
# something else ("passes" is nothing more)
CLOSED_PORT = """

def run_closed_port(client, server):
    sock = client.socket()
    try:
        sock.connect((server.ip, 9))
    except ConnectionRefusedError:
        pass


def claims(trace):
    trace.next("client", "S", name="client-syn")
    trace.next("server", "R.", name="server-rst")
"""

CLOSED_PORT_SHAPE = [["client", "S", False, "client-syn"], ["server", "R.", False, "server-rst"]]

EXAMPLE_FILES = {
    "passes": '''
        """Connect to a closed port."""
        TITLE, PHASE, HOSTS = "passes", "opening", ("client", "server")

        def run(client, server):
            run_closed_port(client, server)
        ''',
    "raises": '''
        """An example with a bug."""
        TITLE, PHASE, HOSTS = "raises", "opening", ("client", "server")

        def run(client, server):
            raise RuntimeError("a bug in the example")

        def claims(trace):
            pass
        ''',
    "hangs": '''
        """An example that waits for data that never comes."""
        TITLE, PHASE, HOSTS = "hangs", "established", ("client", "server")
        TIMEOUT = 2

        def run(client, server):
            listener = server.socket()
            listener.bind((server.ip, 80))
            listener.listen()
            sock = client.socket()
            sock.connect((server.ip, 80))
            sock.recv(1)  # nobody ever sends

        def claims(trace):
            pass
        ''',
    "wrong-claim": '''
        """A page that says FIN where Linux sends RST."""
        TITLE, PHASE, HOSTS = "wrong claim", "opening", ("client", "server")

        def run(client, server):
            sock = client.socket()
            try:
                sock.connect((server.ip, 9))
            except ConnectionRefusedError:
                pass

        def claims(trace):
            trace.next("client", "S", name="client-syn")
            trace.next("server", "F.", name="server-fin", what="the server answers with a FIN")
        ''',
    "reach-out": '''
        """Every lab host tries to leave the lab."""
        TITLE, PHASE, HOSTS = "reach out", "middleboxes", ("client", "router", "server")
        TARGETS = ["8.8.8.8", "1.1.1.1", "10.0.0.1"]

        def run(client, router, server):
            for host in (client, router, server):
                host.note("routes", host.sh("ip", "-4", "route").splitlines())
                host.note("links", [line.split(": ")[1].split("@")[0]
                                    for line in host.sh("ip", "-o", "link").splitlines()])
                for target in TARGETS:
                    sock = host.socket()
                    sock.settimeout(2)
                    try:
                        sock.connect((target, 80))
                    except OSError:
                        pass

        def claims(trace):
            for host in ("client", "router", "server"):
                for n in range(3):
                    trace.raised(host, "connect", "ENETUNREACH", nth=n)
            trace.check("no packet is captured", not trace.packets)
        ''',
}


EXAMPLE_FILES.update({
    "confined": '''
        """The example's own code reaches beyond the lab and tries to outlive the run."""
        import os
        import socket
        import subprocess

        TITLE, PHASE, HOSTS = "confined", "opening", ("client", "server")

        def run(client, server):
            host, port = os.environ["LAB_TEST_OUTSIDE"].rsplit(":", 1)
            bare = socket.socket()  # no host's socket: the run's own network namespace
            bare.settimeout(2)
            try:
                bare.connect((host, int(port)))
                client.note("bare connect", "connected")
            except OSError as exc:
                client.note("bare connect", type(exc).__name__)
            bare.close()
            subprocess.Popen(["setsid", "sleep", "1000"])  # leaves the process group
            subprocess.Popen(["sh", "-c", "(sleep 1001 &) &"])  # a double fork
            # undo the read-only tree, write outside the run's folder, reach a process outside
            remount = subprocess.run(["mount", "-o", "remount,bind,rw", os.environ["LAB_TEST_TREE"]],
                                     capture_output=True)
            client.note("remount rw", remount.returncode)
            try:
                open(os.environ["LAB_TEST_TMP"], "w").write("escaped")
                client.note("write outside", "done")
            except OSError as exc:
                client.note("write outside", type(exc).__name__)
            client.note("sees the tester", os.path.exists(f"/proc/{os.environ['LAB_TEST_PID']}/ns/net"))
            run_closed_port(client, server)
        ''',
    "limits": '''
        """The example writes into the source tree, writes a huge file, takes 3 GiB."""
        import os

        TITLE, PHASE, HOSTS = "limits", "opening", ("client", "server")

        def run(client, server):
            attempts = {
                "write into the source tree": lambda: open(os.environ["LAB_TEST_TREE"], "wb").write(b"x"),
                "write 300 MiB": lambda: open("big", "wb").write(bytes(300 << 20)),
                "take 3 GiB": lambda: bytearray(3 << 30),
            }
            for what, attempt in attempts.items():
                try:
                    attempt()
                    client.note(what, "done")
                except (OSError, MemoryError) as exc:
                    client.note(what, type(exc).__name__)
            run_closed_port(client, server)
        ''',
    "exits-at-import": '''
        """An example that ends the process when imported."""
        import sys

        sys.exit(3)
        ''',
    "loops-at-import": '''
        """An example that never finishes importing."""
        while True:
            pass
        ''',
    "imports-a-program": '''
        """An example whose source names a module that runs a program when imported."""
        TITLE, PHASE, HOSTS = "imports a program", "opening", ("client", "server")

        def never_called():
            import lib2to3.__main__  # noqa: F401  (sys.exit()s when imported)

        def run(client, server):
            run_closed_port(client, server)
        ''',
    "endless-timeout": '''
        """An example that asks for no time bound."""
        TITLE, PHASE, HOSTS = "endless", "opening", ("client", "server")
        TIMEOUT = float("inf")

        def run(client, server):
            pass

        def claims(trace):
            pass
        ''',
    "html-title": '''
        """A title that would be markup in the navigation."""
        TITLE, PHASE, HOSTS = "a <script>alert(1)</script> title", "opening", ("client", "server")

        def run(client, server):
            pass

        def claims(trace):
            pass
        ''',
    "capture-on-server": '''
        """The capture on the server's side of the link."""
        TITLE, PHASE, HOSTS = "capture on server", "opening", ("client", "server")
        CAPTURE_ON = "server"

        def run(client, server):
            run_closed_port(client, server)
        ''',
})
# a claim for the SYN only: the RST is nobody's
EXAMPLE_FILES["unclaimed"] = EXAMPLE_FILES["passes"]
ENDINGS = {slug: CLOSED_PORT for slug in ("passes", "confined", "limits", "capture-on-server", "imports-a-program")}
ENDINGS["unclaimed"] = CLOSED_PORT.replace('trace.next("server", "R.", name="server-rst")',
                                           "pass  # the RST is left unclaimed")

# the committed shapes of the examples above that pass
SHAPES = {**{slug: CLOSED_PORT_SHAPE for slug in ENDINGS if slug != "unclaimed"}, "reach-out": []}


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    folder = tmp_path / "examples"
    (folder / "shapes").mkdir(parents=True)
    for slug, source in EXAMPLE_FILES.items():
        source = textwrap.dedent(source) + ENDINGS.get(slug, "")
        (folder / (slug.replace("-", "_") + ".py")).write_text(source)
    for slug, shape in SHAPES.items():
        (folder / "shapes" / f"{slug}.txt").write_text(shapes.as_text(slug, shape))
    return folder


class Lab:
    """The lab's command line, run in a subprocess tagged with a marker."""

    def __init__(self, tmp_path: Path, examples: Path | None) -> None:
        self.out = tmp_path / "traces"
        self.marker = uuid.uuid4().hex
        self.env = {**os.environ, "LAB_RUN_MARKER": self.marker}
        if examples:
            self.env["LAB_EXAMPLES"] = str(examples)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "lab", "run", "--out", str(self.out), *args]

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=120)

    def processes(self) -> list[str]:
        """Processes still alive that this lab run started (they carry the marker)."""
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if self.marker.encode() in (proc / "environ").read_bytes():
                    found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
        return found

    def assert_nothing_left(self, published: set[str] = frozenset()) -> None:
        assert self.processes() == []
        left = {p.name for p in self.out.iterdir()} if self.out.exists() else set()
        left -= set(FOLDER_FILES)  # the folder's lock and sealing key stay, by design
        assert left == published, f"left behind: {left - published}"


MOUNTS = Path("/proc/self/mounts")


def witness_instances() -> list[str]:
    """The ftrace instances the lab's witnesses made (lab/witness.py) that are still there:
    tracefs is looked at in a mount namespace of its own, as the lab does."""
    if os.geteuid() != 0:
        return []
    from rst_explain.probes import TRACEFS, in_tracefs

    from lab.witness import PREFIX
    listing = subprocess.run(in_tracefs(f"ls {TRACEFS}/instances"), capture_output=True, text=True).stdout
    return [name for name in listing.split() if name.startswith(PREFIX)]


@pytest.fixture
def lab(tmp_path: Path, broken: Path):
    named_before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    mounts_before = MOUNTS.read_text()
    instances_before = witness_instances()
    yield Lab(tmp_path, broken)
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == named_before
    assert MOUNTS.read_text() == mounts_before
    assert witness_instances() == instances_before  # also after Ctrl-C or a killed runner


def test_a_passing_run_publishes_three_artifacts_and_nothing_else(lab: Lab) -> None:
    proc = lab.run("passes")
    assert proc.returncode == 0, proc.stderr
    lab.assert_nothing_left({"passes.pcap", "passes.txt", "passes.json"})


def test_a_run_after_another_holds_its_folder_at_once_and_records_once_that_one_ended(lab: Lab, tmp_path: Path) -> None:
    """--after DIR (`nox -s docs`: the client session after the catalogue): its own folder is
    held from the start, so a reader waits; nothing is recorded until DIR's run has let go."""
    import fcntl

    from lab.artifact import locked

    other = tmp_path / "other"
    with locked(other, exclusive=True):  # another run, recording into DIR
        proc = subprocess.Popen(lab.argv("--after", str(other), "passes"), env=lab.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().startswith("recording into ")
        time.sleep(3)  # "passes" records in well under a second: long enough to see it wait
        assert proc.poll() is None and not (lab.out / "passes.json").exists()
        fd = os.open(lab.out / FOLDER_FILES[0], os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # a reader (the site's build) would wait
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lab.assert_nothing_left({"passes.pcap", "passes.txt", "passes.json"})


def test_unknown_slug_exits_2_listing_the_known_ones(lab: Lab) -> None:
    proc = lab.run("passes", "no-such-scenario")
    assert proc.returncode == 2
    assert "unknown scenario no-such-scenario" in proc.stderr
    for slug in EXAMPLE_FILES:
        assert slug in proc.stderr
    lab.assert_nothing_left()


def test_an_example_that_raises_is_reported_with_its_traceback(lab: Lab) -> None:
    proc = lab.run("raises", "passes")
    assert proc.returncode == 1
    assert "raises failed" in proc.stderr and "a bug in the example" in proc.stderr
    assert "raises.py" in proc.stderr  # the traceback points into the example
    lab.assert_nothing_left({"passes.pcap", "passes.txt", "passes.json"})


def test_an_example_that_hangs_is_stopped_at_its_timeout(lab: Lab) -> None:
    started = time.monotonic()
    proc = lab.run("hangs")
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert "timed out after 2 s" in proc.stderr
    assert 'hangs.py", line 12' in proc.stderr  # the line where the host was stuck: recv
    assert elapsed < 10
    lab.assert_nothing_left()


def test_a_claim_the_capture_contradicts_fails_and_publishes_nothing(lab: Lab) -> None:
    proc = lab.run("wrong-claim")
    assert proc.returncode == 1
    assert "wrong-claim failed" in proc.stderr
    assert "the server answers with a FIN" in proc.stderr and "flags [R.]" in proc.stderr
    lab.assert_nothing_left()


def test_an_unclaimed_packet_fails_naming_it_and_printing_the_trace(lab: Lab) -> None:
    proc = lab.run("unclaimed")
    assert proc.returncode == 1
    assert "unclaimed failed" in proc.stderr
    assert "every captured packet is named by a claim or declared noise" in proc.stderr
    assert "unclaimed: packet 2 (unnamed) server [R.]" in proc.stderr
    assert "UNCLAIMED" in proc.stderr and "Flags [R.]" in proc.stderr  # the trace, each line tagged
    lab.assert_nothing_left()


def test_a_changed_shape_fails_until_it_is_accepted_with_update(lab: Lab, broken: Path) -> None:
    committed = broken / "shapes" / "passes.txt"
    committed.write_text(committed.read_text().replace("server-rst", "server-fin").replace("[R.]", "[F.]"))
    proc = lab.run("passes")
    assert proc.returncode == 1
    assert "passes failed" in proc.stderr and "the shape differs from the committed one" in proc.stderr
    assert "-server  [F.]" in proc.stderr and "+server  [R.]" in proc.stderr  # a reviewable diff
    assert "--update passes" in proc.stderr
    lab.assert_nothing_left()
    proc = lab.run("--update", "passes")
    assert proc.returncode == 0, proc.stderr
    assert committed.read_text() == shapes.as_text("passes", SHAPES["passes"])
    lab.assert_nothing_left({"passes.pcap", "passes.txt", "passes.json"})


def test_a_scenario_without_a_committed_shape_fails(lab: Lab, broken: Path) -> None:
    (broken / "shapes" / "passes.txt").unlink()
    proc = lab.run("passes")
    assert proc.returncode == 1 and "no committed shape" in proc.stderr
    lab.assert_nothing_left()


def test_a_failed_run_removes_the_previous_trace(lab: Lab) -> None:
    lab.out.mkdir()
    for suffix in (".pcap", ".txt", ".json"):
        (lab.out / f"wrong-claim{suffix}").write_text("an older run")
    assert lab.run("wrong-claim").returncode == 1
    lab.assert_nothing_left()


def test_ctrl_c_stops_every_worker_and_removes_its_files(lab: Lab) -> None:
    proc = subprocess.Popen(lab.argv("hangs", "passes"), env=lab.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not any(cmd.startswith("tcpdump") for cmd in lab.processes()):  # capturing: mid-run
        assert time.monotonic() < deadline and proc.poll() is None, "the run never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert "interrupted" in err
    lab.assert_nothing_left()


def test_a_killed_runner_takes_every_worker_with_it(lab: Lab) -> None:
    """SIGKILL leaves the runner no chance to clean up: its zygote sees its stdin close,
    kills every worker (each takes its PID namespace with it) and removes their folders."""
    proc = subprocess.Popen(lab.argv("hangs", "passes"), env=lab.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not any(cmd.startswith("tcpdump") for cmd in lab.processes()):
        assert time.monotonic() < deadline and proc.poll() is None, "the run never started"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while lab.processes():  # they die asynchronously: wait, bounded
        assert time.monotonic() < deadline, lab.processes()
        time.sleep(0.01)
    # the zygote saw its stdin close: it killed the workers and removed their folders
    lab.assert_nothing_left()
    assert lab.run("passes").returncode == 0
    lab.assert_nothing_left({"passes.pcap", "passes.txt", "passes.json"})


def test_missing_tcpdump_names_its_debian_package(lab: Lab, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("nsenter", "nft", "ss", "ip", "unshare"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = lab.run("passes", env={"PATH": str(bin_dir)})
    assert proc.returncode == 3
    assert "tcpdump (Debian package tcpdump)" in proc.stderr
    lab.assert_nothing_left()


@pytest.fixture
def unprivileged(tmp_path: Path, broken: Path):
    """Run the lab's command line as user nobody, from folders nobody can read."""
    if os.geteuid() != 0 or not shutil.which("setpriv") or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root (to become nobody), setpriv and /usr/bin/python3")
    import site
    import tempfile
    home = Path(tempfile.mkdtemp(prefix="lab-unprivileged-"))
    home.chmod(0o777)
    shutil.copytree(broken, home / "examples")
    shutil.copytree(EXAMPLES, home / "catalogue", ignore=shutil.ignore_patterns("__pycache__"))
    (home / "bin").mkdir()

    def run(lab: Lab, *args: str, fake_unshare: bool = False, catalogue: bool = False
            ) -> subprocess.CompletedProcess[str]:
        lab.out = home / "traces"
        path = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"  # Debian's PATH for a user
        if fake_unshare:  # as on a machine where user namespaces are forbidden
            fake = home / "bin" / "unshare"
            fake.write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
            fake.chmod(0o755)
            path = f"{home / 'bin'}:{path}"
        examples = home / ("catalogue" if catalogue else "examples")
        env = {**lab.env, "PATH": path, "HOME": str(home), "LAB_EXAMPLES": str(examples),
               "PYTHONDONTWRITEBYTECODE": "1",
               # the venv's interpreter may live where nobody can read: the system one is given
               # the lab's source folder and the venv's packages (an editable install's hook
               # is a .pth file, which PYTHONPATH does not run)
               "PYTHONPATH": os.pathsep.join([str(EXAMPLES), *site.getsitepackages()])}
        argv = ["/usr/bin/python3", *lab.argv(*args)[1:]]
        return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                              env=env, capture_output=True, text=True, timeout=60)

    yield run
    shutil.rmtree(home)


def test_no_privilege_says_what_to_do(lab: Lab, unprivileged) -> None:
    proc = unprivileged(lab, "passes", fake_unshare=True)
    assert proc.returncode == 3, proc.stderr
    assert "run as root (sudo), or allow unprivileged user namespaces" in proc.stderr
    assert "Operation not permitted" in proc.stderr
    lab.assert_nothing_left()


def test_rootless_run_records_a_trace(lab: Lab, unprivileged) -> None:
    if subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                       "unshare", "--user", "--map-current-user", "true"]).returncode != 0:
        pytest.skip("unprivileged user namespaces are not allowed on this machine")
    proc = unprivileged(lab, "passes")
    assert proc.returncode == 0, proc.stderr
    lab.assert_nothing_left({"passes.pcap", "passes.txt", "passes.json"})


# -- hardening: what a hostile user tried ------------------------------------------------------

def test_a_slug_names_a_scenario_never_a_path(lab: Lab, broken: Path, tmp_path: Path) -> None:
    victim = tmp_path / "elsewhere" / "victim.py"
    victim.parent.mkdir()
    victim.write_text("open(__file__ + '.ran', 'w').write('ran')\n")
    for suffix in (".json", ".txt", ".pcap"):
        victim.with_suffix(suffix).write_text("not the lab's")
    slug = os.path.relpath(victim.with_suffix(""), broken)  # ../elsewhere/victim
    proc = lab.run(slug)
    assert proc.returncode == 2 and f"unknown scenario {slug}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not victim.with_suffix(".py.ran").exists(), "the file was imported and run"
    assert all(victim.with_suffix(s).read_text() == "not the lab's" for s in (".json", ".txt", ".pcap"))
    lab.assert_nothing_left()


def test_example_code_reaches_only_the_lab_and_nothing_it_starts_outlives_the_run(lab: Lab) -> None:
    """A bare socket in run() lives in the run's own empty network namespace; processes that
    leave the process group (setsid, a double fork) die with the run's PID namespace."""
    outside = socket.socket()
    outside.bind(("127.0.0.1", 0))
    outside.listen()
    outside.setblocking(False)
    outside_file = Path(f"/tmp/lab-escape-{lab.marker}")
    with outside:
        proc = lab.run("confined", env={"LAB_TEST_OUTSIDE": "127.0.0.1:%d" % outside.getsockname()[1],
                                        "LAB_TEST_TREE": str(ROOT), "LAB_TEST_TMP": str(outside_file),
                                        "LAB_TEST_PID": str(os.getpid())})
        assert proc.returncode == 0, proc.stderr
        with pytest.raises(BlockingIOError):
            outside.accept()  # nobody connected to the machine's own listener
    notes = {e["call"]: e["returned"] for e in json.loads((lab.out / "confined.json").read_text())["outcomes"]["client"]
             if "returned" in e}
    assert notes["bare connect"] == repr("OSError"), notes  # ENETUNREACH: no interface, no route
    assert notes["remount rw"] != "0", "the example made the tree writable again"
    assert notes["write outside"] == repr("OSError") and not outside_file.exists()  # EROFS, even /tmp
    assert notes["sees the tester"] == "False", "a process outside the run is reachable in /proc"
    lab.assert_nothing_left({"confined.pcap", "confined.txt", "confined.json"})  # no sleep 1000 either


def test_a_run_is_bounded_in_memory_file_size_and_where_it_writes(lab: Lab) -> None:
    probe = ROOT / "build" / f"lab-escape-{lab.marker}"
    probe.parent.mkdir(exist_ok=True)
    proc = lab.run("limits", env={"LAB_TEST_TREE": str(probe)})
    assert proc.returncode == 0, proc.stderr
    notes = {e["call"]: e["returned"] for e in json.loads((lab.out / "limits.json").read_text())["outcomes"]["client"]
             if "returned" in e}
    assert notes == {"write into the source tree": repr("OSError"),  # read-only: EROFS
                     "write 300 MiB": repr("OSError"),  # beyond the file size limit: EFBIG
                     "take 3 GiB": repr("MemoryError")}, notes
    assert not probe.exists()
    lab.assert_nothing_left({"limits.pcap", "limits.txt", "limits.json"})


def test_an_example_broken_at_import_fails_alone_naming_itself(lab: Lab) -> None:
    proc = lab.run("exits-at-import", "loops-at-import", "passes", env={"LAB_IMPORT_TIMEOUT": "2"})
    assert proc.returncode == 1
    assert "exits-at-import failed" in proc.stderr and "examples/exits_at_import.py cannot be loaded" in proc.stderr
    assert "SystemExit: 3" in proc.stderr
    assert "loops-at-import failed" in proc.stderr
    assert "importing the example took longer than 2 s" in proc.stderr and "loops_at_import.py" in proc.stderr
    lab.assert_nothing_left({"passes.pcap", "passes.txt", "passes.json"})  # the others still run


def test_what_an_example_imports_never_runs_in_the_zygote(lab: Lab) -> None:
    """The zygote warms the libraries the examples name, but never a program's __main__."""
    proc = lab.run("imports-a-program", "passes")
    assert proc.returncode == 0, proc.stderr
    lab.assert_nothing_left({f"{slug}{suffix}" for slug in ("imports-a-program", "passes")
                             for suffix in (".pcap", ".txt", ".json")})


def test_an_example_asking_for_no_time_bound_is_refused(lab: Lab) -> None:
    proc = lab.run("endless-timeout")
    assert proc.returncode == 1
    assert "examples/endless_timeout.py" in proc.stderr
    assert "TIMEOUT must be a number of seconds above 0 and at most 600" in proc.stderr
    lab.assert_nothing_left()


def test_an_example_whose_title_is_markup_is_refused(lab: Lab) -> None:
    proc = lab.run("html-title")
    assert proc.returncode == 1
    assert "examples/html_title.py" in proc.stderr and "TITLE must be plain text" in proc.stderr
    lab.assert_nothing_left()


def test_the_capture_can_be_on_the_server(lab: Lab) -> None:
    proc = lab.run("capture-on-server")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((lab.out / "capture-on-server.json").read_text())
    assert data["captured_on"] == "server eth0"
    lab.assert_nothing_left({"capture-on-server.pcap", "capture-on-server.txt", "capture-on-server.json"})


@pytest.mark.parametrize(("argv", "message"), [
    (["--repeat", "0", "passes"], "must be at least 1, not 0"),
    (["--repeat", "-1", "passes"], "must be at least 1, not -1"),
    (["--jobs", "-1", "passes"], "must be at least 1, not -1"),
    (["--busy", "1000", "passes"], "must be between 0 and this machine's"),
    (["passes", "passes"], "given more than once: passes"),
], ids=["repeat-0", "repeat-negative", "jobs-negative", "busy-1000", "slug-twice"])
def test_bad_input_is_refused_before_anything_is_touched(lab: Lab, argv: list[str], message: str) -> None:
    lab.out.mkdir()
    for suffix in (".pcap", ".txt", ".json"):
        (lab.out / f"passes{suffix}").write_text("the last good run")
    proc = lab.run(*argv)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    lab.assert_nothing_left({"passes.pcap", "passes.txt", "passes.json"})
    assert (lab.out / "passes.json").read_text() == "the last good run"


def _wait_until_capturing(lab: Lab, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while not any(cmd.startswith("tcpdump") for cmd in lab.processes()):  # mid-run
        assert time.monotonic() < deadline and proc.poll() is None, "the run never started"
        time.sleep(0.01)


def test_ctrl_c_through_nox_still_cleans_up(lab: Lab) -> None:
    """nox passes Ctrl-C on as SIGINT, then SIGTERM 0.3 s later: the cleanup survives both."""
    proc = subprocess.Popen(lab.argv("hangs", "passes", "--busy", "1"), env=lab.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until_capturing(lab, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)  # nox's own delay before its SIGTERM, imitated
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    lab.assert_nothing_left()  # no worker, no busy loop, no .run-* folder


def test_a_run_whose_parent_is_killed_stops_and_cleans_up(lab: Lab) -> None:
    """Killing nox alone must not leave `python -m lab run` (and its busy loops) running."""
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time;"
                               " subprocess.Popen(sys.argv[1:]); time.sleep(1000)",
                               *lab.argv("hangs", "--busy", "1")], env=lab.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_until_capturing(lab, parent)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while lab.processes():  # the runner got SIGTERM from the kernel and cleans up: bounded
        assert time.monotonic() < deadline, lab.processes()
        time.sleep(0.01)
    lab.assert_nothing_left()


def test_two_runs_in_one_folder_take_turns(lab: Lab) -> None:
    first = subprocess.Popen(lab.argv("hangs"), env=lab.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_until_capturing(lab, first)
    second = subprocess.Popen(lab.argv("passes"), env=lab.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    assert second.stderr is not None
    line = second.stderr.readline()  # it says so, then waits for the lock
    assert "is in use by a run (pid" in line and "waiting for it to finish" in line, line
    first.send_signal(signal.SIGINT)
    first.wait(timeout=20)
    assert second.wait(timeout=30) == 0, second.stderr.read()
    lab.assert_nothing_left({"passes.pcap", "passes.txt", "passes.json"})


def test_rootless_runs_the_whole_catalogue_with_a_users_own_path(lab: Lab, unprivileged, tmp_path: Path) -> None:
    """As user nobody, with a normal user's PATH (no /usr/sbin, where Debian puts nft,
    tcpdump, ip and conntrack): every scenario of the catalogue records."""
    if subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                       "unshare", "--user", "--map-current-user", "true"]).returncode != 0:
        pytest.skip("unprivileged user namespaces are not allowed on this machine")
    proc = unprivileged(lab, catalogue=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{len(all_slugs())}/{len(all_slugs())} runs passed" in proc.stdout
    # the kernel's tracepoints are the machine's: without root, each record says so and why,
    # and a claim on them is not checked, never passed
    for slug in all_slugs():
        data = json.loads((lab.out / f"{slug}.json").read_text())
        assert data["tracing"]["recorded"] is False and "without root" in data["tracing"]["why"], data["tracing"]
        assert data["kernel_events"] == [] and data["states"] == {}
        assert all(p.get("kernel") is None and p.get("received") is None for p in data["packets"])
    claims = json.loads((lab.out / "closed-port.json").read_text())["claims"]
    reason = next(c for c in claims if c["claim"] == "the kernel sent server-rst for NO_SOCKET")
    assert reason["passed"] is None and reason["detail"].startswith("not checked: the lab ran without root")


def test_lab_hosts_cannot_reach_anything_outside(lab: Lab) -> None:
    proc = lab.run("reach-out")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((lab.out / "reach-out.json").read_text())
    for host, entries in data["outcomes"].items():
        routes = next(e["returned"] for e in entries if e["call"] == "routes")
        links = next(e["returned"] for e in entries if e["call"] == "links")
        assert "default" not in routes, host
        assert set(ast.literal_eval(links)) <= {"lo", "eth0", "eth1"}, links


def test_bench_measures_the_lab_on_an_empty_scenario(tmp_path: Path) -> None:
    from lab import bench

    figures = bench.measure_overhead(3, tmp_path)
    assert figures["rounds"] == 3
    assert 0 < figures["min_s"] <= figures["median_s"] <= figures["max_s"]
    assert set(figures["median_stage_s"]) >= {"hosts", "capture_start", "scenario", "capture_stop"}
    assert {p.name for p in tmp_path.iterdir()} - set(FOLDER_FILES) == {"empty.pcap", "empty.txt", "empty.json"}
