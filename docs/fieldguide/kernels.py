"""Every scenario on other kernels (lab/matrix.py): each page's Kernels section and the matrix page.

A kernel's recordings (build/traces/KERNEL/) are used when they are complete and fresh: sealed
by their run, recorded from the current example and lab sources (the same test as this
machine's, recordings.stale()). A stale or broken kernel is left out and the site says so;
so does a build with no other kernel recorded. Nothing here fails the build: the pages'
own recordings are this machine's; the other kernels are evidence beside them.

A kernel's run of a scenario is "as here" when every claim held and the shape is the
committed one; claims that assert what that kernel lacks are not applicable
(lab.artifact.claim_status) and do not make it differ. Where a run differs, the page shows
both traces side by side and the explanation from kernel_notes.yml (slug -> kernel -> text,
with its source), or says that none is written yet.
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab import shapes
from lab.artifact import MATRIX, TRACES, ArtifactError, Recording, claim_status, key, load, seal

from .render import indent, literal, plain, records

NOTES = Path(__file__).with_name("kernel_notes.yml")


@dataclass
class KernelRun:
    name: str
    figures: dict[str, Any]  # matrix.json: release, package, why, boot and catalogue seconds, results
    recordings: dict[str, Recording] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # slug -> why it has no recording


@dataclass
class Matrix:
    runs: list[KernelRun]
    left_out: dict[str, str]  # kernel folder -> why it is not used

    def run(self, name: str) -> KernelRun:
        return next(r for r in self.runs if r.name == name)


def load_matrix(slugs: list[str], stale: Any, traces: Path | None = None) -> Matrix:
    """Every kernel folder under build/traces/ with a matrix.json; stale(slug, rec, json_path)
    says why a recording is not fresh ("" when it is)."""
    base = traces or TRACES
    runs, left_out = [], {}
    for figures_file in sorted(base.glob(f"*/{MATRIX}")):
        folder = figures_file.parent
        try:
            figures = json.loads(figures_file.read_text())
            secret = key(folder)
            run = KernelRun(folder.name, figures)
            for slug in slugs:
                result = figures["results"].get(slug)
                if result is None:
                    run.missing[slug] = "not in this kernel's run"
                    continue
                if not result["recorded"]:
                    run.missing[slug] = result["problem"] or "not recorded"
                    continue
                rec = load(slug, folder)
                assert rec.pcap is not None
                if not hmac.compare_digest(rec.signature, seal(rec, rec.text.encode(), rec.pcap.read_bytes(), secret)):
                    raise ArtifactError(f"{slug}: not the recording its run sealed")
                why = stale(slug, rec, rec.pcap.with_suffix(".json"))
                if why:
                    raise ArtifactError(f"{slug}: {why}")
                records(rec)  # text and capture agree packet for packet
                run.recordings[slug] = rec
        except (ArtifactError, OSError, ValueError, KeyError) as exc:
            left_out[folder.name] = str(exc)
            continue
        runs.append(run)
    return Matrix(runs, left_out)


def load_notes(path: Path = NOTES) -> dict[str, dict[str, str]]:
    data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return data or {}


# -- one scenario on one kernel -------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    label: str  # "as here", "differs", "not recorded"
    claims: Counter  # claim_status -> how many
    shape_same: bool
    detail: str = ""  # why not recorded

    @property
    def differs(self) -> bool:
        return self.label != "as here"


def verdict(run: KernelRun, slug: str) -> Verdict:
    rec = run.recordings.get(slug)
    if rec is None:
        return Verdict("not recorded", Counter(), False, run.missing.get(slug, "not recorded"))
    counts = Counter(claim_status(c) for c in rec.claims)
    same = not shapes.difference(slug, rec.shape)
    label = "as here" if same and not counts["failed"] else "differs"
    return Verdict(label, counts, same)


def _counts(v: Verdict) -> str:
    order = ("held", "failed", "not applicable", "not checked")
    return ", ".join(f"{v.claims[s]} {s}" for s in order if v.claims[s])


def _mark(v: Verdict) -> str:
    if v.label == "not recorded":
        return ":material-minus-circle-outline: not recorded"
    if v.differs:
        return ":material-alert: differs"
    return ":material-check: as here" + (" (some claims not applicable)" if v.claims["not applicable"] else "")


def _plain_trace(rec: Recording) -> str:
    """The trace with each packet's number and name in front, without anchors (a page may
    show several kernels' traces of one scenario)."""
    lines = []
    for p, record in zip(rec.packets, records(rec), strict=True):
        first, _, rest = record.rstrip("\n").partition("\n")
        tag = p.name or "noise"
        lines.append(f"{p.number:>2} {tag:<20} {first}" + ("\n" + rest if rest else ""))
    return "\n".join(lines)


def _pre(text: str) -> str:
    return "<pre><code>" + text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") + "</code></pre>"


def _not_held(rec: Recording) -> list[str]:
    out = []
    for c in rec.claims:
        status = claim_status(c)
        if status in ("failed", "not applicable"):
            out.append(f"- **{status}**: {plain(c['claim'])}" + (f" ({literal(c['detail'])})" if c.get("detail") else ""))
    return out


