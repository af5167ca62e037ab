"""Mermaid, served by the site itself (2.8 MB of JavaScript), and only on pages that draw a diagram.

The pinned copy is fetched once from the npm registry (`npm pack`, integrity checked) into
build/vendor/; no page ever asks a CDN for it.

mkdocs.yml lists the vendored mermaid.min.js in `extra_javascript` so that Material finds
a global `mermaid` and never fetches its own copy from a CDN. Listed there, though, it
would load on every page; the home page and the symptom index have no diagram and would
weigh ten times what they need (measured by tests/test_browser.py, build/page-weight.json).

This hook takes that entry, and docs/assets/diagrams.js (the diagrams' look and their
layout on a phone, set before Material draws them), out of the global list and adds the
same script tags, at the same place (after Material's bundle, before the page is ready),
to the pages whose HTML has a Mermaid block. It also wraps each diagram in a
`div.fg-diagram`, the only handle page styles have on it (Material draws it into a closed
shadow root, which no page style can reach): docs/assets/diagrams.css.
It relies on full page loads: with Material's `navigation.instant`
a page reached by instant navigation would not run the tag; the browser tests would then
see Material reach for the CDN and fail.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from lab.artifact import ROOT

log = logging.getLogger("mkdocs.hooks.fieldguide")

VENDOR = ROOT / "build" / "vendor"
MERMAID_VERSION = "11.12.2"
MERMAID_INTEGRITY = "sha512-n34QPDPEKmaeCG4WDMGy0OT6PSyxKCfy2pJgShP+Qow2KLrvWjclwbc3yXfSIf4BanqWEhQEpngWwNp/XhZt6w=="
MERMAID_ASSET = "assets/vendor/mermaid.min.js"
# the diagram pages' own scripts: Mermaid, then its set-up (docs/assets/diagrams.js), in the
# order mkdocs.yml lists them
DIAGRAM_SCRIPTS = ("mermaid.min.js", "diagrams.js")
DIAGRAM_MARK = 'class="mermaid"'
DIAGRAM = re.compile(r'<pre class="mermaid">.*?</pre>', re.DOTALL)


class MermaidUnavailable(RuntimeError):
    pass


def split_scripts(extra_javascript: list) -> list[str]:
    """Take the diagram scripts out of the site-wide list (in place); return what was taken."""
    taken, kept = [], []
    for script in extra_javascript:
        (taken if str(script).split("/")[-1] in DIAGRAM_SCRIPTS else kept).append(script)
    extra_javascript[:] = kept
    return taken


def where_needed(output: str, url: str, scripts: list[str]) -> str:
    """The page's HTML with the Mermaid script tags added, if it draws a diagram."""
    if not scripts or DIAGRAM_MARK not in output:
        return output
    up = "../" * url.count("/") if url else ""
    tags = "".join(f'<script src="{up}{script}"></script>' for script in scripts)
    output = DIAGRAM.sub(lambda m: f'<div class="fg-diagram">{m.group(0)}</div>', output)
    head, body_end, tail = output.rpartition("</body>")
    return head + tags + body_end + tail


def mermaid_file() -> Path:
    """build/vendor/mermaid-VERSION.min.js, fetched once with `npm pack` and checked."""
    target = VENDOR / f"mermaid-{MERMAID_VERSION}.min.js"
    if target.is_file():
        return target
    if not shutil.which("npm"):
        raise MermaidUnavailable("npm is needed once to fetch Mermaid (apt-get install npm)")
    VENDOR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=VENDOR) as tmp:
        proc = subprocess.run(["npm", "pack", f"mermaid@{MERMAID_VERSION}", "--json", "--pack-destination", tmp],
                              check=False, capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0:
            raise MermaidUnavailable(f"npm pack mermaid@{MERMAID_VERSION} failed: {proc.stderr.strip()}")
        info = json.loads(proc.stdout)[0]
        if info["integrity"] != MERMAID_INTEGRITY:
            raise MermaidUnavailable(f"mermaid@{MERMAID_VERSION} from npm has integrity {info['integrity']},"
                              f" expected {MERMAID_INTEGRITY}")
        with tarfile.open(Path(tmp) / info["filename"]) as tar:
            member = tar.extractfile("package/dist/mermaid.min.js")
            assert member is not None
            partial = target.with_suffix(".part")
            partial.write_bytes(member.read())
            partial.replace(target)
    log.info("fetched mermaid %s into %s", MERMAID_VERSION, target.relative_to(ROOT))
    return target
