"""What Wireshark says of each capture, asked of Wireshark's own dissectors by this build.

One `sharkd` (Wireshark's JSON-RPC front end; Debian package tshark, whose dependency
wireshark-common ships /usr/bin/sharkd) reads every scenario's pcap in turn: the packet
list's Protocol and Info columns with tcp.seq, tcp.seq_raw, tcp.ack, tcp.ack_raw and
tcp.stream of each frame, the expert info (its `expert` tap), and which frames each
display filter of the page shows, with the filters the page's prose recommends (marked in
its Markdown, `recommended()`: each must compile, sharkd's `check`, and show the packets the
page names) and the fields it names (each must exist). It runs with Wireshark's default preferences (an empty
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
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lab.artifact import TRACES, Packet, Recording

PACKAGE = "tshark"  # its dependency wireshark-common ships /usr/bin/sharkd
RST_FILTER = "tcp.flags.reset == 1"
# each frame's fields, as custom columns (sharkd's "FIELD:OCCURRENCE")
FIELDS = ("tcp.seq", "tcp.seq_raw", "tcp.ack", "tcp.ack_raw", "tcp.stream")
QUESTIONS = hashlib.sha256(json.dumps([RST_FILTER, FIELDS, "%p", "%i", "expert", 2]).encode()).hexdigest()[:16]

# -- what a page's prose recommends, marked in its Markdown ------------------------------------
#
#     `tcp.flags.reset == 1 && tcp.flags.ack == 0`{ .wireshark-filter shows="client-rst" }
#     `ip.ttl`{ .wireshark-field }
#
# A filter is checked against the page's own capture: it must compile, and show exactly the
# packets named (claim names of build/traces/SLUG.json; a group's name stands for all its
# packets, NAME-K its K-th; shows="" for none). A field must be one of Wireshark's. Both are rendered as
# inline code, a filter with what it showed in this capture beside it.
MARKER = re.compile(r"`(?P<text>[^`\n]+)`\{\s*\.wireshark-(?P<kind>filter|field)(?P<attrs>[^}\n]*)\}")
MARKED = re.compile(r"\.wireshark-(?:filter|field)\b")  # every one must be part of a MARKER
SHOWS = re.compile(r'\s+shows="(?P<names>[^"]*)"\s*')


@dataclass(frozen=True)
class Recommended:
    """One marked filter or field of a page, where it stands in the page's Markdown."""

    kind: str  # "filter" or "field"
    text: str  # the filter or the field, as Wireshark reads it
    shows: tuple[str, ...]  # a filter's expected packets, by claim name
    start: int
    end: int


class MarkerError(ValueError):
    """A malformed marker; offset: where it is in the Markdown."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def recommended(markdown: str) -> list[Recommended]:
    """The page's marked filters and fields, in order; a malformed marker raises MarkerError."""
    found = []
    for m in MARKER.finditer(markdown):
        text, kind, attrs = m.group("text"), m.group("kind"), m.group("attrs")
        shows = SHOWS.fullmatch(attrs)
        if kind == "filter" and not shows:
            raise MarkerError(f"{m.group(0)}: a recommended filter names the packets it shows, in quotes:"
                              ' { .wireshark-filter shows="NAME ..." }', m.start())
        if kind == "field" and attrs.strip():
            raise MarkerError(f"{m.group(0)}: a field's marker takes nothing more: {{ .wireshark-field }}", m.start())
        if text != text.strip():
            raise MarkerError(f"{m.group(0)}: no spaces at either end of the {kind}", m.start())
        found.append(Recommended(kind, text, tuple(shows.group("names").split()) if shows else (), m.start(), m.end()))
    consumed = [(r.start, r.end) for r in found]
    for m in MARKED.finditer(markdown):
        if not any(start <= m.start() < end for start, end in consumed):
            raise MarkerError(f"a Wireshark marker not in the form `FILTER`{{ .wireshark-filter shows=\"NAME ...\" }}"
                              " or `FIELD`{ .wireshark-field }, right after the inline code", m.start())
    return found


