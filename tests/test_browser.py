"""The built site in a real browser: Debian's chromium, headless, driven by Playwright.

The site (built by the `built_site` fixture from this session's fresh recordings) is
served on 127.0.0.1 (the `site_url` fixture, conftest.py). Every page load fails its test on any request that leaves
localhost and on any console error. The tests also save screenshots under
build/screenshots/ and the page weight of the home page and the largest scenario page
under build/page-weight.json (and the explain page's: tests/test_explain_page.py tests it).

Playwright's own browser download does not work here (and is never needed): the tests
use /usr/bin/chromium (`apt-get install chromium`) and skip, saying why, only where no
such browser exists. Under CI (the CI environment variable is set) a missing browser
fails instead.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from lab.artifact import CLIENT_TRACES, TRACES
from lab.scenarios import all_slugs

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "build" / "screenshots"
PAGE_WEIGHT = ROOT / "build" / "page-weight.json"
DESKTOP = {"width": 1280, "height": 800}
MOBILE = {"width": 390, "height": 844}
SCREENSHOT_SCENARIO = "unread-data-close"  # a short trace, a RST, and a neighbour in tabs
SLUGS = all_slugs()

# Material renders each Mermaid diagram into a *closed* shadow root, which no selector can
# reach. Opening them changes nothing on screen and lets the tests see the SVG.
OPEN_SHADOW_ROOTS = """
const attachShadow = Element.prototype.attachShadow;
Element.prototype.attachShadow = function (init) {
  return attachShadow.call(this, Object.assign({}, init, {mode: "open"}));
};
"""


# -- fixtures ---------------------------------------------------------------------------------

class Watched:
    """A browser context whose pages may only talk to localhost and must log no error."""

    def __init__(self, browser: Any, **options: Any) -> None:
        self.context = browser.new_context(accept_downloads=True, **options)
        self.context.add_init_script(OPEN_SHADOW_ROOTS)
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.finished: list[Any] = []
        self.context.route("**/*", self._route)
        self.context.on("requestfinished", lambda request: self.finished.append(request))
        self.context.on("page", self._watch)

    def _route(self, route: Any) -> None:
        url = urlparse(route.request.url)
        if url.scheme in ("data", "blob") or url.hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def _watch(self, page: Any) -> None:
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(f"console: {msg.text}"))
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def page(self) -> Any:
        return self.context.new_page()

    def close(self) -> None:
        self.context.close()
        assert not self.outside, f"requests left localhost: {self.outside}"
        assert not self.errors, "\n".join(self.errors)


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    context = Watched(browser, viewport=DESKTOP, color_scheme="light")
    yield context
    context.close()


@pytest.fixture(scope="session")
def symptom_links(browser: Any, site_url: str) -> dict[str, set[str]]:
    """slug -> the packet anchors the symptom index links on that scenario's page."""
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    page = open_page(watched, f"{site_url}symptoms/")
    hrefs = page.eval_on_selector_all("article a[href*='scenarios/'][href*='#']", "links => links.map(a => a.href)")
    watched.close()
    links: dict[str, set[str]] = {}
    for href in hrefs:
        url = urlparse(href)
        links.setdefault(url.path.strip("/").split("/")[-1], set()).add(url.fragment)
    return links


def open_page(watched: Watched, url: str) -> Any:
    page = watched.page()
    page.goto(url, wait_until="load")
    return page


def choose_palette(page: Any, scheme: str) -> None:
    """Click Material's palette toggle (it cycles automatic -> light -> dark) until `scheme`."""
    for _ in range(3):
        if (page.locator("body").get_attribute("data-md-color-scheme") == "slate") == (scheme == "dark"):
            break
        page.locator("form[data-md-component='palette'] label:visible").first.click()
    assert (page.locator("body").get_attribute("data-md-color-scheme") == "slate") == (scheme == "dark")


def search_ready(page: Any) -> None:
    """Material says "Type to start searching" once its worker has loaded the index; a query
    typed before that is not run again."""
    page.wait_for_function("(document.querySelector('.md-search-result__meta') || {}).textContent"
                           " === 'Type to start searching'", timeout=15000)


def search(page: Any, query: str, pasted: bool = False) -> list[str]:
    """The result links for `query`, typed into an emptied box (pasted: as the browser fills
    it on a paste, an input event of inputType insertFromPaste). Material searches on keyup:
    typing character by character would race its searches for each prefix."""
    box = page.locator("input.md-search__input")
    box.fill("")
    box.press("End")
    page.wait_for_function("document.querySelectorAll('.md-search-result__item').length === 0")
    if pasted:
        box.focus()
        box.evaluate("(box, text) => { box.value = text; box.dispatchEvent(new InputEvent('input',"
                     " {inputType: 'insertFromPaste', data: text, bubbles: true})); }", query)
    else:
        box.fill(query)
    box.press("End")
    page.wait_for_function("document.querySelectorAll('.md-search-result__item').length > 0", timeout=15000)
    return page.locator(".md-search-result__item > a").evaluate_all("links => links.map(a => a.href)")


