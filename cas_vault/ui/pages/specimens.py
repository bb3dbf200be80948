"""The specimens table: every live committed specimen (to be filled in)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..templating import render

__all__ = ["ROUTES"]


def index(request: Request) -> Response:
    """The specimens table."""
    repo = request.app.state.repo
    rows = [e for e in repo.log() if getattr(e, "error", None) is None]
    return render(request, "specimens.html", title="Specimens", rows=rows)


ROUTES: list[BaseRoute] = [Route("/", index, name="specimens")]
