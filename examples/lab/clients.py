"""Real HTTP clients at the client's end: curl, Node.js, Go, Java and Python's libraries.

A scenario with a client says what its server does for each program, and the lab runs
every program in turn, after the scenario's own steps, on the client host:

    def each_program(program, client, server):       # in examples/SLUG.py
        server.start(httpd.handle_request)           # the server's part, once per program
        program.get(f"http://{server.ip}:8080/")     # runs it; what it printed is recorded

A scenario about a reused connection starts a program with a second request, made with the
same client (its pool of kept-alive connections) once the scenario is ready for it:

    running = program.start("GET", f"{url}/first", then=f"{url}/second")
    ...                                              # the server closes, the path forgets...
    running.settled()                                # (the program has handled what came)
    running.proceed()                                # it makes its second request now
    running.wait()

The program's packets are in the scenario's trace, each group named after the program
(curl-1, curl-2...); what it printed (its first line, the rest, its exit status) is in
SLUG.json's outcomes with `program` (name and version), tied to its connections' packets.
The programs are real files in examples/clients/; Go and Java are compiled once per run of
the catalogue into build/clients/ (prepare()), never per scenario. A program whose tool is
missing fails the run with the package to install.
"""

from __future__ import annotations

import errno as errno_module
import hashlib
import json
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import netns, process, pyfork
from .artifact import ROOT, connections
from .preflight import LabUnavailable

SOURCES = ROOT / "examples" / "clients"
BUILT = Path(os.environ.get("FIELDGUIDE_CLIENTS") or ROOT / "build" / "clients")
MANIFEST = "programs.json"  # what prepare() built: each program's argv and version
FIRST = "first request: "  # how a program with a second request prints the first one's result
RUN_TIMEOUT = 30.0  # seconds a program may take for one request before it is killed (a JVM on a busy machine)
# the JVM reserves a quarter of the machine's memory for its heap by default: more than the
# sandbox's address-space limit (lab/sandbox.py); a request needs very little
# a request is short: one compiler thread at its first tier, no perf data file in /tmp.
# G1, with one thread of each kind: JDK 17 maps the JDK's archived heap objects and module
# graph (classes.jsa) only with G1, and builds them anew with Serial (-Xlog:cds: "CDS heap
# data is being ignored"): java-socket spent about 15 % less CPU, java-httpclient the same.
# The archives mapped where they were made (ArchiveRelocationMode=0; 17.0.15 relocates them
# by default, patching every pointer in them): about 5 ms less a start.
JAVA = ["java", "-Xmx64m", "-Xss512k", "-XX:ReservedCodeCacheSize=32m", "-XX:CompressedClassSpaceSize=64m",
        "-XX:+UseG1GC", "-XX:ParallelGCThreads=1", "-XX:ConcGCThreads=1",
        "-XX:TieredStopAtLevel=1", "-XX:CICompilerCount=1", "-XX:-UsePerfData", "-Xshare:auto",
        "-XX:+UnlockDiagnosticVMOptions", "-XX:ArchiveRelocationMode=0"]
JAVA_MAINS = {"java-httpclient": "HttpClientGet", "java-socket": "SocketGet"}
# fetch()'s HTTP parser (undici's llhttp) is WebAssembly, which V8 compiles twice, with Liftoff
# and then, on background threads, with TurboFan (about 60 ms of CPU a run): the baseline code
# alone parses the same bytes the same way. (A V8 flag changes V8's flag hash, so Node.js's own
# modules are compiled from source instead of from its embedded code cache: about 20 ms back.)
NODE_FLAGS = {"node-http": [], "node-fetch": ["--liftoff-only"]}
# Node.js 20 reads and parses the bundle NODE_EXTRA_CA_CERTS names at every start, before the
# script runs (node::crypto::UseExtraCaCerts: half of its start-up's CPU): the machine's setting
# (this project's machines set it), not the lab's. Without it, Node.js checks a certificate
# against its own roots, its default; no scenario's server gets as far as sending one.
NODE_ENV_DROPPED = ("NODE_EXTRA_CA_CERTS",)
JAR = "clients.jar"  # class data sharing archives classes from a jar, not from a folder


