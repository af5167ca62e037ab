"""What a recording is: `build/traces/SLUG.{pcap,txt,json}`, defined once.

The runner writes it; the site, the symptom index, the notebook and the tests read it
through this module, so that a field added or renamed here is renamed everywhere.

    rec = artifact.load("closed-port")        # checked: names the scenario when it is not right
    rec.packets[0].flags, rec.packet("client-syn"), rec.text, rec.pcap
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository (examples/lab/ -> ..)
# the one definition of where recordings live; tests point it elsewhere
TRACES = Path(os.environ.get("FIELDGUIDE_TRACES") or ROOT / "build" / "traces")
SUFFIXES = (".pcap", ".txt", ".json")
# the client session's recordings (`python -m lab run --programs`, lab/clients.py): the scenarios
# with a client again, each real client program run after the example's own steps; their own
# folder, so that the catalogue's run (without programs) keeps its time
CLIENT_TRACES = Path(os.environ.get("FIELDGUIDE_CLIENT_TRACES") or ROOT / "build" / "client-traces")
FOLDER_FILES = (".lock", ".key")  # the folder's own: its lock (locked()) and its sealing key (key())
# another kernel's folder (build/traces/KERNEL/, lab/matrix.py) also holds what its run did:
RESULTS = "results.json"  # written in the guest: each scenario recorded or not, and why
MATRIX = "matrix.json"  # written by the host: the kernel, its boot and catalogue times, RESULTS


@contextlib.contextmanager
def locked(folder: Path | None = None, exclusive: bool = False, on_wait: Callable[[str], None] | None = None
           ) -> Iterator[None]:
    """Hold FOLDER/.lock: exclusively while a run records and publishes, shared while a
    build reads. A reader never sees half a run; two runs never interleave. The lock is
    the kernel's (flock): it is released when its holder ends, however it ends."""
    base = folder or TRACES
    base.mkdir(parents=True, exist_ok=True)
    fd = os.open(base / FOLDER_FILES[0], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            if on_wait:
                on_wait(f"{base} is in use by {holder}; waiting for it to finish")
            fcntl.flock(fd, mode)
        if exclusive:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"a run (pid {os.getpid()})\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class ArtifactError(ValueError):
    """A recording is missing, incomplete or does not fit this schema; the message says which."""


@dataclass(frozen=True)
class Packet:
    """One captured TCP segment (or ICMP message), as a reader needs it."""

    number: int  # 1-based, as in the trace text
    time: float  # seconds since the first packet
    sender: str  # host name owning the source address ("?" if none)
    receiver: str
    src: str
    dst: str
    sport: int
    dport: int
    flags: str  # tcpdump notation: "S", "S.", "R.", "P.", "F." ...
    seq: int
    ack: int
    win: int
    payload: int
    ttl: int
    ip_id: int
    proto: str = "tcp"
    options: tuple[str, ...] = ()  # TCP option kinds in order, tcpdump's names: "mss", "TS", "nop"...
    name: str | None = None  # the claim's (or group claim's) name for it
    noise: str | None = None  # or why it is expected noise
    # what the kernel said of it (lab/kernel_events.py), where its tracepoints were recorded:
    kernel: dict[str, Any] | None = None  # a RST: the tcp_send_reset that made it; None: no TCP stack did
    received: dict[str, Any] | None = None  # a RST: the tcp_receive_reset of the socket that accepted it
    dropped: dict[str, Any] | None = None  # the kfree_skb that dropped it, with the kernel's reason

    @property
    def is_rst(self) -> bool:
        return self.proto == "tcp" and "R" in self.flags

    def wire(self) -> Packet:
        """Only what the pcap itself says: without the claims' names and the kernel's words."""
        return dataclasses.replace(self, name=None, noise=None, kernel=None, received=None, dropped=None)

    def label(self) -> str:
        return f"packet {self.number} ({self.name or 'unnamed'}) {self.sender} [{self.flags}]"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Packet:
        return cls(**{**data, "options": tuple(data.get("options", ()))})


def anchors(packets: list[Packet]) -> dict[int, str]:
    """Each packet's anchor on its page, by name: the name, NAME-K for the K-th packet of a
    group claim, noise-N for noise. The lab refuses names whose anchors would collide."""
    groups: dict[str, list[int]] = {}
    for p in packets:
        if p.name:
            groups.setdefault(p.name, []).append(p.number)
    found = {}
    for p in packets:
        if not p.name:
            found[p.number] = f"noise-{p.number}"
        elif len(groups[p.name]) == 1:
            found[p.number] = p.name
    for name, members in groups.items():  # a group's K-th packet: NAME-K
        if len(members) > 1:
            for k, number in enumerate(members, 1):
                found[number] = f"{name}-{k}"
    return found


def connections(packets: list[Packet]) -> dict[int, int]:
    """Each TCP packet's connection, numbered in the order they opened. A connection is its
    four-tuple from one SYN on: a client that reuses a closed connection's port opens a
    new one (a SYN with another sequence number), as the kernel may do at once after a RST."""
    found: dict[int, int] = {}
    current: dict[frozenset[tuple[str, int]], tuple[int, int]] = {}  # tuple -> (connection, its SYN's seq)
    opened = 0
    for p in packets:
        if p.proto != "tcp":
            continue
        key = frozenset({(p.src, p.sport), (p.dst, p.dport)})
        if key not in current or (p.flags == "S" and p.seq != current[key][1]):
            current[key] = (opened, p.seq if p.flags == "S" else -1)
            opened += 1
        found[p.number] = current[key][0]
    return found


def shape_of(packets: list[Packet], programs: list[dict[str, Any]] | None = None) -> list[list[Any]]:
    """What a reviewer must see change: who sent which flags, in order, data or not, and names.

    programs: the client programs' outcomes (lab/clients.py). Their packets count only by
    their SYN, FIN and RST (how many segments and ACKs an upload takes varies from run to
    run; who opened, closed and reset, in which order, does not), and each adds a row of
    what it got: its exit status, the errno it printed, its connections. (The kernel's
    errors are left out: whether one reaches a socket depends on whether the program had
    already exited when the RST came.)
    """
    programs = programs or []
    theirs = {n for entry in programs for n in entry["packets"]}
    rows = [[p.sender, p.flags, p.payload > 0, p.name or "(noise)"] for p in packets if p.number not in theirs]
    connection = connections(packets)
    for entry in programs:  # connection by connection: two connections of a program interleave as they like
        by_connection: dict[int, list[list[Any]]] = {}
        for p in packets:
            if p.number in entry["packets"] and set(p.flags) & set("SFR"):
                by_connection.setdefault(connection.get(p.number, -1), []).append(
                    [p.sender, p.flags, p.payload > 0, p.name or "(noise)"])
        rows += [row for _, found in sorted(by_connection.items()) for row in found]
    for e in programs:
        rows.append([e["program"]["id"], f"exit {e['exit_status']}", False,
                     f"outcome: errno {e.get('errno') or '-'}, {e['connections']} connection(s)"])
    return rows


# A claim's outcome ({claim, passed, detail?, not_applicable?, packet?, name?}): passed True or
# False where it was checked; None where it was not: not checked (the kernel's events were not
# recorded) or, with `not_applicable` saying why, asserting what this kernel does not have.
CLAIM_STATUSES = ("held", "failed", "not checked", "not applicable")


def claim_status(claim: dict[str, Any]) -> str:
    if claim["passed"] is True:
        return "held"
    if claim["passed"] is False:
        return "failed"
    return "not applicable" if claim.get("not_applicable") else "not checked"


@dataclass
class Recording:
    """SLUG.json, plus (when loaded) the text trace and the pcap's path beside it."""

    slug: str
    title: str
    phase: str
    summary: str
    recorded_at: str
    kernel: str
    tcpdump_version: str
    hosts: dict[str, str]  # host -> its first address
    addresses: dict[str, list[str]]
    captured_on: str
    outcomes: dict[str, list[dict[str, Any]]]  # host -> calls: {call, returned | raised, errno, message}, t_ms
    counters: dict[str, dict[str, int]]  # host -> nstat deltas
    claims: list[dict[str, Any]]  # {claim, passed, detail?, not_applicable?, packet?, name?}: claim_status()
    packets: list[Packet]
    shape: list[list[Any]]
    pcap_sha256: str
    seconds: float
    timings: dict[str, float]
    sources_sha256: str = ""  # the example's and the lab's sources it was recorded from
    # the kernel's account (lab/tracer.py): what was traced or why not, every event of the
    # run with its time, and each socket's path through the TCP states
    tracing: dict[str, Any] = field(default_factory=dict)
    kernel_events: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, list[str]] = field(default_factory=dict)
    signature: str = ""  # the run's seal over this record, its text and its pcap (seal())
    text: str = field(default="", repr=False, compare=False)  # SLUG.txt: tcpdump's own text
    pcap: Path | None = field(default=None, repr=False, compare=False)

    # -- packets by name --------------------------------------------------------------
    def named(self, name: str) -> list[Packet]:
        """The packets a name stands for: one, or a group claim's several."""
        found = [p for p in self.packets if p.name == name]
        if not found:
            known = ", ".join(dict.fromkeys(p.name for p in self.packets if p.name))
            raise LookupError(f"{self.slug} has no packet named {name!r} (its names: {known})")
        return found

    def packet(self, name: str) -> Packet:
        return self.named(name)[0]

    def anchor(self, p: Packet) -> str:
        # computed once per list of packets (Packets are frozen; a recording's list is made
        # whole and never edited in place): a page asks for thousands of anchors
        key = (id(self.packets), len(self.packets))
        if getattr(self, "_anchors", (None,))[0] != key:
            object.__setattr__(self, "_anchors", (key, anchors(self.packets)))
        return self._anchors[1][p.number]

    def resets(self) -> list[Packet]:
        return [p for p in self.packets if p.is_rst]

    # -- JSON -------------------------------------------------------------------------
    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("text", "pcap")}
        data["packets"] = [dataclasses.asdict(p) for p in self.packets]
        return json.dumps(data, indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, slug: str) -> Recording:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ArtifactError(f"{slug}.json is not JSON: {exc}") from None
        stored = {f.name for f in dataclasses.fields(cls)} - {"text", "pcap"}
        required = stored - {"signature", "sources_sha256"}
        if not isinstance(data, dict) or required - set(data):
            missing = sorted(required - set(data)) if isinstance(data, dict) else ["everything"]
            raise ArtifactError(f"{slug}.json lacks {', '.join(missing)}")
        if data["slug"] != slug:
            raise ArtifactError(f"{slug}.json is the recording of {data['slug']!r}")
        try:
            data["packets"] = [Packet.from_json(p) for p in data["packets"]]
        except TypeError as exc:
            raise ArtifactError(f"{slug}.json: a packet does not fit the schema: {exc}") from None
        return cls(**{k: data[k] for k in stored if k in data})


