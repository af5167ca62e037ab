"""The one registry of `{{ name args }}` placeholders, and the expansion of a page's Markdown.

A placeholder is a function `(ctx, args) -> Markdown` decorated with @placeholder("name");
pages write `{{ name arg ... }}`. ctx.own is the page's own recording (on a scenario page),
ctx.recording(slug) any other, ctx.link(target) a relative link. An unknown placeholder, an
unknown packet name or a number where a name belongs fails the build, naming the page and
the line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lab import clients
from lab.artifact import Recording
from lab.capture import CAPTURE_OPTIONS, FILTER, TEXT_OPTIONS
from lab.scenarios import PHASES, path_of

from . import kernels, programs, render, symptoms, wireshark
from .recordings import example_why

PHASE_LABELS = {"opening": "Opening", "established": "Established", "closing": "Closing",
                "middleboxes": "Middleboxes"}
assert set(PHASE_LABELS) == set(PHASES)
# every scenario page has these, each on a line of its own
REQUIRED = ("short_answer", "trace", "diagram", "outcomes", "counters", "example", "provenance")
PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)((?:\s+[\w.-]+)*)\s*\}\}")
ANYTHING_IN_BRACES = re.compile(r"\{\{.*?\}\}")
HEADING = re.compile(r"^#{2,6}\s+(.+?)\s*$", re.MULTILINE)
COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# {{ if_programs }}...{{ end_if_programs }}: prose about the client programs' rows (programs.py)
PROGRAMS_ONLY = re.compile(r"\{\{\s*(if_programs|end_if_programs)\s*\}\}")


class PageError(ValueError):
    """A page cannot be expanded; the message names the page and the line."""


@dataclass(frozen=True)
class Context:
    """Where a placeholder is expanded."""

    src: str  # the page's path under docs/, e.g. "scenarios/closed-port.md"
    slug: str | None  # the page's own scenario, on a scenario page
    recordings: dict[str, Recording]
    quoted: list[dict[str, Any]]
    # for Chinese readers (chinese.py): "pages" slug -> {title, summary}; "messages" errno ->
    # glibc's zh_CN text, "by" where it came from, or "why" it is missing
    chinese: dict[str, Any] = field(default_factory=dict)
    # slug -> what Wireshark said of its capture (wireshark.Views.view, which waits for it); the
    # build always gives it (tests/test_wireshark.py checks every page), a test may not
    wireshark: Callable[[str], Any] | None = None
    # other kernels' recordings of the scenarios (kernels.py): each page's Kernels section
    matrix: kernels.Matrix = field(default_factory=lambda: kernels.Matrix([], {}))
    # the client session's recordings (`nox -s clients`), or why the build has none (programs.py)
    clients: programs.Clients = field(default_factory=programs.Clients)
    # a scenario page's fix in a line or two: its "Fix or avoid" section's first paragraph
    # ("**In short:** ..."), shown again at the end of the short answer
    fix: str = ""

    @property
    def own(self) -> Recording:
        if self.slug is None:
            raise LookupError("this placeholder is for scenario pages")
        return self.recordings[self.slug]

    def recording(self, slug: str) -> Recording:
        if slug not in self.recordings:
            raise LookupError(f"no scenario {slug!r} (known: {', '.join(self.recordings)})")
        return self.recordings[slug]

    def link(self, target: str) -> str:
        """A Markdown link from docs/SRC to docs/TARGET (MkDocs checks and rewrites it)."""
        return "../" * self.src.count("/") + target


Expander = Callable[[Context, list[str]], str]
PLACEHOLDERS: dict[str, Expander] = {}


def placeholder(name: str) -> Callable[[Expander], Expander]:
    def register(fn: Expander) -> Expander:
        PLACEHOLDERS[name] = fn
        return fn
    return register


def expand_page(markdown: str, ctx: Context, first_line: int = 1) -> str:
    """The page's Markdown with every placeholder expanded (and, on a scenario page, its
    title on top and "You may have seen" at the end). first_line: the line of the page's
    file where `markdown` starts (after its front matter), for the errors."""
    # guidance for authors, not for readers; newlines kept so that line numbers stay true
    markdown = COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), markdown)
    where = f"scenario {ctx.slug}: " if ctx.slug else ""

    def line_of(offset: int) -> int:
        return first_line + markdown.count("\n", 0, offset)

    markdown = _programs_only(markdown, ctx.clients.shown, lambda offset: f"{where}docs/{ctx.src}, line {line_of(offset)}")

    for braces in ANYTHING_IN_BRACES.finditer(markdown):  # {{ Packet 1 }} must not reach a reader
        if not PLACEHOLDER.fullmatch(braces.group(0)):
            raise PageError(f"{where}docs/{ctx.src}, line {line_of(braces.start())}: {braces.group(0)}:"
                            " not a placeholder (write {{ name args }}, lower-case; packets by name)")
    if ctx.slug is not None:
        _check_names_against_headings(markdown, ctx)
    if ctx.slug is not None:
        used = {m.group(1) for m in PLACEHOLDER.finditer(markdown)}
        missing = [name for name in REQUIRED if name not in used]
        if missing:
            raise PageError(f"scenario {ctx.slug}: docs/{ctx.src} lacks "
                            + ", ".join("{{ " + m + " }}" for m in missing))
        ctx = dataclasses.replace(ctx, fix=_fix_in_short(markdown, ctx))

    def expand(match: re.Match[str]) -> str:
        name, args = match.group(1), match.group(2).split()
        try:
            if name not in PLACEHOLDERS:
                raise LookupError(f"unknown placeholder {name!r} (known: {', '.join(sorted(PLACEHOLDERS))})")
            return PLACEHOLDERS[name](ctx, args)
        except (LookupError, ValueError, IndexError) as exc:
            raise PageError(f"{where}docs/{ctx.src}, line {line_of(match.start())}: {match.group(0)}: {exc}") from exc

    out = PLACEHOLDER.sub(expand, _recommended(markdown, ctx, where, line_of))
    if ctx.slug is not None:
        out = _with_wireshark(out, ctx, where)
        zh = ctx.chinese.get("pages", {}).get(ctx.slug)
        chinese = (f'<p class="fg-zh" lang="zh-CN"><strong>{render.plain(zh["title"])}</strong><br>'
                   f'{render.plain(zh["summary"])}</p>\n\n') if zh else ""
        out = (f"# {render.plain(ctx.own.title)}\n\n" + chinese + out.rstrip("\n") + "\n\n"
               + kernels.section(ctx.own, ctx.matrix, kernels.load_notes()) + "\n"
               + symptoms.you_may_have_seen(ctx.own, ctx.quoted, ctx.src,
                                            ctx.clients.recordings.get(ctx.own.slug)) + "\n")
    return out


def _programs_only(markdown: str, shown: bool, at: Callable[[int], str]) -> str:
    """The page with each {{ if_programs }}...{{ end_if_programs }} kept (without its markers)
    where the build shows the client programs, and left out where it does not (its newlines
    kept: the lines of later errors stay true). at(offset): where, for an error."""
    out, done, opened = [], 0, None
    for marker in PROGRAMS_ONLY.finditer(markdown):
        if (marker.group(1) == "if_programs") == (opened is not None):
            raise PageError(f"{at(marker.start())}: " + ("{{ if_programs }} again before its {{ end_if_programs }}"
                                                         if opened is not None else
                                                         "{{ end_if_programs }} without its {{ if_programs }}"))
        if opened is None:
            out.append(markdown[done:marker.start()])
            opened = marker
        else:
            inside = markdown[opened.end():marker.start()]
            out.append(inside if shown else "\n" * inside.count("\n"))
            opened = None
        done = marker.end()
    if opened is not None:
        raise PageError(f"{at(opened.start())}: {{{{ if_programs }}}} without its {{{{ end_if_programs }}}}")
    return "".join(out) + markdown[done:]


FIX_HEADING = "## Fix or avoid"  # its anchor, #fix-or-avoid, is cited: stable
IN_SHORT = re.compile("^" + re.escape(FIX_HEADING) + r"[ \t]*\n[ \t]*\n\*\*In short:\*\*[ \t]+(\S.*)$", re.MULTILINE)


def _fix_in_short(markdown: str, ctx: Context) -> str:
    """The first paragraph of the page's "Fix or avoid", one line: `**In short:** ...`."""
    found = IN_SHORT.search(markdown)
    if found is None:
        raise PageError(f"scenario {ctx.slug}: docs/{ctx.src}: the section '{FIX_HEADING}' must begin with a"
                        " paragraph of one line, `**In short:** what to change`: the short answer ends with it")
    return found.group(1).strip()


