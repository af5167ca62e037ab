"""The test session's own recordings (the catalogue, the client session), and a failed one
explaining itself in the report.

Each recording is made once, right after collection, when a collected test needs it (its
fixture, `recorded` or `recorded_clients`, is in the test's fixture closure), so that the
runner's message for a failed scenario (the failed claim, the shape diff) is printed at the
top of the report, before any test's symptoms, and again in the final summary. Tests that
need a failed recording fail saying which one, and point there; a failed recording fails the
run even when no selected test needs that scenario: the recording is what is tested.

A pytest plugin, install()ed by tests/conftest.py with the lab's runners and by
tests/test_own_recordings.py's small suites with fake ones.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from lab.artifact import Recording, load
from lab.preflight import LabUnavailable
from lab.runner import Result, failures

SECTION = "recordings that failed"


@dataclass
class Recorded:
    """One of the session's recordings: each scenario's Result, or why nothing was recorded."""

    name: str  # "the catalogue", "the client session"
    out: Path  # where its runs were published
    record: Callable[[], list[Result]] = field(repr=False)
    results: dict[str, Result] = field(default_factory=dict)
    error: str = ""  # the lab could not record at all
    done: bool = False
    where: str = "in the summary"  # where SECTION was printed first

    def failed(self) -> list[Result]:
        return [r for r in self.results.values() if not r.ok]

    def problem(self) -> str:
        """What SECTION says of this recording ("" if it passed)."""
        if self.error:
            return f"{self.name} could not be recorded:\n{self.error}"
        bad = self.failed()
        if not bad:
            return ""
        return (f"{self.name} ({self.out}): {len(bad)} of {len(self.results)} scenarios failed\n"
                + failures(bad))

    def missing(self, slugs: list[str] | None = None) -> str:
        """Which of these scenarios (all, for None) failed, "" if none: a clause."""
        if self.error:
            return f"{self.name} could not be recorded"
        bad = [r.slug for r in self.failed() if slugs is None or r.slug in slugs]
        bad += [s for s in slugs or [] if s not in self.results]  # a slug its runner never ran
        if not bad:
            return ""
        noun = "recording of" if len(bad) == 1 else "recordings of"
        return f"{self.name}'s {noun} {', '.join(bad)} failed"

    def require(self, *slugs: str, why: str = "") -> None:
        """Fail the test, naming the recording, unless these scenarios (all, if none given)
        passed. why: what the test needs them for, said first."""
        _fail_if_missing([self.missing(list(slugs) if slugs else None)], why, self.where)

    def __getitem__(self, slug: str) -> Result:
        self.require(slug)
        return self.results[slug]

    def every(self) -> dict[str, Result]:
        """Every scenario's Result, once all of them passed."""
        self.require()
        return self.results

    def load(self, slug: str) -> Recording:
        """The scenario's published recording (lab.artifact.load), once it passed."""
        self.require(slug)
        return load(slug, self.out)


def require_every(*recordings: Recorded, why: str) -> None:
    """Fail the test naming every failed recording among these (a site is built from all)."""
    _fail_if_missing([r.missing() for r in recordings], why, recordings[0].where)


def _fail_if_missing(missing: list[str], why: str, where: str) -> None:
    said = "; ".join(m for m in missing if m)
    if said:
        pytest.fail(f"{why + ': ' if why else ''}{said}: see '{SECTION}' {where}", pytrace=False)


class OwnRecordings:
    """The session's two recordings, each made at most once, in this order."""

    def __init__(self, catalogue: Recorded, clients: Recorded) -> None:
        # each needed by the tests whose fixture closure holds its fixture's name
        self.by_fixture = {"recorded": catalogue, "recorded_clients": clients}

    def record(self, recording: Recorded, config: pytest.Config) -> None:
        if recording.done:
            return
        recording.done = True
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        if terminal:
            terminal.write_line(f"recording {recording.name} into {recording.out} ...")
        try:
            recording.results = {r.slug: r for r in recording.record()}
        except LabUnavailable as exc:
            recording.error = f"the lab cannot run here: {exc}"
        except Exception:  # a bug of the lab itself: every test needing it says so
            recording.error = "the lab failed:\n" + traceback.format_exc()
        if terminal:
            passed = len(recording.results) - len(recording.failed())
            terminal.write_line(f"recorded {recording.name}: {passed}/{len(recording.results)} passed"
                                + (" (nothing recorded)" if recording.error else ""))

    def report(self) -> str:
        return "\n\n".join(p for p in (r.problem() for r in self.by_fixture.values() if r.done) if p)


_OWN = pytest.StashKey[OwnRecordings]()


def install(config: pytest.Config, catalogue: Recorded, clients: Recorded) -> None:
    """Make this module the session's plugin (its hooks and fixtures), with these recordings."""
    config.stash[_OWN] = OwnRecordings(catalogue, clients)
    config.pluginmanager.register(sys.modules[__name__], "own-recordings")


# -- hooks -------------------------------------------------------------------------------
@pytest.hookimpl(trylast=True)  # after the terminal's "collected N items"
def pytest_collection_finish(session: pytest.Session) -> None:
    config, own = session.config, session.config.stash[_OWN]
    if (config.option.collectonly or config.option.setupplan
            or (session.testsfailed and not config.option.continue_on_collection_errors)):
        return  # nothing will run (a collection error interrupts the run)
    needed = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    for fixture, recording in own.by_fixture.items():
        if fixture in needed:
            own.record(recording, config)
    report = own.report()
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if report and terminal:
        terminal.write_sep("=", SECTION, red=True, bold=True)
        terminal.write_line(report)
        for recording in own.by_fixture.values():
            recording.where = "at the top"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    report = config.stash[_OWN].report()
    if report:
        terminalreporter.write_sep("=", SECTION, red=True, bold=True)
        terminalreporter.write_line(report)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if session.config.stash[_OWN].report() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # a red run means a recording failed


# -- fixtures ----------------------------------------------------------------------------
# (a test asking for one at run time, getfixturevalue(), was not foreseen after collection:
# it is recorded then, and a failure of it reported in the summary only)
def _recorded(config: pytest.Config, fixture: str) -> Recorded:
    own = config.stash[_OWN]
    own.record(own.by_fixture[fixture], config)
    return own.by_fixture[fixture]


@pytest.fixture(scope="session")
def recorded(pytestconfig: pytest.Config) -> Recorded:
    """The catalogue: every scenario recorded fresh by this session into build/traces/."""
    return _recorded(pytestconfig, "recorded")


@pytest.fixture(scope="session")
def recorded_clients(pytestconfig: pytest.Config) -> Recorded:
    """The client session: the scenarios with a client again, each real client program after
    their steps, into build/client-traces/ (the site shows both, as after `nox -s clients`)."""
    return _recorded(pytestconfig, "recorded_clients")


@pytest.fixture(scope="session")
def recorded_traces(recorded: Recorded) -> Path:
    """build/traces/ after this session's recording, every scenario in it."""
    recorded.require(why="this test reads every recording of the catalogue")
    return recorded.out


@pytest.fixture(scope="session")
def recorded_client_traces(recorded_clients: Recorded) -> Path:
    """build/client-traces/ after this session's client session, every scenario in it."""
    recorded_clients.require(why="this test reads every recording of the client session")
    return recorded_clients.out
