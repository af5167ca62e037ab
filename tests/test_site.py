"""The built site, read as HTML: every scenario page proves itself with this run's capture."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from fieldguide import render
from fieldguide.placeholders import REQUIRED, Context, PageError, expand_page
from lab import artifact
from lab.artifact import ROOT
from lab.scenarios import all_slugs, path_of

SLUGS = all_slugs()

pytestmark = pytest.mark.timeout(600)


def text_of(fragment: str) -> str:
    """The text a reader sees (and copies) from an HTML fragment."""
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def page_of(site: Path, slug: str) -> str:
    path = site / "scenarios" / slug / "index.html"
    assert path.is_file(), f"no page for scenario {slug} at /scenarios/{slug}/"
    return path.read_text()


def recording(traces: Path, slug: str) -> dict:
    return json.loads((traces / f"{slug}.json").read_text())


def test_every_example_is_recorded(recorded_traces: Path) -> None:
    assert SLUGS, "no examples found"
    for slug in SLUGS:
        for ext in (".pcap", ".txt", ".json"):
            assert (recorded_traces / f"{slug}{ext}").is_file(), f"{slug}{ext} missing"


@pytest.mark.parametrize("slug", SLUGS)
def test_page_shows_its_own_trace_text(built_site: Path, recorded_traces: Path, slug: str) -> None:
    page = page_of(built_site, slug)
    block = re.search(rf'<div class="highlight fg-trace" data-slug="{re.escape(slug)}"><pre><code>(.*?)</code></pre>',
                      page, re.DOTALL)
    assert block, f"{slug}: no trace block"
    assert text_of(block.group(1)) == (recorded_traces / f"{slug}.txt").read_text()
    rec = artifact.load(slug, recorded_traces)
    for p in rec.packets:  # every packet can be linked to, by number and by name
        assert f'id="packet-{p.number}"' in page
        assert f'id="{render.name_id(rec, p)}"' in page and p.name


@pytest.mark.parametrize("slug", SLUGS)
def test_page_has_a_sequence_diagram_of_the_capture(built_site: Path, recorded_traces: Path, slug: str) -> None:
    page = page_of(built_site, slug)
    diagrams = [text_of(d) for d in re.findall(r'<pre class="mermaid"><code>(.*?)</code></pre>', page, re.DOTALL)]
    assert diagrams, f"{slug}: no mermaid block"
    diagram = diagrams[0]
    assert diagram.startswith("sequenceDiagram")
    packets = recording(recorded_traces, slug)["packets"]
    arrows = [line for line in diagram.splitlines() if re.match(r"\s+\w+(->>|-x)\w+: ", line)]
    assert len(arrows) == len(packets)
    for arrow, p in zip(arrows, packets, strict=True):
        assert f"[{p['flags']}]" in arrow
        assert ("-x" in arrow) == ("R" in p["flags"])


@pytest.mark.parametrize("slug", SLUGS)
def test_page_shows_what_each_application_got(built_site: Path, recorded_traces: Path, slug: str) -> None:
    text = text_of(page_of(built_site, slug))
    for host, calls in recording(recorded_traces, slug)["outcomes"].items():
        for call in calls:
            assert call["call"] in text, f"{slug}: {host}'s {call['call']} not shown"
            assert call.get("raised", call.get("returned")) in text


@pytest.mark.parametrize("slug", SLUGS)
def test_page_shows_the_counters(built_site: Path, recorded_traces: Path, slug: str) -> None:
    text = text_of(page_of(built_site, slug))
    for counters in recording(recorded_traces, slug)["counters"].values():
        for name in counters:
            assert name in text


@pytest.mark.parametrize("slug", SLUGS)
def test_pcap_link_downloads_the_recorded_capture(built_site: Path, recorded_traces: Path, slug: str) -> None:
    page = page_of(built_site, slug)
    links = re.findall(r'href="([^"]*\.pcap)"', page)
    assert links, f"{slug}: no pcap link"
    pcap = (built_site / "scenarios" / slug / links[0]).resolve()
    assert pcap.is_file(), f"{slug}: {links[0]} does not exist in the site"
    shown = re.search(r'<code class="fg-sha256">([0-9a-f]{64})</code>', page)
    assert shown, f"{slug}: no SHA-256 on the page"
    digest = hashlib.sha256(pcap.read_bytes()).hexdigest()
    assert digest == shown.group(1) == recording(recorded_traces, slug)["pcap_sha256"]
    assert pcap.read_bytes() == (recorded_traces / f"{slug}.pcap").read_bytes()


@pytest.mark.parametrize("slug", SLUGS)
def test_page_states_its_provenance(built_site: Path, recorded_traces: Path, slug: str) -> None:
    text = text_of(page_of(built_site, slug))
    data = recording(recorded_traces, slug)
    for value in (data["kernel"], data["tcpdump_version"], data["recorded_at"], f"nox -s examples -- {slug}"):
        assert value in text


@pytest.mark.parametrize("slug", SLUGS)
def test_page_includes_its_example_file(built_site: Path, slug: str) -> None:
    name = path_of(slug).name
    block = re.search(rf'<span class="filename">examples/{re.escape(name)}</span><pre>.*?<code>(.*?)</code>',
                      page_of(built_site, slug), re.DOTALL)
    assert block, f"{slug}: examples/{name} is not on the page"
    assert text_of(block.group(1)).strip() == (ROOT / "examples" / name).read_text().strip()


def test_home_lists_every_scenario(built_site: Path, recorded_traces: Path) -> None:
    home = (built_site / "index.html").read_text()
    table = home[home.index('id="scenarios"'):]
    for slug in SLUGS:
        assert f'href="scenarios/{slug}/"' in table, f"home index lacks {slug}"
        assert recording(recorded_traces, slug)["summary"].replace("`", "") in text_of(table)  # Markdown rendered


def test_navigation_groups_scenarios_by_phase(built_site: Path, recorded_traces: Path) -> None:
    nav = (built_site / "reading-tcpdump" / "index.html").read_text()  # a page without phase headings
    labels = {"opening": "Opening", "established": "Established", "closing": "Closing", "middleboxes": "Middleboxes"}
    for slug in SLUGS:
        label = labels[recording(recorded_traces, slug)["phase"]]
        section = re.search(rf'id="(__nav_[\d_]+_label)"[^>]*>\s*<span class="md-ellipsis">\s*{label}\s*</span>', nav)
        assert section, f"no navigation group {label}"
        group = re.search(rf'aria-labelledby="{section.group(1)}"(.*?)</nav>', nav, re.DOTALL)
        assert group and f'href="../scenarios/{slug}/"' in group.group(1), f"{slug} is not under {label}"


def test_tcpdump_page_quotes_our_own_capture(built_site: Path, recorded_traces: Path) -> None:
    page = text_of((built_site / "reading-tcpdump" / "index.html").read_text())
    first_line = (recorded_traces / "closed-port.txt").read_text().splitlines()[0]
    assert first_line in page


def test_notebook_tabulates_every_rst(built_site: Path, recorded_traces: Path) -> None:
    page = (built_site / "rst-census" / "index.html").read_text()
    for slug in SLUGS:
        rec = artifact.load(slug, recorded_traces)
        for p in rec.resets():
            assert f'href="../scenarios/{slug}/#{render.name_id(rec, p)}"' in html.unescape(page), (
                f"notebook lacks {slug}'s RST {p.name}")
    assert "data:image/png;base64," in page, "the notebook drew no figure"


def _html_files(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def test_watch_page_shows_the_live_recording_of_this_build(built_site: Path, recorded_live: dict) -> None:
    """The watch page's blocks are filled in as it is built (fieldguide/watch.py): the lines
    rst-explain --live printed in this session's recording, its causes linked to their pages."""
    from lab.live_record import LIVE

    page = (built_site / "watch" / "index.html").read_text()
    assert "fieldguide:live_watch" not in page  # no marker left unfilled
    text = text_of(page)
    if not recorded_live["recorded"]:
        assert "Not recorded in this build" in text and recorded_live["why"].strip() in text
        return
    for line in (LIVE / "watch.txt").read_text().splitlines():
        assert line.strip() in text, line
    for cause in recorded_live["causes"]:
        assert f'href="../scenarios/{cause["page"]}/"' in page
        assert (built_site / "scenarios" / cause["page"] / "index.html").is_file()