WIRESHARK_HEADING = "## In Wireshark { #wireshark }"
BEFORE_WIRESHARK = re.compile(r"^## The exchange\s*$", re.MULTILINE)


def _with_wireshark(markdown: str, ctx: Context, where: str) -> str:
    """The page with its section "In Wireshark" (#wireshark) after the trace's, before "The exchange"."""
    if ctx.wireshark is None:  # expanded outside a build (the tests of expansion alone)
        return markdown
    try:
        view = ctx.wireshark(ctx.slug)
    except ValueError as exc:
        raise PageError(f"{where}docs/{ctx.src}: {exc}") from exc
    section = (WIRESHARK_HEADING + '\n\n<div class="fg-wireshark" markdown>\n\n' + render.wireshark_view(
        ctx.own, view, ctx.link(f"traces/{ctx.own.slug}.pcap"), ctx.link("reading-tcpdump.md")) + "\n\n</div>\n\n")
    found = BEFORE_WIRESHARK.search(markdown)
    if found is None:
        raise PageError(f"{where}docs/{ctx.src} has no heading '## The exchange' (the Wireshark view goes before it)")
    return markdown[:found.start()] + section + markdown[found.start():]


def _recommended(markdown: str, ctx: Context, where: str, line_of: Callable[[int], int]) -> str:
    """The page with its marked Wireshark filters and fields (wireshark.recommended) checked against
    its own capture and rendered; one that does not compile, is not Wireshark's or shows other
    packets than the page names fails the build, naming the page, the line and the filter."""
    try:
        marked = wireshark.recommended(markdown)
    except wireshark.MarkerError as exc:
        raise PageError(f"{where}docs/{ctx.src}, line {line_of(exc.offset)}: {exc}") from exc
    if not marked:
        return markdown
    if ctx.slug is None:
        raise PageError(f"docs/{ctx.src}, line {line_of(marked[0].start)}: `{marked[0].text}`: a marked Wireshark"
                        " filter or field is checked against the page's own capture: scenario pages only")
    view = None
    if ctx.wireshark is not None:
        try:
            view = ctx.wireshark(ctx.slug)
        except ValueError as exc:
            raise PageError(f"{where}docs/{ctx.src}: {exc}") from exc
    out, done = [], 0
    for m in marked:
        if view is not None:
            wrong = wireshark.disagreement(ctx.own, view, m)
            if wrong:
                raise PageError(f"{where}docs/{ctx.src}, line {line_of(m.start)}: {wrong}")
        shown = view.recommended[m.text] if view is not None and m.kind == "filter" else None
        out += [markdown[done:m.start], render.recommended_filter(ctx.own, m.text, shown)
                if m.kind == "filter" else render.recommended_field(m.text)]
        done = m.end
    return "".join(out) + markdown[done:]


