"""The pages, one module each; :data:`ROUTES` is every route they serve, in order.

Each module exports ``ROUTES`` (a list of Starlette routes): HTML pages at ``/...`` and the JSON
or binary data their scripts fetch at ``/api/...``.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from .compare import ROUTES as COMPARE
from .live import ROUTES as LIVE
from .specimen import ROUTES as SPECIMEN
from .specimens import ROUTES as SPECIMENS
from .sql import ROUTES as SQL

__all__ = ["ROUTES"]

ROUTES: list[BaseRoute] = [*SPECIMENS, *SPECIMEN, *COMPARE, *SQL, *LIVE]