@dataclass(frozen=True)
class Program:
    name: str  # as the matrix and the trace name it: "curl", "node-http"...
    label: str  # as a reader knows it: "Node.js http"
    package: str  # where a new machine gets it (the message when it is missing)
    tool: str  # the executable it needs

    def argv(self, built: Path, method: str, url: str, body: str | None, then: str | None = None) -> list[str]:
        """The command line of one request; body: a file of the upload's bytes (curl reads it).
        then: a second request (same method and body) to this URL with the same client, made
        once the program's standard input is closed (Run.proceed()); the first one's result
        is printed as "first request: ..." (FIRST)."""
        size = [str(os.path.getsize(body))] if body else []
        second = ["--then", then] if then else []
        if self.name == "curl":
            # -sS: no progress meter, errors still printed; -D -: the response's head on stdout
            request = ["-sS", "-o", "/dev/null", "-X", method, *(["--data-binary", f"@{body}"] if body else [])]
            if not then:
                return ["curl", *request, "-D", "-", url]
            # one curl, three transfers sharing its connection pool: the first request, a read
            # of standard input to its end (the pause), the second request
            return ["curl", *request, "-w", FIRST + "HTTP %{http_code}\\n", url,
                    "--next", "-sS", "-o", "/dev/null", "file:///dev/stdin", "--next", *request, "-D", "-", then]
        if self.name.startswith("node-"):
            script = {"node-http": "http_get.js", "node-fetch": "fetch.js"}[self.name]
            return ["node", *NODE_FLAGS[self.name], str(SOURCES / script), method, url, *size, *second]
        if self.name == "go-net-http":
            return [str(built / "go-client"), method, url, *size, *second]
        if self.name.startswith("java-"):
            main = JAVA_MAINS[self.name]
            return [*JAVA, f"-XX:SharedArchiveFile={built / (main + '.jsa')}", "-cp", str(built / JAR),
                    main, method, url, *size, *second]
        library = self.name.removeprefix("python-")
        return [sys.executable, str(SOURCES / "python_client.py"), library, method, url, *size, *second]


PROGRAMS = (
    Program("curl", "curl", "curl (Debian)", "curl"),
    Program("node-http", "Node.js http", "nodejs (Debian)", "node"),
    Program("node-fetch", "Node.js fetch", "nodejs (Debian)", "node"),
    Program("go-net-http", "Go net/http", "golang-go (Debian)", "go"),
    Program("java-httpclient", "Java HttpClient", "default-jdk-headless (Debian)", "javac"),
    Program("java-socket", "Java Socket", "default-jdk-headless (Debian)", "javac"),
    Program("python-requests", "Python requests", "requests (PyPI, in pyproject.toml)", ""),
    Program("python-httpx", "Python httpx", "httpx (PyPI, in pyproject.toml)", ""),
    Program("python-aiohttp", "Python aiohttp", "aiohttp (PyPI, in pyproject.toml)", ""),
)
BY_NAME = {p.name: p for p in PROGRAMS}


def program_files() -> list[Path]:
    """The programs' own files, as the pages include them."""
    return sorted(p for p in SOURCES.iterdir() if p.suffix in (".go", ".java", ".js", ".py"))


# -- once per run of the catalogue: check the tools, build Go and Java, read the versions -----