def _check_names_against_headings(markdown: str, ctx: Context) -> None:
    """A packet's anchor must not be a section's (#provenance must stay the section)."""
    from pymdownx.slugs import slugify  # the slugify mkdocs.yml gives the table of contents

    slug = slugify(case="lower")
    sections = {slug(m.group(1), "-") for m in HEADING.finditer(markdown)} | {"you-may-have-seen", "wireshark", "kernels"}
    taken = sorted(sections & {ctx.own.anchor(p) for p in ctx.own.packets})
    if taken:
        raise PageError(f"scenario {ctx.slug}: docs/{ctx.src}: packet names {', '.join(taken)} are also"
                        " section anchors of the page; rename them in the example's claims()")


def _packet_name(rec: Recording, args: list[str], usage: str) -> str:
    if len(args) != 1:
        raise ValueError(f"write {usage}")
    name = args[0]
    if name.isdigit():
        raise ValueError(f"packets are referred to by name, not by number: {usage}"
                         f" (packet {name} is {rec.packets[int(name) - 1].name!r})"
                         if 0 < int(name) <= len(rec.packets) else f"packets are referred to by name: {usage}")
    rec.named(name)  # LookupError naming the known names
    return name


def _tabs(own: Recording, other: Recording, draw: Callable[[Recording, bool], str]) -> str:
    def tab(title: str, body: str) -> str:
        return f'=== "{title}"\n\n' + render.indent(body)
    return tab(f"{own.slug} (this page)", draw(own, True)) + "\n\n" + tab(other.slug, draw(other, False)) + "\n"


# -- scenario pages ------------------------------------------------------------------------