def test_internal_links_resolve(built_site: Path) -> None:
    # 404.html uses absolute links under the site's path (FIELDGUIDE_SITE_URL's, else the
    # server's root), since it is served for a missing page at any depth
    site_path = urlsplit(os.environ.get("FIELDGUIDE_SITE_URL", "").rstrip("/") + "/").path
    ids: dict[Path, set[str]] = {}
    broken = []
    for page in _html_files(built_site):
        source = page.read_text()
        for link in re.findall(r'<(?:a|link|script|img|source|iframe)\b[^>]*?\s(?:href|src)="([^"]+)"', source):
            parts = urlsplit(html.unescape(link))
            if parts.scheme or link.startswith("//"):
                continue
            path = unquote(parts.path)
            if path.startswith("/"):
                assert path.startswith(site_path), f"{page}: {link} is outside the site"
                target = (built_site / path.removeprefix(site_path)).resolve()
            else:
                target = (page.parent / path).resolve() if path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page.relative_to(built_site)}: {link} (no such file)")
                continue
            if parts.fragment and target.suffix == ".html":
                if target not in ids:
                    ids[target] = set(re.findall(r'\sid="([^"]+)"', target.read_text()))
                if parts.fragment not in ids[target]:
                    broken.append(f"{page.relative_to(built_site)}: {link} (no such anchor)")
    assert not broken, "broken internal links:\n" + "\n".join(broken)


