"""The catalog's tables: their DDL and version, their columns, and how rows are appended to them.

Rows are gathered as columns (``{column: [values]}``, see :func:`add_row`) and appended in one
statement by :func:`insert`. A catalog whose ``_state`` row records another
:data:`SCHEMA_VERSION` is rebuilt, so changing :data:`DDL` means bumping it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

__all__ = [
    "CATALOG_COLUMNS",
    "CATALOG_TABLES",
    "DDL",
    "DROP",
    "METRIC_KEY_COLUMNS",
    "PROBLEM_COLUMNS",
    "SCHEMA_VERSION",
    "WRITER_COLUMNS",
    "CatalogProblem",
    "add_row",
    "catalog_schema",
    "insert",
    "read_problems",
    "string_schema",
]

#: Version of the catalog's tables; a catalog with another version is rebuilt.
SCHEMA_VERSION = 5
#: Tables a user can query.
CATALOG_TABLES = ("catalog", "runs", "lineage", "objects", "metrics", "labels", "label_moves",
                  "notes", "retired", "taxonomy", "catalog_problems")
#: Columns of ``metrics`` that are not metric columns.
METRIC_KEY_COLUMNS = ("specimen_id", "file")

DDL = """
CREATE TABLE _state(
    schema_version INTEGER, vault_created VARCHAR, journal_lines BIGINT, journal_offset BIGINT,
    tip_offset BIGINT, tip VARCHAR, updated TIMESTAMP);
CREATE TABLE catalog(
    specimen_id VARCHAR, created TIMESTAMP, domain VARCHAR, method VARCHAR, model VARCHAR,
    tags VARCHAR[], status VARCHAR, commit VARCHAR, parents VARCHAR[], message VARCHAR,
    author VARCHAR, logical_bytes BIGINT, unique_bytes BIGINT, seq BIGINT, files INTEGER,
    metadata JSON, config JSON, committed TIMESTAMP, run_of VARCHAR, run_id VARCHAR);
CREATE TABLE label_moves(
    name VARCHAR, specimen_id VARCHAR, commit VARCHAR, time TIMESTAMP, author VARCHAR, seq BIGINT);
CREATE VIEW labels AS
    SELECT name, specimen_id, commit, time, author FROM label_moves
    QUALIFY row_number() OVER (PARTITION BY name ORDER BY seq DESC) = 1;
CREATE TABLE retired(
    specimen_id VARCHAR, commit VARCHAR, reason VARCHAR, purge BOOLEAN, time TIMESTAMP,
    author VARCHAR, seq BIGINT);
CREATE TABLE notes(
    specimen_id VARCHAR, commit VARCHAR, time TIMESTAMP, author VARCHAR, text VARCHAR, seq BIGINT);
CREATE TABLE taxonomy(
    domain VARCHAR, method VARCHAR, description VARCHAR, added_by VARCHAR, added_at TIMESTAMP);
CREATE VIEW runs AS
    SELECT run_of AS specimen_id, run_id, specimen_id AS run_specimen_id, commit, created,
           committed, config
    FROM catalog WHERE run_of IS NOT NULL;
CREATE TABLE lineage(child VARCHAR, parent VARCHAR, child_commit VARCHAR, parent_commit VARCHAR);
CREATE TABLE objects(digest VARCHAR, size BIGINT, kind VARCHAR, specimen_id VARCHAR, path VARCHAR);
CREATE TABLE metrics(specimen_id VARCHAR, file VARCHAR);
CREATE TABLE _metric_writers(
    specimen_id VARCHAR, file VARCHAR, digest VARCHAR, column_name VARCHAR, written_type VARCHAR);
CREATE TABLE catalog_problems(
    specimen_id VARCHAR, file VARCHAR, column_name VARCHAR, written_type VARCHAR,
    catalog_type VARCHAR, detail VARCHAR);
CREATE MACRO ancestors(sid) AS TABLE
    WITH RECURSIVE a(specimen_id) AS (
        SELECT parent FROM lineage WHERE child = sid
        UNION
        SELECT l.parent FROM lineage l JOIN a ON l.child = a.specimen_id)
    SELECT specimen_id FROM a;
CREATE MACRO descendants(sid) AS TABLE
    WITH RECURSIVE d(specimen_id) AS (
        SELECT child FROM lineage WHERE parent = sid
        UNION
        SELECT l.child FROM lineage l JOIN d ON l.parent = d.specimen_id)
    SELECT specimen_id FROM d;
