"""What the site serves from npm packages (Mermaid, Pyodide): fetched once, checked, kept.

`npm pack` fetches the pinned version's tarball from the npm registry; its integrity (the
registry's sha512) must be the one pinned here, or nothing is kept. The files the site
needs are taken out of it into build/vendor/, whole or not at all (written to a temporary
name, then renamed), so an interrupted fetch is fetched again, never served half.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from lab.artifact import ROOT

log = logging.getLogger("mkdocs.hooks.fieldguide")

VENDOR = ROOT / "build" / "vendor"


class VendorUnavailable(RuntimeError):
    pass


def npm_files(package: str, version: str, integrity: str, members: dict[str, Path]) -> None:
    """Extract `members` (path in the tarball -> target path) of package@version, unless all exist."""
    if all(target.is_file() for target in members.values()):
        return
    if not shutil.which("npm"):
        raise VendorUnavailable(f"npm is needed once to fetch {package} (apt-get install npm)")
    VENDOR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=VENDOR) as tmp:
        proc = subprocess.run(["npm", "pack", f"{package}@{version}", "--json", "--pack-destination", tmp],
                              check=False, capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0:
            raise VendorUnavailable(f"npm pack {package}@{version} failed: {proc.stderr.strip()}")
        info = json.loads(proc.stdout)[0]
        if info["integrity"] != integrity:
            raise VendorUnavailable(f"{package}@{version} from npm has integrity {info['integrity']},"
                                    f" expected {integrity}")
        with tarfile.open(Path(tmp) / info["filename"]) as tar:
            for member, target in members.items():
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise VendorUnavailable(f"{package}@{version} has no file {member}")
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".part")
                partial.write_bytes(extracted.read())
                partial.replace(target)
    log.info("fetched %s %s into %s", package, version, VENDOR.relative_to(ROOT))
