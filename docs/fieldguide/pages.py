"""MkDocs hook: every scenario page is proved by the capture this build recorded.

How to write a scenario page
============================

1. Write the example first: `examples/SNAKE_SLUG.py` (see `examples/lab/__init__.py`)
   and record it: `nox -s examples -- SLUG`. Its TITLE becomes the page title, its
   PHASE the navigation group, the first paragraph of its docstring the one-line cause
   in the home page's index, and the rest of the docstring the "Why" of the short answer.
2. Copy `docs/scenarios/closed-port.md` to `docs/scenarios/SLUG.md` and replace the prose.
   Do not write an H1: the title comes from TITLE. Do not touch mkdocs.yml: the page
   appears in the navigation and in the home page's index by itself.
3. Keep every placeholder below, each on a line of its own, in this order; the build
   fails if one is missing, unknown, or names a packet the capture does not have:

       {{ short_answer }}     what you see, who sends the RST, why, what each app got
       {{ trace }}            tcpdump's text with an anchor per packet (#packet-N),
                              and the claims the build checked
       {{ diagram }}          Mermaid sequenceDiagram generated from the packets
       {{ outcomes }}         every socket call of each application and its result
       {{ counters }}         nstat deltas per host
       {{ example }}          the example file, included (never pasted), and how to run it
       {{ provenance }}       kernel, tcpdump, recorded-at, pcap link and SHA-256

   Optional, anywhere:

       {{ packet N }}          inline: "packet N: client -> server [S] seq 0, ..." linked
                               to the trace line (use it to explain the packets that matter)
       {{ trace beside SLUG }} {{ diagram beside SLUG }}: this page's and another
                               scenario's trace side by side in content tabs
       {{ trace SLUG }}        another scenario's trace alone (anchors #SLUG-packet-N)

   Never type a number from a capture (seq, port, time, errno) into the prose: ports
   and ISNs change every run, and the build would not catch a stale one. Say it in
   words, or use {{ packet N }}.
4. Python code blocks in pages are linted, formatted and run by the tests
   (pytest-examples). A block that cannot run alone (it needs the lab's hosts) gets
   `test="skip"` after the language: ```python test="skip"; `#>` lines check output.
5. Sections every page has, under these headings: "The trace", "The exchange",
   "What each application saw", "Which counters moved", "Why Linux does this",
   "Spot it in production", "Fix or avoid", "The example", "Provenance".

Other pages may use {{ scenario_index }} (home), {{ tcpdump_line SLUG N }} (one
recorded line with its fields) and {{ trace SLUG }}.

To add a placeholder, decorate a function `(ctx, args) -> Markdown` with
@placeholder("name") below (ctx.own is the page's Recording, ctx.link() makes a
relative link); render.py holds the rendering that does not need MkDocs.

A scenario whose trace is missing, stale (older than its example file) or failed a
claim fails the build with the scenario's name: run `nox -s docs`, which records
every example first. A recorded scenario without a page gets a generated draft page
(marked as such) while `extra.draft_pages` is true in mkdocs.yml; with false (or
FIELDGUIDE_DRAFT_PAGES=0) a missing page fails the build.
"""

from __future__ import annotations

import ast
import hashlib
import html
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

sys.path.insert(0, str(Path(__file__).parent))
from render import (  # the hook's own folder, put on sys.path above
    Recording,
    apps_in_short,
    counters_table,
    describe_packet,
    mermaid,
    outcomes_table,
    packet_id,
    provenance,
    resets_in_short,
    short_answer,
    trace_block,
)

log = logging.getLogger("mkdocs.hooks.fieldguide")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))  # the lab: its catalogue rule and its capture settings
from lab.capture import CAPTURE_OPTIONS, FILTER, TEXT_OPTIONS  # noqa: E402
from lab.scenarios import all_slugs as example_slugs  # noqa: E402
from lab.scenarios import path_of as example_path  # noqa: E402

# the lab's output; tests point it elsewhere to check that a broken trace fails the build
TRACES = Path(os.environ.get("FIELDGUIDE_TRACES", ROOT / "build" / "traces"))
VENDOR = ROOT / "build" / "vendor"
PHASES = {"opening": "Opening", "established": "Established", "closing": "Closing", "middleboxes": "Middleboxes"}
REQUIRED = ("short_answer", "trace", "diagram", "outcomes", "counters", "example", "provenance")
COMMENT = re.compile(r"<!--.*?-->\n?", re.DOTALL)
PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)((?:\s+[\w.-]+)*)\s*\}\}")

