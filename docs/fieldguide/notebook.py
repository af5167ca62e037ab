"""The census notebook (docs/rst-census.ipynb), executed against this build's recordings
while the other pages are built, instead of after them.

Executing it costs a kernel's start and pandas', matplotlib's and scapy's imports: about
as long as building every other page. The build starts it once the recordings are
checked, builds the other pages meanwhile, and waits for it only when its own page comes
(hooks.py puts that page last). mkdocs-jupyter then renders the executed copy
(`execute: false` in mkdocs.yml: nothing runs twice) and publishes it for download.
"""

from __future__ import annotations

import threading
from pathlib import Path

from lab.artifact import ROOT

SOURCE = "rst-census.ipynb"  # under docs/
EXECUTED = ROOT / "build" / "notebook" / SOURCE


class NotebookFailed(RuntimeError):
    pass


class Execution:
    """One execution of the notebook in a thread of this process (its kernel is a child)."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="notebook", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import nbformat
        from nbclient import NotebookClient

        try:
            nb = nbformat.read(self.source, as_version=4)
            # cwd: the notebook's own folder, as Jupyter runs it; errors stop the build
            NotebookClient(nb, timeout=120, allow_errors=False,
                           resources={"metadata": {"path": str(self.source.parent)}}).execute()
            EXECUTED.parent.mkdir(parents=True, exist_ok=True)
            partial = EXECUTED.with_suffix(".part")
            nbformat.write(nb, partial)
            partial.replace(EXECUTED)
        except BaseException as exc:  # reported by wait(), on the build's thread
            self.error = exc

    def wait(self) -> Path:
        """The executed copy, once the execution is over; NotebookFailed if a cell failed."""
        self._thread.join()
        if self.error is not None:
            raise NotebookFailed(f"docs/{SOURCE} failed: {self.error}") from self.error
        return EXECUTED
