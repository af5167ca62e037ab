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
from lab.scenarios import all_slugs, path_of

ROOT = Path(__file__).resolve().parents[1]
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
    packets = recording(recorded_traces, slug)["packets"]
    for p in packets:  # every packet can be linked to
        assert f'id="packet-{p["number"]}"' in page


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
        for p in recording(recorded_traces, slug)["packets"]:
            if "R" in p["flags"]:
                assert f'href="../scenarios/{slug}/#packet-{p["number"]}"' in html.unescape(page), (
                    f"notebook lacks {slug}'s RST, packet {p['number']}")
    assert "data:image/png;base64," in page, "the notebook drew no figure"


def _html_files(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def test_internal_links_resolve(built_site: Path) -> None:
    # 404.html uses absolute links under site_url's path, since it is served from anywhere
    site_path = urlsplit(re.search(r"^site_url:\s*(\S+)", (ROOT / "mkdocs.yml").read_text(), re.M).group(1)).path
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


BREAKAGES = {
    "missing": lambda d: (d / "closed-port.json").unlink(),
    "failed-claim": lambda d: (d / "closed-port.json").write_text(json.dumps({
        **json.loads((d / "closed-port.json").read_text()),
        "claims": [{"claim": "server sends [R.]", "passed": False}]})),
    "stale": lambda d: os.utime(d / "closed-port.json", (0, 0)),
    "tampered-pcap": lambda d: (d / "closed-port.pcap").write_bytes(b"\0" * 24),
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
    assert "scenario closed-port" in proc.stdout + proc.stderr


def test_without_drafts_a_scenario_without_page_fails_the_build(recorded_traces: Path, tmp_path: Path) -> None:
    written = {p.stem for p in (ROOT / "docs" / "scenarios").glob("*.md")}
    missing = sorted(set(SLUGS) - written)
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "FIELDGUIDE_DRAFT_PAGES": "0", "NO_MKDOCS_2_WARNING": "1"})
    if not missing:
        assert proc.returncode == 0, proc.stderr[-3000:]
        return
    assert proc.returncode != 0, f"the build passed although {missing} have no page"
    for slug in missing:
        assert f"scenario {slug}: no page docs/scenarios/{slug}.md" in proc.stdout + proc.stderr


def test_draft_pages_say_they_are_drafts(built_site: Path) -> None:
    written = {p.stem for p in (ROOT / "docs" / "scenarios").glob("*.md")}
    for slug in SLUGS:
        draft = "the explanation of this scenario is not written yet" in page_of(built_site, slug)
        assert draft == (slug not in written), slug


def test_search_is_configured_for_english_and_chinese(built_site: Path) -> None:
    index = json.loads((built_site / "search" / "search_index.json").read_text())
    assert index["config"]["lang"] == ["en", "zh"]
    home = [d["text"] for d in index["docs"] if d["location"].startswith("#") or d["location"] == ""]
    assert any("连接" in text and "\u200b" in text for text in home), (
        "the home page's Chinese text was not segmented into words (is jieba installed?)")
    assert (built_site / "assets" / "javascripts" / "lunr" / "min" / "lunr.zh.min.js").is_file()


def test_a_draft_page_has_every_generated_block() -> None:
    """A scenario recorded before its page is written gets a draft that passes the page checks."""
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    import fieldguide

    draft = fieldguide.DRAFT.format(slug="some-slug")
    used = {m.group(1) for m in fieldguide.PLACEHOLDER.finditer(draft)}
    assert set(fieldguide.REQUIRED) <= used
    assert used <= set(fieldguide.PLACEHOLDERS)
    assert "docs/scenarios/some-slug.md" in draft


# Readers cite these in code reviews: /scenarios/SLUG/#fix-or-avoid, #packet-3. Renaming one
# breaks their links, so it must be a deliberate change of this list.
STABLE_SECTIONS = ["the-trace", "the-exchange", "what-each-application-saw", "which-counters-moved",
                   "why-linux-does-this", "spot-it-in-production", "fix-or-avoid", "the-example",
                   "provenance", "you-may-have-seen"]


@pytest.mark.parametrize("slug", SLUGS)
def test_page_keeps_its_citable_anchors(built_site: Path, recorded_traces: Path, slug: str) -> None:
    page = page_of(built_site, slug)
    sections = re.findall(r'<h2 id="([^"]+)"', page)
    assert sections == STABLE_SECTIONS
    packets = {int(n) for n in re.findall(r'id="packet-(\d+)"', page)}
    assert packets == set(range(1, len(recording(recorded_traces, slug)["packets"]) + 1))
