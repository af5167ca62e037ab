"""Every recording the site is built from, checked before any page is: or the build fails by name.

A scenario fails the build when its recording is missing, older than its example or the
lab, is not sealed by the run that made it (a field, a line or a byte edited by hand, or
files from two runs), has packets other than its pcap's, failed a claim, has a packet
neither named nor declared noise, or has no page. The page shows only what the pcap and
the run's own sealed record say.
"""

from __future__ import annotations

import ast
import hmac
from pathlib import Path

from lab import scenarios, shapes
from lab.artifact import CLIENT_TRACES, ArtifactError, Recording, key, load, paths, seal
from lab.capture import read_packets

from . import NO_PROGRAMS
from .render import check_anchors, records

def example_why(slug: str) -> str:
    """The example docstring's second paragraph: the mechanism, in the author's words (a third,
    how the lab decides a race, stays with the example's code)."""
    doc = ast.get_docstring(ast.parse(scenarios.path_of(slug).read_text())) or ""
    paragraphs = doc.split("\n\n")
    return " ".join(paragraphs[1].split()) if len(paragraphs) > 1 else ""


CLIENTS_COMMAND = "nox -s clients"  # records the client session (lab/clients.py), build/client-traces/


def _again(slug: str, programs: bool) -> str:
    return f"`{CLIENTS_COMMAND if programs else 'nox -s examples'} -- {slug}`"


def stale(slug: str, rec: Recording, json_file: Path, programs: bool = False) -> str:
    """Why a recording is not from the current example and lab ("" if it is): older than
    one of their files, or recorded from other sources (a copy's dates prove nothing).
    Other kernels' recordings (kernels.py) and the client session's (programs: with the
    client programs' files too) are judged the same way."""
    sources = [scenarios.path_of(slug), *sorted((scenarios.EXAMPLES / "lab").glob("*.py"))]
    if programs:
        sources += sorted((scenarios.EXAMPLES / "clients").glob("*.*"))
    newer = [p for p in sources if p.stat().st_mtime > json_file.stat().st_mtime]
    if newer:
        return f"the trace is older than {newer[0].name}; record it again: {_again(slug, programs)}"
    if rec.sources_sha256 != scenarios.sources_digest(slug, programs):
        return ("the trace was recorded from another version of the example or the lab;"
                f" record it again: {_again(slug, programs)}")
    return ""


def load_checked(slug: str, secret: bytes, programs: bool = False) -> Recording:
    """programs: the client session's recording (build/client-traces/), with its own shapes."""
    rec = load(slug, CLIENT_TRACES if programs else None)
    assert rec.pcap is not None
    pcap = rec.pcap.read_bytes()
    if not hmac.compare_digest(rec.signature, seal(rec, rec.text.encode(), pcap, secret)):
        raise ArtifactError("the recording is not the one its run sealed (edited, or put together from"
                            f" several runs); record it again: {_again(slug, programs)}")
    why = stale(slug, rec, rec.pcap.with_suffix(".json"), programs)
    if why:
        raise ArtifactError(why)
    failed = [c["claim"] for c in rec.claims if not c["passed"]]
    if failed or not rec.claims:
        raise ArtifactError("the recording's claims did not hold: " + "; ".join(failed or ["no claims"]))
    unnamed = [p.label() for p in rec.packets if not p.name and not p.noise]
    if unnamed:
        raise ArtifactError("packets neither named by a claim nor declared noise: " + "; ".join(unnamed))
    derived = read_packets(rec.pcap, rec.addresses)  # the packets shown are the pcap's own
    if derived != [p.wire() for p in rec.packets]:
        raise ArtifactError(f"the packets of {slug}.json are not those of {rec.pcap.name}")
    records(rec)  # the text and the capture must agree packet for packet
    check_anchors(rec)
    difference = shapes.difference(slug, rec.shape, programs)  # the committed shape, as the run checked it
    if difference:
        raise ArtifactError(difference)
    return rec


def load_all(docs: Path) -> dict[str, Recording]:
    """slug -> its checked recording, for every example; ArtifactError listing every problem
    (docs: the site's docs folder, where each scenario's page must be)."""
    found, problems = {}, []
    slugs = scenarios.all_slugs()
    secret = key()
    for slug in slugs:
        try:
            found[slug] = load_checked(slug, secret)
        except (ArtifactError, ValueError, KeyError) as exc:
            problems.append(f"scenario {slug}: {exc}")
    pages = {p.stem for p in (docs / "scenarios").glob("*.md")}
    for slug in sorted(set(slugs) - pages):
        problems.append(f"scenario {slug}: no page docs/scenarios/{slug}.md (copy docs/scenarios/closed-port.md)")
    for slug in sorted(pages - set(slugs)):
        problems.append(f"scenario {slug}: docs/scenarios/{slug}.md has no example"
                        f" examples/{slug.replace('-', '_')}.py")
    if problems:
        raise ArtifactError("the site cannot be built from these traces:\n  " + "\n  ".join(problems))
    return found


def load_clients() -> dict[str, Recording]:
    """The client session's recordings (build/client-traces/): every scenario with a client,
    each checked as load_checked() checks the catalogue's. ArtifactError naming each scenario
    whose recording is missing (its run failed or did not run), stale or not as its run
    sealed it: a build that shows the programs shows this session's lines, never an older
    run's, or fails (a build asked for without them does not call this: hooks.py)."""
    slugs = scenarios.client_slugs()
    if not slugs:
        raise ArtifactError(f"no scenario runs the client programs (each_program()): build with {NO_PROGRAMS}")
    problems, found = [], {}
    try:
        secret = key(CLIENT_TRACES)
    except ArtifactError as exc:  # no session was recorded there, or its key is broken
        problems.append(str(exc))
        secret = b""
    for slug in slugs if secret else []:
        missing = [p.name for p in paths(slug, CLIENT_TRACES) if not p.is_file()]
        try:
            if missing:
                raise ArtifactError(f"no recording ({', '.join(missing)} missing): its run failed or was not"
                                    f" run; record it: {_again(slug, True)}")
            found[slug] = load_checked(slug, secret, programs=True)
        except (ArtifactError, ValueError, KeyError) as exc:
            problems.append(f"scenario {slug}: {exc}")
    if problems:
        raise ArtifactError("the real client programs' lines cannot be shown from the client session's"
                            " recordings (`nox -s docs` records them after the catalogue; a build without"
                            f" them: `nox -s docs -- {NO_PROGRAMS}`):\n  " + "\n  ".join(problems))
    return found