@dataclass(frozen=True)
class Asked:
    """What a page asks of Wireshark about its own capture, besides what every page asks."""

    filters: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()

    @classmethod
    def of(cls, markdown: str) -> Asked:
        marked = recommended(markdown)
        return cls(tuple(dict.fromkeys(r.text for r in marked if r.kind == "filter")),
                   tuple(dict.fromkeys(r.text for r in marked if r.kind == "field")))


class WiresharkError(ValueError):
    """Wireshark could not be asked, or its answer does not fit the capture; the message says which."""


class Refused(WiresharkError):
    """sharkd answered with an error; message: its own words."""

    def __init__(self, method: str, params: object, error: object) -> None:
        super().__init__(f"sharkd refused {method} {params or ''}: {error}")
        self.said = str(error.get("message", error)) if isinstance(error, dict) else str(error)


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


def asked_by_pages(docs_dir: Path, slugs: Iterable[str]) -> dict[str, Asked]:
    """What each scenario page (docs/scenarios/SLUG.md) asks of its capture besides; a page with a
    malformed marker asks nothing more here: its expansion fails, saying where."""
    asked = {}
    for slug in slugs:
        try:
            asked[slug] = Asked.of((docs_dir / "scenarios" / f"{slug}.md").read_text())
        except (OSError, MarkerError):
            asked[slug] = Asked()
    return asked


@dataclass(frozen=True)
class View:
    """What Wireshark said of one capture."""

    version: str  # sharkd's own, e.g. "Git v4.0.17 packaged as 4.0.17-0+deb12u3"
    frames: list[Frame]
    expert: list[Expert]
    filters: dict[str, list[int]]  # display filter -> the frames it shows, as Wireshark applied it
    recommended: dict[str, list[int]]  # the page's own filters (Asked.filters) -> the frames each shows
    refused: dict[str, str]  # a filter that does not compile, a field that is not Wireshark's -> what sharkd said

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> View:
        return cls(data["version"], [Frame(**f) for f in data["frames"]], [Expert(**e) for e in data["expert"]],
                   {k: list(v) for k, v in data["filters"].items()},
                   {k: list(v) for k, v in data["recommended"].items()}, dict(data["refused"]))

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
        if reply.get("id") != self._id:
            raise WiresharkError(f"sharkd answered another question than {method} {params or ''}: {reply}")
        if "error" in reply:
            raise Refused(method, params, reply["error"])
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

    def refusal(self, kind: str, text: str) -> str | None:
        """What sharkd's `check` says against a display filter ("filter") or a field ("field"); None: fine."""
        try:
            self.call("check", {kind: text})
        except Refused as exc:
            return exc.said
        return None

    def dissect(self, pcap: Path, asked: Asked = Asked()) -> View:
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
        refused = {text: said for kind, texts in (("field", asked.fields), ("filter", asked.filters))
                   for text in texts if (said := self.refusal(kind, text)) is not None}
        recommended = {f: self.shown(f) for f in asked.filters if f not in refused}
        return View(self.version(), frames, expert, filters, recommended, refused)

    def shown(self, display_filter: str) -> list[int]:
        """The frames the filter shows. sharkd 4.0 keeps each filter's result by its text and not
        per file (sharkd_session.c at v4.0.17: sharkd_session_filter_data() looks the text up in
        filter_table, made once by sharkd_session_main(); `load` does not empty it): after a second
        `load` the same text gets the first file's answer (seen here: RST filter on closed-port.pcap,
        then on linger-zero.pcap, answered frame 2 where tshark says 4). Leading spaces, one more per
        file, make the text new."""
        spaced = " " * self._loads + display_filter
        return [row["num"] for row in self.call("frames", {"filter": spaced, "column0": "frame.number:0"})]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # console mode reads requests until EOF (sharkd_session_main(), sharkd_session.c)
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


def _packets(rec: Recording, numbers: list[int]) -> str:
    return ", ".join(f"{n} ({rec.packets[n - 1].name or 'noise'})" for n in numbers) or "no packet"


