"""A failed recording of the suite's own explains itself (own_recordings.py): a tiny suite,
run by pytester with fake recordings, shows the runner's message once at the top and once
in the summary, and its dependent tests fail naming the recording. No lab, no root."""

from __future__ import annotations

from pathlib import Path

import pytest
from lab.runner import Result, failures

from own_recordings import SECTION

pytest_plugins = ["pytester"]

CLAIM = "claim failed: server sends [R.] (packet 3: flags [F.])"
SHAPE = "the shape differs from examples/shapes/clients/lb-idle-reset-both.txt:\n-  server [R.]\n+  server [F.]"

CONFTEST = '''
from pathlib import Path

from lab.preflight import LabUnavailable
from lab.runner import Result
from own_recordings import Recorded, install

LOG = Path(__file__).parent / "recorded.log"


def fake(name, results):
    def record():
        with LOG.open("a") as log:
            log.write(name + "\\n")
        if isinstance(results, Exception):
            raise results
        return results
    return record


def pytest_configure(config):
    install(
        config,
        catalogue=Recorded("the catalogue", Path("traces"), fake("catalogue", {catalogue})),
        clients=Recorded("the client session", Path("client-traces"), fake("clients", {clients})),
    )
'''

TESTS = '''
import pytest
from own_recordings import require_every


@pytest.fixture(scope="session")
def site(recorded, recorded_clients):
    require_every(recorded, recorded_clients, why="the site is built from every recording")


def test_closed_port(recorded):
    assert recorded["closed-port"].ok


def test_graceful_close(recorded):
    recorded["graceful-close"]


def test_client_program(recorded_clients):
    recorded_clients.require("lb-idle-reset-both")


def test_a_page(site):
    pass


def test_no_recording():
    pass
'''

PASSED = 'Result("closed-port", True, 0.1)'
FAILED = f'Result("graceful-close", False, 0.2, {CLAIM!r})'
CLIENT_FAILED = f'Result("lb-idle-reset-both", False, 0.3, {SHAPE!r})'


def suite(pytester: pytest.Pytester, catalogue: str, clients: str, tests: str = TESTS) -> None:
    pytester.syspathinsert(Path(__file__).parent)  # own_recordings
    pytester.makeconftest(CONFTEST.format(catalogue=catalogue, clients=clients))
    pytester.makepyfile(test_suite=tests)


def recorded_log(pytester: pytest.Pytester) -> list[str]:
    log = pytester.path / "recorded.log"
    return log.read_text().split() if log.exists() else []


def test_the_runners_message_is_shown_at_the_top_and_in_the_summary(pytester: pytest.Pytester) -> None:
    suite(pytester, f"[{PASSED}, {FAILED}]", f"[{CLIENT_FAILED}]")
    run = pytester.runpytest("-vv")  # the short summary's lines whole
    out = run.stdout.str()
    run.assert_outcomes(passed=2, failed=2, errors=1)
    assert recorded_log(pytester) == ["catalogue", "clients"], "each recording is made once"
    for line in (CLAIM, "+  server [F.]", "--- lb-idle-reset-both failed ---"):
        assert out.count(line) == 2, (line, out)
    lines = out.splitlines()
    top, summary = (i for i, line in enumerate(lines) if line.strip("= ") == SECTION)
    first_test = next(i for i, line in enumerate(lines) if line.startswith("test_suite.py::"))
    failures_header = next(i for i, line in enumerate(lines) if "= FAILURES =" in line)
    assert "collected 5 items" in out.split(SECTION)[0] and top < first_test, out
    assert summary > failures_header, out
    assert CLAIM in "\n".join(lines[top:first_test]) and CLAIM in "\n".join(lines[summary:])
    run.stdout.fnmatch_lines([
        "FAILED test_suite.py::test_graceful_close - Failed: the catalogue's recording of graceful-close"
        f" failed: see '{SECTION}' at the top",
        "FAILED test_suite.py::test_client_program - Failed: the client session's recording of"
        f" lb-idle-reset-both failed: see '{SECTION}' at the top",
        "ERROR test_suite.py::test_a_page - Failed: the site is built from every recording: the catalogue's"
        " recording of graceful-close failed; the client session's recording of lb-idle-reset-both failed:"
        f" see '{SECTION}' at the top",
    ])


def test_a_failed_recording_fails_the_run_though_no_selected_test_needs_that_scenario(
        pytester: pytest.Pytester) -> None:
    suite(pytester, f"[{PASSED}, {FAILED}]", f"[{CLIENT_FAILED}]")
    run = pytester.runpytest("-k", "closed_port")
    run.assert_outcomes(passed=1, deselected=4)
    assert run.ret == pytest.ExitCode.TESTS_FAILED
    assert run.stdout.str().count(CLAIM) == 2
    assert recorded_log(pytester) == ["catalogue"], "no selected test needs the client session"


def test_nothing_is_recorded_that_no_test_needs(pytester: pytest.Pytester) -> None:
    suite(pytester, f"[{PASSED}, {FAILED}]", f"[{CLIENT_FAILED}]")
    for listing in ("--collect-only", "--setup-plan"):
        assert pytester.runpytest(listing).ret == pytest.ExitCode.OK
    run = pytester.runpytest("-k", "no_recording")
    assert run.ret == pytest.ExitCode.OK and SECTION not in run.stdout.str()
    assert recorded_log(pytester) == []


def test_recordings_that_passed_say_nothing(pytester: pytest.Pytester) -> None:
    suite(pytester, f"[{PASSED}]", "[]", "def test_closed_port(recorded):\n    assert recorded['closed-port'].ok\n")
    run = pytester.runpytest()
    assert run.ret == pytest.ExitCode.OK and SECTION not in run.stdout.str()
    assert recorded_log(pytester) == ["catalogue"]


@pytest.mark.parametrize(("raised", "shown"), [
    ('LabUnavailable("tcpdump is missing (apt-get install tcpdump)")',
     "the lab cannot run here: tcpdump is missing (apt-get install tcpdump)"),
    ('RuntimeError("a bug of the lab")', "RuntimeError: a bug of the lab"),
])
def test_a_lab_that_cannot_record_fails_the_tests_that_need_it(pytester: pytest.Pytester, raised: str,
                                                               shown: str) -> None:
    suite(pytester, raised, "[]", "def test_closed_port(recorded):\n    recorded['closed-port']\n")
    run = pytester.runpytest("-vv")  # the short summary's lines whole
    run.assert_outcomes(failed=1)
    assert run.stdout.str().count(shown) == 2, run.stdout.str()
    run.stdout.fnmatch_lines([f"FAILED test_suite.py::test_closed_port - Failed: the catalogue could not be"
                              f" recorded: see '{SECTION}' at the top"])


def test_failures_give_each_failed_scenario_once() -> None:
    """Repeated runs (`--repeat`): each failed slug once, with its first run's problem."""
    results = [Result("closed-port", True, 0.1), Result("graceful-close", False, 0.1, "first\n"),
               Result("graceful-close", False, 0.1, "second"), Result("keepalive-race", False, 0.1, "third")]
    assert failures(results) == ("--- graceful-close failed ---\nfirst\n\n"
                                 "--- keepalive-race failed ---\nthird")
    assert failures(results[:1]) == ""