def test_pages_request_nothing_from_outside(built_site: Path) -> None:
    """Scripts, styles, fonts and images all come from the site itself (a canonical URL is no request)."""
    outside = []
    for page in _html_files(built_site):
        for tag in re.findall(r"<(?:script|link|img|iframe|source)\b[^>]*>", page.read_text()):
            if 'rel="canonical"' in tag or 'rel="alternate"' in tag:
                continue
            if re.search(r'\s(?:src|href)="(?:https?:)?//', tag):
                outside.append(f"{page.relative_to(built_site)}: {tag}")
    assert not outside, "\n".join(outside)


def _edit_json(d: Path, change) -> None:
    data = json.loads((d / "closed-port.json").read_text())
    change(data)
    (d / "closed-port.json").write_text(json.dumps(data))


def _swap_pcap(d: Path) -> None:
    """Another scenario's pcap in its place, with the SHA-256 the JSON gives updated to match."""
    shutil.copy(d / "linger-zero.pcap", d / "closed-port.pcap")
    digest = hashlib.sha256((d / "closed-port.pcap").read_bytes()).hexdigest()
    _edit_json(d, lambda data: data.update(pcap_sha256=digest))


# each a way a hostile user (or a bug) could make the build publish what no run showed
BREAKAGES = {
    "missing": lambda d: (d / "closed-port.json").unlink(),
    "failed-claim": lambda d: _edit_json(d, lambda data: data.update(
        claims=[{"claim": "server sends [R.]", "passed": False}])),
    "stale": lambda d: os.utime(d / "closed-port.json", (0, 0)),
    "tampered-pcap": lambda d: (d / "closed-port.pcap").write_bytes(b"\0" * 24),
    "unnamed-packet": lambda d: _edit_json(d, lambda data: data["packets"][1].update(name=None)),
    "not-json": lambda d: (d / "closed-port.json").write_text("{"),
    "no-outcomes": lambda d: _edit_json(d, lambda data: data.pop("outcomes")),
    "flags-edited": lambda d: _edit_json(d, lambda data: data["packets"][1].update(flags="F.")),
    "text-edited": lambda d: (d / "closed-port.txt").write_text(
        (d / "closed-port.txt").read_text().replace("Flags [R.]", "Flags [F.]")),
    "outcome-edited": lambda d: _edit_json(d, lambda data: data["outcomes"]["client"][-1].update(
        message="[Errno 110] Connection timed out", errno="ETIMEDOUT")),
    "pcap-swapped": _swap_pcap,
    "key-missing": lambda d: (d / ".key").unlink(),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_trace_fails_the_build_naming_the_scenario(recorded_traces: Path, tmp_path: Path,
                                                             breakage: str) -> None:
    traces = tmp_path / "traces"
    shutil.copytree(recorded_traces, traces, ignore=shutil.ignore_patterns(".run-*"))
    BREAKAGES[breakage](traces)
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "FIELDGUIDE_TRACES": str(traces), "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode != 0, f"the build passed with a {breakage} trace"
    said = proc.stdout + proc.stderr
    assert ("no key in" if breakage == "key-missing" else "scenario closed-port") in said, said[-2000:]
    assert "Traceback" not in said, said[-3000:]


def test_a_scenario_without_a_page_fails_the_build(recorded_traces: Path, tmp_path: Path) -> None:
    """An example (and its recording) with no docs/scenarios/SLUG.md: the build names it."""
    examples = tmp_path / "examples"
    shutil.copytree(ROOT / "examples", examples, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(examples / "closed_port.py", examples / "closed_port_again.py")
    traces = tmp_path / "traces"
    shutil.copytree(recorded_traces, traces, ignore=shutil.ignore_patterns(".run-*"))
    for suffix in (".pcap", ".txt"):
        shutil.copy(traces / f"closed-port{suffix}", traces / f"closed-port-again{suffix}")
    (traces / "closed-port-again.json").write_text(
        (traces / "closed-port.json").read_text().replace('"slug": "closed-port"', '"slug": "closed-port-again"'))
    proc = _build(tmp_path, FIELDGUIDE_TRACES=str(traces), LAB_EXAMPLES=str(examples))
    assert proc.returncode != 0, "the build passed although closed-port-again has no page"
    assert "scenario closed-port-again: no page docs/scenarios/closed-port-again.md" in proc.stdout + proc.stderr


def _build(tmp_path: Path, docs: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """`mkdocs build --strict` of the repository's site, or of a copy of its docs folder."""
    config = ROOT / "mkdocs.yml"
    if docs is not None:  # a copy of mkdocs.yml beside the copied docs (paths are relative to it)
        config = docs.parent / "mkdocs.yml"
        shutil.copy(ROOT / "mkdocs.yml", config)
        (docs.parent / "examples").symlink_to(ROOT / "examples")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config),
                           "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1", **env})


