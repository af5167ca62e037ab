"""The MkDocs events of the site's build (docs/hooks/events.py hands them to MkDocs).

on_config: the notebook's kernel and sharkd (wireshark.py) start; the build waits for a run still recording (its
           lock), then every recording is loaded and checked (or the build fails, naming
           each scenario) and held, shared, until the build ends; sharkd reads their pcaps
           in a thread; then, unless the build was asked for without the client programs
           (FIELDGUIDE_PROGRAMS=0, read here only), the same for the client session's
           recordings, which fail the build as the catalogue's do; the scenario pages are
           put in the navigation, grouped by phase;
on_files: each pcap (and its JSON) is published under /traces/, with the vendored Mermaid,
          and what the explain page runs: Pyodide and rst_explain's sources (explainer.py);
          the watch page (its live recording's blocks) and the census notebook, executing
          since on_config, are built last (watch.py, notebook.py);
on_pre_page: the notebook's page waits for its execution;
on_page_markdown: the page's placeholders are expanded (placeholders.py);
on_page_context: the live recording's blocks are filled in, waiting for it (watch.py);
on_post_page: the Mermaid script only on pages that draw a diagram (mermaid.py), the
              explain script only on the page that has its form (explainer.py);
on_post_build / on_build_error: the recordings are let go.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import markdown
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

from lab.artifact import CLIENT_TRACES, ArtifactError, Recording, key, locked

from . import NO_PROGRAMS, PROGRAMS_ENV
from . import chinese as zh
from . import explainer, kernels, mermaid, notebook, programs, symptoms, vendor, watch, wireshark
from .placeholders import PHASE_LABELS, Context, PageError, expand_page
from .recordings import load_all, load_clients, stale

log = logging.getLogger("mkdocs.hooks.fieldguide")
WATCH_PAGE = "watch.md"  # its recorded blocks are filled in as it is built (watch.py)

recordings: dict[str, Recording] = {}
quoted: list = []
clients: list[programs.Clients] = []  # the client session's recordings, none in a build without them
matrix: list[kernels.Matrix] = []  # other kernels' fresh recordings (kernels.py), if any
chinese: dict = {}  # chinese.py: the pages' Chinese titles, glibc's Chinese error texts
mermaid_scripts: list[str] = []
census: list[notebook.Execution] = []  # the notebook's execution
wireshark_views: list[wireshark.Views] = []  # one sharkd reading every capture (wireshark.py)
held = contextlib.ExitStack()  # the recordings' lock, shared, from on_config to the build's end


def _warm_up() -> None:
    """What the build needs later and can load now, while a run may still be recording."""
    import jieba  # the search index's Chinese segmentation: loading its dictionary takes long

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()


def _programs_shown() -> bool:
    """The build's one decision on the client programs (fieldguide.PROGRAMS_ENV)."""
    value = os.environ.get(PROGRAMS_ENV, "1")
    if value not in ("0", "1"):
        raise PluginError(f"{PROGRAMS_ENV} is 1 (the default: the client programs' lines are shown) or 0"
                          f" (a build without them, `python -m fieldguide.build {NO_PROGRAMS}`), not {value!r}")
    return value == "1"


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    shown = _programs_shown()
    threading.Thread(target=_warm_up, name="warm-up", daemon=True).start()
    _edit_links(config, os.environ.get("FIELDGUIDE_REPOSITORY", "").rstrip("/"))
    census[:] = [notebook.Execution(Path(config.docs_dir) / notebook.SOURCE)]
    _stop_wireshark()
    try:  # started now: sharkd loads its dissectors while a run may still be recording
        wireshark_views[:] = [wireshark.Views()]
    except wireshark.WiresharkError as exc:
        census[0].cancel()
        raise PluginError(str(exc)) from None
    held.close()
    held.enter_context(locked(on_wait=log.info))  # a run still recording: wait for its end
    try:
        recordings.clear()
        recordings.update(load_all(Path(config.docs_dir)))
        quoted[:] = symptoms.load_quoted()
        matrix[:] = [kernels.load_matrix(list(recordings), stale)]
        for name, why in matrix[0].left_out.items():
            log.warning(f"kernel {name}'s recordings are not used: {why}")
        chinese.clear()
        own = Path(config.docs_dir) / "fieldguide" / zh.PAGES.name
        chinese["pages"] = zh.pages(list(recordings), own)
        chinese["names"] = zh.error_names(own)
        chinese.update(zh.glibc_messages(symptoms.errno_names(recordings)))
    except (ArtifactError, ValueError) as exc:
        census[0].cancel()
        _stop_wireshark()
        held.close()
        raise PluginError(str(exc)) from None
    census[0].recordings_ready.set()
    wireshark_views[0].start(recordings, key(), asked=wireshark.asked_by_pages(Path(config.docs_dir), recordings))
    clients[:] = [programs.Clients()]
    if shown:  # after the catalogue's: the client session may still be recording (build.py)
        try:
            held.enter_context(locked(CLIENT_TRACES, on_wait=log.info))
            clients[:] = [programs.Clients(load_clients())]
        except ArtifactError as exc:
            on_build_error(exc)
            raise PluginError(str(exc)) from None
    else:
        log.info(f"built without the client programs ({PROGRAMS_ENV}=0): no page shows their lines")
    mermaid_scripts[:] = mermaid.split_scripts(config.extra_javascript)
    groups = []
    for phase, label in PHASE_LABELS.items():
        # a title is plain text (lab.scenarios.validate): Material writes it as it is
        pages = [{rec.title: f"scenarios/{slug}.md"} for slug, rec in recordings.items() if rec.phase == phase]
        if pages:
            groups.append({label: pages})
    nav = config["nav"] or []
    for i, item in enumerate(nav):
        if isinstance(item, dict) and item.get("Scenarios") == "scenarios/":
            nav[i] = {"Scenarios": groups}
    return config


