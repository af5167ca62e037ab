"""MkDocs hook: the site's build steps, from the installed `fieldguide` package (docs/fieldguide/)."""

from fieldguide.hooks import (  # noqa: F401
    on_build_error,
    on_config,
    on_files,
    on_page_context,
    on_page_markdown,
    on_post_build,
    on_post_page,
    on_pre_page,
)
