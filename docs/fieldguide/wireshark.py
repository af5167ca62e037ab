"""What Wireshark says of each capture, asked of Wireshark's own dissectors by this build.

One `sharkd` (Wireshark's JSON-RPC front end; Debian package tshark, whose dependency
wireshark-common ships /usr/bin/sharkd) reads every scenario's pcap in turn: the packet
list's Protocol and Info columns with tcp.seq, tcp.seq_raw, tcp.ack, tcp.ack_raw and
tcp.stream of each frame, the expert info (its `expert` tap), and which frames each
display filter of the page shows. It runs with Wireshark's default preferences (an empty
configuration folder: a reader's own profile cannot change what the page says).

It starts when the build does (on_config) and reads the pcaps in a thread of its own
once the recordings are checked, while MkDocs renders the other pages; a page waits
only for its own capture. What it said is kept in build/wireshark/, keyed by the pcap's
SHA-256, Wireshark's version and the questions asked, and sealed with the recordings' key:
building the site again from the same recordings asks Wireshark nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lab.artifact import TRACES, Recording

PACKAGE = "tshark"  # its dependency wireshark-common ships /usr/bin/sharkd
RST_FILTER = "tcp.flags.reset == 1"
# each frame's fields, as custom columns (sharkd's "FIELD:OCCURRENCE")
FIELDS = ("tcp.seq", "tcp.seq_raw", "tcp.ack", "tcp.ack_raw", "tcp.stream")
QUESTIONS = hashlib.sha256(json.dumps([RST_FILTER, FIELDS, "%p", "%i", "expert", 1]).encode()).hexdigest()[:16]


class WiresharkError(ValueError):
    """Wireshark could not be asked, or its answer does not fit the capture; the message says which."""


@dataclass(frozen=True)
class Frame:
    """One row of Wireshark's packet list, with the TCP fields its dissector set."""

    number: int
    protocol: str
    info: str
    seq: int | None = None  # tcp.seq: relative (Wireshark's default)
    seq_raw: int | None = None  # tcp.seq_raw: as on the wire
    ack: int | None = None
    ack_raw: int | None = None
    stream: int | None = None  # tcp.stream: Wireshark's conversation index


@dataclass(frozen=True)
class Expert:
    """One expert info entry (Analyze > Expert Information)."""

    frame: int
    severity: str
    group: str
    message: str
    protocol: str


@dataclass(frozen=True)
class View:
    """What Wireshark said of one capture."""

    version: str  # sharkd's own, e.g. "Git v4.0.17 packaged as 4.0.17-0+deb12u3"
    frames: list[Frame]
    expert: list[Expert]
    filters: dict[str, list[int]]  # display filter -> the frames it shows, as Wireshark applied it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> View:
        return cls(data["version"], [Frame(**f) for f in data["frames"]], [Expert(**e) for e in data["expert"]],
                   {k: list(v) for k, v in data["filters"].items()})

    def frame(self, number: int) -> Frame:
        return self.frames[number - 1]

    def tag(self) -> str:
        """The release tag of this Wireshark in its repository ("v4.0.17"), or "" if not said."""
        for word in self.version.split():
            if word.startswith("v") and word[1:2].isdigit():
                return word
        return ""


def stream_filter(stream: int) -> str:
    return f"tcp.stream == {stream}"


def sharkd_path() -> str:
    found = shutil.which("sharkd")
    if not found:
        raise WiresharkError(f"sharkd not found on PATH: the Wireshark view of each page is recorded with it;"
                             f" install the Debian package {PACKAGE} (apt-get install {PACKAGE};"
                             " its dependency wireshark-common ships /usr/bin/sharkd)")
    return found


class Sharkd:
    """One sharkd process, spoken to over its stdin and stdout (JSON-RPC 2.0, a line each way)."""

    def __init__(self) -> None:
        self._config = tempfile.TemporaryDirectory(prefix="fieldguide-wireshark-")
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._id = 0
        self.proc = subprocess.Popen([sharkd_path(), "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, encoding="utf-8", errors="replace",
                                     env={**os.environ, "WIRESHARK_CONFIG_DIR": self._config.name})
        self._version = ""
        self._columns: dict[str, str] = {}
        self._loads = 0

    def call(self, method: str, params: dict[str, str] | None = None) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._id += 1
        request = {"jsonrpc": "2.0", "id": self._id, "method": method, **({"params": params} if params else {})}
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self._stderr.seek(0)
            raise WiresharkError(f"sharkd ended (exit {self.proc.poll()}) when asked {method}:"
                                 f" {self._stderr.read()[-500:].strip()}")
        reply = json.loads(line)
        if "error" in reply or reply.get("id") != self._id:
            raise WiresharkError(f"sharkd refused {method} {params or ''}: {reply.get('error', reply)}")
        return reply["result"]

    def version(self) -> str:
        if not self._version:
            info = self.call("info")
            self._version = str(info["version"])
            # a built-in column is asked for by its number, which is its place in info's list
            formats = {c["format"]: str(i) for i, c in enumerate(info["columns"])}
            self._columns = {"column0": formats["%p"], "column1": formats["%i"]}
            self._columns.update({f"column{i}": f"{name}:0" for i, name in enumerate(FIELDS, start=2)})
        return self._version

    def dissect(self, pcap: Path) -> View:
        self.version()
        loaded = self.call("load", {"file": str(pcap)})
        self._loads += 1
        if loaded.get("status") != "OK":
            raise WiresharkError(f"sharkd could not read {pcap.name}: {loaded}")
        frames = []
        for row in self.call("frames", self._columns):
            protocol, text, *values = row["c"]
            numbers = [int(v) if v.isdigit() else None for v in values]
            frames.append(Frame(row["num"], protocol, text, *numbers))
        taps = self.call("tap", {"tap0": "expert"})["taps"]
        expert = sorted((Expert(e["f"], e["s"], e["g"], e["m"], e.get("p", "")) for e in taps[0]["details"]),
                        key=lambda e: e.frame)
        filters = {RST_FILTER: self.shown(RST_FILTER)}
        for stream in dict.fromkeys(f.stream for f in frames if f.number in filters[RST_FILTER]):
            if stream is not None:
                filters[stream_filter(stream)] = self.shown(stream_filter(stream))
        return View(self.version(), frames, expert, filters)

    def shown(self, display_filter: str) -> list[int]:
        """The frames the filter shows. sharkd 4.0 keeps each filter's result by its text
        (sharkd_session.c, filter_table) and not per file: after a second `load` the same text
        gets the first file's answer. Leading spaces, one more per file, make the text new."""
        spaced = " " * self._loads + display_filter
        return [row["num"] for row in self.call("frames", {"filter": spaced, "column0": "frame.number:0"})]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # sharkd's console mode ends at the end of its input
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self._stderr):
            if stream is not None:
                stream.close()
        self._config.cleanup()


