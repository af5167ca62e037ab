"""The "Explain a capture" page runs rst_explain itself, the commit's own Python, in the
reader's browser with Pyodide (CPython compiled to WebAssembly).

Published by the build, and by nothing else (no CDN, no package index):
- Pyodide's runtime, pinned and fetched once from npm (vendor.py), under
  assets/vendor/pyodide-VERSION/ (the version in the path: a new pin is a new address);
- every Python file of rst_explain (docs/explain/), under assets/explain/rst_explain/;
- assets/explain/manifest.json: those files with their SHA-256 (the page checks each before
  Python may import it), Pyodide's address, and each scenario's title and packet numbers for
  the verdicts' links (from this build's recordings: the packet numbers are never written down).

Only the page that has the explain form (its mark, `id="fg-explain"`) gets the script
(docs/assets/explain.js): no other page pays for 12 MB of Python.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

from lab.artifact import ROOT

from . import vendor
from .vendor import VENDOR

PYODIDE_VERSION = "314.0.8"
PYODIDE_INTEGRITY = "sha512-74Wq1kXOC+CCEzAfxuRAO701nAcCMLjf8NrwvWpu8S41dVMXwXmLQ05dYB+F4e46AdnGo0oq7YHSVUpHsoarLQ=="
# what loadPyodide() fetches from its indexURL when no package is loaded (the browser tests
# fail on any other request); the rest of the npm package (Node.js console, types, maps) is not served
PYODIDE_FILES = ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json")
PYODIDE_ASSETS = f"assets/vendor/pyodide-{PYODIDE_VERSION}/"
PACKAGE = "rst_explain"  # where its sources are: pyproject.toml's package-dir says
SOURCE_ASSETS = "assets/explain/"
MANIFEST = SOURCE_ASSETS + "manifest.json"
SCRIPT = "assets/explain.js"
PAGE_MARK = 'id="fg-explain"'


def pyodide_files() -> dict[str, Path]:
    """Site path -> the vendored file, for each file of Pyodide the page loads."""
    folder = VENDOR / f"pyodide-{PYODIDE_VERSION}"
    files = {name: folder / name for name in PYODIDE_FILES}
    vendor.npm_files("pyodide", PYODIDE_VERSION, PYODIDE_INTEGRITY,
                     {f"package/{name}": path for name, path in files.items()})
    return {PYODIDE_ASSETS + name: path for name, path in files.items()}


def python_files() -> dict[str, Path]:
    """Site path -> source, for each .py file of the rst_explain package (no caches)."""
    layout = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    package = ROOT / layout.get(PACKAGE, PACKAGE)
    if not (package / "__init__.py").is_file():
        raise vendor.VendorUnavailable(f"no Python package {PACKAGE} in {package}: the explain page needs it")
    return {f"{SOURCE_ASSETS}{PACKAGE}/{path.relative_to(package).as_posix()}": path
            for path in sorted(package.rglob("*.py")) if "__pycache__" not in path.parts}


def page_index(recordings: dict) -> dict[str, dict]:
    """slug -> its title and claim name -> packet number (the first of a group): a verdict names
    the packet that explains it (rst_explain's packet_name), the page anchors it as #packet-N."""
    index = {}
    for slug, rec in recordings.items():
        packets: dict[str, int] = {}
        for packet in rec.packets:
            if packet.name:
                packets.setdefault(packet.name, packet.number)
        index[slug] = {"title": rec.title, "packets": packets}
    return index


def manifest(pyodide: dict[str, Path], python: dict[str, Path], pages: dict[str, dict]) -> str:
    """What the page loads, as JSON: every path relative to the site's root."""
    return json.dumps({
        "pyodide": {"version": PYODIDE_VERSION, "index": PYODIDE_ASSETS,
                    "bytes": sum(path.stat().st_size for path in pyodide.values())},
        "package": PACKAGE,
        "files": [{"url": url, "path": url.removeprefix(SOURCE_ASSETS),
                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()} for url, path in python.items()],
        "pages": pages,
    }, indent=1, ensure_ascii=False)


def where_needed(output: str, url: str) -> str:
    """The page's HTML with the explain script added, if it has the explain form."""
    if PAGE_MARK not in output:
        return output
    up = "../" * url.count("/") if url else ""
    head, body_end, tail = output.rpartition("</body>")
    return f'{head}<script type="module" src="{up}{SCRIPT}"></script>{body_end}{tail}'