def wait_for_diagrams(page: Any) -> None:
    """Every Mermaid block has become an SVG (Material renders them after load)."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('div.mermaid')].length > 0 && "
        "[...document.querySelectorAll('div.mermaid')].every(d => d.shadowRoot && d.shadowRoot.querySelector('svg'))",
        timeout=15000)


# Where each diagram's markers (a packet's numbered circle at an arrow's start, the arrow head
# or a RST's x at its end) are drawn, against the box of every label: the labels they cross.
# A marker is scaled by its line's stroke width (markerUnits="strokeWidth", Mermaid's) and
# drawn on a horizontal line (a sequence diagram's), flipped for an arrow pointing left.
MARKERS_OVER_LABELS = """() => [...document.querySelectorAll('div.mermaid')].flatMap(host => {
  const svg = host.shadowRoot.querySelector('svg');
  const drawn = [];
  for (const line of svg.querySelectorAll('line[marker-start], line[marker-end]')) {
    const scale = parseFloat(getComputedStyle(line).strokeWidth);
    const [x1, y1, x2] = ['x1', 'y1', 'x2'].map(a => parseFloat(line.getAttribute(a)));
    const dir = x2 < x1 ? -1 : 1;
    for (const [attr, x] of [['marker-start', x1], ['marker-end', x2]]) {
      const id = (line.getAttribute(attr) || '').match(/#([^)]+)/);
      if (!id) continue;
      const marker = svg.querySelector('marker#' + CSS.escape(id[1]));
      const units = marker.getAttribute('markerUnits') === 'userSpaceOnUse' ? 1 : scale;
      const shape = marker.firstElementChild.getBBox();
      const [rx, ry] = ['refX', 'refY'].map(a => parseFloat(marker.getAttribute(a)));
      const xs = [shape.x, shape.x + shape.width].map(v => x + dir * (v - rx) * units);
      const ys = [shape.y, shape.y + shape.height].map(v => y1 + (v - ry) * units);
      drawn.push({marker: id[1], left: Math.min(...xs), right: Math.max(...xs), top: Math.min(...ys),
                  bottom: Math.max(...ys)});
    }
  }
  return [...svg.querySelectorAll('text.messageText, text.noteText, text.actor')].flatMap(text => {
    const b = text.getBBox();
    return drawn.filter(m => m.left < b.x + b.width && m.right > b.x && m.top < b.y + b.height && m.bottom > b.y)
                .map(m => `${m.marker} over "${text.textContent}"`);
  });
})"""


def recording(slug: str) -> dict[str, Any]:
    return json.loads((TRACES / f"{slug}.json").read_text())


# -- the pages ---------------------------------------------------------------------------------

def test_home_lists_every_scenario(watched: Watched, site_url: str) -> None:
    page = open_page(watched, site_url)
    linked = {urlparse(href).path.strip("/").split("/")[-1]
              for href in page.eval_on_selector_all("article a[href*='scenarios/']",
                                                     "links => links.map(a => a.href)")}
    assert set(SLUGS) <= linked, f"not in the home page's index: {sorted(set(SLUGS) - linked)}"
    for slug in SLUGS:  # each row shows the cause recorded in the example's docstring
        row = page.locator("article table tr", has=page.locator(f"a[href$='scenarios/{slug}/']")).first
        assert recording(slug)["summary"][:40] in row.inner_text()


@pytest.mark.parametrize("slug", SLUGS)
def test_scenario_page_shows_its_recording(watched: Watched, site_url: str, slug: str,
                                           symptom_links: dict[str, set[str]]) -> None:
    data = recording(slug)
    page = open_page(watched, f"{site_url}scenarios/{slug}/")

    # the trace: tcpdump's own text, exactly as recorded (the margin numbers are CSS only)
    trace = page.locator(f".fg-trace[data-slug='{slug}'] code").first
    assert trace.is_visible()
    assert trace.text_content() == (TRACES / f"{slug}.txt").read_text()

    # the sequence diagram, rendered by the self-hosted Mermaid into an SVG, one arrow per packet
    wait_for_diagrams(page)
    diagram = page.locator("div.mermaid").first
    assert diagram.is_visible() and diagram.bounding_box()["height"] > 100
    svg_text = diagram.locator("svg").first.text_content()
    for participant in data["hosts"]:
        assert participant in svg_text
    assert page.evaluate(MARKERS_OVER_LABELS) == [], "an arrow's marker is drawn over a label"

    # the outcomes table: every call each application made, with what it got
    outcomes = page.locator("h2#what-each-application-saw ~ div.md-typeset__scrollwrap table, "
                            "h2#what-each-application-saw ~ table").first
    text = outcomes.inner_text()
    for entries in data["outcomes"].values():
        for entry in entries:
            assert entry["call"] in text, entry
            assert entry.get("raised", "") in text

    # "You may have seen": one entry per failure, linked to its packet
    seen = page.locator("h2#you-may-have-seen + ul, h2#you-may-have-seen + p").first
    assert seen.is_visible()
    for entries in data["outcomes"].values():
        for entry in (e for e in entries if "raised" in e):
            assert entry["raised"] in seen.inner_text()
    for href in seen.locator("a[href^='#']").evaluate_all("links => links.map(a => a.getAttribute('href'))"):
        assert page.locator(f".fg-trace {href}").count() == 1 or href == "#the-trace", (
            f"{href} is not an anchor of the trace")
    for anchor in symptom_links.get(slug, ()):  # where the symptom index points on this page
        where = f"#{anchor}" if anchor == "the-trace" else f".fg-trace #{anchor}"
        assert page.locator(where).count() == 1, f"symptom index -> {slug}#{anchor}"

    # the capture behind the provenance link: fetched by the page, hashed by the browser
    shown = page.locator("code.fg-sha256").inner_text().strip()
    assert shown == data["pcap_sha256"]
    fetched = page.locator(f"a[href$='traces/{slug}.pcap']").first.evaluate("""async a => {
        const body = await (await fetch(a.href)).arrayBuffer();
        const digest = await crypto.subtle.digest('SHA-256', body);
        return [...new Uint8Array(digest)].map(b => b.toString(16).padStart(2, '0')).join(''); }""")
    assert fetched == shown


def test_pcap_download_matches_its_sha256(watched: Watched, site_url: str, built_site: Path) -> None:
    """Clicking the provenance link saves the capture; its bytes hash to the SHA-256 the page shows.

    Clicked on two pages (a download costs a full page load, Mermaid included); every
    other page fetches its own link in test_scenario_page_shows_its_recording.
    """
    for slug in (SCREENSHOT_SCENARIO, largest_scenario(built_site)):
        page = open_page(watched, f"{site_url}scenarios/{slug}/")
        shown = page.locator("code.fg-sha256").inner_text().strip()
        assert shown == recording(slug)["pcap_sha256"]
        with page.expect_download() as download:
            page.locator(f"a[href$='traces/{slug}.pcap']").first.click()
        data = Path(download.value.path()).read_bytes()
        assert download.value.suggested_filename == f"{slug}.pcap"
        assert data[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4"), "not a pcap file"
        assert hashlib.sha256(data).hexdigest() == shown, slug
        page.close()


def test_symptom_index_links_to_packets(watched: Watched, site_url: str,
                                        symptom_links: dict[str, set[str]]) -> None:
    """Every symptom links a scenario's packet (each anchor is checked on its page by
    test_scenario_page_shows_its_recording); following one lands on the highlighted line."""
    assert set(symptom_links) <= set(SLUGS)
    assert sum(len(anchors) for anchors in symptom_links.values()) >= len(symptom_links)
    page = open_page(watched, f"{site_url}symptoms/")
    link = page.locator("article a[href*='scenarios/'][href*='#']:not([href$='#the-trace'])").first
    anchor = urlparse(link.get_attribute("href")).fragment
    link.click()
    page.wait_for_url(f"**#{anchor}")
    target = page.locator(f"#{anchor}")  # the (empty) anchor of the packet's name, on its trace line
    target.wait_for(state="attached")
    assert target.evaluate("el => el.matches(':target') && el.closest('.fg-packet') !== null")
    line = page.locator(f".fg-packet:has(#{anchor})")
    assert line.evaluate("el => getComputedStyle(el).outlineStyle") != "none", "the :target highlight"
    assert line.is_visible() and line.bounding_box()["y"] < DESKTOP["height"]


def test_a_matrix_cell_opens_its_packet_in_the_folded_client_trace(watched: Watched, site_url: str) -> None:
    """A cell of the client matrix links to the packet that caused the program's line, in the
    client session's trace folded on the scenario's page: following it opens the fold and
    shows the highlighted line."""
    page = open_page(watched, f"{site_url}clients/")
    link = page.locator("article table a[href*='scenarios/'][href*='#']").first
    anchor = urlparse(link.get_attribute("href")).fragment
    link.click()
    page.wait_for_url(f"**#{anchor}")
    line = page.locator(f"details .fg-packet:has(#{anchor})")
    line.wait_for(state="visible")
    assert line.evaluate("el => el.closest('details').open")
    # the fold holds raw HTML: a lost end tag once collapsed the whole article to no width
    assert page.locator("article").bounding_box()["width"] > DESKTOP["width"] / 3
    assert line.evaluate("el => getComputedStyle(el).outlineStyle") != "none", "the :target highlight"
    box = line.bounding_box()
    assert box and 0 <= box["y"] < DESKTOP["height"], box


@pytest.mark.parametrize("viewport", [DESKTOP, MOBILE], ids=["desktop", "mobile"])
def test_search_finds_econnreset_on_scenario_pages(browser: Any, site_url: str, viewport: dict[str, int]) -> None:
    watched = Watched(browser, viewport=viewport, color_scheme="light")
    page = open_page(watched, site_url)
    opener = page.locator("label.md-header__button[for='__search']")  # the narrow layout's button
    if opener.is_visible():
        opener.click()
    search_ready(page)
    page.locator("input.md-search__input").press_sequentially("ECONNRESET")  # Material reads keyups
    page.wait_for_function("document.querySelectorAll('.md-search-result__item').length > 0", timeout=15000)
    hrefs = page.locator(".md-search-result__item a").evaluate_all("links => links.map(a => a.href)")
    scenario_hits = {urlparse(h).path for h in hrefs if "/scenarios/" in h}
    assert len(scenario_hits) >= 2, hrefs
    assert any("/symptoms/" in h for h in hrefs), hrefs
    watched.close()


def test_dark_palette_toggles(watched: Watched, site_url: str) -> None:
    page = open_page(watched, site_url)
    body = page.locator("body")

    def background() -> str:
        return page.evaluate("getComputedStyle(document.body).backgroundColor")

    light = background()
    for _ in range(3):  # automatic -> light -> dark: the toggle cycles the three palettes
        if body.get_attribute("data-md-color-scheme") == "slate":
            break
        page.locator("form[data-md-component='palette'] label:visible").first.click()
    assert body.get_attribute("data-md-color-scheme") == "slate"
    assert background() != light
    page.reload()  # the choice is remembered
    assert page.locator("body").get_attribute("data-md-color-scheme") == "slate"


# -- what a reader gets: screenshots and page weight -------------------------------------------

def settled_screenshot(page: Any, path: Path, at: str | None = None, full_page: bool = False) -> None:
    """Scroll to `at` (a selector) and shoot once Material's header and scroll transitions end."""
    if at:
        page.locator(at).first.scroll_into_view_if_needed()
    # Material swaps the header's title a moment after a scroll: wait until no animation
    # has run for 300 ms (an observed quiet period, not a fixed sleep)
    page.evaluate("window.__quietSince = undefined")
    page.wait_for_function("""() => {
        const now = performance.now();
        if (document.getAnimations().some(a => a.playState === 'running')) { window.__quietSince = undefined; return false; }
        if (window.__quietSince === undefined) { window.__quietSince = now; }
        return now - window.__quietSince > 300; }""", polling=50, timeout=10000)
    page.screenshot(path=str(path), full_page=full_page)


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("viewport", [DESKTOP, MOBILE], ids=["desktop", "mobile"])
def test_screenshots(browser: Any, site_url: str, scheme: str, viewport: dict[str, int]) -> None:
    """Saved for a person to look at; the tests only check that the pages rendered."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    suffix = f"{scheme}-{'desktop' if viewport == DESKTOP else 'mobile'}.png"
    watched = Watched(browser, viewport=viewport, color_scheme=scheme)
    home = open_page(watched, site_url)
    settled_screenshot(home, SCREENSHOTS / f"home-{suffix}")
    settled_screenshot(home, SCREENSHOTS / f"home-index-{suffix}", at="article table")
    settled_screenshot(home, SCREENSHOTS / f"home-chinese-{suffix}", at="h2#给中文读者")
    scenario = open_page(watched, f"{site_url}scenarios/{SCREENSHOT_SCENARIO}/")
    wait_for_diagrams(scenario)
    settled_screenshot(scenario, SCREENSHOTS / f"scenario-{suffix}")
    settled_screenshot(scenario, SCREENSHOTS / f"scenario-trace-{suffix}", at=".fg-trace")
    settled_screenshot(scenario, SCREENSHOTS / f"scenario-diagram-{suffix}", at="div.mermaid")
    settled_screenshot(scenario, SCREENSHOTS / f"scenario-wireshark-{suffix}", at="h2#wireshark")
    settled_screenshot(scenario, SCREENSHOTS / f"scenario-seen-{suffix}", at="h2#you-may-have-seen")
    symptoms = open_page(watched, f"{site_url}symptoms/")
    settled_screenshot(symptoms, SCREENSHOTS / f"symptoms-{suffix}")
    for page in (home, scenario, symptoms):  # wide content scrolls in its own box, never the page
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"], page.url
    watched.close()


def largest_scenario(site: Path) -> str:
    return max(SLUGS, key=lambda slug: (site / "scenarios" / slug / "index.html").stat().st_size)


def measure(browser: Any, url: str, diagrams: bool, ready_mark: str | None = None) -> dict[str, Any]:
    """Bytes over the wire (headers + bodies, cache empty) and load timings of one page view;
    `ready_mark`: the performance mark a page's script sets when it is ready to use."""
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    started = time.monotonic()
    page = open_page(watched, url)
    if diagrams:
        wait_for_diagrams(page)
    ready_ms = None
    if ready_mark:
        page.wait_for_function(f"performance.getEntriesByName({ready_mark!r}).length > 0", timeout=60000)
        ready_ms = page.evaluate(f"performance.getEntriesByName({ready_mark!r})[0].startTime")
    page.wait_for_load_state("networkidle")
    rendered_ms = (time.monotonic() - started) * 1000
    timing = page.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
        return {dom_content_loaded_ms: n.domContentLoadedEventEnd, load_ms: n.loadEventEnd}; }""")
    by_type: dict[str, int] = {}
    total = gzipped = 0
    for request in watched.finished:
        sizes = request.sizes()
        size = sizes["responseBodySize"] + sizes["responseHeadersSize"]
        total += size
        by_type[request.resource_type] = by_type.get(request.resource_type, 0) + size
        # what a host that compresses (GitHub Pages gzips text) would send for the same body
        gzipped += len(gzip.compress(request.response().body(), 6)) + sizes["responseHeadersSize"]
    largest = sorted(watched.finished, key=lambda r: -r.sizes()["responseBodySize"])[:5]
    largest_sizes = {urlparse(r.url).path: r.sizes()["responseBodySize"] for r in largest}
    watched.close()
    return {"url": urlparse(url).path, "requests": len(watched.finished), "transferred_bytes": total,
            "largest": largest_sizes,
            **({"ready_ms": round(ready_ms, 1)} if ready_mark else {}),
            "transferred_bytes_if_gzipped": gzipped,
            "urls": sorted(urlparse(r.url).path for r in watched.finished),
            "bytes_by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
            "dom_content_loaded_ms": round(timing["dom_content_loaded_ms"], 1),
            "load_ms": round(timing["load_ms"], 1),
            "rendered_ms": round(rendered_ms, 1)}


def test_page_weight(browser: Any, site_url: str, built_site: Path) -> None:
    """Home and the largest scenario page (by HTML size): printed and kept in build/page-weight.json."""
    slug = largest_scenario(built_site)
    figures = {
        "home": measure(browser, site_url, diagrams=False),
        "largest_scenario": {"slug": slug, **measure(browser, f"{site_url}scenarios/{slug}/", diagrams=True)},
        # Pyodide (CPython in WebAssembly) and rst_explain's sources: ready_ms = until it can explain
        "explain": measure(browser, f"{site_url}explain/", diagrams=False, ready_mark="fg-explain-ready"),
        "note": ("served from 127.0.0.1 without compression, empty cache; transferred = response"
                 " headers + bodies of every request (search index included once the worker loads it);"
                 " rendered_ms = navigation until diagrams are drawn and the network is idle (includes Playwright's 500 ms idle window); transferred_bytes_if_gzipped = the same bodies gzipped (-6), as a compressing host (GitHub Pages) would send them;"
                 " ready_ms = navigation start until the page's script marks itself ready (the explain page: Pyodide"
                 " loaded, rst_explain imported); largest = the five largest response bodies"),
    }
    PAGE_WEIGHT.parent.mkdir(parents=True, exist_ok=True)
    PAGE_WEIGHT.write_text(json.dumps(figures, indent=2) + "\n")
    for name in ("home", "largest_scenario", "explain"):
        f = figures[name]
        print(f"{name} {f['url']}: {f['requests']} requests, {f['transferred_bytes'] / 1024:.0f} KiB"
              f" ({f['transferred_bytes_if_gzipped'] / 1024:.0f} KiB gzipped),"
              f" DOMContentLoaded {f['dom_content_loaded_ms']:.0f} ms, load {f['load_ms']:.0f} ms,"
              f" rendered {f['rendered_ms']:.0f} ms" + (f", ready {f['ready_ms']:.0f} ms" if "ready_ms" in f else ""))
    mermaid = [u for u in figures["largest_scenario"]["urls"] if u.endswith("/mermaid.min.js")]
    assert mermaid, "a page with a diagram loads the self-hosted Mermaid"
    assert not [u for u in figures["home"]["urls"] if u.endswith("/mermaid.min.js")], (
        "the home page has no diagram: it must not load Mermaid's 2.8 MB")
    # the home page without Mermaid: its bulk is the search index of every page (1.2 MB as
    # served here, about 350 KiB gzipped), which grew with 33 scenarios, each page's Wireshark
    # view and the matrix pages: 1.5 MB was passed at 1,506,905 bytes; Mermaid alone is 2.8 MB
    assert 0 < figures["home"]["transferred_bytes"] < 1_650_000, figures["home"]["transferred_bytes"]
    assert 0 < figures["home"]["transferred_bytes_if_gzipped"] < 450_000, figures["home"]["transferred_bytes_if_gzipped"]
    assert figures["largest_scenario"]["transferred_bytes"] > 2_800_000
    # only the explain page loads Pyodide: its WebAssembly is the bulk of that page
    for name in ("home", "largest_scenario"):
        assert not [u for u in figures[name]["urls"] if "/pyodide-" in u], f"{name} loads Pyodide"
    assert any(u.endswith("/pyodide.asm.wasm") for u in figures["explain"]["urls"])


# -- citing a packet, seeing a RST ---------------------------------------------------------------

def test_the_address_bar_keeps_the_packet_a_reader_opened_or_clicked(browser: Any, site_url: str) -> None:
    """Readers cite packets in reviews: scrolling must not rewrite the address (Material's
    navigation.tracking did), and a packet's number puts its link in the bar and on the clipboard."""
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    watched.context.grant_permissions(["clipboard-read", "clipboard-write"])
    rec = recording("keepalive-race")
    rst = next(p for p in rec["packets"] if "R" in p["flags"])
    page = open_page(watched, f"{site_url}scenarios/keepalive-race/#{rst['name']}")
    page.mouse.wheel(0, 900)
    page.wait_for_function("window.scrollY > 0")
    page.mouse.wheel(0, 900)
    assert page.evaluate("location.hash") == f"#{rst['name']}"
    first = page.locator(".fg-packet-number").first
    first.scroll_into_view_if_needed()
    first.click()
    target = first.get_attribute("href")
    assert page.evaluate("location.hash") == target
    page.wait_for_function("document.querySelector('.fg-packet[data-copied]') !== null")
    assert page.evaluate("navigator.clipboard.readText()") == page.evaluate("location.href")
    watched.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_rsts_are_marked_in_the_diagram_in_either_palette(browser: Any, site_url: str, scheme: str) -> None:
    """Each RST arrow is labelled "RST" and sits in a tinted band; the diagram has a title and a
    description for screen readers."""
    watched = Watched(browser, viewport=DESKTOP, color_scheme=scheme)
    slug = "firewall-reject"
    page = open_page(watched, f"{site_url}scenarios/{slug}/")
    choose_palette(page, scheme)
    wait_for_diagrams(page)
    svg = "document.querySelector('div.mermaid').shadowRoot.querySelector('svg')"
    labels = page.evaluate(f"[...{svg}.querySelectorAll('text.messageText')].map(t => t.textContent)")
    rsts = [p for p in recording(slug)["packets"] if "R" in p["flags"]]
    assert [label for label in labels if label.startswith("RST ")] == [
        label for label in labels if any(f"({p['name']})" in label for p in rsts)]
    assert len([label for label in labels if label.startswith("RST ")]) == len(rsts)
    bands = page.evaluate(f"{svg}.querySelectorAll('rect.rect').length")
    assert bands == len(rsts)
    title = page.evaluate(f"({svg}.querySelector('title') || {{}}).textContent")
    description = page.evaluate(f"({svg}.querySelector('desc') || {{}}).textContent")
    assert title and slug in title and description and "RSTs:" in description
    # the x and the arrow stand out from the band in either palette (Mermaid draws the x black)
    contrast = page.evaluate(RST_ARROW_CONTRAST)
    assert len(contrast) >= 1 + len(rsts) and min(contrast) >= 3.0, contrast
    watched.close()


