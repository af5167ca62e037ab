"""Shared fixtures: one fresh recording per test session (own_recordings.py), and the site built from it.

The lab (examples/lab/) and the site's build (docs/fieldguide/) are installed packages
(`pip install -e .`, as nox does).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab.artifact import CLIENT_TRACES, ROOT, TRACES
from lab.runner import Runner
from lab.scenarios import all_slugs, client_slugs

from own_recordings import Recorded, install, require_every


def pytest_configure(config: pytest.Config) -> None:
    # the fixtures recorded, recorded_clients, recorded_traces and recorded_client_traces;
    # a failed recording reported at the top of the report and in its summary (own_recordings.py)
    install(
        config,
        catalogue=Recorded("the catalogue", TRACES, lambda: Runner(out=TRACES).run(all_slugs())),
        clients=Recorded("the client session", CLIENT_TRACES,
                         lambda: Runner(out=CLIENT_TRACES, programs=True).run(client_slugs())),
    )


# -- site ------------------------------------------------------------------------------
# The site's tests read the HTML of a site built from the traces recorded by this same
# test session (`recorded` and `recorded_clients`), with `mkdocs build --strict` into a
# temporary folder (a developer's site/ from `nox -s docs` is left alone).


@pytest.fixture(scope="session")
def recorded_live(recorded: Recorded, recorded_clients: Recorded) -> dict[str, Any]:
    """rst-explain --live's recording for the watch page (build/live/, `python -m lab live`),
    made after the other two, as `nox -s docs` makes it: its status.json."""
    from lab.live_record import LIVE, record

    try:
        return record(LIVE)
    except Exception as exc:  # noqa: BLE001  (the page's recording failed: every site test says so)
        pytest.fail(f"rst-explain --live's recording (python -m lab live) failed: {type(exc).__name__}: {exc}",
                    pytrace=False)


@pytest.fixture(scope="session")
def built_site(recorded: Recorded, recorded_clients: Recorded, recorded_live: dict[str, Any],
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built with `mkdocs build --strict` from the three recordings; returns its folder.
    A failed recording fails it by name (mkdocs' own error would show only its symptom)."""
    require_every(recorded, recorded_clients, why="the site is built from every recording")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}",
                    pytrace=False)
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site as GitHub Pages does: a missing path gets 404.html, with status 404."""

    def log_message(self, format: str, *args: Any) -> None:  # one line per request is noise
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        page = Path(self.directory) / "404.html"
        if code != 404 or not page.is_file():
            return super().send_error(code, message, explain)
        body = page.read_bytes()
        self.send_response(404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@pytest.fixture(scope="session")
def site_url(built_site: Path) -> Iterator[str]:
    """The built site served over HTTP on 127.0.0.1 (search's worker needs http, not file:)."""
    handler = functools.partial(_QuietHandler, directory=str(built_site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    thread.join()


# -- the browser ------------------------------------------------------------------------
# Debian's chromium, driven by Playwright (never `playwright install`); one per session,
# shared by every test that opens a page (Playwright's sync API allows one at a time).

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return ""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser tests: .ci/setup installs chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install playwright)")
    executable = chromium()
    if not executable:
        _unavailable("no chromium at /usr/bin/chromium (apt-get install chromium); "
                     "Playwright's own browser download is not used")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()