@placeholder("short_answer")
def _short_answer(ctx: Context, args: list[str]) -> str:
    return render.short_answer(ctx.own, example_why(ctx.own.slug), ctx.fix)


@placeholder("trace")
def _trace(ctx: Context, args: list[str]) -> str:
    """{{ trace }}, {{ trace SLUG }} (another scenario's), {{ trace beside SLUG }} (tabs)."""
    def block(rec: Recording, mine: bool) -> str:
        return render.trace_block(rec, own_page=mine, pcap_link=ctx.link(f"traces/{rec.slug}.pcap"))

    if args[:1] == ["beside"]:
        return _tabs(ctx.own, ctx.recording(args[1]), block)
    if args:
        return block(ctx.recording(args[0]), args[0] == ctx.slug)
    return block(ctx.own, True)


@placeholder("diagram")
def _diagram(ctx: Context, args: list[str]) -> str:
    """{{ diagram }}, {{ diagram beside SLUG }} (tabs)."""
    if args[:1] == ["beside"]:
        return _tabs(ctx.own, ctx.recording(args[1]), lambda r, mine: render.mermaid(r))
    return render.mermaid(ctx.own) + "\n\n" + render.states_table(ctx.own)


@placeholder("outcomes")
def _outcomes(ctx: Context, args: list[str]) -> str:
    return render.outcomes_table(ctx.own) + "\n" + programs.program_row(ctx.own, ctx.clients, ctx.link)


@placeholder("counters")
def _counters(ctx: Context, args: list[str]) -> str:
    return render.counters_table(ctx.own)


@placeholder("example")
def _example(ctx: Context, args: list[str]) -> str:
    slug = ctx.own.slug
    name = path_of(slug).name
    return "\n".join([
        f'```python title="examples/{name}"',
        f'--8<-- "{name}"',
        "```",
        "",
        "Record it yourself (Linux, root or unprivileged user namespaces, `tcpdump` installed):",
        "",
        "```bash",
        f"nox -s examples -- {slug}",
        "```",
        "",
        (f"The run writes `build/traces/{slug}.pcap`, `.txt` and `.json` and fails if a claim in"
         " `claims()` does not hold, if a packet is neither named by a claim nor declared noise, or"
         f" if the trace's shape differs from the committed `examples/shapes/{slug}.txt`."
         " The harness (`examples/lab/`) creates the hosts in network"
         " namespaces joined by veth links, captures with tcpdump and records every socket call."),
    ])


@placeholder("provenance")
def _provenance(ctx: Context, args: list[str]) -> str:
    return render.provenance(ctx.own, ctx.link(f"traces/{ctx.own.slug}.pcap"))


@placeholder("packet")
def _packet(ctx: Context, args: list[str]) -> str:
    """{{ packet NAME }}: an inline link to the named packet of this page's trace, saying what it is."""
    return render.packet_ref(ctx.own, _packet_name(ctx.own, args, "{{ packet NAME }}"))


# -- other pages -------------------------------------------------------------------------