# WCAG contrast of CSS colours: parse, composite a translucent colour over its background
COLOUR_MATH = """
  const parse = c => { const m = c.match(/rgba?\\(([^)]+)\\)/)[1].split(',').map(Number);
                       return {r: m[0], g: m[1], b: m[2], a: m.length > 3 ? m[3] : 1}; };
  const lum = ({r, g, b}) => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                               return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const over = (fg, bg) => ({r: fg.r * fg.a + bg.r * (1 - fg.a), g: fg.g * fg.a + bg.g * (1 - fg.a),
                             b: fg.b * fg.a + bg.b * (1 - fg.a)});
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const page = parse(getComputedStyle(document.body).backgroundColor);
"""

CONTRAST = """() => {""" + COLOUR_MATH + """
  const code = over(parse(getComputedStyle(document.querySelector('.fg-trace pre')).backgroundColor), page);
  const number = document.querySelector('.fg-packet-number');
  const target = document.querySelector('.fg-packet:target, .fg-packet:has(.fg-anchor:target)');
  return {number: ratio(over(parse(getComputedStyle(number, '::before').color), code), code),
          outline: ratio(over(parse(getComputedStyle(target).outlineColor), code), code)};
}"""

# each RST's arrow and the x that ends it, against the tinted band they are drawn in
RST_ARROW_CONTRAST = """() => {""" + COLOUR_MATH + """
  const svg = document.querySelector('div.mermaid').shadowRoot.querySelector('svg');
  const band = over(parse(getComputedStyle(svg.querySelector('rect.rect')).fill), page);
  const cross = [...svg.querySelectorAll('marker#crosshead path')].map(p => getComputedStyle(p).stroke);
  const arrows = [...svg.querySelectorAll('line[marker-end*="crosshead"]')].map(l => getComputedStyle(l).stroke);
  return [...cross, ...arrows].map(c => ratio(over(parse(c), band), band));
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_packet_numbers_and_the_opened_packet_are_legible(browser: Any, site_url: str, scheme: str) -> None:
    """WCAG: packet numbers (text) at least 4.5:1 against the trace, the opened packet's outline 3:1."""
    watched = Watched(browser, viewport=DESKTOP, color_scheme=scheme)
    name = next(p["name"] for p in recording("closed-port")["packets"] if "R" in p["flags"])
    page = open_page(watched, f"{site_url}scenarios/closed-port/#{name}")
    choose_palette(page, scheme)
    contrast = page.evaluate(CONTRAST)
    assert contrast["number"] >= 4.5 and contrast["outline"] >= 3.0, contrast
    watched.close()


