"""The census notebook (docs/rst-census.ipynb), executed against this build's recordings
while the other pages are built, instead of after them.

Executing it costs a kernel's start and pandas', matplotlib's and scapy's imports: about
as long as building every other page. The build starts the kernel and runs the
notebook's first code cell (its imports) at once, even while the lab is still recording;
the cells that read the recordings run once they are checked (`recordings_ready`); the
other pages are built meanwhile, and the build waits for the notebook only when its own
page comes (hooks.py puts that page last). mkdocs-jupyter then renders the executed copy
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
        self.recordings_ready = threading.Event()
        self.cancelled = False
        self._thread = threading.Thread(target=self._run, name="notebook", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self.cancelled = True
        self.recordings_ready.set()

    def _run(self) -> None:
        import nbformat
        from nbclient import NotebookClient

        try:
            nb = nbformat.read(self.source, as_version=4)
            # cwd: the notebook's own folder, as Jupyter runs it; errors stop the build
            client = NotebookClient(nb, timeout=120, allow_errors=False,
                                    resources={"metadata": {"path": str(self.source.parent)}})
            code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
            client.reset_execution_trackers()
            with client.setup_kernel():
                assert client.kc is not None
                info = client.wait_for_reply(client.kc.kernel_info())
                assert info is not None
                nb.metadata["language_info"] = info["content"]["language_info"]
                for index, cell in enumerate(nb.cells):
                    if code and index > code[0]:  # past the imports: the recordings are read
                        self.recordings_ready.wait()
                        if self.cancelled:
                            return
                    client.execute_cell(cell, index)
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
