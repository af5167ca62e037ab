"""Sessions: examples (record traces), tests, docs (record + build site), serve, bench.

    nox -s examples                          record every scenario
    nox -s examples -- closed-port           just one (several slugs may be given)
    nox -s examples -- --update SLUG         accept a changed shape into examples/shapes/
    nox -s examples -- --repeat 50 SLUG      record N times; fails if the trace's shape varies
    nox -s soak -- 30                        30 catalogue runs, 10 client sessions, one CPU busy: the races
    nox -s clients                           the client session alone: real client programs (build/client-traces/)
    nox -s docs                              record every scenario, then the client session, and build site/ (--strict)
    nox -s docs -- --no-programs             the same without the client programs (no page shows their lines)
    nox -s matrix                            record every scenario on each other kernel (lab/kernels.py)
    nox -s site                              build site/ from build/traces/ (what the tests recorded)
    nox -s serve                             preview the site from the traces in build/traces/

The lab (examples/lab/) and the site's build (docs/fieldguide/) are one installable
project (pyproject.toml): every session installs it, editable, with its test extras.
"""

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["examples", "tests"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session) -> None:
    # compiled at install: every lab worker, mkdocs and the notebook's kernel import from
    # bytecode even where PYTHONDONTWRITEBYTECODE is set (uv does not compile by default)
    session.install("-e", ".[test]", env={"UV_COMPILE_BYTECODE": "1"})


@nox.session
def examples(session: nox.Session) -> None:
    """Record every scenario's trace (or the slugs given) into build/traces/."""
    _install(session)
    session.run("python", "-m", "lab", "run", *session.posargs)


@nox.session
def clients(session: nox.Session) -> None:
    """The client session: the scenarios with a client, each real client program (curl, Node.js,
    Go, Java, Python's libraries) run after their steps, into build/client-traces/ (their own
    session: the programs' start-up would stretch the catalogue's run; `nox -s docs` records it
    after the catalogue; `nox -s bench` times it)."""
    _install(session)
    session.run("python", "-m", "lab", "run", "--programs", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """Record the catalogue N times and the client session N/3 times with one CPU kept busy:
    `nox -s soak -- [N] [SLUG...]`; per scenario and program session, the runs that failed and
    why (build/soak.json; failed runs' folders in build/soak/failures/). Not part of the tests."""
    _install(session)
    session.run("python", "-m", "lab", "soak", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Time the lab's own overhead, the whole catalogue, the client session (CPU per program),
    `nox -s docs` (programs included), and each other kernel's boot and catalogue (`-- --kernels`
    boots them; `-- --kernels-only`); build/bench/."""
    _install(session)
    session.run("python", "-m", "lab", "bench", *session.posargs)


@nox.session
def explain(session: nox.Session) -> None:
    """For each RST in the captures given (pcap, pcapng, tcpdump text, - for stdin), the pages
    that explain it: `nox -s explain -- FILE...` (the console script rst-explain)."""
    _install(session)
    session.run("rst-explain", *session.posargs)


@nox.session
def matrix(session: nox.Session) -> None:
    """Record the whole catalogue on each kernel of lab/kernels.py, one guest boot per kernel,
    into build/traces/KERNEL/ (`-- --kernel NAME` for one). Not part of `nox -s docs`: the
    site reuses these recordings while they are fresh."""
    _install(session)
    session.run("python", "-m", "lab", "matrix", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Record every scenario fresh, then the client session, and build the site into
    site/ (--strict), overlapped (docs/fieldguide/build.py): the build waits for each run's end
    to read it. `-- --no-programs`: the catalogue alone, and no page shows the programs' lines."""
    _install(session)
    session.run("python", "-m", "fieldguide.build", *session.posargs)


@nox.session
def site(session: nox.Session) -> None:
    """Build site/ (--strict) from the traces already in build/traces/ and build/client-traces/,
    recording nothing: the Pages workflow publishes exactly what `nox -s tests` recorded and checked."""
    _install(session)
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def serve(session: nox.Session) -> None:
    """Preview the site with live reload, from the traces already in build/traces/ and
    build/client-traces/ (FIELDGUIDE_PROGRAMS=0 nox -s serve: without the client programs).

    Re-recording (`nox -s examples -- SLUG` in another shell) reloads the page; editing an
    example without recording it again shows the build's "trace is older" error.
    """
    _install(session)
    # (edits of docs/fieldguide/ need a restart: a running server keeps its modules)
    session.run("mkdocs", "serve", "--watch", "examples", "--watch", "build/traces", "--watch", "build/client-traces",
                *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (records every scenario fresh, then checks site and lab)."""
    _install(session)
    session.run("pytest", *session.posargs)
