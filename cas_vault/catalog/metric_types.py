"""The type rules of ``metrics`` columns: which type a column gets, and which values fit it.

docs/catalog.md: ``_metric_writers`` records the type every file wrote for every column, and a
column's type in ``metrics`` is a function of that set alone (:func:`column_type`), so it does
not depend on commit order and a rebuild gives the same table. Numbers win over everything
else, integers and floats widen to DOUBLE, an all-null column takes the others' type, and
nothing is ever widened to text: a file whose column does not fit the column's type
(:func:`fits`) has NULL there and a row in ``catalog_problems``. Files without rows add nothing.

Types are DuckDB's own names; DuckDB decides which common type two types have.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

__all__ = ["NULL_TYPE", "column_type", "fits", "is_numeric"]

_NUMERIC = {
    "BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
    "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE",
}
#: DuckDB's name for the type of a column that holds only nulls (Parquet's null type).
NULL_TYPE = '"NULL"'
#: The type of a metrics column that only all-null columns were written for so far.
_PLACEHOLDER_TYPE = "INTEGER"
#: (type, type) -> DuckDB's common supertype (None if there is none); types are DuckDB's own.
_SUPERTYPES: dict[tuple[str, str], str | None] = {}


def _supertype(conn: duckdb.DuckDBPyConnection, a: str, b: str) -> str | None:
    """DuckDB's implicit common type of ``a`` and ``b`` (None if there is none)."""
    import duckdb

    if a == b:
        return a
    pair = (a, b) if a <= b else (b, a)
    if pair not in _SUPERTYPES:
        try:
            row = conn.execute(
                f"DESCRIBE SELECT NULL::{pair[0]} AS x UNION ALL BY NAME SELECT NULL::{pair[1]} AS x"
            ).fetchall()[0]
            _SUPERTYPES[pair] = str(row[1])
        except duckdb.Error:
            _SUPERTYPES[pair] = None
    return _SUPERTYPES[pair]


def fits(conn: duckdb.DuckDBPyConnection, t: str, column: str) -> bool:
    """Whether values of type ``t`` go into a column of type ``column`` without turning into
    something else: a widening (INTEGER into DOUBLE, DATE into TIMESTAMP), never into text."""
    if t == column or t == NULL_TYPE:
        return True
    if is_numeric(column) != is_numeric(t):
        return False
    return _supertype(conn, t, column) == column and _text_count(t) == _text_count(column)


def column_type(conn: duckdb.DuckDBPyConnection, written: Iterable[str]) -> str:
    """The type of a metrics column, from the set of types files wrote for it (order-free).

    Numbers beat every other kind once any file wrote numbers; the numeric types widen to their
    common type, integers with floats to DOUBLE. Otherwise the types that widen losslessly into
    one another are joined, taken in a fixed order (non-text types first, then by name), and a
    type that cannot join stays out. Only nulls so far: a placeholder, replaced by the first
    real type. Every type written that does not fit the result is a problem (NULL in metrics).
    """
    real = sorted({t for t in written if t != NULL_TYPE})
    if not real:
        return _PLACEHOLDER_TYPE
    numeric = [t for t in real if is_numeric(t)]
    if numeric:
        acc = numeric[0]
        for t in numeric[1:]:
            acc = _supertype(conn, acc, t) or "DOUBLE"
        if acc == "FLOAT" and any(t not in ("FLOAT", "BOOLEAN") for t in numeric):
            acc = "DOUBLE"  # DuckDB joins FLOAT and BIGINT as FLOAT, which rounds large integers
        return acc
    real.sort(key=lambda t: (_text_count(t) > 0, t))
    acc = real[0]
    for t in real[1:]:
        joined = _supertype(conn, acc, t)
        if joined is not None and fits(conn, acc, joined) and fits(conn, t, joined):
            acc = joined
    return acc


def _text_count(t: str) -> int:
    return t.count("VARCHAR")


def is_numeric(t: str) -> bool:
    """Whether ``t`` is a number type (BOOLEAN and DECIMAL(p, s) count as numbers)."""
    return t in _NUMERIC or t.startswith("DECIMAL")
