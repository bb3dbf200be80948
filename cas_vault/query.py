"""VaultQuery: read-only SQL over the catalog, lineage, objects, metrics and per-specimen views.

    from cas_vault import VaultQuery
    q = VaultQuery()                      # the vault at $CAS_VAULT_DIR or above the cwd
    q.search("SELECT specimen_id, tags FROM catalog WHERE domain = ?", ["interpretability"])
    q.search('SELECT step, loss FROM "exp_2024_12_19_my_experiment" WHERE step >= 50')
    q.find_by_tag("gpt2")

Each search brings the catalog up to date first (incrementally), opens ``vault.duckdb``
read-only, creates the ``exp_<specimen_id>`` views the SQL names as temporary views over the
Parquet objects at the vault's current location (so a moved vault still answers), runs exactly
one SELECT and closes the file again, so commits in other processes are never kept waiting.

The connection is a sandbox (:func:`cas_vault.catalog.connect_read_only`): SQL reads the catalog
and the vault's own objects, never another file, the network or an extension. The SELECT runs
in a worker thread while the calling thread waits, so that a timeout or Ctrl-C can cancel it
(``conn.interrupt()``) wherever DuckDB is.
"""

from __future__ import annotations

import os
import re
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .catalog import IndexResult, connect_read_only, index, release_writer, stale_reason
from .errors import InvalidInputError, LockTimeoutError, NotFoundError, QueryTimeoutError, VaultError
from .ids import run_specimen_id, validate_id
from .repository import Repository
from .storage import run_sort_key

if TYPE_CHECKING:
    import duckdb
    import polars as pl
    import pyarrow as pa


__all__ = ["CatalogStaleWarning", "FORMATS", "VaultQuery", "render"]

#: Output formats of ``vault query``.
FORMATS = ("table", "csv", "json", "parquet")

# `exp_` followed by id characters; ids may contain '.' and '-', which is why views of such ids
# must be written quoted ("exp_a-b"), while unquoted `exp_a.loss` is view `exp_a`, column `loss`.
_EXP_RE = re.compile(r"exp_([A-Za-z0-9_.\-]+)")


class CatalogStaleWarning(UserWarning):
    """The catalog could not be brought up to date; results may miss recent commits."""


