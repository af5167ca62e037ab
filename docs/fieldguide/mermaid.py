"""Mermaid, served by the site itself (2.8 MB of JavaScript), and only on pages that draw a diagram.

The pinned copy is fetched once from the npm registry (vendor.py: `npm pack`, integrity checked)
into build/vendor/; no page ever asks a CDN for it.

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

import re
from pathlib import Path

from . import vendor
from .vendor import VENDOR

MERMAID_VERSION = "11.12.2"
MERMAID_INTEGRITY = "sha512-n34QPDPEKmaeCG4WDMGy0OT6PSyxKCfy2pJgShP+Qow2KLrvWjclwbc3yXfSIf4BanqWEhQEpngWwNp/XhZt6w=="
MERMAID_ASSET = "assets/vendor/mermaid.min.js"
# the diagram pages' own scripts: Mermaid, then its set-up (docs/assets/diagrams.js), in the
# order mkdocs.yml lists them
DIAGRAM_SCRIPTS = ("mermaid.min.js", "diagrams.js")
DIAGRAM_MARK = 'class="mermaid"'
DIAGRAM = re.compile(r'<pre class="mermaid">.*?</pre>', re.DOTALL)


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
    vendor.npm_files("mermaid", MERMAID_VERSION, MERMAID_INTEGRITY, {"package/dist/mermaid.min.js": target})
    return target
