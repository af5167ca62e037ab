"""The "Explain a capture" page in Chromium: the command line's verdicts, in the reader's tab.

The page runs rst_explain itself (Pyodide, docs/fieldguide/explainer.py). For every
recording of this session, uploaded as a pcap and pasted as the text that tcpdump itself
prints for it, the page must show what `rst_explain.explain()` returns here: the same RSTs,
the same pages in the same order with the same scores, evidence, next steps and notes.
No request may leave the served origin (every request the context makes is checked), and
once loaded the page must work with the network cut.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import rst_explain
from lab.artifact import TRACES
from test_browser import (
    DESKTOP,
    MOBILE,
    SCREENSHOTS,
    SLUGS,
    Watched,
    choose_palette,
    settled_screenshot,
)

PASTED = "the pasted lines"  # the name the page gives pasted text (docs/assets/explain.js)
PAGE_DESKTOP = {"width": 1366, "height": 900}
SCREENSHOT_CASE = "keepalive-race"  # a RST, a tie with what to check next, and a note

# What the page shows, read back from its DOM (machine values from its data-* attributes)
SHOWN = """() => {
  const texts = (root, selector) => [...root.querySelectorAll(selector)].map(e => e.textContent);
  const verdicts = root => [...root.querySelectorAll(':scope > ol.fg-verdicts > li.fg-verdict')].map(v => ({
    slug: v.dataset.slug, score: JSON.parse(v.dataset.score),
    link: (v.querySelector('a.fg-explain-page') || {}).href || null,
    tied: v.querySelector('.fg-verdict-score').textContent.includes('tied for first'),
    evidence: texts(v, '.fg-evidence li'), against: texts(v, '.fg-against li')}));
  const result = document.querySelector('#fg-explain .fg-explain-result');
  return {
    rsts: [...result.querySelectorAll('.fg-explain-rst')].map(s => ({
      packet: JSON.parse(s.dataset.packet), time: JSON.parse(s.dataset.time),
      heading: s.querySelector('h3').textContent, flow: texts(s, '.fg-explain-flow code'),
      verdicts: verdicts(s), next: texts(s, '.fg-next li')})),
    notes: [...result.querySelectorAll('.fg-notes > li')].map(n => ({
      text: n.querySelector('.fg-note-text').textContent, verdicts: verdicts(n)})),
  };
}"""


class Origin:
    """Every request of a browser context, by Playwright's request events: each must be
    for the served origin (data: and blob: URLs are the page's own memory, not requests out)."""

    def __init__(self, watched: Watched, site_url: str) -> None:
        self.origin = urlparse(site_url).netloc
        self.requests: list[str] = []
        watched.context.on("request", lambda request: self.requests.append(request.url))

    def outside(self) -> list[str]:
        return [url for url in self.requests
                if urlparse(url).scheme not in ("data", "blob") and urlparse(url).netloc != self.origin]


def tcpdump_text(pcap: Path) -> str:
    """What `tcpdump -n -r` prints for the capture: the lines a reader pastes."""
    if not shutil.which("tcpdump"):
        pytest.fail("tcpdump is needed to print the captures as text (apt-get install tcpdump)")
    proc = subprocess.run(["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True, check=True)
    return proc.stdout


def packet_link(site_url: str, slug: str, packet_name: str | None) -> str:
    """The page of `slug`, at the packet its recording names `packet_name` (#packet-N)."""
    numbers = [p["number"] for p in json.loads((TRACES / f"{slug}.json").read_text())["packets"]
               if packet_name and p.get("name") == packet_name]
    return f"{site_url}scenarios/{slug}/" + (f"#packet-{numbers[0]}" if numbers else "")


def expected(data: bytes, name: str, site_url: str) -> dict[str, Any]:
    """rst_explain's answer on this machine, in the shape SHOWN reads from the page."""
    result = rst_explain.explain(data, name)

    def verdicts(found: list[dict], tie: list[str]) -> list[dict]:
        return [{"slug": v["slug"], "score": v["score"], "link": packet_link(site_url, v["slug"], v["packet_name"]),
                 "tied": len(tie) > 1 and v["slug"] in tie, "evidence": v["evidence"], "against": v["against"]}
                for v in found]

    return {
        "rsts": [{"packet": rst["packet"], "time": rst["time"],
                  "heading": f"RST {i + 1}: packet {rst['packet']}, [{rst['flags']}] at {rst['at']}",
                  "flow": [rst["src"], rst["dst"]], "verdicts": verdicts(rst["verdicts"], rst["tie"]),
                  "next": rst["next"]} for i, rst in enumerate(result["rsts"])],
        "notes": [{"text": note["text"] + (f" (packet {note['packet']})" if note["packet"] else ""),
                   "verdicts": verdicts(note["verdicts"], [v["slug"] for v in note["verdicts"]
                                                           if v["score"] == note["verdicts"][0]["score"]])}
                  for note in result["notes"]],
    }


def open_explain(watched: Watched, site_url: str) -> Any:
    page = watched.page()
    page.goto(f"{site_url}explain/", wait_until="load")
    page.wait_for_function("document.getElementById('fg-explain').dataset.state !== 'loading'", timeout=60000)
    assert page.locator("#fg-explain").get_attribute("data-state") == "ready", page.locator(
        ".fg-explain-status").inner_text()
    return page


def explain_file(page: Any, path: Path) -> None:
    page.evaluate("document.getElementById('fg-explain').dataset.state = 'waiting'")
    page.locator("#fg-explain-file").set_input_files(str(path))
    page.wait_for_function("document.getElementById('fg-explain').dataset.state === 'ready'", timeout=60000)


def explain_text(page: Any, text: str) -> None:
    page.evaluate("document.getElementById('fg-explain').dataset.state = 'waiting'")
    page.locator("#fg-explain-text").fill(text)
    page.locator("#fg-explain button[type=submit]").click()
    page.wait_for_function("document.getElementById('fg-explain').dataset.state === 'ready'", timeout=60000)


def shown(page: Any) -> dict[str, Any]:
    return page.evaluate(SHOWN)


def status(page: Any) -> tuple[str, str]:
    box = page.locator("#fg-explain .fg-explain-status")
    return box.get_attribute("data-kind") or "", box.inner_text()


# -- the same verdicts as the command line --------------------------------------------------------

def test_every_recording_gets_the_command_lines_verdicts(browser: Any, site_url: str,
                                                         recorded_traces: Path) -> None:
    """Each recording, uploaded and pasted as tcpdump printed it: the page equals rst_explain."""
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    origin = Origin(watched, site_url)
    page = open_explain(watched, site_url)
    differences = []
    for slug in SLUGS:
        pcap = recorded_traces / f"{slug}.pcap"
        text = tcpdump_text(pcap)
        for what, data, name in ((f"{slug}.pcap", pcap.read_bytes(), pcap.name),
                                 (f"{slug} as text", text.encode(), PASTED)):
            if name == PASTED:
                explain_text(page, text)
            else:
                explain_file(page, pcap)
            assert status(page)[0] != "error", (what, status(page))
            page_says, cli_says = shown(page), expected(data, name, site_url)
            if page_says != cli_says:
                differences.append(f"{what}:\n  page {page_says}\n  cli  {cli_says}")
    assert not differences, "\n".join(differences)
    assert not origin.outside(), origin.outside()
    watched.close()


def test_a_verdict_links_to_the_page_and_the_packet(browser: Any, site_url: str) -> None:
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    page = open_explain(watched, site_url)
    explain_file(page, TRACES / "closed-port.pcap")
    link = page.locator("#fg-explain .fg-verdict a.fg-explain-page").first
    href = urlparse(link.get_attribute("href"))
    link.click()
    page.wait_for_url(f"**{href.path}*")
    if href.fragment:  # the packet the page names, highlighted on its trace
        assert page.locator(f".fg-trace #{href.fragment}").count() == 1
    watched.close()


def test_controls_look_disabled_while_loading_and_points_are_explained(browser: Any, site_url: str) -> None:
    """Disabled (as they are until the explainer has loaded), the button and the file chooser
    look it; a verdict's number says what it is, in words."""
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    page = open_explain(watched, site_url)
    controls = "#fg-explain .fg-explain-actions .md-button"
    looks = f"[...document.querySelectorAll('{controls}')].map(b => getComputedStyle(b).opacity)"
    assert page.evaluate(looks) == ["1", "1"]
    page.evaluate("document.querySelectorAll('#fg-explain button, #fg-explain input').forEach(c => c.disabled = true)")
    assert all(float(opacity) < 0.5 for opacity in page.evaluate(looks))
    page.evaluate("document.querySelectorAll('#fg-explain button, #fg-explain input').forEach(c => c.disabled = false)")
    explain_file(page, TRACES / "closed-port.pcap")
    assert "only their order, and ties, mean anything" in page.locator("#fg-explain .fg-explain-points").first.inner_text()
    assert page.locator("#fg-explain .fg-verdict-score").first.inner_text().split(" ")[1].startswith("point")
    watched.close()


# -- bad input: the explainer's own sentence, never a traceback ---------------------------------

NOT_TCPDUMP = b"Connection reset by peer\nand nothing else tcpdump would print\n"


def bad_inputs(traces: Path) -> dict[str, bytes]:
    return {"no-tcpdump-lines.txt": NOT_TCPDUMP,
            "not-a-capture.bin": bytes(range(256)) * 8,
            "truncated.pcap": (traces / "closed-port.pcap").read_bytes()[:60]}  # cut inside a packet


def test_bad_input_shows_the_explainers_message(browser: Any, site_url: str, tmp_path: Path,
                                                recorded_traces: Path) -> None:
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    page = open_explain(watched, site_url)
    explain_file(page, recorded_traces / "closed-port.pcap")  # a result first: it must not stay
    for name, data in bad_inputs(recorded_traces).items():
        with pytest.raises(rst_explain.ExplainError) as refused:
            rst_explain.explain(data, name)
        path = tmp_path / name
        path.write_bytes(data)
        explain_file(page, path)
        assert status(page) == ("error", str(refused.value)), name
        assert page.locator("#fg-explain .fg-explain-result").inner_text() == "", name
    explain_text(page, NOT_TCPDUMP.decode())
    with pytest.raises(rst_explain.ExplainError) as refused:
        rst_explain.explain(NOT_TCPDUMP, PASTED)
    assert status(page) == ("error", str(refused.value))
    assert "Traceback" not in page.locator("article").inner_text()
    watched.close()


def test_pasted_markup_is_shown_as_text(browser: Any, site_url: str, recorded_traces: Path) -> None:
    """A host name is whatever the reader pastes: the page writes it as text, never as HTML."""
    hostile = "<img/src=x/onerror=document.body.dataset.pwned=1>"
    text = tcpdump_text(recorded_traces / "closed-port.pcap").replace("192.0.2.2.", f"{hostile}.")
    assert hostile in json.dumps(rst_explain.explain(text.encode(), PASTED))  # the explainer echoes it
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    page = open_explain(watched, site_url)
    explain_text(page, text)
    result = page.locator("#fg-explain .fg-explain-result")
    assert hostile in result.inner_text()
    assert result.locator("img").count() == 0
    assert page.evaluate("document.body.dataset.pwned") is None
    watched.close()


def test_a_source_that_is_not_the_published_one_is_not_run(browser: Any, site_url: str) -> None:
    """The page checks each .py file against the manifest's SHA-256 before Python sees it."""
    context = browser.new_context(viewport=DESKTOP)
    context.route("**/assets/explain/rst_explain/__init__.py*",
                  lambda route: route.fulfill(status=200, body="raise SystemExit('not the published file')\n"))
    page = context.new_page()
    page.goto(f"{site_url}explain/", wait_until="load")
    page.wait_for_function("document.getElementById('fg-explain').dataset.state !== 'loading'", timeout=60000)
    assert page.locator("#fg-explain").get_attribute("data-state") == "failed"
    assert status(page) == ("error", "The explainer could not be loaded (this page's files did not arrive whole)."
                                     " Reload the page to try again.")
    assert page.locator("#fg-explain-file").is_disabled()
    context.close()


# -- nothing leaves the reader's machine ---------------------------------------------------------

def test_it_works_offline_once_loaded(browser: Any, site_url: str, recorded_traces: Path) -> None:
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    origin = Origin(watched, site_url)
    page = open_explain(watched, site_url)
    page.wait_for_load_state("networkidle")
    loaded = len(origin.requests)
    watched.context.set_offline(True)
    pcap = recorded_traces / "unread-data-close.pcap"
    explain_file(page, pcap)
    assert status(page)[0] != "error", status(page)
    assert shown(page) == expected(pcap.read_bytes(), pcap.name, site_url)
    text = tcpdump_text(pcap)
    explain_text(page, text)
    assert shown(page) == expected(text.encode(), PASTED, site_url)
    assert origin.requests[loaded:] == [], "the page asked for more once loaded"
    assert not origin.outside(), origin.outside()
    watched.context.set_offline(False)
    watched.close()


# -- what a reader sees ------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("viewport", [PAGE_DESKTOP, MOBILE], ids=["desktop", "mobile"])
def test_screenshots_of_a_result(browser: Any, site_url: str, recorded_traces: Path,
                                 scheme: str, viewport: dict[str, int]) -> None:
    """Saved for a person to look at (build/screenshots/explain-*); the page must not scroll sideways."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    suffix = f"{scheme}-{'desktop' if viewport == PAGE_DESKTOP else 'mobile'}.png"
    watched = Watched(browser, viewport=viewport, color_scheme=scheme, is_mobile=viewport == MOBILE)
    page = open_explain(watched, site_url)
    choose_palette(page, scheme)
    settled_screenshot(page, SCREENSHOTS / f"explain-{suffix}")
    explain_file(page, recorded_traces / f"{SCREENSHOT_CASE}.pcap")
    assert page.locator("#the-verdicts").bounding_box()["y"] < viewport["height"] / 3, "the answer is brought up"
    settled_screenshot(page, SCREENSHOTS / f"explain-result-{suffix}")
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    watched.close()


def test_home_and_symptom_index_link_the_page(browser: Any, site_url: str) -> None:
    watched = Watched(browser, viewport=DESKTOP, color_scheme="light")
    for path in ("", "symptoms/"):
        page = watched.page()
        page.goto(f"{site_url}{path}", wait_until="load")
        assert page.locator("article a[href$='explain/']").count() >= 1, f"/{path} does not link the page"
    watched.close()


def test_the_manifest_lists_the_commits_python(site_url: str, built_site: Path) -> None:
    """The page runs the files the build published, each listed with its SHA-256."""
    manifest = json.loads((built_site / "assets/explain/manifest.json").read_text())
    package = Path(rst_explain.__file__).parent
    sources = {p.relative_to(package).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    assert {f["path"].removeprefix("rst_explain/") for f in manifest["files"]} == sources
    for file in manifest["files"]:
        assert hashlib.sha256((built_site / file["url"]).read_bytes()).hexdigest() == file["sha256"]
        assert hashlib.sha256((package / file["path"].removeprefix("rst_explain/")).read_bytes()).hexdigest() == (
            file["sha256"]), file["path"]


def test_a_pyodide_tarball_of_another_integrity_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pin is the registry's sha512: a tarball that is not the pinned one leaves nothing behind."""
    from fieldguide import explainer, vendor

    if not shutil.which("npm"):
        pytest.fail("npm is needed to fetch Pyodide (apt-get install npm)")
    monkeypatch.setattr(vendor, "VENDOR", tmp_path)
    target = tmp_path / "pyodide" / "pyodide.mjs"
    with pytest.raises(vendor.VendorUnavailable, match="has integrity sha512-"):
        vendor.npm_files("pyodide", explainer.PYODIDE_VERSION, "sha512-" + "A" * 86 + "==",
                         {"package/pyodide.mjs": target})
    assert not target.exists() and list(tmp_path.iterdir()) == []