def missing_tools() -> list[str]:
    """Each program that cannot run here, with the package that provides it."""
    found = []
    for p in PROGRAMS:
        if p.tool:
            absent = not shutil.which(p.tool) or (p.tool == "javac" and not shutil.which("java"))
        else:
            try:
                version(p.name.removeprefix("python-"))
                absent = False
            except PackageNotFoundError:
                absent = True
        if absent:
            found.append(f"{p.label} ({p.package})")
    return found


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _first_line(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return (out.stdout or out.stderr).splitlines()[0].strip()


def prepare(built: Path = BUILT) -> dict[str, Any]:
    """Build what needs building (only when its sources changed) and read every version;
    write built/programs.json for the workers. LabUnavailable names what is missing."""
    missing = missing_tools()
    if missing:
        raise LabUnavailable("the client scenarios run real programs; missing: " + ", ".join(missing)
                             + ". Debian: apt-get install curl nodejs golang-go default-jdk-headless;"
                             " Python: pip install -e . (requests, httpx, aiohttp)")
    built.mkdir(parents=True, exist_ok=True)
    go_source, java_sources = SOURCES / "http_get.go", sorted(SOURCES.glob("*.java"))
    stamp = built / "sources.sha256"
    digest = _digest([go_source, *java_sources, Path(__file__)])
    if not stamp.exists() or stamp.read_text() != digest:
        env = {**os.environ, "GOCACHE": str(built / "go-cache"), "GOPATH": str(built / "go-path"),
               "GO111MODULE": "off", "CGO_ENABLED": "0"}
        _build(["go", "build", "-o", str(built / "go-client"), str(go_source)], env)
        shutil.rmtree(built / "java", ignore_errors=True)
        _build(["javac", "-d", str(built / "java"), *map(str, java_sources)], dict(os.environ))
        _build(["jar", "cf", str(built / JAR), "-C", str(built / "java"), "."], dict(os.environ))
        _archive_java_classes(built)
        stamp.write_text(digest)
    curl = _first_line(["curl", "--version"]).split()[1]
    node = _first_line(["node", "--version"])
    go = _first_line([str(built / "go-client"), "-version"])
    java = re.search(r'"([^"]+)"', _first_line([*JAVA, "-version"]))
    versions = {
        "curl": f"curl {curl}", "node-http": f"Node.js {node}", "node-fetch": f"Node.js {node}",
        "go-net-http": go, "java-httpclient": f"OpenJDK {java.group(1) if java else '?'}",
    }
    versions["java-socket"] = versions["java-httpclient"]
    for library in ("requests", "httpx", "aiohttp"):
        versions[f"python-{library}"] = f"{library} {version(library)} (Python {sys.version.split()[0]})"
    manifest = {"built": str(built), "versions": versions}
    text = json.dumps(manifest, indent=1) + "\n"
    path = built / MANIFEST
    if not path.exists() or path.read_text() != text:  # unchanged: a user who did not build it may read it
        path.write_text(text)
    return manifest


def _archive_java_classes(built: Path) -> None:
    """Each Java program's classes, the JDK's HTTP client among them, in a class data sharing
    archive of its own (JDK 17: -XX:ArchiveClassesAtExit), made by one request to a server in a
    network namespace of this function's own: a JVM mapping the archive spends about a quarter
    less CPU starting than one loading those classes from the JDK's modules."""
    import http.server
    import threading

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    fd = netns.new_namespace()
    try:
        netns.run(fd, ["ip", "link", "set", "lo", "up"])
        with netns.inside(fd):
            server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/"
            for program, main in JAVA_MAINS.items():
                (built / (main + ".jsa")).unlink(missing_ok=True)  # the JVM writes it read-only
                argv = BY_NAME[program].argv(built, "GET", url, None)
                argv = [f"-XX:ArchiveClassesAtExit={built / (main + '.jsa')}" if a.startswith("-XX:SharedArchiveFile=")
                        else a for a in argv]
                done = subprocess.run(netns.command(fd, argv), capture_output=True, text=True, pass_fds=(fd,))
                if done.returncode != 0 or not (built / (main + ".jsa")).is_file():
                    raise LabUnavailable(f"archiving the classes of {main} failed:\n{done.stdout}{done.stderr}")
        finally:
            server.shutdown()
            server.server_close()
    finally:
        os.close(fd)


def _build(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise LabUnavailable(f"building the client programs failed: {' '.join(argv)}:\n{done.stderr}")


def manifest(built: Path = BUILT) -> dict[str, Any]:
    try:
        return json.loads((built / MANIFEST).read_text())
    except (OSError, ValueError):
        raise RuntimeError(f"{built / MANIFEST} is missing: the runner prepares the client programs"
                           " (lab/clients.py prepare()) before a scenario with clients runs") from None


# -- in a run: one program, one request, on the client host --------------------------------------

def _errno_named(lines: list[str]) -> str | None:
    """The errno the program printed ("errno: 104" or "code: ECONNRESET"), by name."""
    for line in lines:
        found = re.fullmatch(r"(?:errno|code): (\w+)", line)
        if found:
            value = found.group(1)
            if value.isdigit():
                return errno_module.errorcode.get(int(value))
            if isinstance(getattr(errno_module, value, None), int):
                return value
    return None


def with_room(argv: list[str]) -> list[str]:
    """The argv that runs `argv` with its address-space limit raised to the sandbox's hard limit
    (lab/sandbox.py): Node's fetch() reserves about 10 GiB for WebAssembly and fails with "Out of
    memory" below it. prlimit(1) sets it and execs the program (a preexec_fn would make
    subprocess fork the whole worker, page tables and all, instead of vfork()ing it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY:
        return argv
    return ["prlimit", f"--as={hard}:", "--", *argv]


def program_env(program: Program) -> dict[str, str]:
    """The program's environment: the lab's, Node.js's warnings off, NODE_ENV_DROPPED left out."""
    env = {k: v for k, v in os.environ.items() if not (program.tool == "node" and k in NODE_ENV_DROPPED)}
    return {**env, "NODE_NO_WARNINGS": "1"}


# -- a server name resolved to the lab's server, each program its own normal way ------------

HOSTS_FILE = "etc-hosts"  # in the run's folder (its working directory): the programs' /etc/hosts
# in a mount namespace of the program's own, this file is bind-mounted over /etc/hosts, then the
# program is exec'd: the namespace, and the mount, end with the program
OWN_HOSTS = 'mount --bind "$0" /etc/hosts && exec "$@"'


def hosts_file(names: dict[str, str]) -> Path | None:
    """The machine's /etc/hosts with `names` (name -> address) added, written in the run's folder
    (None without names): a program sees it as its /etc/hosts, and it alone (with_names())."""
    if not names:
        return None
    lines = "".join(f"{address} {name}\n" for name, address in names.items())
    path = Path(HOSTS_FILE).resolve()
    machine = Path("/etc/hosts").read_text()
    path.write_text(machine + ("\n" if machine and not machine.endswith("\n") else "")
                    + "# the lab's (lab/clients.py with_names())\n" + lines)
    return path


def with_names(argv: list[str], names: dict[str, str]) -> list[str]:
    """The argv that runs `argv` with `names` (name -> address) added to the machine's /etc/hosts,
    seen by that program alone: curl, Node.js, Java and Python ask getaddrinfo(), Go (built
    without cgo) reads /etc/hosts itself; none is told an address on its command line. Nothing
    reaches the machine's /etc/hosts: the run's mounts are its own already (lab/sandbox.py), and
    `unshare --mount` makes the program's private ones (lab/pyfork.py does the same for Python's)."""
    path = hosts_file(names)
    if path is None:
        return argv
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", OWN_HOSTS, str(path), *argv]


class _Popen(subprocess.Popen):
    """A program's process (pyfork.Forked for a Python one), reaped with its CPU time: user
    and system, its threads' and the children it waited for included (wait4's rusage)."""

    cpu_s: float | None = None

    def wait(self, timeout: float | None = None) -> int:  # communicate() ends with it
        if self.returncode is None:
            exited = os.pidfd_open(self.pid)  # readable once the process has exited
            try:
                if not select.select([exited], [], [], timeout)[0]:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0)
            finally:
                os.close(exited)
            _, status, usage = os.wait4(self.pid, 0)
            self.cpu_s = usage.ru_utime + usage.ru_stime
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


class Run:
    """A program running on a host: started, then waited for (start(), then .wait())."""

    def __init__(self, program: Program, host: Any, method: str, url: str, body_size: int,
                 names: dict[str, str] | None = None, then: str | None = None) -> None:
        info = manifest()
        body = None
        if body_size:
            body = f"body-{body_size}.bin"
            if not os.path.exists(body):  # the run's own folder (its working directory)
                with open(body, "wb") as f:
                    f.write(b"x" * body_size)
        self.program, self.host = program, host
        argv = program.argv(Path(info["built"]), method, url, body, then)
        self.argv = with_names(argv, names or {})
        self.call = f"{program.label}: {method} {url}" + (f" with a {body_size}-byte body" if body_size else "")
        if then:
            self.call += f", then {method} {then} with the same client"
        self.version = info["versions"][program.name]
        self.started = time.time()
        # with a second request, the program waits for its standard input to close (proceed())
        forks = pyfork.forks()
        if forks and pyfork.used(argv):  # a Python program: forked warm, its libraries imported once
            hosts = hosts_file(names or {})
            self._proc: Any = forks.spawn(argv, host.fd, str(hosts) if hosts else None, stdin_pipe=bool(then))
        else:
            # born in the host's network namespace: a new process starts in its creating thread's
            # (no nsenter to exec first)
            with netns.inside(host.fd):
                self._proc = _Popen(with_room(self.argv), stdin=subprocess.PIPE if then else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=program_env(program))
        self.pid = self._proc.pid

    def pause(self) -> None:
        """SIGSTOP the program and wait until it has stopped: what reaches it meanwhile waits in
        its sockets (the lab decides a race with it); resume() lets it go on."""
        os.kill(self._proc.pid, signal.SIGSTOP)
        self.host.until(f"{self.program.label} is stopped", lambda: process.state(self._proc.pid) == "T")

    def resume(self) -> None:
        os.kill(self._proc.pid, signal.SIGCONT)

    def proceed(self) -> None:
        """Let a program started with a second request make it: close its standard input."""
        stdin, self._proc.stdin = self._proc.stdin, None  # communicate() would flush a closed pipe
        stdin.close()

    def settled(self, timeout: float = RUN_TIMEOUT) -> None:
        """Wait until the program has handled what reached it (a FIN on a pooled connection):
        every thread asleep in two readings of /proc in a row, none having run in between (its
        context switches unchanged). No event says so: poll, as Host.until() does."""
        deadline, before = time.monotonic() + timeout, None
        while (now := self._asleep()) is None or now != before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.program.label} did not settle within {timeout:g} s")
            before = now
            time.sleep(0.001)

    def _asleep(self) -> dict[str, list[str]] | None:
        """Each thread's context switches, or None if one of them is not asleep (S; Z: exited)."""
        task = f"/proc/{self._proc.pid}/task"
        found = {}
        try:
            for tid in os.listdir(task):
                with open(f"{task}/{tid}/status") as f:
                    status = f.read()
                if re.search(r"^State:\s+(\S)", status, re.M).group(1) not in "SZ":
                    return None
                found[tid] = re.findall(r"ctxt_switches:\s+(\d+)", status)
        except FileNotFoundError:  # a thread came or went
            return None
        return found

    def wait(self, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        """Wait for the program to exit; record and return what it printed and its exit status
        (with a second request: what it printed for that one; the first's line in `first_request`)."""
        try:
            out, _ = self._proc.communicate(timeout=timeout)
            status: int | str = self._proc.returncode
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
            status = f"killed after {timeout:g} s"
        lines = [line.rstrip() for line in out.decode(errors="replace").splitlines() if line.strip()]
        first_request = [line.removeprefix(FIRST) for line in lines if line.startswith(FIRST)]
        lines = [line for line in lines if not line.startswith(FIRST)]
        entry: dict[str, Any] = {
            "call": self.call, "program": {"name": self.program.label, "version": self.version, "id": self.program.name},
            "output": lines, "exit_status": status, **({"first_request": first_request[0]} if first_request else {}),
            # user+sys of its process, its threads and waited-for children: `nox -s bench` adds them up
            "cpu_s": round(self._proc.cpu_s, 4),
            # the wall-clock window the lab uses to find the program's connections (worker.judge)
            "window": [self.started, time.time()],
        }
        first = lines[0] if lines else "(printed nothing)"
        if status == 0:
            entry["returned"] = first
        else:
            entry.update(raised=first, errno=_errno_named(lines), message=f"exit status {status}")
        self.host.add_outcome(entry)
        return entry


class Client:
    """One program, bound to the host it runs on: what each_program() receives."""

    def __init__(self, program: Program, host: Any) -> None:
        self.program, self.host = program, host
        self.name, self.label = program.name, program.label
        self.timeout = RUN_TIMEOUT  # how long a step waiting for the program may wait
        self.names: dict[str, str] = {}  # server names the program finds in its /etc/hosts (resolve())

    def resolve(self, name: str, address: str) -> None:
        """The program finds `name` at `address`, as it finds any name: see with_names()."""
        self.names[name] = address

    def start(self, method: str, url: str, body_size: int = 0, then: str | None = None) -> Run:
        """then: a second request to this URL with the same client (its connection pool), made
        when the run's proceed() is called."""
        return Run(self.program, self.host, method, url, body_size, self.names, then)

    def get(self, url: str) -> dict[str, Any]:
        return self.start("GET", url).wait()

    def post(self, url: str, body_size: int) -> dict[str, Any]:
        return self.start("POST", url, body_size).wait()


def each(host: Any) -> list[Client]:
    return [Client(p, host) for p in PROGRAMS]


# -- after the run: which packets were each program's ------------------------------------------

def attribute(outcomes: list[dict[str, Any]], packets: list[Any], events: list[dict[str, Any]],
              first_packet: float) -> list[tuple[dict[str, Any], list[Any]]]:
    """Each program's outcome with its packets: those of every connection (artifact.connections())
    whose first packet was captured while the program ran (an ICMP message by its own time). Each entry's
    wall-clock `window` is replaced by what the recording keeps: `packets` (numbers),
    `connections` (how many its host opened: a retry or a reconnection shows here) and
    `kernel_errors` (inet_sk_error_report's errno on its connections, in order)."""
    runs = [e for e in outcomes if "program" in e]
    connection = connections(packets)
    opened: dict[int, float] = {}  # connection -> the time of its first packet
    for p in packets:
        if p.number in connection:
            opened.setdefault(connection[p.number], p.time)
    found = []
    for entry in runs:
        start, end = (t - first_packet for t in entry.pop("window"))
        mine = [p for p in packets
                if start <= (opened[connection[p.number]] if p.number in connection else p.time) <= end]
        ports = {(p.src, p.sport) for p in mine if p.proto == "tcp" and p.sender == entry["host"]}
        entry["packets"] = [p.number for p in mine]
        # opened by the program's host: through a proxy, the proxy's own connections to its backend
        # are the program's packets too, but not connections the program opened
        entry["connections"] = len({connection[p.number] for p in mine
                                    if p.number in connection and p.flags == "S" and p.sender == entry["host"]})
        entry["kernel_errors"] = [e["errno"] for e in events if e["event"] == "inet_sk_error_report"
                                  and e["host"] == entry["host"] and (e["src"], e["sport"]) in ports
                                  and start <= e["time"] <= end]
        found.append((entry, mine))
    return found