PAGE_BREAKAGES = {
    "numeric": ("{{ packet client-syn }}", "{{ packet 1 }}",
                "packets are referred to by name, not by number: {{ packet NAME }} (packet 1 is 'client-syn')"),
    "unknown-name": ("{{ packet client-syn }}", "{{ packet client-hello }}",
                     "closed-port has no packet named 'client-hello' (its names: client-syn, server-rst)"),
    "unknown-placeholder": ("{{ packet client-syn }}", "{{ packets client-syn }}", "unknown placeholder 'packets'"),
    "malformed": ("{{ packet client-syn }}", "{{ Packet 1 }}",
                  "not a placeholder (write {{ name args }}, lower-case; packets by name)"),
}


@pytest.mark.parametrize("breakage", PAGE_BREAKAGES)
def test_a_wrong_packet_reference_fails_the_build_naming_page_and_line(recorded_traces: Path, tmp_path: Path,
                                                                       breakage: str) -> None:
    good, bad, message = PAGE_BREAKAGES[breakage]
    docs = tmp_path / "copy" / "docs"
    shutil.copytree(ROOT / "docs", docs)
    page = docs / "scenarios" / "closed-port.md"
    source = page.read_text()
    assert good in source
    line = source[: source.index(good)].count("\n") + 1
    page.write_text(source.replace(good, bad, 1))
    proc = _build(tmp_path, docs)
    assert proc.returncode != 0, f"the build passed with {bad}"
    assert f"scenario closed-port: docs/scenarios/closed-port.md, line {line}: {bad}: {message}" in (
        proc.stdout + proc.stderr)


def test_search_is_configured_for_english_and_chinese(built_site: Path) -> None:
    index = json.loads((built_site / "search" / "search_index.json").read_text())
    assert index["config"]["lang"] == ["en", "zh"]
    home = [d["text"] for d in index["docs"] if d["location"].startswith("#") or d["location"] == ""]
    assert any("连接" in text and "\u200b" in text for text in home), (
        "the home page's Chinese text was not segmented into words (is jieba installed?)")
    assert (built_site / "assets" / "javascripts" / "lunr" / "min" / "lunr.zh.min.js").is_file()


def test_expansion_rejects_numbers_and_unknown_names_with_the_line(recorded_traces: Path) -> None:
    recordings = {"closed-port": artifact.load("closed-port", recorded_traces)}
    ctx = Context("scenarios/closed-port.md", "closed-port", recordings, [])
    page = "".join("{{ " + name + " }}\n" for name in REQUIRED) + FIX
    lines = len(REQUIRED) + FIX.count("\n")
    assert "[client&#45;syn]" in expand_page(page + "{{ packet client-syn }}\n", ctx)
    for wrong in ("{{ packet 2 }}", "{{ packet nope }}", "{{ packet }}", "{{ tcpdump_line closed-port 1 }}"):
        with pytest.raises(PageError, match=f"closed-port.md, line {lines + 3}: "):
            expand_page(page + "\n<!-- a comment\n-->" + wrong, ctx)
    with pytest.raises(PageError, match="lacks {{ provenance }}"):
        expand_page(page.replace("{{ provenance }}", ""), ctx)
    with pytest.raises(PageError, match=f"closed-port.md, line {lines + 5}: "):  # after 4 lines of front matter
        expand_page(page + "{{ packet #1 }}", ctx, first_line=5)
    with pytest.raises(PageError, match="packet names server-rst are also section anchors"):
        expand_page(page + "## Server RST\n", ctx)