class VaultQuery:
    """Read-only SQL over a vault's catalog (the seed's ``VaultQuery``, across every specimen).

    Args:
        vault_path: the vault directory, or an open :class:`~cas_vault.Vault`; None finds it
            like ``Vault.open`` does (``$CAS_VAULT_DIR``, else the nearest vault above the cwd).
        refresh: bring the catalog up to date before each search (cheap when it is current).
        timeout: seconds to wait while another process writes the catalog.

    Raises:
        NotFoundError: if there is no vault there.
    """

    def __init__(self, vault_path: str | os.PathLike[str] | Repository | None = None, *,
                 refresh: bool = True, timeout: float = 30.0) -> None:
        self.vault = (vault_path if isinstance(vault_path, Repository)
                      else Repository.open(vault_path))
        self.refresh_before_search = refresh
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"VaultQuery({str(self.vault.root)!r})"

    # -- public API ----------------------------------------------------------------------
    def search(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *,
        timeout: float | None = None,
    ) -> pl.DataFrame:
        """Run one read-only SELECT and return its result.

        The query reads the catalog and the vault's own objects only (no other file, no network,
        no extension). Ctrl-C while it runs cancels it: the catalog is closed and
        :class:`KeyboardInterrupt` is raised once DuckDB has stopped.

        Args:
            sql: one SQL SELECT (also ``WITH``, ``FROM``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``).
            params: values for ``?`` / ``$1`` placeholders (a sequence) or ``$name`` (a mapping).
            timeout: cancel the query if it runs longer than this many seconds (None: no limit).
                Unlike the constructor's ``timeout`` (the wait for other processes' writes), this
                limits the query itself.

        Returns:
            A polars DataFrame, typed from the query even when it has no rows.

        Raises:
            InvalidInputError: for SQL that does not parse or bind, that is not one SELECT, or
                that reaches outside the vault; for a ``timeout`` that is not a positive number.
            QueryTimeoutError: if the query ran longer than ``timeout``; it was cancelled.
            NotFoundError: if the vault has no catalog and it cannot be built.
            LockTimeoutError: if another process kept the catalog open for writing too long.
        """
        import polars as pl

        if not isinstance(sql, str) or not sql.strip():
            raise InvalidInputError("the query is empty; pass one SQL SELECT statement")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0):
            raise InvalidInputError(f"timeout must be a positive number of seconds, not {timeout!r}")
        import duckdb

        conn = self._connect()
        try:
            _check_read_only(conn, sql)
            try:
                self._create_views(conn, sql)
            except duckdb.Error as exc:
                raise _query_failed(exc) from None
            table = _run_cancellable(conn, sql, _params(params), timeout)
        finally:
            conn.close()
        out = pl.from_arrow(table)
        assert isinstance(out, pl.DataFrame)
        return out

    def find_by_tag(self, tag: str) -> pl.DataFrame:
        """Return the catalog rows of every specimen tagged ``tag``, newest first.

        Raises:
            InvalidInputError: if ``tag`` is not a string.
        """
        if not isinstance(tag, str):
            raise InvalidInputError(f"tag must be a string, not {type(tag).__name__}")
        return self.search(
            "SELECT * FROM catalog WHERE list_contains(tags, ?) ORDER BY created DESC, seq DESC", [tag]
        )

    def runs(self, specimen_id: str) -> pl.DataFrame:
        """The sealed runs of a specimen, newest first (what the original's ``list_runs`` and
        ``view_results.py`` list): the ``runs`` view's rows, one per run.

        Raises:
            InvalidIdError: for a malformed id.
        """
        import polars as pl

        validate_id(specimen_id)
        df = self.search("SELECT * FROM runs WHERE specimen_id = ?", [specimen_id])
        order = sorted(range(df.height), key=lambda i: run_sort_key(df["run_id"][i]), reverse=True)
        return df[order] if order else df.clear()

    def run_metrics(self, specimen_id: str, run_id: str | None = None) -> pl.DataFrame:
        """One sealed run's metrics: the newest run's by default (the original's
        ``read_metrics``); ``SELECT * FROM "exp_<id>"`` gives all runs' at once.

        Raises:
            NotFoundError: if the specimen has no sealed run (of that id); the message lists
                the runs it has.
        """
        runs = self.runs(specimen_id)["run_id"].to_list()
        if not runs or (run_id is not None and run_id not in runs):
            have = ", ".join(runs[:10]) if runs else "none"
            what = f"run {run_id!r}" if run_id is not None else "runs"
            raise NotFoundError(f"specimen {specimen_id} has no sealed {what} (its sealed runs, "
                                f"newest first: {have}); runs are sealed by `vault commit "
                                f"{specimen_id}`")
        sid = run_specimen_id(specimen_id, run_id or runs[0]).replace('"', '""')
        return self.search(f'SELECT * FROM "exp_{sid}"')

    def refresh(self) -> IndexResult:
        """Bring the catalog up to date now (what ``vault index`` does).

        Raises:
            LockTimeoutError: if other writers kept it busy for longer than ``timeout``.
        """
        return index(self.vault, lock_timeout=self.timeout)

    def stale_reason(self) -> str | None:
        """Why the catalog does not reflect the vault right now, or None if it does."""
        if not self.vault.catalog_path.exists():
            return "the catalog has not been built yet"
        release_writer(self.vault.root)
        try:
            conn = connect_read_only(self.vault.catalog_path, self.timeout)
        except InvalidInputError as exc:
            return str(exc)
        try:
            return stale_reason(self.vault, conn)
        finally:
            conn.close()

    # -- internals -----------------------------------------------------------------------
    def _connect(self) -> duckdb.DuckDBPyConnection:
        path = self.vault.catalog_path
        release_writer(self.vault.root)
        if path.exists():
            try:
                conn = connect_read_only(path, self.timeout)
            except InvalidInputError as exc:  # a damaged file: an update repairs or rebuilds it
                why = str(exc)
            else:
                why = stale_reason(self.vault, conn)
                if why is None or not self.refresh_before_search:
                    return conn
                conn.close()
        else:
            why = "the catalog has not been built yet"
        try:
            self.refresh()
        except (LockTimeoutError, OSError, VaultError) as exc:
            if not path.exists():
                raise NotFoundError(
                    f"{self.vault.root} has no catalog and it could not be built ({exc}); "
                    "run `vault index` when the vault is writable"
                ) from None
            warnings.warn(
                CatalogStaleWarning(f"catalog not updated ({why}; {exc}); results may miss recent commits"),
                stacklevel=3,
            )
        return connect_read_only(path, self.timeout)

    def _create_views(self, conn: duckdb.DuckDBPyConnection, sql: str) -> None:
        """Create ``exp_<id>`` temp views for the ids the SQL names, over today's object paths."""
        candidates: set[str] = set()
        for m in _EXP_RE.finditer(sql):
            word = m.group(1)
            candidates.add(word)
            for i, ch in enumerate(word):  # `exp_a.loss` may mean view exp_a, column loss
                if ch in ".-":
                    candidates.add(word[:i])
        if not candidates:
            return
        rows = conn.execute(
            "SELECT specimen_id, path, digest FROM objects WHERE kind = 'parquet' "
            "AND specimen_id IN (SELECT unnest(?::VARCHAR[])) AND path LIKE 'strata/%' "
            "ORDER BY specimen_id, path",
            [sorted(candidates)],
        ).fetchall()
        files: dict[str, dict[str, str]] = {}
        for sid, path, digest in rows:
            if path.count("/") == 1:
                files.setdefault(sid, {})[path] = digest
        views: dict[str, list[str]] = {}
        for sid, by_path in files.items():
            digest = by_path.get("strata/metrics.parquet")
            if digest is None and len(by_path) == 1:
                digest = next(iter(by_path.values()))
            if digest is not None:
                views[sid] = [digest]
        # A specimen with runs and no metrics of its own: all its runs' metrics, newest first
        # (the original's read_all_runs; each run's rows carry its run_id).
        runs = conn.execute(
            "SELECT c.run_of, c.run_id, o.digest FROM catalog c JOIN objects o USING (specimen_id) "
            "WHERE c.run_of IN (SELECT unnest(?::VARCHAR[])) AND o.path = 'strata/metrics.parquet'",
            [sorted(candidates - set(views))],
        ).fetchall()
        by_run: dict[str, list[tuple[str, str]]] = {}
        for sid, run_id, digest in runs:
            by_run.setdefault(sid, []).append((run_id, digest))
        for sid, found in by_run.items():
            found.sort(key=lambda r: run_sort_key(r[0]), reverse=True)
            views[sid] = [digest for _, digest in found]
        made: set[str] = set()
        for sid, digests in sorted(views.items()):
            if sid.lower() in made:  # DuckDB names are case-insensitive
                continue
            made.add(sid.lower())
            locations = ", ".join(
                "'" + str(self.vault.objects.path(d)).replace("'", "''") + "'" for d in digests)
            name = '"exp_' + sid.replace('"', '""') + '"'
            conn.execute(f"CREATE TEMP VIEW {name} AS SELECT * FROM "
                         f"read_parquet([{locations}], union_by_name = true)")