# -- the seal: a record is the run's own, unedited ------------------------------------------
# The runner seals each published set with a key kept beside the recordings (never
# published); the build refuses a set whose seal does not match. A JSON field, a line of
# the text or a byte of the pcap changed by hand, or a set put together from two runs,
# no longer matches.

def key(folder: Path | None = None, create: bool = False) -> bytes:
    path = (folder or TRACES) / FOLDER_FILES[1]
    again = "nox -s clients" if path.parent == CLIENT_TRACES else "nox -s examples"
    if create and not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        raise ArtifactError(f"no key in {path.parent} to check the recordings' seals: record them again"
                            f" (`{again}`)") from None
    except (OSError, ValueError):
        secret = b""
    if len(secret) < 16:
        raise ArtifactError(f"{path} is not a key the lab wrote: delete it and record again"
                            f" (`{again}`)")
    return secret


def seal(rec: Recording, text: bytes, pcap: bytes, secret: bytes) -> str:
    data = json.loads(rec.to_json())
    data.pop("signature")
    message = json.dumps(data, sort_keys=True, ensure_ascii=False).encode()
    for part in (text, pcap):
        message += hashlib.sha256(part).digest()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def paths(slug: str, folder: Path | None = None) -> tuple[Path, Path, Path]:
    """SLUG.pcap, SLUG.txt, SLUG.json in `folder` (default TRACES)."""
    base = folder or TRACES
    pcap, txt, js = (base / f"{slug}{suffix}" for suffix in SUFFIXES)
    return pcap, txt, js


def load(slug: str, folder: Path | None = None) -> Recording:
    """The recording as published, with its text and pcap path; ArtifactError if incomplete."""
    pcap, txt, js = paths(slug, folder)
    missing = [f.name for f in (pcap, txt, js) if not f.is_file()]
    if missing:
        raise ArtifactError(f"no recorded trace ({', '.join(missing)} missing): its recording failed"
                            f" or was not run; run `nox -s examples -- {slug}`")
    rec = Recording.from_json(js.read_text(), slug)
    rec.text, rec.pcap = txt.read_text(), pcap
    return rec
