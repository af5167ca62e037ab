"""MkDocs hook: the self-hosted Mermaid (2.8 MB of JavaScript) only on pages that draw a diagram.

mkdocs.yml lists the vendored mermaid.min.js in `extra_javascript` so that Material finds
a global `mermaid` and never fetches its own copy from a CDN. Listed there, though, it
would load on every page; the home page and the symptom index have no diagram and would
weigh ten times what they need (measured by tests/test_browser.py, build/page-weight.json).

This hook takes that entry out of the global list and adds the same script tag, at the
same place (after Material's bundle, before the page is ready), to the pages whose HTML
has a Mermaid block. It also wraps each diagram in a `div.fg-diagram` that
docs/assets/diagrams.css lets scroll sideways: on a phone a sequence diagram keeps a
readable width instead of shrinking its labels to a few pixels (Material draws it into a
closed shadow root, which no page style can reach, so the wrapper is the only handle).
It relies on full page loads: with Material's `navigation.instant`
a page reached by instant navigation would not run the tag; the browser tests would then
see Material reach for the CDN and fail.
"""

from __future__ import annotations

import re

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.pages import Page

MERMAID_SCRIPT = "mermaid.min.js"
DIAGRAM_MARK = 'class="mermaid"'
DIAGRAM = re.compile(r'<pre class="mermaid">.*?</pre>', re.DOTALL)
scripts: list[str] = []


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    scripts.clear()
    kept = []
    for script in config.extra_javascript:
        (scripts if str(script).endswith(MERMAID_SCRIPT) else kept).append(script)
    config.extra_javascript[:] = kept
    return config


def on_post_page(output: str, page: Page, config: MkDocsConfig) -> str:
    if not scripts or DIAGRAM_MARK not in output:
        return output
    up = "../" * page.url.count("/") if page.url else ""
    tags = "".join(f'<script src="{up}{script}"></script>' for script in scripts)
    output = DIAGRAM.sub(lambda m: f'<div class="fg-diagram">{m.group(0)}</div>', output)
    head, body_end, tail = output.rpartition("</body>")
    return head + tags + body_end + tail