def render(df: pl.DataFrame, fmt: str) -> str:
    """Render a query result as text for ``vault query`` (``table``, ``csv`` or ``json``).

    Raises:
        InvalidInputError: for an unknown format or ``parquet`` (which is binary: write a file).
    """
    import polars as pl

    if fmt == "table":
        with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=120, tbl_width_chars=10_000,
                       fmt_table_cell_list_len=-1):
            return str(df)
    if fmt == "csv":
        return _flatten_nested(df).write_csv()
    if fmt == "json":
        import json

        return json.dumps(df.to_dicts(), indent=2, ensure_ascii=False, default=_json_default,
                          allow_nan=True)
    raise InvalidInputError(f"format {fmt!r} is not a text format; choose table, csv or json")


def _flatten_nested(df: pl.DataFrame) -> pl.DataFrame:
    """CSV has no lists or structs: write those cells as JSON text."""
    import json

    import polars as pl

    nested = [c for c, t in df.schema.items() if isinstance(t, (pl.List, pl.Array, pl.Struct))]
    binary = [c for c, t in df.schema.items() if t == pl.Binary]
    if not nested and not binary:
        return df
    return df.with_columns(
        *(pl.Series(c, [None if v is None else json.dumps(v, default=_json_default)
                        for v in df[c].to_list()], dtype=pl.String) for c in nested),
        *(pl.Series(c, [None if v is None else blob_text(v) for v in df[c].to_list()],
                    dtype=pl.String) for c in binary),
    )


