"""The catalogue: every `examples/*.py` file is one scenario, named by its slug.

A slug is accepted only if it is in the catalogue's own list (never turned into a path
first), and an example's settings are checked when it is loaded, before anything runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

# the scenarios' folder (examples/, where the lab package lives too); tests point it
# elsewhere to run deliberately broken examples
EXAMPLES = Path(os.environ.get("LAB_EXAMPLES") or Path(__file__).resolve().parent.parent).resolve()


def use_examples(folder: Path) -> None:
    """Take scenarios from another folder (the bench's empty scenario, tests)."""
    global EXAMPLES
    EXAMPLES = folder.resolve()


PHASES = ("opening", "established", "closing", "middleboxes")
DEFAULT_TIMEOUT = 20.0
MAX_TIMEOUT = 600.0  # a run is bounded in time whatever an example asks
CLIENTS_TIMEOUT = 120.0  # the client programs' runs (lab/clients.py), nine of them, on a busy machine
MAX_HOSTS = 4
TRACE_OPTIONS = {"-v", "-vv", "-vvv", "-K", "-S"}  # tcpdump -r options an example may add


class UnknownScenario(LookupError):
    def __init__(self, slugs: list[str]) -> None:
        known = ", ".join(all_slugs())
        super().__init__(f"unknown scenario {', '.join(slugs)}; known: {known}")
        self.slugs = slugs


def path_of(slug: str) -> Path:
    return EXAMPLES / (slug.replace("-", "_") + ".py")


def all_slugs() -> list[str]:
    """Every examples/snake_case.py but _private ones; other names are not scenarios."""
    return sorted(p.stem.replace("_", "-") for p in EXAMPLES.glob("*.py")
                  if re.fullmatch(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*", p.stem))


def sources_digest(slug: str, programs: bool = False) -> str:
    """SHA-256 over the example's source and the lab's (and the client programs', for a
    recording of the client session): what a recording was made from."""
    digest = hashlib.sha256()
    programs_files = sorted((EXAMPLES / "clients").glob("*.*")) if programs and runs_clients(slug) else []
    for path in [path_of(slug), *sorted((EXAMPLES / "lab").glob("*.py")), *programs_files]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def client_slugs() -> list[str]:
    """The scenarios the client session records (those with each_program())."""
    return [slug for slug in all_slugs() if runs_clients(slug)]


def runs_clients(slug: str) -> bool:
    """Whether the example defines each_program(), read from its source: the runner prepares
    the client programs (lab/clients.py) without importing any example."""
    return re.search(r"^def each_program\(", path_of(slug).read_text(), re.MULTILINE) is not None


def check(slugs: list[str]) -> list[str]:
    """The slugs, if each is in the catalogue; UnknownScenario naming the others."""
    known = set(all_slugs())
    unknown = [s for s in slugs if s not in known]
    if unknown:
        raise UnknownScenario(unknown)
    return slugs


class BadExample(ValueError):
    """An example's settings are not usable; the message names the example and the setting."""


@dataclass(frozen=True)
class Scenario:
    slug: str
    module: ModuleType
    programs: bool = False  # the client session: each real client program runs after the example's steps

    @property
    def title(self) -> str:
        return self.module.TITLE

    @property
    def phase(self) -> str:
        return self.module.PHASE

    @property
    def summary(self) -> str:
        return (self.module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(self.module.HOSTS)

    @property
    def capture_on(self) -> str:
        return getattr(self.module, "CAPTURE_ON", self.hosts[0])

    @property
    def capture_all_links(self) -> bool:
        """Capture every link of CAPTURE_ON (a proxy's two sides, in one pcap), not only its eth0."""
        return bool(getattr(self.module, "CAPTURE_ALL_LINKS", False))

    @property
    def timeout(self) -> float:
        """The example's TIMEOUT, and CLIENTS_TIMEOUT more when it runs the client programs."""
        own = float(getattr(self.module, "TIMEOUT", DEFAULT_TIMEOUT))
        return min(own + CLIENTS_TIMEOUT, MAX_TIMEOUT) if self.runs_programs else own

    @property
    def has_clients(self) -> bool:
        """It runs each real client program (lab/clients.py) after its own steps."""
        return callable(getattr(self.module, "each_program", None))

    @property
    def runs_programs(self) -> bool:
        """This run is the client session's and the example has a client."""
        return self.programs and self.has_clients

    @property
    def trace_options(self) -> list[str]:
        """Extra tcpdump options for the text trace (-v shows TTL and IP ID)."""
        return list(getattr(self.module, "TRACE_OPTIONS", []))


_loading = threading.Lock()


def load(slug: str, programs: bool = False) -> Scenario:
    check([slug])
    name = "example_" + slug.replace("-", "_")
    with _loading:
        if name not in sys.modules:
            _import(name, slug)
    scenario = Scenario(slug, sys.modules[name], programs)
    validate(scenario)
    return scenario


def validate(scenario: Scenario) -> None:
    where = f"examples/{path_of(scenario.slug).name}"
    problems = []
    module = scenario.module
    for required in ("TITLE", "PHASE", "HOSTS", "run", "claims"):
        if not hasattr(module, required):
            problems.append(f"{required} is missing")
    if problems:
        raise BadExample(f"{where}: " + "; ".join(problems))
    if not isinstance(module.TITLE, str) or not module.TITLE.strip() or set("<>&") & set(module.TITLE):
        problems.append("TITLE must be plain text (not empty, no <, > or &): it is the page's title")
    if scenario.phase not in PHASES:
        problems.append(f"PHASE must be one of {', '.join(PHASES)}")
    hosts = module.HOSTS
    if (not isinstance(hosts, (tuple, list)) or not 1 <= len(hosts) <= MAX_HOSTS
            or not all(isinstance(h, str) and h.isidentifier() for h in hosts) or len(set(hosts)) != len(hosts)):
        problems.append(f"HOSTS must be 1 to {MAX_HOSTS} distinct names (identifiers)")
    elif scenario.capture_on not in hosts:
        problems.append(f"CAPTURE_ON must be one of HOSTS {tuple(hosts)}")
    try:
        timeout = float(getattr(module, "TIMEOUT", DEFAULT_TIMEOUT))  # the example's own
    except (TypeError, ValueError):
        timeout = float("nan")
    if not 0 < timeout <= MAX_TIMEOUT:  # also false for nan
        problems.append(f"TIMEOUT must be a number of seconds above 0 and at most {MAX_TIMEOUT:g}")
    if not isinstance(getattr(module, "CAPTURE_ALL_LINKS", False), bool):
        problems.append("CAPTURE_ALL_LINKS must be True or False")
    options = getattr(module, "TRACE_OPTIONS", [])
    if not isinstance(options, (list, tuple)) or not set(options) <= TRACE_OPTIONS:
        problems.append(f"TRACE_OPTIONS may only hold {', '.join(sorted(TRACE_OPTIONS))}")
    if problems:
        raise BadExample(f"{where}: " + "; ".join(problems))


def _import(name: str, slug: str) -> None:
    spec = importlib.util.spec_from_file_location(name, path_of(slug))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