@placeholder("scenario_index")
def _scenario_index(ctx: Context, args: list[str]) -> str:
    out = []
    for phase, label in PHASE_LABELS.items():
        mine = [r for r in ctx.recordings.values() if r.phase == phase]
        if not mine:
            continue
        out += [f"### {label}", "", "| scenario | cause | who sends the RST | what the application sees |",
                "|---|---|---|---|"]
        for r in mine:
            summary = r.summary.replace("|", "\\|")  # the example's own Markdown
            zh = ctx.chinese.get("pages", {}).get(r.slug)
            title = f"[{render.plain(r.title)}]({ctx.link(f'scenarios/{r.slug}.md')})" + (
                f'<br><small lang="zh-CN">{render.plain(zh["title"])}</small>' if zh else "")
            cells = [title, summary,
                     render.resets_in_short(r), render.apps_in_short(r)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


@placeholder("client_matrix")
def _client_matrix(ctx: Context, args: list[str]) -> str:
    return programs.client_matrix(ctx.clients, ctx.link)


@placeholder("client_programs")
def _client_programs(ctx: Context, args: list[str]) -> str:
    """Each client program's file, included by its path (never pasted)."""
    out = []
    for path in clients.program_files():
        language = {".go": "go", ".java": "java", ".js": "javascript", ".py": "python"}[path.suffix]
        name = f"clients/{path.name}"
        out += [f'```{language} title="examples/{name}"', f'--8<-- "{name}"', "```", ""]
    return "\n".join(out)


@placeholder("kernel_matrix")
def _kernel_matrix(ctx: Context, args: list[str]) -> str:
    """{{ kernel_matrix }}: every scenario down, every kernel recorded across (kernels.py)."""
    return kernels.table(ctx.recordings, ctx.matrix, ctx.link)


@placeholder("symptom_index")
def _symptom_index(ctx: Context, args: list[str]) -> str:
    return symptoms.symptom_index(ctx.recordings, ctx.quoted, ctx.src, ctx.chinese, ctx.clients.recordings)


@placeholder("symptom_summary")
def _symptom_summary(ctx: Context, args: list[str]) -> str:
    """{{ symptom_summary }} (home): each error the scenarios met, linked into the symptom index."""
    return symptoms.symptom_summary(ctx.recordings, ctx.src, ctx.chinese)


@placeholder("capture_settings")
def _capture_settings(ctx: Context, args: list[str]) -> str:
    """{{ capture_settings }}: the tcpdump command lines the lab really uses (read from the lab)."""
    capture = " ".join(["tcpdump", "-i", "eth0", "-w", "SLUG.pcap", *CAPTURE_OPTIONS, f"'{FILTER}'"])
    text = " ".join(["tcpdump", *TEXT_OPTIONS, "-r", "SLUG.pcap"])
    return (f"```sh\n# the capture, on the capture host's eth0, for the whole run\n{capture}\n"
            f"# the text trace published beside the pcap (some scenarios add -v -K)\n{text}\n```\n")


@placeholder("live_watch")
def _live_watch(ctx: Context, args: list[str]) -> str:
    """{{ live_watch }}, {{ live_watch json }}, {{ live_watch causes }}: `rst-explain --live` as
    `python -m lab live` recorded it, filled in as the page is built (watch.py)."""
    from .watch import marker
    return marker(args)


@placeholder("recording_times")
def _recording_times(ctx: Context, args: list[str]) -> str:
    """{{ recording_times }}: how long this build took to record each scenario, and why."""
    rows = ["| scenario | packets | recorded in | its own protocol time | the rest |",
            "|---|--:|--:|--:|--:|"]
    for slug, rec in sorted(ctx.recordings.items()):
        inherent = float(rec.timings.get("scenario", 0.0))
        rows.append(f"| [{slug}]({ctx.link(f'scenarios/{slug}.md')}) | {len(rec.packets)} | {rec.seconds:.2f} s"
                    f" | {inherent:.2f} s | {max(rec.seconds - inherent, 0):.2f} s |")
    return "\n".join(rows) + "\n"


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


@placeholder("tcpdump_line")
def _tcpdump_line(ctx: Context, args: list[str]) -> str:
    """{{ tcpdump_line SLUG NAME }}: that packet of SLUG's trace, with its pieces in a table."""
    if len(args) != 2:
        raise ValueError("write {{ tcpdump_line SLUG NAME }}")
    rec = ctx.recording(args[0])
    packet = rec.packet(_packet_name(rec, args[1:], "{{ tcpdump_line SLUG NAME }}"))
    lines = render.records(rec)
    record = lines[packet.number - 1].rstrip("\n")
    rows = []
    for field, pattern in _FIELDS:
        found = re.search(pattern, record)
        if found:
            rows.append(f"| {field} | {render.literal(found.group(1))} |")
    if "S" not in packet.flags:
        syn = next((p for p in rec.packets if (p.src, p.sport) == (packet.src, packet.sport) and "S" in p.flags), None)
        scale = re.search(r"wscale (\d+)", lines[syn.number - 1]) if syn else None
        if syn and scale:
            rows.append(f"| window in bytes | {packet.win} × 2^{scale.group(1)} ="
                        f" {packet.win << int(scale.group(1))} (wscale from {render.plain(syn.name)}) |")
    link = ctx.link(f"scenarios/{rec.slug}.md") + f"#{render.name_id(rec, packet)}"
    return "\n".join([
        (f'<div class="highlight fg-trace fg-line"><span class="filename">{rec.slug},'
         f" {render.plain(packet.name)}</span><pre><code>{render.plain(record)}</code></pre></div>"),
        "",
        f"From [{rec.slug}]({link}), recorded by this build.",
        "",
        "| piece | in this line |",
        "|---|---|",
        *rows,
    ])