# Mermaid is served from the site itself (no request leaves at view time); Material uses
# a global `mermaid` when one exists instead of fetching its own copy from a CDN.
MERMAID_VERSION = "11.12.2"
MERMAID_INTEGRITY = "sha512-n34QPDPEKmaeCG4WDMGy0OT6PSyxKCfy2pJgShP+Qow2KLrvWjclwbc3yXfSIf4BanqWEhQEpngWwNp/XhZt6w=="
MERMAID_ASSET = "assets/vendor/mermaid.min.js"

recordings: dict[str, Recording] = {}


# -- the catalogue ----------------------------------------------------------------------

def example_why(slug: str) -> str:
    """The example docstring after its first paragraph: the mechanism, in the author's words."""
    doc = ast.get_docstring(ast.parse(example_path(slug).read_text())) or ""
    return " ".join(" ".join(doc.split("\n\n")[1:]).split())


def load_recording(slug: str) -> Recording:
    json_file, txt_file, pcap = (TRACES / f"{slug}{ext}" for ext in (".json", ".txt", ".pcap"))
    missing = [f.name for f in (json_file, txt_file, pcap) if not f.is_file()]
    if missing:
        raise ValueError(f"no recorded trace ({', '.join(missing)} missing in build/traces/): its recording"
                         f" failed or was not run; run `nox -s examples -- {slug}`")
    sources = [example_path(slug), *sorted((EXAMPLES / "lab").glob("*.py"))]
    newer = [p for p in sources if p.stat().st_mtime > json_file.stat().st_mtime]
    if newer:
        raise ValueError(f"the trace is older than {newer[0].relative_to(ROOT)}; record it again:"
                         f" `nox -s examples -- {slug}`")
    data = json.loads(json_file.read_text())
    failed = [c["claim"] for c in data["claims"] if not c["passed"]]
    if failed or not data["claims"]:
        raise ValueError("the recording's claims did not hold: " + "; ".join(failed or ["no claims"]))
    if hashlib.sha256(pcap.read_bytes()).hexdigest() != data["pcap_sha256"]:
        raise ValueError(f"{pcap.name} does not match the SHA-256 its JSON recorded")
    rec = Recording(slug, data, txt_file.read_text(), pcap)
    rec.records()  # the text and the capture must agree packet for packet
    return rec


def written_pages() -> set[str]:
    return {p.stem for p in (ROOT / "docs" / "scenarios").glob("*.md")}


# A scenario recorded before its page is written gets this generated page, so that the
# site builds while pages are being written (mkdocs.yml: extra.draft_pages).
DRAFT = """!!! warning "Draft: the explanation of this scenario is not written yet"

    What follows is generated from this build's capture and the example; the page
    `docs/scenarios/{slug}.md` that explains it has not been written.

{{{{ short_answer }}}}

## The trace

{{{{ trace }}}}

## The exchange

{{{{ diagram }}}}

## What each application saw

{{{{ outcomes }}}}

## Which counters moved

{{{{ counters }}}}

## The example

{{{{ example }}}}

## Provenance

{{{{ provenance }}}}
"""
drafts_allowed = True


def load_all() -> dict[str, Recording]:
    found, problems = {}, []
    for slug in example_slugs():
        try:
            found[slug] = load_recording(slug)
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            problems.append(f"scenario {slug}: {exc}")
    pages = written_pages()
    if not drafts_allowed:
        for slug in sorted(set(found) - pages):
            problems.append(f"scenario {slug}: no page docs/scenarios/{slug}.md (copy docs/scenarios/closed-port.md)")
    for slug in sorted(pages - set(example_slugs())):
        problems.append(f"scenario {slug}: docs/scenarios/{slug}.md has no example examples/{slug.replace('-', '_')}.py")
    if problems:
        raise PluginError("the site cannot be built from these traces:\n  " + "\n  ".join(problems))
    return found


# -- Mermaid, served by the site ------------------------------------------------------------

