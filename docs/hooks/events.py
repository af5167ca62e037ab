"""MkDocs hook: the site's build steps, from the installed `fieldguide` package (docs/fieldguide/)."""

from fieldguide.hooks import on_config, on_files, on_page_markdown, on_post_page, on_pre_page  # noqa: F401
