"""The ``metrics`` table: the rows of the specimens' ``strata/*.parquet`` files, and its columns'
types kept in step with every file written so far.

Each metric column's type follows :mod:`cas_vault.catalog.metric_types` from the set of types
files wrote for it, recorded in ``_metric_writers``. When a new file changes that set's type,
the column is retyped as if the table had been built with the new type from the start: values
that no longer fit become NULL (with a row in ``catalog_problems``), and files whose values fit
now are read again. Parquet objects DuckDB cannot read are reported (:class:`BadParquet`) so the
update can be redone without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .metric_types import NULL_TYPE, column_type, fits, is_numeric
from .schema import (
    METRIC_KEY_COLUMNS,
    PROBLEM_COLUMNS,
    WRITER_COLUMNS,
    add_row,
    insert,
    string_schema,
)

if TYPE_CHECKING:
    import duckdb

    from ..repository import Repository

__all__ = ["BadParquet", "MetricsCache", "MetricsFile", "MetricsLoader", "quote_ident"]

#: A Parquet file's schema as (name, Arrow type) pairs.
Key = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class MetricsFile:
    """A Parquet file whose rows go into ``metrics``."""

    sid: str
    name: str  # the `file` column
    digest: str
    path: str
    key: Key


@dataclass
class MetricsCache:
    """What the writer knows about ``metrics``; valid only while it alone has the file open."""

    columns: dict[str, tuple[str, str]] | None = None  # lower-case name -> (name, type)
    written: dict[str, set[str]] | None = None  # lower-case name -> types files wrote
    # schema -> (Parquet name, metrics column, DuckDB type) per column
    schemas: dict[Key, list[tuple[str, str, str]]] = field(default_factory=dict)
    plans: dict[Key, str] = field(default_factory=dict)  # schema -> SELECT list; reset on retype


class BadParquet(Exception):
    """DuckDB could not read a Parquet object (``digest``), or one of several ("" then)."""

    def __init__(self, digest: str, why: str) -> None:
        super().__init__(why)
        self.digest = digest


class MetricsLoader:
    """Adds Parquet files' rows to ``metrics`` within the writer's transaction.

    Args:
        vault: the vault (where the Parquet objects are).
        cache: the writer's knowledge of ``metrics``, read and updated here.
    """

    def __init__(self, vault: Repository, cache: MetricsCache) -> None:
        self.vault = vault
        self._cache = cache

    def index(
        self, conn: duckdb.DuckDBPyConnection, parquet: list[tuple[str, str, str]], grouped: bool,
    ) -> None:
        """Add the rows of these ``(specimen_id, file, digest)`` Parquet files to ``metrics``.

        Raises:
            BadParquet: naming the file DuckDB could not read (file by file), or with no digest
                if a multi-file statement failed; the caller redoes the update file by file.
        """
        import duckdb

        files: list[MetricsFile] = []
        for sid, name, digest in parquet:
            path, key, rows = self._parquet_info(digest)
            # Not a readable Parquet file: the objects table still lists it. No rows: nothing
            # to add, and its column types must not decide anything for the specimens with rows.
            if key is not None and rows > 0:
                files.append(MetricsFile(sid, name, digest, path, key))
        if grouped and len(files) > 1:
            try:
                reload = self._admit(conn, files)
                self._load(conn, files, reload, grouped=True)
            except duckdb.Error as exc:
                raise BadParquet("", str(exc)) from None
            return
        for f in files:
            try:
                reload = self._admit(conn, [f])
                self._load(conn, [f], reload, grouped=False)
            except duckdb.Error as exc:
                raise BadParquet(f.digest, str(exc)) from None

    def _admit(self, conn: duckdb.DuckDBPyConnection, files: list[MetricsFile]) -> list[MetricsFile]:
        """Record the column types ``files`` wrote and settle every column's type; see :func:`column_type`.

        Adds new columns, changes the type of columns whose set of written types changed their
        type, and keeps ``catalog_problems`` in step.

        Returns:
            Files already in ``metrics`` whose rows must be read again: a type change lost or
            newly admits their values of some column.
        """
        columns = self._metrics_columns(conn)
        written = self._written_types(conn)
        new: dict[str, list[tuple[MetricsFile, str, str]]] = {}  # column -> (file, name, type)
        for f in files:
            for _src, target, dtype in self._schema(conn, f):
                new.setdefault(target.lower(), []).append((f, target, dtype))
        problems: dict[str, list[Any]] = {k: [] for k in PROBLEM_COLUMNS}
        reload: dict[tuple[str, str], MetricsFile] = {}
        for low, writes in new.items():
            types = written.setdefault(low, set())
            types.update(t for _, _, t in writes)
            want = column_type(conn, types)
            have = columns.get(low)
            if have is None:
                name = writes[0][1]
                conn.execute(f"ALTER TABLE metrics ADD COLUMN {quote_ident(name)} {want}")
                columns[low] = (name, want)
            elif have[1] != want:
                reload.update(self._retype(conn, low, have, want))
                columns[low] = (have[0], want)
                self._cache.plans.clear()
                # Every writer's fit may have changed: its problems are computed again below.
                conn.execute("DELETE FROM catalog_problems WHERE lower(column_name) = ?", [low])
                old = conn.execute(
                    "SELECT specimen_id, file, column_name, written_type FROM _metric_writers "
                    "WHERE lower(column_name) = ?", [low],
                ).fetchall()
                for sid, fname, cname, t in old:
                    _add_problem(conn, problems, sid, fname, cname, t, want)
            for f, cname, t in writes:
                _add_problem(conn, problems, f.sid, f.name, cname, t, want)
        rows: dict[str, list[Any]] = {k: [] for k in WRITER_COLUMNS}
        for writes in new.values():
            for f, cname, t in writes:
                add_row(rows, specimen_id=f.sid, file=f.name, digest=f.digest, column_name=cname,
                         written_type=t)
        if rows["specimen_id"]:
            insert(conn, "_metric_writers", rows, lambda: string_schema(rows))
        if problems["specimen_id"]:
            insert(conn, "catalog_problems", problems, lambda: string_schema(problems))
        return sorted(reload.values(), key=lambda f: (f.sid, f.name))

    def _retype(
        self, conn: duckdb.DuckDBPyConnection, low: str, have: tuple[str, str], want: str,
    ) -> dict[tuple[str, str], MetricsFile]:
        """Change a metrics column from type ``have[1]`` to ``want`` as if built with ``want``.

        Values that fit both types are cast; values of files that no longer fit become NULL; files
        that fit now but did not before (or whose values a change of kind dropped) are returned to
        be read again. The result is the table a build in any other order gives.
        """
        name, old = have
        col = quote_ident(name)
        keep = fits(conn, old, want)
        if keep:
            conn.execute(f"ALTER TABLE metrics ALTER COLUMN {col} SET DATA TYPE {want}")
        else:  # e.g. text, then the first numbers: no value of the old type is kept
            conn.execute(f"ALTER TABLE metrics ALTER COLUMN {col} SET DATA TYPE {want} USING NULL")
        writers = conn.execute(
            "SELECT specimen_id, file, any_value(digest), list(written_type) FROM _metric_writers "
            "WHERE lower(column_name) = ? GROUP BY ALL", [low],
        ).fetchall()
        reload: dict[tuple[str, str], MetricsFile] = {}
        for sid, fname, digest, types in writers:
            real = [t for t in types if t != NULL_TYPE]
            if not real:
                continue  # wrote only nulls: nothing to keep or to lose
            was = all(fits(conn, t, old) for t in real)
            now = all(fits(conn, t, want) for t in real)
            if now and (not was or not keep):
                path, key, _rows = self._parquet_info(digest)
                if key is not None:
                    reload[(sid, fname)] = MetricsFile(sid, fname, digest, path, key)
            elif was and not now and keep:
                conn.execute(f"UPDATE metrics SET {col} = NULL WHERE specimen_id = ? AND file = ?",
                             [sid, fname])
        return reload

    def _load(
        self, conn: duckdb.DuckDBPyConnection, files: list[MetricsFile],
        reload: list[MetricsFile], grouped: bool,
    ) -> None:
        """Insert the rows of ``files`` and replace those of ``reload``."""
        for f in reload:
            conn.execute("DELETE FROM metrics WHERE specimen_id = ? AND file = ?", [f.sid, f.name])
        todo = files + reload
        if not grouped or len(todo) == 1:
            for f in todo:
                conn.execute(
                    f"INSERT INTO metrics BY NAME SELECT ? AS specimen_id, ? AS file"
                    f"{self._plan(conn, f)} FROM read_parquet(?)",
                    [f.sid, f.name, f.path],
                )
            return
        self._insert_grouped(conn, todo)

    def _insert_grouped(self, conn: duckdb.DuckDBPyConnection, files: list[MetricsFile]) -> None:
        """Insert many metrics files with one statement per schema instead of one per file.

        A statement costs about a millisecond whatever it reads, so a batch or a rebuild of
        thousands of small files is dominated by their count. Files are grouped by schema (one
        SELECT list each) and read by one ``read_parquet`` of a path list; the row order stays
        file by file, row by row. A path appears once per statement (identical metrics are one
        object shared by several specimens), so repeats go to a later statement.
        """
        groups: dict[Key, list[list[MetricsFile]]] = {}
        for f in files:
            rounds = groups.setdefault(f.key, [])
            for batch in rounds:  # the first statement of this schema not reading this path yet
                if all(g.path != f.path for g in batch):
                    batch.append(f)
                    break
            else:
                rounds.append([f])
        for rounds in groups.values():
            plan = self._plan(conn, rounds[0][0])
            for batch in rounds:
                sids = [f.sid for f in batch]
                names = [f.name for f in batch]
                paths = [f.path for f in batch]
                conn.execute(
                    f"INSERT INTO metrics BY NAME SELECT (?::VARCHAR[])[_cas_idx] AS specimen_id, "
                    f"(?::VARCHAR[])[_cas_idx] AS file{plan} FROM (SELECT *, "
                    "list_position(?::VARCHAR[], _cas_path) AS _cas_idx FROM read_parquet("
                    "?::VARCHAR[], filename = '_cas_path', file_row_number = true)) "
                    "ORDER BY _cas_idx, file_row_number",
                    [sids, names, paths, paths],
                )

    def _parquet_info(self, digest: str) -> tuple[str, Key | None, int]:
        """Return a Parquet object's path, its schema as (name, type) pairs (None if unreadable)
        and its row count."""
        import pyarrow.parquet as pq

        path = str(self.vault.objects.path(digest))
        try:
            meta = pq.read_metadata(path)
            schema = meta.schema.to_arrow_schema()
        except Exception:
            return path, None, 0
        return path, tuple((f.name, str(f.type)) for f in schema), int(meta.num_rows)

    def _schema(self, conn: duckdb.DuckDBPyConnection, f: MetricsFile) -> list[tuple[str, str, str]]:
        """(Parquet name, metrics column, DuckDB type) of each column of files of ``f``'s schema."""
        cols = self._cache.schemas.get(f.key)
        if cols is None:
            cols = []
            described = conn.execute("DESCRIBE SELECT * FROM read_parquet(?)", [f.path]).fetchall()
            for name, dtype, *_ in described:
                # keep the key columns ours
                target = f"metric_{name}" if name.lower() in METRIC_KEY_COLUMNS else name
                cols.append((name, target, dtype))
            self._cache.schemas[f.key] = cols
        return cols

    def _plan(self, conn: duckdb.DuckDBPyConnection, f: MetricsFile) -> str:
        """The SELECT list for files of ``f``'s schema: every column whose type fits its column.

        A column that does not fit (text where the catalog holds numbers) and an all-null one
        are left out, so they are NULL.
        """
        plan = self._cache.plans.get(f.key)
        if plan is None:
            columns = self._metrics_columns(conn)
            select = []
            for src, target, dtype in self._schema(conn, f):
                if dtype != NULL_TYPE and fits(conn, dtype, columns[target.lower()][1]):
                    select.append(f", {quote_ident(src)} AS {quote_ident(target)}")
            plan = self._cache.plans[f.key] = "".join(select)
        return plan

    def _metrics_columns(self, conn: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, str]]:
        if self._cache.columns is None:
            rows = conn.execute("DESCRIBE metrics").fetchall()
            self._cache.columns = {r[0].lower(): (r[0], r[1]) for r in rows}
        return self._cache.columns

    def _written_types(self, conn: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
        if self._cache.written is None:
            rows = conn.execute(
                "SELECT lower(column_name), list(DISTINCT written_type) FROM _metric_writers GROUP BY 1"
            ).fetchall()
            self._cache.written = {low: set(types) for low, types in rows}
        return self._cache.written



def _add_problem(
    conn: duckdb.DuckDBPyConnection, problems: dict[str, list[Any]], sid: str, file: str,
    column: str, written: str, catalog_type: str,
) -> None:
    """Add a ``catalog_problems`` row if a file's column of type ``written`` does not fit."""
    if fits(conn, written, catalog_type):
        return
    kind = "numbers" if is_numeric(catalog_type) else catalog_type
    detail = (
        f"strata/{file}.parquet of {sid} has {column} as {written}, but other specimens wrote "
        f"{kind} there: in metrics its {column} is NULL (its other columns and rows are kept). "
        f"Its own values are unchanged: Repository.specimen({sid!r}).read_metrics({file!r})"
        + (f", or the view \"exp_{sid}\"" if file == "metrics" else "")
    )
    add_row(problems, specimen_id=sid, file=file, column_name=column, written_type=written,
            catalog_type=catalog_type, detail=detail)


def quote_ident(name: str) -> str:
    """Quote a SQL identifier (double quotes, embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'