FIX = "## Fix or avoid\n\n**In short:** Start the service before its clients.\n"


def test_the_short_answer_ends_with_the_pages_own_fix_and_a_page_without_one_fails(recorded_traces: Path) -> None:
    recordings = {"closed-port": artifact.load("closed-port", recorded_traces)}
    ctx = Context("scenarios/closed-port.md", "closed-port", recordings, [])
    page = "".join("{{ " + name + " }}\n" for name in REQUIRED)
    out = expand_page(page + FIX, ctx)
    short = out[out.index('!!! abstract "The short answer"'):out.index("\n\n", out.index("**Fix**"))]
    assert short.rstrip().endswith("**Fix**: Start the service before its clients."
                                   " [How to fix or avoid it](#fix-or-avoid)")
    for wrong in ("", "## Fix or avoid\n\nStart the service.\n", "## Fix or avoid\n\n- **In short:** Start it.\n"):
        with pytest.raises(PageError, match="must begin with a paragraph of one line, `\\*\\*In short:"):
            expand_page(page + wrong, ctx)


def test_every_scenario_page_has_its_fix_in_the_short_answer_above_the_fold(built_site: Path) -> None:
    """The short answer (the first block of every scenario page) ends with the fix, linked to
    the section, whose anchor exists on the page."""
    for slug in all_slugs():
        html = (built_site / "scenarios" / slug / "index.html").read_text()
        start = html.index("The short answer")
        end = html.index("</div>", html.index("<strong>Fix</strong>", start))
        assert 'href="#fix-or-avoid"' in html[start:end], slug
        assert 'id="fix-or-avoid"' in html, slug


def test_the_baseline_page_describes_every_packet(recorded_traces: Path) -> None:
    """graceful-close, read first, walks through every packet of its capture by name."""
    source = (ROOT / "docs" / "scenarios" / "graceful-close.md").read_text()
    named = set(re.findall(r"\{\{ packet ([a-z0-9-]+) \}\}", source))
    rec = artifact.load("graceful-close", recorded_traces)
    assert {p.name for p in rec.packets} <= named


def test_no_page_numbers_a_packet_in_its_prose() -> None:
    """Packet numbers change when a capture does; names do not."""
    for page in sorted((ROOT / "docs").rglob("*.md")):
        found = re.findall(r"\bpackets? \d+|\{\{ packet \d+ \}\}", page.read_text())
        assert not found, f"{page.relative_to(ROOT)}: {found}"


# Readers cite these in code reviews: /scenarios/SLUG/#fix-or-avoid, #packet-3. Renaming one
# breaks their links, so it must be a deliberate change of this list.
STABLE_SECTIONS = ["the-trace", "wireshark", "the-exchange", "what-each-application-saw", "which-counters-moved",
                   "why-linux-does-this", "spot-it-in-production", "fix-or-avoid", "the-example",
                   "provenance", "kernels", "you-may-have-seen"]


@pytest.mark.parametrize("slug", SLUGS)
def test_page_keeps_its_citable_anchors(built_site: Path, recorded_traces: Path, slug: str) -> None:
    page = page_of(built_site, slug)
    sections = re.findall(r'<h2[^>]*\sid="([^"]+)"', page)
    assert sections == STABLE_SECTIONS
    packets = {int(n) for n in re.findall(r'id="packet-(\d+)"', page)}
    rec = artifact.load(slug, recorded_traces)
    assert packets == set(range(1, len(rec.packets) + 1))
    ids = re.findall(r'\sid="([^"]+)"', page)
    for p in rec.packets:  # #client-syn is as citable as #packet-1
        assert ids.count(render.name_id(rec, p)) == 1


def test_no_list_collapses_into_a_paragraph(built_site: Path) -> None:
    """A list item holding a code block must not swallow the items after it: Markdown's lazy
    continuation turns "- **Wireshark**: ..." into text of the paragraph before it (it also
    shows in search excerpts). No rendered paragraph of any page starts a line with a marker."""
    collapsed = []
    for page in sorted(built_site.rglob("*.html")):
        for paragraph in re.findall(r"<p>(.*?)</p>", page.read_text(), re.DOTALL):
            if re.search(r"\n\s*[-*+] \S", paragraph):
                collapsed.append(f"{page.relative_to(built_site)}: {paragraph[:120]!r}")
    assert not collapsed, "\n".join(collapsed)