def mermaid_file() -> Path:
    """build/vendor/mermaid-VERSION.min.js, fetched once with `npm pack` and checked."""
    target = VENDOR / f"mermaid-{MERMAID_VERSION}.min.js"
    if target.is_file():
        return target
    if not shutil.which("npm"):
        raise PluginError("npm is needed once to fetch Mermaid (apt-get install npm)")
    VENDOR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=VENDOR) as tmp:
        proc = subprocess.run(["npm", "pack", f"mermaid@{MERMAID_VERSION}", "--json", "--pack-destination", tmp],
                              check=False, capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0:
            raise PluginError(f"npm pack mermaid@{MERMAID_VERSION} failed: {proc.stderr.strip()}")
        info = json.loads(proc.stdout)[0]
        if info["integrity"] != MERMAID_INTEGRITY:
            raise PluginError(f"mermaid@{MERMAID_VERSION} from npm has integrity {info['integrity']},"
                              f" expected {MERMAID_INTEGRITY}")
        with tarfile.open(Path(tmp) / info["filename"]) as tar:
            member = tar.extractfile("package/dist/mermaid.min.js")
            assert member is not None
            partial = target.with_suffix(".part")
            partial.write_bytes(member.read())
            partial.replace(target)
    log.info("fetched mermaid %s into %s", MERMAID_VERSION, target.relative_to(ROOT))
    return target


# -- hooks --------------------------------------------------------------------------------

def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Load every recording (or fail naming the scenarios) and build the phase navigation."""
    global drafts_allowed
    override = os.environ.get("FIELDGUIDE_DRAFT_PAGES")  # "0": every scenario needs its written page
    drafts_allowed = bool(config.extra.get("draft_pages", False)) if override is None else override == "1"
    recordings.clear()
    recordings.update(load_all())
    groups = []
    for phase, label in PHASES.items():
        pages = [{rec.title: f"scenarios/{slug}.md"} for slug, rec in recordings.items() if rec.phase == phase]
        if pages:
            groups.append({label: pages})
    nav = config["nav"] or []
    for i, item in enumerate(nav):
        if isinstance(item, dict) and item.get("Scenarios") == "scenarios/":
            nav[i] = {"Scenarios": groups}
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Publish each pcap (and its JSON) at /traces/, and the self-hosted Mermaid."""
    for rec in recordings.values():
        for source in (rec.pcap, rec.pcap.with_suffix(".json")):
            files.append(File.generated(config, f"traces/{source.name}", abs_src_path=str(source)))
    files.append(File.generated(config, MERMAID_ASSET, abs_src_path=str(mermaid_file())))
    drafts = sorted(set(recordings) - written_pages())
    for slug in drafts:
        files.append(File.generated(config, f"scenarios/{slug}.md", content=DRAFT.format(slug=slug)))
    if drafts:
        log.info("draft pages (no docs/scenarios/SLUG.md yet): %s", ", ".join(drafts))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    src = page.file.src_uri
    own = src.removeprefix("scenarios/").removesuffix(".md") if src.startswith("scenarios/") else None
    markdown = COMMENT.sub("", markdown)  # guidance for authors, not for readers
    if own is not None:
        used = {m.group(1) for m in PLACEHOLDER.finditer(markdown)}
        missing = [name for name in REQUIRED if name not in used]
        if missing:
            raise PluginError(f"scenario {own}: docs/{src} lacks "
                              + ", ".join("{{ " + m + " }}" for m in missing))
        markdown = f"# {recordings[own].title}\n\n" + markdown

    def expand(match: re.Match[str]) -> str:
        name, args = match.group(1), match.group(2).split()
        try:
            return render_placeholder(name, args, own, src)
        except (LookupError, ValueError) as exc:
            where = f"scenario {own}" if own else f"docs/{src}"
            raise PluginError(f"{where}: {match.group(0)}: {exc}") from exc

    return PLACEHOLDER.sub(expand, markdown)


def _recording(slug: str) -> Recording:
    if slug not in recordings:
        raise LookupError(f"no scenario {slug!r} (known: {', '.join(recordings)})")
    return recordings[slug]


def _relative_link(src: str, target: str) -> str:
    """A Markdown link from docs/SRC to docs/TARGET (MkDocs checks and rewrites it)."""
    return "../" * src.count("/") + target


@dataclass(frozen=True)
class Context:
    """Where a placeholder is expanded."""

    src: str  # the page's path under docs/, e.g. "scenarios/closed-port.md"
    slug: str | None  # the page's own scenario, on a scenario page

    @property
    def own(self) -> Recording:
        if self.slug is None:
            raise LookupError("this placeholder is for scenario pages")
        return recordings[self.slug]

    def link(self, target: str) -> str:
        return _relative_link(self.src, target)


Expander = Callable[[Context, list[str]], str]

# name -> function(context, arguments) returning Markdown. To add a placeholder, decorate
# a function with @placeholder("name"); pages then write {{ name arg ... }}.
PLACEHOLDERS: dict[str, Expander] = {}


def placeholder(name: str) -> Callable[[Expander], Expander]:
    def register(fn: Expander) -> Expander:
        PLACEHOLDERS[name] = fn
        return fn
    return register


def render_placeholder(name: str, args: list[str], own: str | None, src: str) -> str:
    if name not in PLACEHOLDERS:
        raise LookupError(f"unknown placeholder {name!r} (known: {', '.join(sorted(PLACEHOLDERS))})")
    return PLACEHOLDERS[name](Context(src, own), args)


def _tabs(own: Recording, other: Recording, render: Callable[[Recording, bool], str]) -> str:
    def tab(title: str, body: str) -> str:
        return f'=== "{title}"\n\n' + "\n".join("    " + line if line.strip() else "" for line in body.splitlines())
    return tab(f"{own.slug} (this page)", render(own, True)) + "\n\n" + tab(other.slug, render(other, False)) + "\n"


@placeholder("short_answer")
def _short_answer(ctx: Context, args: list[str]) -> str:
    return short_answer(ctx.own, example_why(ctx.own.slug))


@placeholder("trace")
def _trace(ctx: Context, args: list[str]) -> str:
    """{{ trace }}, {{ trace SLUG }} (another scenario's), {{ trace beside SLUG }} (tabs)."""
    if args[:1] == ["beside"]:
        return _tabs(ctx.own, _recording(args[1]), lambda r, mine: trace_block(r, own_page=mine))
    if args:
        return trace_block(_recording(args[0]), own_page=args[0] == ctx.slug)
    return trace_block(ctx.own)


@placeholder("diagram")
def _diagram(ctx: Context, args: list[str]) -> str:
    """{{ diagram }}, {{ diagram beside SLUG }} (tabs)."""
    if args[:1] == ["beside"]:
        return _tabs(ctx.own, _recording(args[1]), lambda r, mine: mermaid(r))
    return mermaid(ctx.own)


@placeholder("outcomes")
def _outcomes(ctx: Context, args: list[str]) -> str:
    return outcomes_table(ctx.own)


@placeholder("counters")
def _counters(ctx: Context, args: list[str]) -> str:
    return counters_table(ctx.own)


@placeholder("example")
def _example(ctx: Context, args: list[str]) -> str:
    return example_block(ctx.own)


@placeholder("provenance")
def _provenance(ctx: Context, args: list[str]) -> str:
    return provenance(ctx.own, ctx.link(f"traces/{ctx.own.slug}.pcap"))


@placeholder("capture_settings")
def _capture_settings(ctx: Context, args: list[str]) -> str:
    """{{ capture_settings }}: the tcpdump command lines the lab really uses (read from the lab)."""
    capture = " ".join(["tcpdump", "-i", "eth0", "-w", "SLUG.pcap", *CAPTURE_OPTIONS, f"'{FILTER}'"])
    text = " ".join(["tcpdump", *TEXT_OPTIONS, "-r", "SLUG.pcap"])
    return (f"```sh\n# the capture, on the capture host's eth0, for the whole run\n{capture}\n"
            f"# the text trace published beside the pcap (some scenarios add -v -K)\n{text}\n```\n")


@placeholder("recording_times")
def _recording_times(ctx: Context, args: list[str]) -> str:
    """{{ recording_times }}: how long this build took to record each scenario, and why."""
    rows = ["| scenario | packets | recorded in | its own protocol time | the rest |",
            "|---|--:|--:|--:|--:|"]
    for slug, rec in sorted(recordings.items()):
        wall = float(rec.data["seconds"])
        inherent = float(rec.data.get("timings", {}).get("scenario", 0.0))
        link = _relative_link(ctx.src, f"scenarios/{slug}.md")
        rows.append(f"| [{slug}]({link}) | {len(rec.packets)} | {wall:.2f} s | {inherent:.2f} s"
                    f" | {max(wall - inherent, 0):.2f} s |")
    return "\n".join(rows) + "\n"


@placeholder("packet")
def _packet(ctx: Context, args: list[str]) -> str:
    """{{ packet N }}: an inline link to packet N of this page's trace, saying what it is."""
    rec = ctx.own
    p = rec.packet(int(args[0]))
    return (f"[packet {p['number']}](#{packet_id(rec.slug, p['number'])}){{ .fg-packet-ref }}"
            f" ({p['sender']} → {p['receiver']} `{describe_packet(rec, p)}`)")


@placeholder("scenario_index")
def _scenario_index(ctx: Context, args: list[str]) -> str:
    return scenario_index(ctx.src)


@placeholder("tcpdump_line")
def _tcpdump_line(ctx: Context, args: list[str]) -> str:
    """{{ tcpdump_line SLUG N }}: packet N of SLUG's trace, with its pieces in a table."""
    return tcpdump_line(_recording(args[0]), int(args[1]), ctx.src)


def example_block(rec: Recording) -> str:
    name = example_path(rec.slug).name
    return "\n".join([
        f'```python title="examples/{name}"',
        f'--8<-- "{name}"',
        "```",
        "",
        "Record it yourself (Linux, root or unprivileged user namespaces, `tcpdump` installed):",
        "",
        "```bash",
        f"nox -s examples -- {rec.slug}",
        "```",
        "",
        (f"The run writes `build/traces/{rec.slug}.pcap`, `.txt` and `.json` and fails if a claim in"
         " `claims()` does not hold. The harness (`examples/lab/`) creates the hosts in network"
         " namespaces joined by veth links, captures with tcpdump and records every socket call."),
    ])


def scenario_index(src: str) -> str:
    out = []
    for phase, label in PHASES.items():
        mine = [r for r in recordings.values() if r.phase == phase]
        if not mine:
            continue
        out += [f"### {label}", "", "| scenario | cause | who sends the RST | what the application sees |",
                "|---|---|---|---|"]
        for r in mine:
            link = _relative_link(src, f"scenarios/{r.slug}.md")
            cells = [f"[{r.slug}]({link})", r.summary, resets_in_short(r), apps_in_short(r)]
            out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        out.append("")
    return "\n".join(out)


_FIELDS = [
    ("time", r"^(\d\d:\d\d:\d\d\.\d+)"),
    ("source", r" IP (\S+) >"),
    ("destination", r"> (\S+):"),
    ("flags", r"Flags (\[[^\]]*\])"),
    ("seq", r"seq ([\d:]+)"),
    ("ack", r"ack (\d+)"),
    ("win", r"win (\d+)"),
    ("options", r"options (\[[^\]]*\])"),
    ("length", r"length (\d+)"),
]


def tcpdump_line(rec: Recording, number: int, src: str) -> str:
    """One recorded line, and a table of its pieces (those present) as tcpdump printed them."""
    record = rec.records()[number - 1].rstrip("\n")
    rows = []
    for name, pattern in _FIELDS:
        found = re.search(pattern, record)
        if found:
            rows.append(f"| {name} | `{found.group(1)}` |")
    packet = rec.packet(number)
    if "S" not in packet["flags"]:
        syn = next((p for p in rec.packets if (p["src"], p["sport"]) == (packet["src"], packet["sport"])
                    and "S" in p["flags"]), None)
        scale = re.search(r"wscale (\d+)", rec.records()[syn["number"] - 1]) if syn else None
        if scale and "win" in packet:
            rows.append(f"| window in bytes | {packet['win']} × 2^{scale.group(1)} ="
                        f" {packet['win'] << int(scale.group(1))} (wscale from packet {syn['number']}) |")
    link = _relative_link(src, f"scenarios/{rec.slug}.md") + f"#{packet_id(rec.slug, number)}"
    return "\n".join([
        (f'<div class="highlight fg-trace fg-line"><span class="filename">{rec.slug}, packet {number}</span>'
         f"<pre><code>{html.escape(record, quote=False)}</code></pre></div>"),
        "",
        f"From [{rec.slug}]({link}), recorded by this build.",
        "",
        "| piece | in this line |",
        "|---|---|",
        *rows,
    ])