def _named(rec: Recording, name: str) -> list[Packet]:
    """A claim's packets by its name, or one packet of a group claim by its anchor (NAME-K)."""
    member = [p for p in rec.packets if p.name and p.name != name and rec.anchor(p) == name]
    return member or rec.named(name)


def disagreement(rec: Recording, view: View, marked: Recommended) -> str | None:
    """Why what the page says of a marked filter or field is not what Wireshark says of its
    capture (in a sentence naming the filter); None if it is."""
    what = f"Wireshark {marked.kind} `{marked.text}`"
    if marked.text in view.refused:
        return (f"{what} does not compile: sharkd's check says: {view.refused[marked.text]}"
                if marked.kind == "filter" else f"{what} is not one of Wireshark's: sharkd's check says:"
                f" {view.refused[marked.text]}")
    if marked.kind == "field":
        return None
    if marked.text not in view.recommended:
        return f"{what} was not asked of Wireshark (the build collects the marked filters in on_config)"
    try:
        expected = sorted({p.number for name in marked.shows for p in _named(rec, name)})
    except LookupError as exc:
        return f"{what}: {exc}"
    shown = view.recommended[marked.text]
    if shown != expected:
        return (f"{what} shows {_packets(rec, shown)} in {rec.slug}.pcap; the page says it shows"
                f" {' '.join(marked.shows) or 'nothing'}: {_packets(rec, expected)}")
    return None


# -- the cache: build/wireshark/SHA256.json, sealed ------------------------------------------

def cache_folder(traces: Path | None = None) -> Path:
    return (traces or TRACES).parent / "wireshark"


def _mac(secret: bytes, digest: str, version: str, asked: Asked, view: dict[str, Any]) -> str:
    message = json.dumps([digest, version, QUESTIONS, asdict(asked), view], sort_keys=True).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def cached(folder: Path, digest: str, version: str, asked: Asked, secret: bytes) -> View | None:
    try:
        data = json.loads((folder / f"{digest}.json").read_text())
        if hmac.compare_digest(data["mac"], _mac(secret, digest, version, asked, data["view"])):
            return View.from_json(data["view"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None  # none, another Wireshark's, other questions' (the page's filters too), or not ours: ask again


def keep(folder: Path, digest: str, asked: Asked, view: View, secret: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = view.to_json()
    tmp = folder / f".{digest}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"mac": _mac(secret, digest, view.version, asked, data), "view": data}))
    tmp.replace(folder / f"{digest}.json")


class Views:
    """Every recording's View, asked of one sharkd in a thread; view(slug) waits for its own."""

    def __init__(self) -> None:
        self.sharkd = Sharkd()  # started now: it loads Wireshark's dissectors while the lab records
        self._done: dict[str, threading.Event] = {}
        self._found: dict[str, View | Exception] = {}
        self._stopping = threading.Event()
        self.asked = 0  # how many captures sharkd read (the rest came from the cache)

    def start(self, recordings: dict[str, Recording], secret: bytes, traces: Path | None = None,
              asked: dict[str, Asked] | None = None) -> None:
        """asked: slug -> what its page asks besides (its recommended filters and fields)."""
        self._done = {slug: threading.Event() for slug in recordings}
        threading.Thread(target=self._run, args=(recordings, secret, cache_folder(traces), asked or {}),
                         name="wireshark", daemon=True).start()

    def _run(self, recordings: dict[str, Recording], secret: bytes, folder: Path, asked: dict[str, Asked]) -> None:
        try:
            version = self.sharkd.version()
            for slug, rec in recordings.items():
                if self._stopping.is_set():
                    raise WiresharkError("the build stopped before Wireshark read every capture")
                assert rec.pcap is not None
                try:
                    digest = hashlib.sha256(rec.pcap.read_bytes()).hexdigest()
                    questions = asked.get(slug, Asked())
                    view = cached(folder, digest, version, questions, secret)
                    if view is None:
                        view = self.sharkd.dissect(rec.pcap, questions)
                        self.asked += 1
                        check(rec, view)
                        keep(folder, digest, questions, view, secret)
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