PHONE_PAGE = """() => {
  const box = document.querySelector('.fg-diagram');
  const svg = box.querySelector('div.mermaid').shadowRoot.querySelector('svg');
  const column = box.getBoundingClientRect();
  const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
  const outside = [...svg.querySelectorAll('rect.actor, line.actor-line, text.messageText, .noteText')]
    .filter(e => { const r = e.getBoundingClientRect();
                   return r.left < Math.max(column.left, 0) - 0.5 || r.right > Math.min(column.right, innerWidth) + 0.5; })
    .map(e => e.textContent || e.getAttribute('class'));
  const sizes = [...svg.querySelectorAll('text.messageText')].map(t => parseFloat(getComputedStyle(t).fontSize) * scale);
  return {scrolls: box.scrollWidth > box.clientWidth, outside, smallest: Math.min(...sizes),
          lifelines: svg.querySelectorAll('line.actor-line').length};
}"""


# every table of the page's content: does it scroll sideways, and is any cell off screen or,
# shown row by row (docs/assets/tables.js), without its column's header
PHONE_TABLES = """() => [...document.querySelectorAll(
    '.md-content .md-typeset table:not([class]), .md-content .jupyter-wrapper table.dataframe')].flatMap(table => {
  const box = table.closest('.md-typeset__scrollwrap') || table.parentElement;
  const headers = [...table.querySelectorAll('thead th')].map(th => th.textContent.trim());
  const problems = [];
  if (box.scrollWidth > box.clientWidth + 1) problems.push(`scrolls sideways: ${headers.join(' | ')}`);
  for (const cell of table.querySelectorAll('tbody td')) {
    const r = cell.getBoundingClientRect();
    if (r.width && (r.left < -0.5 || r.right > innerWidth + 0.5)) problems.push(`off screen: ${cell.textContent}`);
    if (table.hasAttribute('data-fg-stacked') && cell.textContent.trim()
        && getComputedStyle(cell, '::before').content !== JSON.stringify(headers[cell.cellIndex]))
      problems.push(`no header over: ${cell.textContent}`);
  }
  return problems;
})"""