def test_no_page_names_a_placeholder_host(built_site: Path) -> None:
    """The address is one setting (FIELDGUIDE_SITE_URL, mkdocs.yml); unset, no canonical link
    and an empty sitemap, never a made-up host."""
    if os.environ.get("FIELDGUIDE_SITE_URL"):
        pytest.skip("FIELDGUIDE_SITE_URL is set: the pages name that address")
    for page in [*built_site.rglob("*.html"), built_site / "sitemap.xml"]:
        text = page.read_text()
        assert "example.org" not in text and 'rel="canonical"' not in text, page
        assert "<loc>" not in text, page


def test_no_edit_link_points_nowhere(built_site: Path) -> None:
    """The repository is one setting (FIELDGUIDE_REPOSITORY); unset, pages show no edit or view
    link, never a placeholder that 404s."""
    for page in built_site.rglob("*.html"):
        text = page.read_text()
        assert "/edit/main/docs/" not in text and "github.com/example" not in text, page


def test_edit_links_follow_the_one_repository_setting() -> None:
    from fieldguide.hooks import _edit_links
    from mkdocs.exceptions import PluginError

    config = {"edit_uri": "", "theme": {"features": ["navigation.top"]}}
    _edit_links(config, "https://github.com/org/repo")
    assert config["edit_uri"] == "https://github.com/org/repo/edit/main/docs/"
    assert {"content.action.edit", "content.action.view"} <= set(config["theme"]["features"])
    with pytest.raises(PluginError, match="https://"):
        _edit_links(config, "github.com/org/repo")


def test_chinese_summaries_gloss_an_errno_with_glibcs_own_text() -> None:
    """Where a Chinese summary glosses an errno name, ECONNRESET（...）, the Chinese in the
    gloss (all of it, or the part in quotes) is what glibc prints on a zh_CN system, as
    recorded from the C library: a reader recognises the text of their own error."""
    from fieldguide import chinese

    zh = chinese.pages(all_slugs())
    glosses = [(slug, name, text) for slug, page in zh.items()
               for name, text in re.findall(r"\b(E[A-Z]+)（([^）]*)）", page["summary"])]
    assert glosses, "no errno is glossed in chinese.yml"
    recorded = chinese.glibc_messages(sorted({name for _, name, _ in glosses}))
    if not recorded["messages"]:
        pytest.skip(recorded["why"])
    for slug, name, text in glosses:
        quoted = re.findall(r"“([^”]*)”", text)
        assert (quoted[0] if quoted else text) == recorded["messages"][name], (slug, name, text)


def test_chinese_error_names_are_errnos_glibc_names_otherwise(tmp_path: Path) -> None:
    """chinese.yml's `errors` name errnos, each in words of its own where glibc's zh_CN text
    differs (shown and searched beside glibc's); a key that is no errno is refused."""
    from fieldguide import chinese

    names = chinese.error_names()
    assert names, "chinese.yml names no error"
    recorded = chinese.glibc_messages(sorted(names))
    for name, text in names.items():
        assert text != recorded["messages"].get(name), f"{name}: the same as glibc's text"
    wrong = tmp_path / "chinese.yml"
    wrong.write_text("errors:\n  ECONNRESETT: 连接\n", encoding="utf-8")
    with pytest.raises(ValueError, match="ECONNRESETT"):
        chinese.error_names(wrong)


def test_chinese_readers_get_a_title_a_summary_and_glibcs_own_error_texts(built_site: Path) -> None:
    """Each scenario page opens with its Chinese title and summary; the symptom index gives
    each errno as glibc prints it on a zh_CN system, recorded from the C library, not typed."""
    from fieldguide import chinese

    slugs = all_slugs()
    zh = chinese.pages(slugs)
    for slug in slugs:
        page = html.unescape(page_of(built_site, slug))
        assert f'<p class="fg-zh" lang="zh-CN"><strong>{zh[slug]["title"]}</strong><br>{zh[slug]["summary"]}</p>' in page, slug
    recorded = chinese.glibc_messages(["ECONNRESET", "ECONNREFUSED"])
    if not recorded["messages"]:
        pytest.skip(recorded["why"])
    symptoms_page = (built_site / "symptoms" / "index.html").read_text()
    for text in recorded["messages"].values():
        assert text in symptoms_page