def blob_text(value: bytes) -> str:
    """Binary as text the way DuckDB writes a BLOB: ``\\xAA\\xBB``, every byte escaped."""
    return "".join(f"\\x{b:02X}" for b in value)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return blob_text(bytes(value))
    iso = getattr(value, "isoformat", None)  # datetimes, dates, times
    return iso() if callable(iso) else str(value)


def _check_read_only(conn: duckdb.DuckDBPyConnection, sql: str) -> None:
    import duckdb

    try:
        statements = conn.extract_statements(sql)
    except duckdb.Error as exc:
        raise InvalidInputError(f"the query does not parse: {_first_lines(exc)}") from None
    if len(statements) != 1:
        raise InvalidInputError(
            f"pass exactly one SQL statement (got {len(statements)}); run them one at a time"
        )
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise InvalidInputError(
            f"queries are read-only: only SELECT statements run, not {kind.name}; to save a "
            "result use `vault query SQL --format parquet --output FILE`"
        )


def _run_cancellable(
    conn: duckdb.DuckDBPyConnection, sql: str, params: Any, timeout: float | None,
) -> pa.Table:
    """Run ``sql`` on ``conn`` in a worker thread; cancel it on timeout or KeyboardInterrupt.

    The calling thread only waits, so Ctrl-C reaches it (Python runs signal handlers in the main
    thread, which DuckDB would otherwise hold inside C++ until the query ends) and it can call
    ``conn.interrupt()``. The connection is not used by this thread until the worker is done.

    Raises:
        QueryTimeoutError: if ``timeout`` passed; the query was cancelled.
        KeyboardInterrupt: if the wait was interrupted; the query was cancelled.
        InvalidInputError: if the query failed.
    """
    import duckdb

    outcome: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["table"] = conn.sql(sql, params=params).to_arrow_table()
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc
        finally:
            done.set()

    deadline = None if timeout is None else time.monotonic() + timeout
    cancelled: str | None = None
    threading.Thread(target=work, name="vault-query", daemon=True).start()
    try:
        while not done.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                cancelled = "timeout"
                break
            done.wait(0.5 if left is None else min(left, 0.5))
    except KeyboardInterrupt:
        cancelled = "interrupt"
    if cancelled is not None:
        _cancel(conn, done)
        if cancelled == "interrupt":
            raise KeyboardInterrupt
        if "table" not in outcome:  # it may have finished as the deadline passed: keep that
            assert timeout is not None
            raise QueryTimeoutError(timeout)
    if "table" in outcome:
        return outcome["table"]
    exc = outcome["error"]
    if isinstance(exc, duckdb.Error):
        raise _query_failed(exc) from None
    raise exc


def _cancel(conn: duckdb.DuckDBPyConnection, done: threading.Event) -> None:
    """Interrupt the query running on ``conn`` until its worker has finished."""
    while not done.is_set():
        try:
            # Repeated: an interrupt that arrives before DuckDB starts the query is forgotten.
            conn.interrupt()
            done.wait(0.05)
        except KeyboardInterrupt:  # already cancelling; the connection must not be closed early
            continue


def _query_failed(exc: BaseException) -> InvalidInputError:
    import duckdb

    if isinstance(exc, duckdb.PermissionException):
        return InvalidInputError(
            f"the query was refused: {_first_lines(exc)}\nQueries read the catalog and the "
            "vault's own objects only: no other file, no network, no extensions, no settings"
        )
    return InvalidInputError(f"the query failed: {_first_lines(exc)}")


def _params(params: Sequence[Any] | Mapping[str, Any] | None) -> Any:
    if params is None:
        return None
    if isinstance(params, Mapping):
        return dict(params)
    if isinstance(params, (str, bytes)):
        raise InvalidInputError("params must be a list of values or a mapping of names to values")
    return list(params)


def _first_lines(exc: BaseException, n: int = 6) -> str:
    return "\n".join(str(exc).strip().splitlines()[:n])

