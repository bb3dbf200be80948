"""Jinja2 rendering for every page: autoescaping always on, one set of filters.

Every template is rendered with ``autoescape=True`` whatever its name, so a message, note,
metadata value or file name is HTML-escaped wherever a page shows it; only values a filter
marks safe (rendered Markdown, :func:`json_script`) are inserted as HTML. Data for scripts goes
into ``<script type="application/json">`` blocks through :func:`json_script`, never into
JavaScript source: the Content-Security-Policy allows no inline script.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..units import human_bytes
from .markdown import render_markdown

__all__ = ["environment", "json_dumps", "json_script", "render"]


def json_dumps(value: Any) -> str:
    """Serialise ``value`` for the browser: NaN and infinities become null (JSON has none)."""
    return json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"), default=str)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_script(value: Any, element_id: str) -> Markup:
    """A ``<script type="application/json">`` block holding ``value`` (as Django's filter).

    ``<``, ``>`` and ``&`` are written as ``\\u003c``-style escapes, so no value can close the
    element or open a comment, whatever text it holds.
    """
    text = (json_dumps(value).replace("&", "\\u0026").replace("<", "\\u003c")
            .replace(">", "\\u003e").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return Markup('<script type="application/json" id="{}">{}</script>').format(
        element_id, Markup(text))


def _when(value: Any) -> str:
    """A timestamp as ``2024-12-19 14:03:22 UTC`` (ISO text or datetime in)."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, datetime):
        suffix = " UTC" if value.utcoffset() is not None and not value.utcoffset() else ""
        return value.strftime("%Y-%m-%d %H:%M:%S") + suffix
    return str(value)


def _short(digest: Any, n: int = 12) -> str:
    return str(digest)[:n] if digest else ""


def _number(value: Any) -> str:
    """A metric value for a table cell: integers as they are, floats to 6 significant digits."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.6g}"
    return str(value)


@cache
def environment() -> Environment:
    """The one Jinja2 environment of the UI (templates from this package, escaping on)."""
    env = Environment(
        loader=PackageLoader("cas_vault.ui", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        bytes=human_bytes, markdown=render_markdown, json_script=json_script, when=_when,
        short=_short, number=_number,
    )
    return env


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``template`` with ``context`` (plus ``request`` and the vault) as a response.

    Args:
        request: the request being answered.
        template: a file name under ``cas_vault/ui/templates``.
        status_code: the HTTP status.
        **context: the template's variables.

    Returns:
        An HTML response.
    """
    html = environment().get_template(template).render(
        request=request, vault_root=str(request.app.state.repo.root), **context)
    return HTMLResponse(html, status_code=status_code)