def test_a_phone_shows_whole_diagrams_and_tables(browser: Any, site_url: str) -> None:
    """At 390 x 844 a diagram fits its column: no sideways scrolling; every host's box and
    lifeline and both ends of every label on screen; labels drawn at 12 px or more; no marker
    over a label. On the widest diagrams (every page with the most hosts) and the longest.
    No table on these pages, nor the census's, scrolls sideways (the kernel's word, the
    outcomes, every RST): a table too wide is shown row by row, each cell under its header."""
    most = max(len(recording(slug)["hosts"]) for slug in SLUGS)
    slugs = sorted({slug for slug in SLUGS if len(recording(slug)["hosts"]) == most}
                   | {max(SLUGS, key=lambda slug: len(recording(slug)["packets"]))})
    watched = Watched(browser, viewport=MOBILE, color_scheme="light", is_mobile=True)
    for slug in slugs:
        page = open_page(watched, f"{site_url}scenarios/{slug}/")
        wait_for_diagrams(page)
        seen = page.evaluate(PHONE_PAGE)
        assert not seen["scrolls"], f"{slug}: the diagram scrolls sideways"
        assert seen["lifelines"] >= len(recording(slug)["hosts"]), slug
        assert seen["outside"] == [], f"{slug}: cut off at the column's edge"
        assert seen["smallest"] >= 12, f"{slug}: labels drawn at {seen['smallest']:.1f} px"
        assert page.evaluate(MARKERS_OVER_LABELS) == [], f"{slug}: an arrow's marker is drawn over a label"
        assert page.evaluate(PHONE_TABLES) == [], slug
        if slug == slugs[0]:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            settled_screenshot(page, SCREENSHOTS / f"diagram-{slug}-mobile.png", at="div.mermaid")
        page.close()
    census = open_page(watched, f"{site_url}rst-census/")  # its table of every RST: 8 columns
    assert census.evaluate(PHONE_TABLES) == [], "rst-census"
    settled_screenshot(census, SCREENSHOTS / "census-table-mobile.png", at="table[data-fg-stacked]")
    watched.close()