def _edit_links(config: MkDocsConfig, repository: str) -> None:
    """Edit and view links point at the repository when it is set, and nowhere otherwise."""
    if not repository:
        config["edit_uri"] = ""
        return
    if not repository.startswith("https://"):
        raise PluginError(f"FIELDGUIDE_REPOSITORY must be the repository's https:// address, not {repository!r}")
    config["edit_uri"] = f"{repository}/edit/main/docs/"
    features = config["theme"]["features"]
    features.extend(f for f in ("content.action.edit", "content.action.view") if f not in features)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for rec in recordings.values():
        assert rec.pcap is not None
        for source in (rec.pcap, rec.pcap.with_suffix(".json")):
            files.append(File.generated(config, f"traces/{source.name}", abs_src_path=str(source)))
    for rec in (clients[0].recordings.values() if clients else []):  # the client session's, programs.py
        assert rec.pcap is not None
        for source in (rec.pcap, rec.pcap.with_suffix(".txt"), rec.pcap.with_suffix(".json")):
            files.append(File.generated(config, f"traces/clients/{source.name}", abs_src_path=str(source)))
    for run in (matrix[0].runs if matrix else []):  # other kernels' captures, beside this machine's
        for rec in run.recordings.values():
            assert rec.pcap is not None
            for source in (rec.pcap, rec.pcap.with_suffix(".json")):
                files.append(File.generated(config, f"traces/{run.name}/{source.name}", abs_src_path=str(source)))
    try:
        pyodide = explainer.pyodide_files()
        served = {mermaid.MERMAID_ASSET: mermaid.mermaid_file(), **pyodide}
        python = explainer.python_files()
    except vendor.VendorUnavailable as exc:
        raise PluginError(str(exc)) from None
    for path, source in {**served, **python}.items():
        files.append(File.generated(config, path, abs_src_path=str(source)))
    pages = explainer.page_index(recordings)
    files.append(File.generated(config, explainer.MANIFEST, content=explainer.manifest(pyodide, python, pages)))
    # built last, in this order: every other page is built while the live recording (watch.py)
    # and the notebook's execution run
    for late in (WATCH_PAGE, notebook.SOURCE):
        page_file = files.get_file_from_path(late)
        if page_file is not None:
            files.remove(page_file)
            files.append(page_file)
    return files


def on_pre_page(page: Page, config: MkDocsConfig, files: Files) -> Page:
    if page.file.src_uri == notebook.SOURCE and census:
        try:
            executed = census[0].wait()
        except notebook.NotebookFailed as exc:
            raise PluginError(str(exc)) from None
        # rendered (not run again) and offered for download; mkdocs-jupyter wraps the File
        for file in {page.file, getattr(page.file, "file", page.file)}:
            file.abs_src_path = str(executed)
    return page


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    src = page.file.src_uri
    slug = src.removeprefix("scenarios/").removesuffix(".md") if src.startswith("scenarios/") else None
    source = page.file.content_string  # its front matter (if any) is gone from `markdown`
    first_line = 1 + source.count("\n", 0, max(source.find(markdown[:200]), 0)) if markdown else 1
    try:
        views = wireshark_views[0].view if wireshark_views else None
        return expand_page(markdown, Context(src, slug, recordings, quoted, chinese, views,
                                             matrix[0] if matrix else kernels.Matrix([], {}),
                                             clients[0] if clients else programs.Clients()), first_line)
    except PageError as exc:
        raise PluginError(str(exc)) from None


@event_priority(50)  # before the search plugin's: it indexes the filled-in blocks
def on_page_context(context: dict, page: Page, config: MkDocsConfig, nav: Any) -> dict:
    if page.content and watch.has_markers(page.content):
        def to_html(text: str) -> str:
            return markdown.Markdown(extensions=config.markdown_extensions,
                                     extension_configs=config.mdx_configs).convert(text)
        page.content = watch.fill(page.content, page.url, to_html)
    return context


def on_post_page(output: str, page: Page, config: MkDocsConfig) -> str:
    return explainer.where_needed(mermaid.where_needed(output, page.url, mermaid_scripts), page.url)


def _stop_wireshark() -> None:
    for views in wireshark_views:
        views.close()
    wireshark_views.clear()


def on_post_build(config: MkDocsConfig) -> None:
    _stop_wireshark()
    held.close()


def on_build_error(error: Exception) -> None:
    for execution in census:
        execution.cancel()
    _stop_wireshark()
    held.close()
