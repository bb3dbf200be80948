"""The SQL page: one read-only query over the catalog, its result as a table, CSV or Parquet.

``GET /sql?q=SELECT...`` runs the query through the same sandbox as ``vault query``
(:meth:`cas_vault.query.VaultQuery.search`: one SELECT, a read-only connection, no file outside
the vault's objects, no network, no extension, no setting) with a timeout, and shows the first
:data:`MAX_ROWS_SHOWN` rows with the column types and the number of rows in all.
``/sql.csv?q=...`` and ``/sql.parquet?q=...`` return the whole result as a download (CSV writes
lists and structs as JSON text, as ``vault query --format csv`` does).

A refused or failing query, or one that runs past the timeout, answers 400 with DuckDB's
message (never a traceback): the page keeps the SQL in its editor so it can be fixed.
"""

from __future__ import annotations

import io
import json
import math
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ...catalog.schema import CATALOG_TABLES
from ...errors import InvalidInputError, QueryTimeoutError
from ...query import VaultQuery, blob_text
from ...query import render as render_text
from ..templating import render

if TYPE_CHECKING:
    import polars as pl

__all__ = ["EXAMPLE", "MAX_ROWS_SHOWN", "QUERY_TIMEOUT", "ROUTES", "cell_text", "run_query"]

#: What the editor holds before a query was run.
EXAMPLE = "SELECT specimen_id, domain, created FROM catalog ORDER BY created DESC LIMIT 100"
#: Rows of a result shown on the page; the downloads have them all.
MAX_ROWS_SHOWN = 1_000
#: Seconds a query may run before it is cancelled, so that a runaway query cannot pin the
#: server (the same limit as ``vault query --timeout 30``).
QUERY_TIMEOUT = 30.0
#: The longest query accepted (a URL parameter).
MAX_SQL_CHARS = 50_000

_TABLES_SQL = """
SELECT table_name AS name, any_value(table_type) AS kind,
       list(column_name || ' ' || data_type ORDER BY ordinal_position) AS columns
FROM information_schema.columns JOIN information_schema.tables USING (table_catalog, table_schema, table_name)
WHERE table_schema = 'main' AND table_name IN (SELECT unnest(?::VARCHAR[]))
GROUP BY table_name
"""


def _sql_param(request: Request) -> str:
    sql = request.query_params.get("q", "")
    if len(sql) > MAX_SQL_CHARS:
        raise InvalidInputError(f"the query is {len(sql):,} characters long; at most "
                                f"{MAX_SQL_CHARS:,} are accepted")
    return sql


def run_query(request: Request, sql: str) -> pl.DataFrame:
    """Run ``sql`` in the vault's read-only sandbox with :data:`QUERY_TIMEOUT`.

    Raises:
        InvalidInputError: for an empty query, SQL that is not one SELECT, that does not parse
            or bind, or that reaches outside the vault.
        QueryTimeoutError: if it ran past the timeout (it was cancelled).
    """
    if not sql.strip():
        raise InvalidInputError("the query is empty; write one SQL SELECT statement")
    return VaultQuery(request.app.state.repo).search(sql, timeout=QUERY_TIMEOUT)


def cell_text(value: Any) -> str:
    """A result value as text for a table cell: lists and structs as JSON, NULL as ``NULL``.

    Floats are shown as Python writes them (every digit that tells them apart), timestamps in
    ISO 8601, bytes the way DuckDB writes a BLOB.
    """
    if value is None:
        return "NULL"
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(_plain(value), ensure_ascii=False)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return blob_text(bytes(value))
    if isinstance(value, (datetime, date, time)):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    return str(value)


def _plain(value: Any) -> Any:
    """A nested value made of what JSON can write (NaN as the string DuckDB prints)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return blob_text(bytes(value))
    if isinstance(value, (datetime, date, time, timedelta, Decimal)):
        return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return value


def _tables(request: Request) -> list[dict[str, Any]]:
    """The tables and views a query can read, with their columns (in the documented order)."""
    found = VaultQuery(request.app.state.repo).search(
        _TABLES_SQL, [list(CATALOG_TABLES)], timeout=QUERY_TIMEOUT)
    by_name = {r["name"]: r for r in found.iter_rows(named=True)}
    return [{"name": n, "kind": "view" if "VIEW" in by_name[n]["kind"] else "table",
             "columns": by_name[n]["columns"]} for n in CATALOG_TABLES if n in by_name]


def sql_page(request: Request) -> Response:
    """The SQL page: the editor, and the result of ``q`` when one is given.

    Returns:
        The page; status 400 (with the message, the SQL kept in the editor) when the query is
        refused, fails or times out.
    """
    sql = _sql_param(request)
    error = None
    result = None
    if sql.strip():
        try:
            df = run_query(request, sql)
        except (InvalidInputError, QueryTimeoutError) as exc:
            error = str(exc)
        else:
            numeric = [t.is_numeric() for t in df.schema.values()]
            result = {
                "columns": [{"name": n, "type": str(t), "class": "num" if num else ""}
                            for (n, t), num in zip(df.schema.items(), numeric)],
                # Each cell: its text and its CSS classes (numbers right-aligned, NULL greyed).
                "rows": [[(cell_text(v), " ".join(c for c, on in (("num", num), ("null", v is None))
                                                  if on))
                          for v, num in zip(row, numeric)]
                         for row in df.head(MAX_ROWS_SHOWN).iter_rows()],
                "total": df.height,
            }
    try:
        tables = _tables(request)
    except (InvalidInputError, QueryTimeoutError):  # the list is help, never the error shown
        tables = []
    download = {"q": sql} if sql.strip() else None
    return render(
        request, "sql.html", status_code=400 if error else 200, title="SQL",
        sql=sql if sql.strip() else EXAMPLE, ran=bool(sql.strip()), error=error, result=result,
        tables=tables, download=download, max_rows=MAX_ROWS_SHOWN, timeout=QUERY_TIMEOUT,
    )


def sql_csv(request: Request) -> Response:
    """The whole result of ``q`` as CSV (lists and structs as JSON text), as an attachment.

    Raises:
        InvalidInputError, QueryTimeoutError: as :func:`run_query` (a 400 page).
    """
    df = run_query(request, _sql_param(request))
    return Response(render_text(df, "csv").encode("utf-8"), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": 'attachment; filename="query.csv"'})


def sql_parquet(request: Request) -> Response:
    """The whole result of ``q`` as Parquet, as an attachment.

    Raises:
        InvalidInputError, QueryTimeoutError: as :func:`run_query` (a 400 page).
    """
    df = run_query(request, _sql_param(request))
    buffer = io.BytesIO()
    df.write_parquet(buffer)
    return Response(buffer.getvalue(), media_type="application/vnd.apache.parquet",
                    headers={"content-disposition": 'attachment; filename="query.parquet"'})


ROUTES: list[BaseRoute] = [
    Route("/sql", sql_page, name="sql"),
    Route("/sql.csv", sql_csv, name="sql_csv"),
    Route("/sql.parquet", sql_parquet, name="sql_parquet"),
]
