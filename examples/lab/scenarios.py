"""The catalogue: every `examples/*.py` file is one scenario, named by its slug."""

from __future__ import annotations

import importlib.util
import os
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


class UnknownScenario(LookupError):
    def __init__(self, slugs: list[str]) -> None:
        known = ", ".join(all_slugs())
        super().__init__(f"unknown scenario {', '.join(slugs)}; known: {known}")
        self.slugs = slugs


def path_of(slug: str) -> Path:
    return EXAMPLES / (slug.replace("-", "_") + ".py")


def all_slugs() -> list[str]:
    return sorted(p.stem.replace("_", "-") for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_"))


def check(slugs: list[str]) -> list[str]:
    unknown = [s for s in slugs if not path_of(s).is_file() or s.startswith("_") or "_" in s]
    if unknown:
        raise UnknownScenario(unknown)
    return slugs


@dataclass(frozen=True)
class Scenario:
    slug: str
    module: ModuleType

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
    def timeout(self) -> float:
        return float(getattr(self.module, "TIMEOUT", DEFAULT_TIMEOUT))

    @property
    def trace_options(self) -> list[str]:
        """Extra tcpdump options for the text trace (-v shows TTL and IP ID)."""
        return list(getattr(self.module, "TRACE_OPTIONS", []))


_loading = threading.Lock()


def load(slug: str) -> Scenario:
    check([slug])
    name = "example_" + slug.replace("-", "_")
    with _loading:
        if name not in sys.modules:
            _import(name, slug)
    scenario = Scenario(slug, sys.modules[name])
    if scenario.phase not in PHASES:
        raise ValueError(f"{slug}: PHASE must be one of {PHASES}")
    return scenario


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
