"""Markdown for field notes and annotations, rendered so that user text can never run.

markdown-it-py's CommonMark renderer with raw HTML off: a ``<script>`` in a note is shown as
text, and link targets pass its ``validateLink`` (no ``javascript:``, ``vbscript:``, ``file:``
or non-image ``data:`` URLs). Links open in the same tab with ``rel="noopener noreferrer"``.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from markupsafe import Markup

if TYPE_CHECKING:
    from markdown_it import MarkdownIt

__all__ = ["render_markdown"]


@cache
def _parser() -> MarkdownIt:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("table").enable("strikethrough")

    default = md.renderer.rules.get("link_open")

    def link_open(tokens, idx, options, env):  # type: ignore[no-untyped-def]
        tokens[idx].attrSet("rel", "noopener noreferrer")
        if default is not None:
            return default(tokens, idx, options, env)
        return md.renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


def render_markdown(text: str) -> Markup:
    """Render ``text`` as HTML that is safe to insert into a page.

    Args:
        text: Markdown written by a user (raw HTML in it is escaped, not passed through).

    Returns:
        The HTML, marked safe for Jinja2 so it is not escaped a second time.
    """
    return Markup(_parser().render(text))
