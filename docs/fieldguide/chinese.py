"""For Chinese readers: each scenario's Chinese title and one-line summary (chinese.yml, written
for this site), and the Chinese text of each error as glibc prints it on a zh_CN system,
recorded from this machine's C library at build time, never typed.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

PAGES = Path(__file__).with_name("chinese.yml")
LOCALE = "zh_CN.UTF-8"
_ASK_GLIBC = """
import errno, json, locale, os, sys
locale.setlocale(locale.LC_ALL, "")  # without it, strerror() stays English
names = json.loads(sys.argv[1])
print(json.dumps({"glibc": os.confstr("CS_GNU_LIBC_VERSION"),
                  "messages": {n: os.strerror(getattr(errno, n)) for n in names if hasattr(errno, n)}}))
"""


ERRORS = "errors"  # chinese.yml's one key that is not a slug


def _read(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def pages(slugs: list[str], path: Path = PAGES) -> dict[str, dict[str, str]]:
    """slug -> {title, summary} (path: the site's chinese.yml); ValueError naming what is
    missing or extra."""
    found = {k: v for k, v in _read(path).items() if k != ERRORS}
    missing, extra = sorted(set(slugs) - set(found)), sorted(set(found) - set(slugs))
    bad = [s for s, v in found.items() if not isinstance(v, dict) or not v.get("title") or not v.get("summary")]
    if missing or extra or bad:
        raise ValueError(f"{PAGES.name}: missing {missing}, without example {extra}, incomplete {bad}")
    return found


def error_names(path: Path = PAGES) -> dict[str, str]:
    """errno name -> the Chinese name this guide's own Chinese text gives the error, where it
    says it otherwise than glibc (chinese.yml's `errors`: 对端 for peer, 重置 for reset, as
    its titles and summaries do); ValueError naming a key that is no errno."""
    found = _read(path).get(ERRORS) or {}
    bad = [k for k, v in found.items() if not isinstance(getattr(errno, str(k), None), int) or not v]
    if bad:
        raise ValueError(f"{PAGES.name}: {ERRORS}: not an errno name, or no name given: {bad}")
    return found


def glibc_messages(names: list[str]) -> dict[str, Any]:
    """{"messages": errno name -> glibc's zh_CN text, "by": "glibc 2.36, zh_CN.UTF-8"}, or
    {"messages": {}, "why": ...} where this machine has no such locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    proc = subprocess.run([sys.executable, "-c", _ASK_GLIBC, json.dumps(sorted(names))],
                          env={**env, "LC_ALL": LOCALE}, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"messages": {}, "why": f"this machine has no {LOCALE} locale (Debian package locales-all)"}
    answer = json.loads(proc.stdout)
    return {"messages": answer["messages"], "by": f"{answer['glibc']}, {LOCALE}"}