# The census page's blocks in reading order (a heading, a paragraph, program output, a table,
# an image), each with where it starts on the screen; nested blocks (a table's cells) are not
# counted apart from their table.
CENSUS_BLOCKS = """() => {
  const blocks = [...document.querySelectorAll('article h1, article h2, article p, article pre, article table, article img')]
    .filter(e => !e.parentElement.closest('table, pre') && e.getClientRects().length);
  return blocks.map(e => [e.tagName.toLowerCase(), e.getBoundingClientRect().top]);
}"""


def test_the_census_leads_with_its_table_and_plots(browser: Any, site_url: str) -> None:
    """/rst-census/ opens with its title, one short paragraph and the table, whose top is on
    the first screen of a desktop; the plot follows the tables with no program output
    before it (the loading code runs, hidden; its summary and the download are at the end)."""
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    page = open_page(watched, f"{site_url}rst-census/")
    blocks = page.evaluate(CENSUS_BLOCKS)
    kinds = [kind for kind, _ in blocks]
    assert kinds[:3] == ["h1", "p", "table"], kinds[:8]
    assert blocks[2][1] < DESKTOP["height"] * 0.6, f"the table starts {blocks[2][1]:.0f} px down"
    assert "pre" not in kinds[:kinds.index("img")], f"program output before the plot: {kinds}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    settled_screenshot(page, SCREENSHOTS / "census-desktop.png")
    watched.close()