"""
DROP = """
DROP MACRO TABLE IF EXISTS ancestors; DROP MACRO TABLE IF EXISTS descendants;
DROP VIEW IF EXISTS runs; DROP VIEW IF EXISTS labels;
DROP TABLE IF EXISTS label_moves; DROP TABLE IF EXISTS notes; DROP TABLE IF EXISTS retired;
DROP TABLE IF EXISTS taxonomy;
DROP TABLE IF EXISTS _state; DROP TABLE IF EXISTS catalog; DROP TABLE IF EXISTS lineage;
DROP TABLE IF EXISTS objects; DROP TABLE IF EXISTS metrics; DROP TABLE IF EXISTS _metric_writers;
DROP TABLE IF EXISTS catalog_problems;
"""

CATALOG_COLUMNS = (
    "specimen_id", "created", "domain", "method", "model", "tags", "status", "commit", "parents",
    "message", "author", "logical_bytes", "unique_bytes", "seq", "files", "metadata", "config",
    "committed", "run_of", "run_id",
)
WRITER_COLUMNS = ("specimen_id", "file", "digest", "column_name", "written_type")
PROBLEM_COLUMNS = ("specimen_id", "file", "column_name", "written_type", "catalog_type", "detail")


@dataclass(frozen=True)
class CatalogProblem:
    """A metrics column a specimen wrote with a type that does not fit the catalog's column.

    Its values of that column are NULL in ``metrics``; the Parquet file itself is unchanged.

    Attributes:
        specimen_id: the specimen that wrote it.
        file: the ``file`` value of its rows in ``metrics`` (``strata/<file>.parquet``).
        column: the column in ``metrics``.
        written_type: the DuckDB type the file has for it.
        catalog_type: the column's type in ``metrics``.
        detail: what happened and where the values can still be read, for people.
    """

    specimen_id: str
    file: str
    column: str
    written_type: str
    catalog_type: str
    detail: str


def read_problems(conn: duckdb.DuckDBPyConnection) -> list[CatalogProblem]:
    """Every row of ``catalog_problems``, in a stable order.

    Raises:
        duckdb.Error: if the catalog has no such table.
    """
    rows = conn.execute(
        "SELECT specimen_id, file, column_name, written_type, catalog_type, detail "
        "FROM catalog_problems ORDER BY specimen_id, file, lower(column_name)"
    ).fetchall()
    return [CatalogProblem(*r) for r in rows]


def catalog_schema() -> Any:
    """The Arrow schema of ``catalog`` rows (for :func:`insert`)."""
    import pyarrow as pa

    s, i = pa.string(), pa.int64()
    types = {"created": pa.timestamp("us"), "committed": pa.timestamp("us"), "tags": pa.list_(s), "parents": pa.list_(s),
             "logical_bytes": i, "unique_bytes": i, "seq": i, "files": pa.int32()}
    return pa.schema([(k, types.get(k, s)) for k in CATALOG_COLUMNS])


def string_schema(cols: Mapping[str, Any]) -> Any:
    """An Arrow schema of these columns, all strings (for :func:`insert`)."""
    import pyarrow as pa

    return pa.schema([(k, pa.string()) for k in cols])


def add_row(table: dict[str, list[Any]], **values: Any) -> None:
    """Append one row to rows gathered as columns; a column not given gets None."""
    for k, col in table.items():
        col.append(values.get(k))


def insert(conn: duckdb.DuckDBPyConnection, table: str, columns: dict[str, list[Any]],
           schema: Callable[[], Any]) -> None:
    """Append rows given as columns (in the table's column order).

    A commit's few rows go in as one parameterised VALUES statement (about four times faster
    than registering an Arrow table); a rebuild's many rows go in as one Arrow table.

    Args:
        conn: the writer's connection.
        table: the table to append to.
        columns: the rows, column by column.
        schema: returns the Arrow schema of ``columns`` (only called for many rows).
    """
    names = list(columns)
    n = len(columns[names[0]])
    if n * len(names) <= 512:
        row = "(" + ", ".join("?" * len(names)) + ")"
        params = [columns[k][i] for i in range(n) for k in names]
        conn.execute(f"INSERT INTO {table} VALUES " + ", ".join([row] * n), params)
        return
    import pyarrow as pa

    conn.from_arrow(pa.table(columns, schema=schema())).insert_into(table)
