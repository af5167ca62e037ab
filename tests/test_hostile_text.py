"""Recorded text is shown as text, never run as HTML: a run whose every recorded field is
hostile (a call's name, an exception's class and message, bytes a server sent, a log line
with double backticks, the Info column Wireshark prints for those bytes) is built into a
site and opened in Chromium.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from lab.artifact import ROOT

HOSTILE = 'x` <img src=x onerror=alert(1)> `y | *b* {{ packet 1 }} :material-close: ``z`` <script>alert(2)</script>'
EXAMPLE = '''"""A run whose applications meet hostile text in every field that is recorded."""

import socket
import struct

TITLE = "Hostile text"  # a title is plain text: the lab refuses <, > and & in it
PHASE, HOSTS = "established", ("client", "server")
TEXT = %r
PORT = 21  # Wireshark's FTP dissector shows what the server sent in its Info column


class Hostile(Exception):
    pass


Hostile.__name__ = Hostile.__qualname__ = "<img src=x onerror=alert(3)>"


def fail():
    raise Hostile(TEXT)


def run(client, server):
    listener = server.socket()
    listener.bind((server.ip, PORT))
    listener.listen()
    sock = client.socket()
    sock.connect((server.ip, PORT))
    conn, _ = listener.accept()
    with server.receives(".", source=client):
        conn.sendall(TEXT.encode())  # bytes the server sent...
    sock.recv(4096)  # ...and the client received
    try:
        client.record(TEXT, fail)  # a call named, and failing, with hostile text
    except Hostile:
        pass
    server.note("log", "ValueError: `` " + TEXT + " ``")  # a log line naming an exception
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with server.receives("R.", source=client):
        sock.close()


def claims(trace):
    trace.handshake("client", "server")
    trace.next("server", "P.", name="server-data")
    trace.next("client", ".", name="server-data-ack")
    trace.next("client", "R.", name="client-rst")
''' % HOSTILE
PAGE = """{{ short_answer }}

## The trace

{{ trace }}

The RST: {{ packet client-rst }}.

## The exchange

{{ diagram }}

## What each application saw

{{ outcomes }}

## Which counters moved

{{ counters }}

## Fix or avoid

**In short:** Read what the peer sent before closing.

## The example

{{ example }}

## Provenance

{{ provenance }}
"""


@pytest.fixture(scope="module")
def hostile_site(recorded_traces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("hostile")
    examples = base / "examples"
    shutil.copytree(ROOT / "examples", examples, ignore=shutil.ignore_patterns("__pycache__"))
    (examples / "hostile_text.py").write_text(EXAMPLE)
    traces = base / "traces"
    shutil.copytree(recorded_traces, traces, ignore=shutil.ignore_patterns(".run-*"))
    env = {**os.environ, "LAB_EXAMPLES": str(examples), "FIELDGUIDE_TRACES": str(traces), "NO_MKDOCS_2_WARNING": "1"}
    record = subprocess.run([sys.executable, "-m", "lab", "run", "--out", str(traces), "--update", "hostile-text"],
                            env=env, capture_output=True, text=True)
    assert record.returncode == 0, record.stderr
    shutil.copytree(ROOT / "docs", base / "docs")
    (base / "docs" / "scenarios" / "hostile-text.md").write_text(PAGE)
    with (base / "docs" / "fieldguide" / "chinese.yml").open("a", encoding="utf-8") as zh:  # hostile too
        zh.write(yaml.safe_dump({"hostile-text": {"title": HOSTILE, "summary": HOSTILE}}, allow_unicode=True))
    shutil.copy(ROOT / "mkdocs.yml", base / "mkdocs.yml")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(base / "site")],
                           cwd=base, env=env, capture_output=True, text=True)  # cwd: snippets read examples/
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return base / "site"


PAGES = ["scenarios/hostile-text/index.html", "symptoms/index.html", "index.html"]


def test_no_recorded_text_becomes_markup(hostile_site: Path) -> None:
    for page in sorted(hostile_site.rglob("*.html")):
        source = page.read_text()
        for markup in ("<img src=x", "<script>alert", "<b>b</b>", "<em>b</em>"):
            assert markup not in source, f"{page.relative_to(hostile_site)}: {markup}"
    shown = re.sub(r"<[^>]+>", "", (hostile_site / PAGES[0]).read_text())
    import html

    assert HOSTILE in html.unescape(shown), "the hostile text is shown, as text"
    assert "<img src=x onerror=alert(3)>" in html.unescape(shown), "the exception's class, as text"
    page = (hostile_site / PAGES[0]).read_text()
    wireshark = page[page.index('<div class="fg-wireshark">'):page.index('id="the-exchange"')]
    assert HOSTILE in html.unescape(re.sub(r"<[^>]+>", "", wireshark)), "Wireshark's Info column, as text"


def test_no_script_runs_in_a_browser(hostile_site: Path, browser: Any) -> None:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(hostile_site))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dialogs: list[str] = []
    try:
        context = browser.new_context()
        page = context.new_page()
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        for path in PAGES:
            page.goto(f"http://127.0.0.1:{server.server_port}/{path}", wait_until="load")
            page.wait_for_load_state("networkidle")
        context.close()
    finally:
        server.shutdown()
    assert dialogs == [], f"recorded text ran as a script: alert({dialogs})"