def check(rec: Recording, view: View) -> None:
    """Wireshark's frames are this page's packets, in the same order, number for number."""
    if len(view.frames) != len(rec.packets):
        raise WiresharkError(f"{rec.slug}: Wireshark reads {len(view.frames)} frames in {rec.slug}.pcap,"
                             f" the recording has {len(rec.packets)} packets")
    for p, f in zip(rec.packets, view.frames, strict=True):
        if f.number != p.number or (p.proto == "tcp" and f.seq_raw != p.seq):
            raise WiresharkError(f"{rec.slug}: Wireshark's frame {f.number} (tcp.seq_raw {f.seq_raw}) is not"
                                 f" packet {p.number} (seq {p.seq})")
    resets = [p.number for p in rec.resets()]
    if view.filters.get(RST_FILTER) != resets:
        raise WiresharkError(f"{rec.slug}: Wireshark's {RST_FILTER} shows frames {view.filters.get(RST_FILTER)},"
                             f" the recording's RSTs are packets {resets}")


# -- the cache: build/wireshark/SHA256.json, sealed ------------------------------------------

def cache_folder(traces: Path | None = None) -> Path:
    return (traces or TRACES).parent / "wireshark"


def _mac(secret: bytes, digest: str, version: str, view: dict[str, Any]) -> str:
    message = json.dumps([digest, version, QUESTIONS, view], sort_keys=True).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def cached(folder: Path, digest: str, version: str, secret: bytes) -> View | None:
    try:
        data = json.loads((folder / f"{digest}.json").read_text())
        if hmac.compare_digest(data["mac"], _mac(secret, digest, version, data["view"])):
            return View.from_json(data["view"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None  # none, another Wireshark's, other questions', or not ours: ask again


def keep(folder: Path, digest: str, view: View, secret: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = view.to_json()
    tmp = folder / f".{digest}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"mac": _mac(secret, digest, view.version, data), "view": data}))
    tmp.replace(folder / f"{digest}.json")


class Views:
    """Every recording's View, asked of one sharkd in a thread; view(slug) waits for its own."""

    def __init__(self) -> None:
        self.sharkd = Sharkd()  # started now: it loads Wireshark's dissectors while the lab records
        self._done: dict[str, threading.Event] = {}
        self._found: dict[str, View | Exception] = {}
        self._stopping = threading.Event()
        self.asked = 0  # how many captures sharkd read (the rest came from the cache)

    def start(self, recordings: dict[str, Recording], secret: bytes, traces: Path | None = None) -> None:
        self._done = {slug: threading.Event() for slug in recordings}
        threading.Thread(target=self._run, args=(recordings, secret, cache_folder(traces)),
                         name="wireshark", daemon=True).start()

    def _run(self, recordings: dict[str, Recording], secret: bytes, folder: Path) -> None:
        try:
            version = self.sharkd.version()
            for slug, rec in recordings.items():
                if self._stopping.is_set():
                    raise WiresharkError("the build stopped before Wireshark read every capture")
                assert rec.pcap is not None
                try:
                    digest = hashlib.sha256(rec.pcap.read_bytes()).hexdigest()
                    view = cached(folder, digest, version, secret)
                    if view is None:
                        view = self.sharkd.dissect(rec.pcap)
                        self.asked += 1
                        check(rec, view)
                        keep(folder, digest, view, secret)
                    else:
                        check(rec, view)
                    self._found[slug] = view
                except (WiresharkError, OSError, ValueError, KeyError) as exc:
                    self._found[slug] = exc if isinstance(exc, WiresharkError) else WiresharkError(
                        f"{slug}: Wireshark's answer could not be read: {exc!r}")
                self._done[slug].set()
        except WiresharkError as exc:
            for slug, done in self._done.items():
                self._found.setdefault(slug, exc)
                done.set()
        finally:
            self.sharkd.close()

    def view(self, slug: str, timeout: float = 300) -> View:
        if slug not in self._done or not self._done[slug].wait(timeout):
            raise WiresharkError(f"{slug}: Wireshark's view was not recorded (no answer from sharkd)")
        found = self._found[slug]
        if isinstance(found, Exception):
            raise found
        return found

    def close(self) -> None:
        """Stop: at once if never started, else after the capture being read (the thread owns sharkd)."""
        self._stopping.set()
        if not self._done:
            self.sharkd.close()