# what readers type, and the page that must come first (the symptom index for error strings);
# "RST" alone has no right answer: most scenario titles say RST
SEARCHES = {
    "connection reset by peer": "symptoms", "reset by peer": "symptoms", "ECONNRESET": "symptoms",
    "ECONNREFUSED": "symptoms", "Connection refused": "symptoms", "EPIPE": "symptoms", "Broken pipe": "symptoms",
    "TimeoutError": "symptoms", "SO_LINGER": "linger-zero", "SOCK_DESTROY": "ss-kill", "TIME-WAIT": "time-wait-rst",
    "tcp_rfc1337": "time-wait-rst", "tcp_abort_on_overflow": "backlog-overflow", "challenge ACK": "rst-injection",
    "keepalive probe": "keepalive-probe-reset", "TCP_USER_TIMEOUT": "user-timeout",
    "SYN cookies": "syn-flood-cookies", "conntrack": "conntrack-invalid", "ClientHello": "tls-clienthello-reset",
    "docker-proxy": "accepted-then-reset",
}


def test_search_puts_the_right_page_first(browser: Any, site_url: str) -> None:
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    page = open_page(watched, site_url)
    search_ready(page)
    firsts = {query: urlparse(search(page, query)[0]).path.strip("/").split("/")[-1] or "home" for query in SEARCHES}
    assert firsts == SEARCHES
    watched.close()


def test_a_keyboard_reader_passes_a_long_trace_in_one_step(browser: Any, site_url: str) -> None:
    """One tab stop per packet (its number), none for the drawn names, and a "skip the trace"
    link first: the longest trace is not 2 x N tab stops deep."""
    slug = max(SLUGS, key=lambda s: len(recording(s)["packets"]))
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    page = open_page(watched, f"{site_url}scenarios/{slug}/")
    stops = page.evaluate("""() => [...document.querySelector('.fg-trace').querySelectorAll('a, [tabindex]')]
        .filter(e => e.tabIndex >= 0).length""")
    assert stops == len(recording(slug)["packets"])
    skip = page.locator("a.fg-skip").first
    skip.focus()
    assert skip.is_visible()
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == f"#after-trace-{slug}"
    watched.close()


# what Chinese readers type, and the entry that must come first: the symptom index's entry for
# the errno, whose heading holds glibc's zh_CN text (连接被对方重设, 拒绝连接, 连接超时, 断开的管道)
# and the words this guide's Chinese pages use (连接被对端重置, 连接被拒绝)
CHINESE_SEARCHES = {
    "连接被对方重设": "symptoms#econnreset", "连接重置": "symptoms#econnreset", "被对端重置": "symptoms#econnreset",
    "拒绝连接": "symptoms#econnrefused", "连接超时": "symptoms#etimedout", "超时": "symptoms#etimedout",
    "断开的管道": "symptoms#epipe",
}


def first_entry(links: list[str]) -> str:
    """The first result as page#section: Material lists a page, then its best sections."""
    page, *rest = [urlparse(link) for link in links]
    name = page.path.strip("/").split("/")[-1] or "home"
    section = next((r.fragment for r in rest if r.path == page.path and r.fragment), "")
    return f"{name}#{section}" if section else name


def test_chinese_searches_put_the_error_first(browser: Any, site_url: str) -> None:
    """A Chinese error text, typed or pasted whole, finds the symptom index's entry for its
    errno first (not a scenario page that mentions the same words in its summary)."""
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    page = open_page(watched, site_url)
    search_ready(page)
    firsts = {query: first_entry(search(page, query)) for query in CHINESE_SEARCHES}
    assert firsts == CHINESE_SEARCHES
    watched.close()


