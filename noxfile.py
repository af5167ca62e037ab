"""Sessions: examples (record traces), tests, docs (record + build site), serve, bench.

    nox -s examples                      record every scenario
    nox -s examples -- closed-port       just one (several slugs may be given)
    nox -s examples -- --repeat 50 SLUG  record N times; fails if the trace's shape varies
"""

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["examples", "tests"]
nox.options.reuse_existing_virtualenvs = True

REQUIREMENTS = "requirements.txt"


def _install(session: nox.Session) -> None:
    session.install("-r", REQUIREMENTS)


@nox.session
def examples(session: nox.Session) -> None:
    """Record every scenario's trace (or the slugs given) into build/traces/."""
    _install(session)
    session.chdir("examples")
    session.run("python", "-m", "lab", "run", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Time the lab's own overhead and the whole catalogue; figures in build/bench/."""
    _install(session)
    session.chdir("examples")
    session.run("python", "-m", "lab", "bench", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (records every scenario fresh, then checks site and lab)."""
    _install(session)
    session.run("pytest", *session.posargs)
