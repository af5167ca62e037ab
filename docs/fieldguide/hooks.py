"""The MkDocs events of the site's build (docs/hooks/events.py hands them to MkDocs).

on_config: every recording is loaded and checked (or the build fails, naming each scenario)
           and the scenario pages are put in the navigation, grouped by phase;
on_files: each pcap (and its JSON) is published under /traces/, with the vendored Mermaid;
          the census notebook, executing since on_config, is built last (notebook.py);
on_pre_page: the notebook's page waits for its execution;
on_page_markdown: the page's placeholders are expanded (placeholders.py);
on_post_page: the Mermaid script only on pages that draw a diagram (mermaid.py).
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

from lab.artifact import ArtifactError, Recording

from . import mermaid, notebook, symptoms
from .placeholders import PHASE_LABELS, Context, PageError, expand_page
from .recordings import load_all

recordings: dict[str, Recording] = {}
quoted: list = []
mermaid_scripts: list[str] = []
census: list[notebook.Execution] = []  # the notebook's execution, started once the recordings hold


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    try:
        recordings.clear()
        recordings.update(load_all())
        quoted[:] = symptoms.load_quoted()
    except (ArtifactError, ValueError) as exc:
        raise PluginError(str(exc)) from None
    census[:] = [notebook.Execution(Path(config.docs_dir) / notebook.SOURCE)]
    mermaid_scripts[:] = mermaid.split_scripts(config.extra_javascript)
    groups = []
    for phase, label in PHASE_LABELS.items():
        pages = [{rec.title: f"scenarios/{slug}.md"} for slug, rec in recordings.items() if rec.phase == phase]
        if pages:
            groups.append({label: pages})
    nav = config["nav"] or []
    for i, item in enumerate(nav):
        if isinstance(item, dict) and item.get("Scenarios") == "scenarios/":
            nav[i] = {"Scenarios": groups}
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for rec in recordings.values():
        assert rec.pcap is not None
        for source in (rec.pcap, rec.pcap.with_suffix(".json")):
            files.append(File.generated(config, f"traces/{source.name}", abs_src_path=str(source)))
    try:
        vendored = mermaid.mermaid_file()
    except mermaid.MermaidUnavailable as exc:
        raise PluginError(str(exc)) from None
    files.append(File.generated(config, mermaid.MERMAID_ASSET, abs_src_path=str(vendored)))
    census_page = files.get_file_from_path(notebook.SOURCE)
    if census_page is not None:  # built last: every other page is built while it executes
        files.remove(census_page)
        files.append(census_page)
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
    try:
        return expand_page(markdown, Context(src, slug, recordings, quoted))
    except PageError as exc:
        raise PluginError(str(exc)) from None


def on_post_page(output: str, page: Page, config: MkDocsConfig) -> str:
    return mermaid.where_needed(output, page.url, mermaid_scripts)