def section(own: Recording, matrix: Matrix, notes: dict[str, dict[str, str]]) -> str:
    """A scenario page's "Kernels" section (#kernels)."""
    slug = own.slug
    out = ["## Kernels", ""]
    rows = [f"| Linux {plain(own.kernel)} (this build's machine) | :material-check: the recording above"
            f" | {_counts(verdict_of_own(own))} | the committed one |"]
    details = []
    for run in matrix.runs:
        v = verdict(run, slug)
        shape = "—" if v.label == "not recorded" else ("the same" if v.shape_same else "**different**")
        rows.append(f"| Linux {plain(run.figures.get('release', run.name))} ({plain(run.figures.get('why', ''))})"
                    f" | {_mark(v)} | {_counts(v) or plain(v.detail[:200])} | {shape} |")
        rec = run.recordings.get(slug)
        note = notes.get(slug, {}).get(run.name, "")
        if rec is None or (not v.differs and not v.claims["not applicable"]):
            continue
        block = [f"### On Linux {plain(run.figures.get('release', run.name))}", ""]
        block += [note.strip() if note else ("Why it differs is not written yet (docs/fieldguide/kernel_notes.yml)."
                                            if v.differs else "")]
        block += [""] + _not_held(rec)
        if v.differs:
            block += ["", '<div class="fg-kernels-beside">',
                      f'<div><p>Linux {plain(own.kernel)} (this page)</p>{_pre(_plain_trace(own))}</div>',
                      f'<div><p>Linux {plain(rec.kernel)}</p>{_pre(_plain_trace(rec))}</div>', "</div>"]
            difference = shapes.difference(slug, rec.shape)
            if difference:
                block += ["", f'??? note "The shape on Linux {plain(rec.kernel)}, against the committed one"', "",
                          indent(_pre(difference.split("\n", 1)[1].rsplit("\n", 1)[0]))]
        details.append("\n".join(block))
    if not matrix.runs:
        out.append(recorded_on(own, matrix))
        out.append("")
    else:
        out += ["Whether this scenario's claims held, and its shape (who sent which flags, in order) was the"
                " committed one, on each kernel the lab recorded it on"
                " ([every scenario, every kernel](../kernels.md)):", "",
                "| Kernel | Result | Claims | Shape |", "|---|---|---|---|", *rows, ""]
        if matrix.left_out:
            out += [recorded_on(own, matrix), ""]
    out += details
    return "\n".join(out) + "\n"


def verdict_of_own(own: Recording) -> Verdict:
    return Verdict("as here", Counter(claim_status(c) for c in own.claims), True)


def recorded_on(own_or_kernel: Recording | str, matrix: Matrix) -> str:
    """Which kernels this build recorded, and why the others are not shown."""
    kernel = own_or_kernel.kernel if isinstance(own_or_kernel, Recording) else own_or_kernel
    names = [f"Linux {plain(kernel)} (this machine's)"] + [f"Linux {plain(r.figures.get('release', r.name))}"
                                                            for r in matrix.runs]
    text = "This build recorded the scenarios on " + ", ".join(names) + " only."
    if matrix.left_out:
        text += " Left out: " + "; ".join(f"{plain(name)} ({plain(why[:300])})" for name, why in matrix.left_out.items()) + "."
    if not matrix.runs:
        text += " Other kernels are recorded by `nox -s matrix` (examples/lab/matrix.py), not by every build."
    return text


# -- the matrix page ------------------------------------------------------------------------

def table(recordings: dict[str, Recording], matrix: Matrix, link: Any) -> str:
    """Scenarios down, kernels across; each cell links to the scenario's Kernels section."""
    any_rec = next(iter(recordings.values()))
    head = ["Scenario", f"Linux {plain(any_rec.kernel)} (this machine)"]
    head += [f"Linux {plain(r.figures.get('release', r.name))}" for r in matrix.runs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for slug, rec in recordings.items():
        cells = [f"[{plain(rec.title)}]({link(f'scenarios/{slug}.md')}#kernels)", ":material-check: as committed"]
        for run in matrix.runs:
            v = verdict(run, slug)
            cells.append(_mark(v) + (f" ({_counts(v)})" if v.label != "not recorded" else ""))
        lines.append("| " + " | ".join(cells) + " |")
    figures = ["", "| Kernel | Package | Boot | Catalogue | Emulated | Recorded |", "|---|---|---|---|---|---|"]
    for run in matrix.runs:
        f = run.figures
        figures.append(f"| Linux {plain(f.get('release', run.name))} | {literal(f.get('package', ''))}"
                       f" | {f.get('boot_seconds', '?')} s | {f.get('catalogue_seconds', '?')} s"
                       f" | {'yes (QEMU without KVM)' if f.get('emulated') else 'no (KVM)'} | {plain(f.get('recorded_at', ''))} |")
    return "\n".join(lines) + "\n\n" + recorded_on(any_rec.kernel, matrix) + "\n" + (
        "\n".join(figures) + "\n" if matrix.runs else "")