def test_chinese_is_legible_on_a_phone(browser: Any, site_url: str) -> None:
    """At 390 x 844 no Chinese text is set below 14 px (a Chinese character needs more pixels
    than a Latin letter), and a scenario's Chinese title reads as a title: larger than the text."""
    watched = Watched(browser, viewport=MOBILE, color_scheme="light", is_mobile=True)
    sizes = """() => [...document.querySelectorAll('article [lang="zh-CN"], article [lang="zh-CN"] *')]
        .map(e => [e.textContent.trim().slice(0, 20), parseFloat(getComputedStyle(e).fontSize)])"""
    for path in ("", "symptoms/", f"scenarios/{SCREENSHOT_SCENARIO}/"):
        page = open_page(watched, site_url + path)
        found = page.evaluate(sizes)
        assert found, f"no Chinese text on /{path}"
        assert [text for text, size in found if size < 14] == [], f"/{path}: Chinese text under 14 px"
        page.close()
    page = open_page(watched, f"{site_url}scenarios/{SCREENSHOT_SCENARIO}/")
    title, text = page.evaluate("""() => [document.querySelector('.fg-zh strong'), document.querySelector('.fg-zh')]
        .map(e => parseFloat(getComputedStyle(e).fontSize))""")
    assert title >= 1.2 * text, (title, text)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    settled_screenshot(page, SCREENSHOTS / "chinese-title-mobile.png")
    watched.close()


# Where a scenario page's short answer ends (its last line is the fix), and where the section
# "Fix or avoid" starts: px from the top of the page.
WHERE_THE_FIX_IS = """() => {
  const short = document.querySelector('article .admonition.abstract');
  const fix = [...short.querySelectorAll('strong')].find(s => s.textContent === 'Fix');
  const section = document.getElementById('fix-or-avoid');
  const top = e => e.getBoundingClientRect().top + window.scrollY;
  return {short_end: short.getBoundingClientRect().bottom + window.scrollY, fix: fix ? top(fix) : null,
          section: top(section), link: fix ? fix.parentElement.querySelector('a[href="#fix-or-avoid"]') !== null : false};
}"""


def test_the_fix_is_in_the_short_answer_within_two_phone_screens(browser: Any, site_url: str) -> None:
    """Every scenario page's short answer ends with the fix, linked to "Fix or avoid"; on a
    phone (390 x 844) the whole short answer ends within its first two screens, on a desktop
    within its first two. The figures go to build/fix-position.json (quoted in notes)."""
    figures: dict[str, dict[str, float]] = {}
    late = []
    for viewport, name in ((MOBILE, "phone"), (DESKTOP, "desktop")):
        watched = Watched(browser, viewport=viewport, color_scheme="light", is_mobile=viewport is MOBILE)
        for slug in SLUGS:
            page = open_page(watched, f"{site_url}scenarios/{slug}/")
            seen = page.evaluate(WHERE_THE_FIX_IS)
            page.close()
            assert seen["fix"] is not None and seen["link"], f"{slug}: the short answer has no linked fix"
            screens = seen["short_end"] / viewport["height"]
            figures.setdefault(slug, {})[name] = round(seen["fix"] / viewport["height"], 2)
            figures[slug][f"{name}_section"] = round(seen["section"] / viewport["height"], 2)
            if screens > 2:
                late.append(f"{slug} ({name}): the short answer ends {screens:.1f} screens down")
        watched.close()
    (ROOT / "build" / "fix-position.json").write_text(json.dumps(figures, indent=1) + "\n")
    assert not late, "\n".join(late)


def test_a_missing_page_gets_the_sites_404_with_working_links(browser: Any, site_url: str) -> None:
    """Served for any missing path (as GitHub Pages serves 404.html), however deep, the 404
    page is styled and its links land on the site's pages."""
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    page = watched.page()
    response = page.goto(f"{site_url}scenarios/no-such-page/deeper/", wait_until="load")
    assert response is not None and response.status == 404
    assert page.evaluate("getComputedStyle(document.querySelector('.md-header')).position") in ("sticky", "fixed")
    links = page.eval_on_selector_all("nav a[href]", "links => links.map(a => a.href)")
    assert any(urlparse(link).path.endswith("/scenarios/closed-port/") for link in links), links
    missing = urlparse(page.url).path
    for link in dict.fromkeys(l.split("#")[0] for l in links if urlparse(l).path != missing):  # not its own #, ?q=
        assert page.request.get(link).status == 200, f"404.html links to {link}, which is not there"
    page.close()
    # the one error a 404 logs is Chromium's for the document itself
    assert watched.errors == ["console: Failed to load resource: the server responded with a status of 404 (Not Found)"]
    watched.errors.clear()
    watched.close()


def program_lines() -> dict[str, str]:
    """Per client program, one failure line it printed in this build's client session (the
    most common), and nginx's most common error message (lab/nginx.py reads its log)."""
    counts: dict[str, dict[str, int]] = {}
    for path in sorted(CLIENT_TRACES.glob("*.json")):
        for entries in json.loads(path.read_text())["outcomes"].values():
            for e in entries:
                if "program" in e and "raised" in e:
                    line = counts.setdefault(e["program"]["id"], {})
                    line[e["raised"]] = line.get(e["raised"], 0) + 1
    for path in sorted(TRACES.glob("*.json")):
        for e in json.loads(path.read_text())["outcomes"].get("proxy", []):
            if e["call"] == "nginx error.log":
                found = re.search(r"\[error\] \d+#\d+: \*\d+ (.+?), client: ", e["returned"])
                if found:
                    line = counts.setdefault("nginx", {})
                    line[found.group(1)] = line.get(found.group(1), 0) + 1
    return {program: max(lines, key=lambda t: (lines[t], t)) for program, lines in counts.items()}


def test_a_pasted_program_line_is_searched_word_for_word(browser: Any, site_url: str) -> None:
    """A reader pastes the line their program printed: a word before a colon ("curl:") is
    searched, not read as a lunr field (assets/search-lines.js). The line is this build's."""
    lines = program_lines()
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    page = open_page(watched, site_url)
    search_ready(page)
    curl = search(page, lines["curl"], pasted=True)  # curl: (56) Recv failure: ...
    assert "curl" in parse_qs(urlparse(curl[0]).query)["h"][0].split(" "), curl[0]
    assert not page.input_value("input.md-search__input").count(":")
    watched.close()
