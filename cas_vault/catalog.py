"""The DuckDB catalog ``<vault>/vault.duckdb``: every specimen, edge, object and metric row in SQL.

The catalog is derived data. Everything in it comes from the journal (for the order of commits),
the commit objects (manifest, parents, tree) and the Parquet objects (metrics), so deleting the
file loses nothing: the next ``vault index`` (or query) rebuilds it.

Updates are incremental. The ``_state`` table remembers how far into the journal the catalog has
read (line count, byte offset and the BLAKE3 of the last line read); an update reads only the
journal lines after that offset and the commits they name. A catalog whose last line no longer
matches the journal, or that was built for another vault or by another schema version, is rebuilt.

Concurrency (docs/catalog.md): DuckDB lets one process open a file read-write, and no process
open it read-only meanwhile. Writers serialise on ``locks/catalog.lock``; a commit's catalog
update is best effort: if it cannot get the lock or the file quickly, it writes the stale marker
``<vault>/catalog.stale`` and the commit stands. A process keeps its writer connection open while
it commits in a burst (opening a DuckDB file costs ~20 ms, more than a whole commit) and closes it
after :data:`IDLE_CLOSE_SECONDS` without commits, so readers in other processes get in. Closing
writes nothing (no checkpoint on close), so no vault file changes after a commit returns.

Metric column types (docs/catalog.md): ``_metric_writers`` records the type every file wrote for
every column, and a column's type in ``metrics`` is a function of that set alone, so it does not
depend on commit order and a rebuild gives the same table. Numbers win over everything else,
integers and floats widen to DOUBLE, an all-null column takes the others' type, and nothing is
ever widened to text: a file whose column does not fit the column's type has NULL there and a
row in ``catalog_problems``. Files without rows add nothing.

Readers are sandboxed (:func:`connect_read_only`): no file outside the vault's ``objects/``, no
network, no extensions, and a locked configuration, so SQL cannot undo any of it.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import canonical
from . import journal as _journal
from .atomic import FileLock, write_replace
from .commit import Commit
from .digest import Digest, hash_bytes
from .errors import (
    IntegrityError,
    InvalidInputError,
    JournalRolledBackError,
    LockTimeoutError,
    VaultError,
)
from .journal import JournalEntry, JournalTip, rollback

if TYPE_CHECKING:
    import duckdb

    from .vault import Vault

__all__ = [
    "CATALOG_TABLES",
    "IDLE_CLOSE_SECONDS",
    "SCHEMA_VERSION",
    "STALE_MARKER",
    "CatalogProblem",
    "CatalogWriter",
    "IndexResult",
    "after_commit",
    "catalog_problems",
    "connect_read_only",
    "index",
    "indexed_commits",
    "indexed_tip",
    "release_writer",
    "stale_reason",
]

#: Version of the catalog's tables; a catalog with another version is rebuilt.
SCHEMA_VERSION = 2
#: File written next to ``vault.duckdb`` when a commit could not update the catalog.
STALE_MARKER = "catalog.stale"
#: A writer connection unused for this long is closed so other processes can open the file.
IDLE_CLOSE_SECONDS = 0.5
#: A commit indexes at most this many journal lines itself; more is left to `vault index`.
MAX_LINES_PER_COMMIT = 256
#: Updates indexing more journal lines than this use all of DuckDB's threads.
BIG_UPDATE = 64
#: WAL size at which a writer's commit checkpoints it into the database file.
CHECKPOINT_THRESHOLD = "1MB"
#: Tables a user can query.
CATALOG_TABLES = ("catalog", "lineage", "objects", "metrics", "catalog_problems")
#: Columns of ``metrics`` that are not metric columns.
METRIC_KEY_COLUMNS = ("specimen_id", "file")

_DDL = """
CREATE TABLE _state(
    schema_version INTEGER, vault_created VARCHAR, journal_lines BIGINT, journal_offset BIGINT,
    tip_offset BIGINT, tip VARCHAR, updated TIMESTAMP);
CREATE TABLE catalog(
    specimen_id VARCHAR, created TIMESTAMP, domain VARCHAR, method VARCHAR, model VARCHAR,
    tags VARCHAR[], status VARCHAR, commit VARCHAR, parents VARCHAR[], message VARCHAR,
    author VARCHAR, logical_bytes BIGINT, unique_bytes BIGINT, seq BIGINT, files INTEGER,
    metadata JSON, config JSON);
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
_DROP = """
DROP MACRO TABLE IF EXISTS ancestors; DROP MACRO TABLE IF EXISTS descendants;
DROP TABLE IF EXISTS _state; DROP TABLE IF EXISTS catalog; DROP TABLE IF EXISTS lineage;
DROP TABLE IF EXISTS objects; DROP TABLE IF EXISTS metrics; DROP TABLE IF EXISTS _metric_writers;
DROP TABLE IF EXISTS catalog_problems;
"""
_NUMERIC = {
    "BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
    "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE",
}
#: DuckDB's name for the type of a column that holds only nulls (Parquet's null type).
_NULL_TYPE = '"NULL"'
#: The type of a metrics column that only all-null columns were written for so far.
_PLACEHOLDER_TYPE = "INTEGER"
#: Settings every reader connection is opened with (before any SQL runs).
_READER_CONFIG: dict[str, Any] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "python_enable_replacements": False,
}


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


@dataclass(frozen=True)
class IndexResult:
    """What one catalog update did.

    Attributes:
        indexed: commits added by this update.
        total: specimens in the catalog afterwards.
        rebuilt: whether the catalog was rebuilt from scratch.
        seconds: wall time of the update.
        problems: every row of ``catalog_problems`` afterwards (filled by :func:`index` only).
    """

    indexed: int
    total: int
    rebuilt: bool
    seconds: float
    problems: tuple[CatalogProblem, ...] = ()


@dataclass
class _State:
    journal_lines: int = 0
    journal_offset: int = 0
    tip_offset: int = 0
    tip: str = ""


@dataclass(frozen=True)
class _Pending:
    offset: int  # byte offset of the line in the journal
    entry: JournalEntry


#: A Parquet file's schema as (name, Arrow type) pairs.
_Key = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _MetricsFile:
    sid: str
    name: str  # the `file` column
    digest: str
    path: str
    key: _Key


@dataclass
class _Cache:
    """What a writer knows about the file; valid only while it alone has the file open."""

    state: _State | None = None
    total: int = 0
    digests: set[str] | None = None  # every digest in `objects`, for unique_bytes
    columns: dict[str, tuple[str, str]] | None = None  # metrics: lower-case name -> (name, type)
    written: dict[str, set[str]] | None = None  # metrics: lower-case name -> types files wrote
    # schema -> (Parquet name, metrics column, DuckDB type) per column
    schemas: dict[_Key, list[tuple[str, str, str]]] = field(default_factory=dict)
    plans: dict[_Key, str] = field(default_factory=dict)  # schema -> SELECT list; reset on retype


class _TooMuchPending(VaultError):
    """More journal lines are waiting than a commit should index on its own."""


# -- public functions ---------------------------------------------------------------------------
def index(
    vault: Vault, rebuild: bool = False, lock_timeout: float = 60.0, accept_rollback: bool = False,
) -> IndexResult:
    """Bring ``vault.duckdb`` up to date (``vault index``), reading only commits not yet indexed.

    The catalog's recorded journal tip and the tip record beside the journal are witnesses of
    how far the journal reached: if the journal no longer holds a line they saw, nothing is
    rebuilt over it (that would erase the last trace of the lost commits) unless
    ``accept_rollback``.

    Args:
        vault: the vault.
        rebuild: drop everything and rebuild from the journal and objects.
        lock_timeout: seconds to wait for other writers and open readers.
        accept_rollback: rebuild even though the journal lost lines a witness saw (after
            restoring a backup on purpose).

    Returns:
        What was done, with every row of ``catalog_problems``.

    Raises:
        LockTimeoutError: if another process kept the catalog busy for longer.
        IntegrityError: if the journal is damaged (``vault verify`` says where).
        JournalRolledBackError: if the journal lost lines a witness saw (see above).
        InvalidInputError: if ``vault.duckdb`` is not a DuckDB file this version can open (and
            ``rebuild`` was not asked for).
    """
    writer = _writer_for(vault)
    try:
        result = writer.update(rebuild=rebuild, lock_timeout=lock_timeout,
                               open_timeout=lock_timeout, accept_rollback=accept_rollback)
        writer.checkpoint()
        return replace(result, problems=writer.problems())
    finally:
        writer.close()


def after_commit(vault: Vault, specimen_id: str, digest: Digest, commit: Commit) -> None:
    """Index a commit just made; on any failure mark the catalog stale. Never raises.

    The update is done before the commit returns, so no file of the vault changes afterwards
    (closing the idle connection later writes nothing).
    """
    try:
        writer = _writer_for(vault)
        writer.update_best_effort({digest: commit})
        writer.schedule_idle_close()
    except Exception as exc:  # the commit stands whatever happens to derived data
        _mark_stale(vault, f"the catalog update after committing {specimen_id} failed: {exc}")


def update_after_batch(vault: Vault) -> None:
    """Index the commits of a :meth:`Vault.batch` in one update; on failure mark stale. Never raises."""
    try:
        writer = _writer_for(vault)
        writer.update(lock_timeout=5.0, open_timeout=5.0)
        writer.schedule_idle_close()
    except Exception as exc:  # the commits stand whatever happens to derived data
        _mark_stale(vault, f"the catalog update after a batch of commits failed: {exc}")


def release_writer(vault_root: Path) -> None:
    """Close this process's writer connection to the catalog (after an update in progress).

    A DuckDB file open read-write in a process cannot be opened read-only by the same process,
    so readers call this before connecting.
    """
    writer = _WRITERS.get(Path(vault_root))
    if writer is not None and writer.pid == os.getpid():
        writer.close()


def indexed_commits(vault: Vault, timeout: float = 30.0) -> dict[str, str]:
    """Return specimen id -> commit digest as the catalog records them now (no update first).

    For ``vault verify``: a catalog that cannot be opened, or has no tables yet, records nothing.

    Raises:
        LockTimeoutError: if a writer kept the file open longer than ``timeout``.
    """
    import duckdb

    if not vault.catalog_path.exists():
        return {}
    release_writer(vault.root)
    try:
        conn = connect_read_only(vault.catalog_path, timeout)
    except InvalidInputError:
        return {}
    try:
        return dict(conn.execute("SELECT specimen_id, commit FROM catalog").fetchall())
    except duckdb.Error:
        return {}
    finally:
        conn.close()


def indexed_tip(vault: Vault, timeout: float = 30.0) -> JournalTip | None:
    """Return the journal tip the catalog recorded when it last indexed (a rollback witness).

    For ``vault verify``: None without a catalog, an unreadable one, or one that indexed no
    line yet.

    Raises:
        LockTimeoutError: if a writer kept the file open longer than ``timeout``.
    """
    import duckdb

    if not vault.catalog_path.exists():
        return None
    release_writer(vault.root)
    try:
        conn = connect_read_only(vault.catalog_path, timeout)
    except InvalidInputError:
        return None
    try:
        rows = conn.execute("SELECT vault_created, journal_lines, tip FROM _state").fetchall()
    except duckdb.Error:
        return None
    finally:
        conn.close()
    if len(rows) != 1 or rows[0][0] != _vault_created(vault) or not rows[0][1]:
        return None
    return JournalTip.decode(JournalTip(int(rows[0][1]), Digest(str(rows[0][2]))).encode())


def catalog_problems(vault: Vault, timeout: float = 30.0) -> list[CatalogProblem]:
    """Return the rows of ``catalog_problems`` as the catalog records them now (no update first).

    For ``vault verify``: a catalog that does not exist, cannot be opened or has no such table
    records none.

    Raises:
        LockTimeoutError: if a writer kept the file open longer than ``timeout``.
    """
    import duckdb

    if not vault.catalog_path.exists():
        return []
    release_writer(vault.root)
    try:
        conn = connect_read_only(vault.catalog_path, timeout)
    except InvalidInputError:
        return []
    try:
        return _read_problems(conn)
    except duckdb.Error:
        return []
    finally:
        conn.close()


def stale_reason(vault: Vault, conn: duckdb.DuckDBPyConnection) -> str | None:
    """Say why the catalog open on ``conn`` does not reflect the vault, or None if it does.

    Cheap: one query, two ``stat`` calls and a read of the journal's unindexed tail.
    """
    marker = vault.root / STALE_MARKER
    if marker.exists():
        try:
            why = marker.read_text("utf-8", "replace").strip()
        except OSError:
            why = ""
        return why or "the catalog was marked stale"
    try:
        row = conn.execute(
            "SELECT schema_version, vault_created, journal_offset FROM _state"
        ).fetchall()
    except Exception:  # a file without our tables (new, foreign, or older layout)
        return "the catalog has not been built yet"
    if len(row) != 1 or row[0][0] != SCHEMA_VERSION:
        return "the catalog was built by another version of cas-vault"
    row = row[0]
    if row[1] != _vault_created(vault):
        return "the catalog was built for another vault"
    offset = int(row[2])
    try:
        size = vault.refs.journal.stat().st_size
    except FileNotFoundError:
        size = 0
    if size < offset:
        return "the journal is shorter than what the catalog indexed"
    if size > offset:
        with open(vault.refs.journal, "rb") as f:
            f.seek(offset)
            if b"\n" in f.read():
                return "commits were made since the catalog was last updated"
    return None


def connect_read_only(path: Path, timeout: float) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file read-only and sandboxed, retrying while another process writes it.

    The connection can read the database and the files under ``objects/`` next to it (the
    vault's objects, which the ``exp_<id>`` views read) and nothing else: no other file, no
    network (``http://``, ``s3://``), no extension install or load, and its configuration is
    locked so that no ``SET``/``RESET`` can undo that.

    Args:
        path: the database file (``<vault>/vault.duckdb``).
        timeout: seconds to wait while a writer has the file.

    Raises:
        LockTimeoutError: if a writer held it for longer than ``timeout`` seconds.
        InvalidInputError: if it is not a DuckDB database this version can read, or the
            sandbox cannot be set up.
    """
    conn = _connect_retrying(
        path, timeout, read_only=True, config=_READER_CONFIG,
        busy=f"{path} has been open for writing by another process for over {timeout:g} s "
             "(a commit or `vault index`); try again when it finishes",
    )
    try:
        _sandbox(conn, [Path(path).parent / "objects"])
    except BaseException:
        conn.close()
        raise
    return conn


def _sandbox(conn: duckdb.DuckDBPyConnection, readable: Iterable[Path]) -> None:
    """Confine a reader connection: only ``readable`` directories, no network, no extensions.

    Raises:
        InvalidInputError: if the connection's database is already locked without the sandbox.
    """
    import duckdb

    # Connections to one file in one process share a database instance, and these settings are
    # the instance's: a second reader finds them made and locked by the first.
    locked, external = conn.execute(
        "SELECT current_setting('lock_configuration'), current_setting('enable_external_access')"
    ).fetchone()  # type: ignore[misc]
    if locked:
        if external:
            raise InvalidInputError(
                "the catalog is open in this process with a configuration that allows reading "
                "any file; close that connection first"
            )
        return
    # A directory with its trailing separator, so that `objects` does not also allow `objects2`.
    dirs = [os.path.join(os.path.abspath(d), "") for d in readable]
    try:
        # allowed_directories must be set while external access is still on; lock last.
        conn.execute("SET allowed_directories = ?", [dirs])
        conn.execute("SET enable_external_access = false")
        conn.execute("SET lock_configuration = true")
    except duckdb.Error as exc:
        raise InvalidInputError(f"could not confine the catalog connection: {exc}") from None


def _connect_retrying(
    path: Path, timeout: float, *, read_only: bool, busy: str,
    repair: Callable[[Exception], bool] | None = None, config: Mapping[str, Any] | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open ``path``, waiting (with backoff) while another process has it in a conflicting mode.

    Args:
        path: the database file.
        timeout: seconds to wait for other processes.
        read_only: open read-only (readers) or read-write (the writer).
        busy: the message of the error raised when ``timeout`` passes.
        config: DuckDB settings to open it with.
        repair: called with an error that is not a lock conflict; returning True retries at
            once (it fixed something), False gives up.

    Raises:
        LockTimeoutError: with ``busy`` after ``timeout`` seconds of conflicts.
        InvalidInputError: if the file cannot be opened as a DuckDB catalog.
    """
    import duckdb

    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=dict(config or {}))
        except duckdb.Error as exc:
            if not _is_lock_conflict(exc):
                if repair is not None and repair(exc):
                    continue
                raise InvalidInputError(
                    f"{path} cannot be opened as a DuckDB catalog ({exc}); it is derived data: "
                    "run `vault index --rebuild` to recreate it"
                ) from None
            if time.monotonic() >= deadline:
                raise LockTimeoutError(busy) from None
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# -- the writer ---------------------------------------------------------------------------------
_WRITERS: dict[Path, CatalogWriter] = {}
_WRITERS_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    # Close idle connections while the interpreter is whole: a timer thread closing one during
    # interpreter shutdown would be torn down inside DuckDB's C++ code and abort the process.
    for writer in list(_WRITERS.values()):
        if writer.pid == os.getpid():
            writer.close()


def _writer_for(vault: Vault) -> CatalogWriter:
    # One writer per vault per process: its caches are valid only while it alone writes.
    with _WRITERS_LOCK:
        w = _WRITERS.get(vault.root)
        if w is None or w.pid != os.getpid():
            w = _WRITERS[vault.root] = CatalogWriter(vault)
        return w


class CatalogWriter:
    """Updates one vault's catalog; keeps its connection open across a burst of commits.

    Args:
        vault: the vault.
    """

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.path = vault.catalog_path
        self.lock_path = vault.root / "locks" / "catalog.lock"
        self.pid = os.getpid()
        self._mutex = threading.RLock()
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._cache = _Cache()
        self._last_used = 0.0
        self._timer: threading.Timer | None = None

    # -- connection ----------------------------------------------------------------------
    def _connect(self, timeout: float, rebuild: bool) -> duckdb.DuckDBPyConnection:
        if self._conn is not None:
            return self._conn
        wal = Path(f"{self.path}.wal")
        if not self.path.exists():  # a log without its database (deleted by hand) is garbage
            wal.unlink(missing_ok=True)

        def repair(exc: Exception) -> bool:
            nonlocal rebuild
            if "WAL" in str(exc) and "does not match" in str(exc) and wal.exists():
                # The log belongs to another database file (one was replaced by hand). It
                # only holds catalog transactions, which `_state` will make us redo.
                wal.unlink()
                return True
            if rebuild:  # derived data we cannot open: start from an empty file
                self.path.unlink(missing_ok=True)
                wal.unlink(missing_ok=True)
                rebuild = False
                return True
            return False

        self._conn = _connect_retrying(
            self.path, timeout, read_only=False, repair=repair,
            busy=f"{self.path} is open in another process (a query or a commit) for over "
                 f"{timeout:g} s; try again when it finishes",
        )
        # Closing must write nothing (an idle connection is closed by a timer, maybe while the
        # user moves or deletes the vault): no checkpoint on close; a small WAL threshold keeps
        # the log that readers replay short instead.
        self._conn.execute("PRAGMA disable_checkpoint_on_shutdown")
        self._conn.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
        # A commit's update is a few one-row statements: waking DuckDB's worker threads for
        # each costs more than it saves (about 1 ms per commit here). Big updates raise it.
        self._conn.execute("SET threads = 1")
        self._forget()
        return self._conn

    def close(self) -> None:
        """Close the connection (other processes can then open the catalog)."""
        with self._mutex:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._conn is not None and self.pid == os.getpid():
                try:
                    self._conn.close()
                finally:
                    self._conn = None
                    self._forget()

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database file (readers then have none to replay)."""
        with self._mutex:
            if self._conn is not None:
                self._conn.execute("CHECKPOINT")

    # -- idle close ----------------------------------------------------------------------
    def schedule_idle_close(self) -> None:
        """Close the connection once it has been idle for :data:`IDLE_CLOSE_SECONDS`."""
        with self._mutex:
            self._last_used = time.monotonic()
            if self._timer is None:
                self._start_timer(IDLE_CLOSE_SECONDS)

    def _start_timer(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self._idle_check)
        self._timer.daemon = True
        self._timer.start()

    def _idle_check(self) -> None:
        with self._mutex:
            self._timer = None
            idle = time.monotonic() - self._last_used
            if idle >= IDLE_CLOSE_SECONDS:
                self.close()
            else:
                self._start_timer(IDLE_CLOSE_SECONDS - idle)

    def update_best_effort(self, known: Mapping[str, Commit]) -> None:
        """:meth:`update` for a commit: short waits, bounded work; failures mark the catalog stale."""
        try:
            self.update(lock_timeout=0.05, open_timeout=0.05, known=known, max_lines=MAX_LINES_PER_COMMIT)
        except Exception as exc:  # the commits stand; the marker says what to do
            ids = ", ".join(sorted(c.specimen_id for c in known.values())) or "earlier commits"
            _mark_stale(self.vault, f"the catalog update after committing {ids} failed: {exc}")

    # -- update --------------------------------------------------------------------------
    def update(
        self,
        rebuild: bool = False,
        *,
        lock_timeout: float = 60.0,
        open_timeout: float = 60.0,
        known: Mapping[str, Commit] | None = None,
        max_lines: int | None = None,
        accept_rollback: bool = False,
    ) -> IndexResult:
        """Index the journal lines not yet in the catalog (all of them if ``rebuild``).

        Args:
            rebuild: drop and recreate every table first.
            lock_timeout: seconds to wait for ``locks/catalog.lock``.
            open_timeout: seconds to wait while another process has the file open.
            known: commits already in memory (the one just made), by digest.
            max_lines: refuse (raise) if more lines than this are pending; the caller then
                leaves the work to ``vault index``.
            accept_rollback: rebuild over a journal that lost lines a witness saw.

        Returns:
            What was done.

        Raises:
            LockTimeoutError, InvalidInputError, IntegrityError: see :func:`index`.
            VaultError: if more than ``max_lines`` lines are pending.
        """
        t0 = time.perf_counter()
        with self._mutex, FileLock(self.lock_path, timeout=lock_timeout):
            # Remove the marker before reading the journal: a commit that fails to update the
            # catalog after this point writes it again, so no commit is ever left unmarked.
            (self.vault.root / STALE_MARKER).unlink(missing_ok=True)
            try:
                conn = self._connect(open_timeout, rebuild)
                result = self._update_locked(conn, rebuild, known or {}, max_lines, t0,
                                             accept_rollback)
            except _TooMuchPending as exc:
                _mark_stale(self.vault, str(exc))
                raise
            except BaseException as exc:
                self._forget()
                _mark_stale(self.vault, f"the last catalog update failed: {exc}")
                raise
            return result

    def _forget(self) -> None:
        # After a failed transaction, or when the file was closed, no cached fact can be trusted.
        self._cache = _Cache()

    def _update_locked(
        self, conn: duckdb.DuckDBPyConnection, rebuild: bool, known: Mapping[str, Commit],
        max_lines: int | None, t0: float, accept_rollback: bool = False,
    ) -> IndexResult:
        created = _vault_created(self.vault)
        recorded = self._cache.state or self._read_state(conn, created)
        state = None if rebuild else recorded
        rebuilt = state is None
        if state is not None:
            pending = self._pending(state)
            if pending is None:  # the journal no longer continues what we indexed
                state, rebuilt = None, True
        if state is None:
            if recorded is not None and recorded.journal_lines and not accept_rollback:
                self._refuse_rollback(recorded)
            state = _State()
            pending = self._pending(state)
            assert pending is not None
        if not accept_rollback:
            self._check_tip_record(state, pending)
        if max_lines is not None and len(pending) > max_lines:
            raise _TooMuchPending(f"{len(pending)} commits are not indexed yet")
        big = len(pending) > BIG_UPDATE
        if big:
            conn.execute(f"SET threads = {os.cpu_count() or 1}")
        try:
            return self._write(conn, state, pending, known, rebuilt, created, t0)
        finally:
            if big:
                try:
                    conn.execute("SET threads = 1")
                except Exception:  # a tuning knob on a connection that failed: _forget() ran
                    pass

    def _write(
        self, conn: duckdb.DuckDBPyConnection, state: _State, pending: list[_Pending],
        known: Mapping[str, Commit], rebuilt: bool, created: str, t0: float,
    ) -> IndexResult:
        """Write the rows of ``pending`` and the new ``_state`` in one transaction.

        An unreadable Parquet object is left out of ``metrics`` (it is still in ``objects``):
        the transaction is redone without it.
        """
        skip: set[str] = set()
        grouped = True
        for _attempt in range(9):
            conn.execute("BEGIN TRANSACTION")
            try:
                cache = self._cache
                if rebuilt:
                    conn.execute(_DROP + _DDL)
                    self._forget()
                    cache = self._cache
                    cache.digests = set()
                elif cache.digests is None:
                    cache.digests = {r[0] for r in conn.execute("SELECT DISTINCT digest FROM objects").fetchall()}
                self._index_lines(conn, pending, known, skip, cache.digests, grouped)
                new_state = _advance(state, pending)
                values = [SCHEMA_VERSION, created, new_state.journal_lines, new_state.journal_offset,
                          new_state.tip_offset, new_state.tip]
                if rebuilt:
                    conn.execute("INSERT INTO _state VALUES (?, ?, ?, ?, ?, ?, now()::TIMESTAMP)", values)
                else:
                    conn.execute(
                        "UPDATE _state SET schema_version = ?, vault_created = ?, journal_lines = ?, "
                        "journal_offset = ?, tip_offset = ?, tip = ?, updated = now()::TIMESTAMP", values,
                    )
                conn.execute("COMMIT")
                cache.state = new_state
                cache.total += len(pending)
                total = cache.total
                break
            except _BadParquet as bad:
                conn.execute("ROLLBACK")
                self._forget()
                if bad.digest:
                    skip.add(bad.digest)
                else:  # a multi-file insert failed: redo file by file to find the culprit
                    grouped = False
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except Exception:
                    pass
                raise
        else:  # pragma: no cover - needs eight unreadable Parquet objects in one update
            raise IntegrityError("too many unreadable Parquet objects; run `vault verify`")
        return IndexResult(len(pending), int(total), rebuilt, time.perf_counter() - t0)

    def _read_state(self, conn: duckdb.DuckDBPyConnection, created: str) -> _State | None:
        try:
            rows = conn.execute(
                "SELECT schema_version, vault_created, journal_lines, journal_offset, tip_offset, tip "
                "FROM _state"
            ).fetchall()
        except Exception:
            return None
        if len(rows) != 1 or rows[0][0] != SCHEMA_VERSION or rows[0][1] != created:
            return None
        row = rows[0]
        self._cache.total = int(conn.execute("SELECT count(*) FROM catalog").fetchall()[0][0])
        return _State(int(row[2]), int(row[3]), int(row[4]), str(row[5] or ""))

    def _refuse_rollback(self, recorded: _State) -> None:
        """Raise if the journal lost the line the catalog's state witnessed.

        Raises:
            JournalRolledBackError: naming the lost line and the specimens only the catalog
                still knows.
        """
        try:
            journal = self.vault.refs.journal.read_bytes()
        except FileNotFoundError:
            journal = b""
        why = rollback(journal, JournalTip(recorded.journal_lines, Digest(recorded.tip)))
        if why is None:
            return  # the journal continues it after all (the cache was stale): rebuild freely
        _raise_rollback(f"the catalog indexed {recorded.journal_lines} journal line(s), but {why}")

    def _check_tip_record(self, state: _State, pending: list[_Pending]) -> None:
        """Raise if the tip record beside the journal witnessed a line the journal lost.

        Cheap: only lines this update reads are compared (the record never leads the journal
        of an honest vault, and a record at or below ``state`` was checked by ``_pending``).

        Raises:
            JournalRolledBackError: if the journal ends before the recorded line, or that line
                hashes to something else.
        """
        tip = self.vault.refs.read_tip()
        if tip is None or tip.lines <= state.journal_lines:
            return
        have = state.journal_lines + len(pending)
        if have < tip.lines:
            _raise_rollback(f"{self.vault.refs.tip_path.name} records {tip.lines} journal "
                            f"line(s), but the journal has {have}")
        got = pending[tip.lines - state.journal_lines - 1].entry.digest
        if got != tip.digest:
            _raise_rollback(f"journal line {tip.lines} hashes to {got[:16]}... where "
                            f"{self.vault.refs.tip_path.name} records {tip.digest[:16]}...")

    def _pending(self, state: _State) -> list[_Pending] | None:
        """Journal lines after ``state``; None if the journal does not continue it."""
        last = (state.tip_offset, Digest(state.tip)) if state.journal_lines else None
        lines = _journal.read_after(self.vault.refs.journal, state.journal_offset,
                                    state.journal_lines, last)
        return None if lines is None else [_Pending(pos, entry) for pos, entry in lines]

    # -- rows ----------------------------------------------------------------------------
    def _index_lines(
        self, conn: duckdb.DuckDBPyConnection, pending: list[_Pending],
        known: Mapping[str, Commit], skip: set[str], seen: set[str], grouped: bool = True,
    ) -> None:
        if not pending:
            return
        import pyarrow as pa

        vault = self.vault
        commits: dict[str, Commit | None] = dict(known)

        def load(d: str) -> Commit | None:
            if d not in commits:
                try:
                    commits[d] = vault.read_commit(d)
                except VaultError:
                    commits[d] = None
            return commits[d]

        cat: dict[str, list[Any]] = {k: [] for k in _CATALOG_COLUMNS}
        lin: dict[str, list[Any]] = {k: [] for k in ("child", "parent", "child_commit", "parent_commit")}
        obj: dict[str, list[Any]] = {k: [] for k in ("digest", "size", "kind", "specimen_id", "path")}
        parquet: list[tuple[str, str, str]] = []
        for p in pending:
            e = p.entry
            c = load(e.commit)
            if c is None:
                _add_row(cat, specimen_id=e.specimen_id, created=_parse_time(e.time),
                         status="unreadable", commit=e.commit, seq=e.seq)
                continue
            own = {t.digest: t.size for t in c.tree.values()}
            unique = sum(s for d, s in own.items() if d not in seen)
            seen.update(own)
            m = c.manifest
            _add_row(
                cat, specimen_id=e.specimen_id, created=_parse_time(c.created), domain=m.domain,
                method=m.method, model=m.model, tags=list(m.tags), status=_status(m.metadata),
                commit=e.commit, parents=list(c.parents), message=c.message, author=c.author,
                logical_bytes=c.logical_bytes, unique_bytes=unique, seq=e.seq, files=len(c.tree),
                metadata=_to_json(m.metadata), config=self._config_json(c),
            )
            for parent in c.parents:
                pc = load(parent)
                _add_row(lin, child=e.specimen_id, parent=pc.specimen_id if pc else None,
                         child_commit=e.commit, parent_commit=parent)
            for path, t in c.tree.items():
                _add_row(obj, digest=t.digest, size=t.size, kind=t.kind, specimen_id=e.specimen_id,
                         path=path)
                name = _metrics_file(path, t.kind)
                if name is not None and t.digest not in skip:
                    parquet.append((e.specimen_id, name, t.digest))
        _insert(conn, "catalog", cat, _catalog_schema)
        if lin["child"]:
            _insert(conn, "lineage", lin, lambda: _string_schema(lin))
        if obj["digest"]:
            _insert(conn, "objects", obj, lambda: pa.schema([
                ("digest", pa.string()), ("size", pa.int64()), ("kind", pa.string()),
                ("specimen_id", pa.string()), ("path", pa.string())]))
        self._index_metrics(conn, parquet, grouped)

    def _config_json(self, c: Commit) -> str | None:
        entry = c.tree.get("strata/config.msgpack")
        if entry is None:
            return None
        try:
            return _to_json(canonical.unpackb(self.vault.objects.get(entry.digest, verify=False)))
        except (VaultError, OSError, ValueError):
            return None

    # -- metrics -------------------------------------------------------------------------
    def _index_metrics(
        self, conn: duckdb.DuckDBPyConnection, parquet: list[tuple[str, str, str]], grouped: bool,
    ) -> None:
        """Add the rows of these ``(specimen_id, file, digest)`` Parquet files to ``metrics``.

        Raises:
            _BadParquet: naming the file DuckDB could not read (file by file), or with no digest
                if a multi-file statement failed; the caller redoes the update file by file.
        """
        import duckdb

        files: list[_MetricsFile] = []
        for sid, name, digest in parquet:
            path, key, rows = self._parquet_info(digest)
            # Not a readable Parquet file: the objects table still lists it. No rows: nothing
            # to add, and its column types must not decide anything for the specimens with rows.
            if key is not None and rows > 0:
                files.append(_MetricsFile(sid, name, digest, path, key))
        if grouped and len(files) > 1:
            try:
                reload = self._admit(conn, files)
                self._load(conn, files, reload, grouped=True)
            except duckdb.Error as exc:
                raise _BadParquet("", str(exc)) from None
            return
        for f in files:
            try:
                reload = self._admit(conn, [f])
                self._load(conn, [f], reload, grouped=False)
            except duckdb.Error as exc:
                raise _BadParquet(f.digest, str(exc)) from None

    def _admit(self, conn: duckdb.DuckDBPyConnection, files: list[_MetricsFile]) -> list[_MetricsFile]:
        """Record the column types ``files`` wrote and settle every column's type; see :func:`_column_type`.

        Adds new columns, changes the type of columns whose set of written types changed their
        type, and keeps ``catalog_problems`` in step.

        Returns:
            Files already in ``metrics`` whose rows must be read again: a type change lost or
            newly admits their values of some column.
        """
        columns = self._metrics_columns(conn)
        written = self._written_types(conn)
        new: dict[str, list[tuple[_MetricsFile, str, str]]] = {}  # column -> (file, name, type)
        for f in files:
            for _src, target, dtype in self._schema(conn, f):
                new.setdefault(target.lower(), []).append((f, target, dtype))
        problems: dict[str, list[Any]] = {k: [] for k in _PROBLEM_COLUMNS}
        reload: dict[tuple[str, str], _MetricsFile] = {}
        for low, writes in new.items():
            types = written.setdefault(low, set())
            types.update(t for _, _, t in writes)
            want = _column_type(conn, types)
            have = columns.get(low)
            if have is None:
                name = writes[0][1]
                conn.execute(f"ALTER TABLE metrics ADD COLUMN {_ident(name)} {want}")
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
        rows: dict[str, list[Any]] = {k: [] for k in _WRITER_COLUMNS}
        for writes in new.values():
            for f, cname, t in writes:
                _add_row(rows, specimen_id=f.sid, file=f.name, digest=f.digest, column_name=cname,
                         written_type=t)
        if rows["specimen_id"]:
            _insert(conn, "_metric_writers", rows, lambda: _string_schema(rows))
        if problems["specimen_id"]:
            _insert(conn, "catalog_problems", problems, lambda: _string_schema(problems))
        return sorted(reload.values(), key=lambda f: (f.sid, f.name))

    def _retype(
        self, conn: duckdb.DuckDBPyConnection, low: str, have: tuple[str, str], want: str,
    ) -> dict[tuple[str, str], _MetricsFile]:
        """Change a metrics column from type ``have[1]`` to ``want`` as if built with ``want``.

        Values that fit both types are cast; values of files that no longer fit become NULL; files
        that fit now but did not before (or whose values a change of kind dropped) are returned to
        be read again. The result is the table a build in any other order gives.
        """
        name, old = have
        col = _ident(name)
        keep = _fits(conn, old, want)
        if keep:
            conn.execute(f"ALTER TABLE metrics ALTER COLUMN {col} SET DATA TYPE {want}")
        else:  # e.g. text, then the first numbers: no value of the old type is kept
            conn.execute(f"ALTER TABLE metrics ALTER COLUMN {col} SET DATA TYPE {want} USING NULL")
        writers = conn.execute(
            "SELECT specimen_id, file, any_value(digest), list(written_type) FROM _metric_writers "
            "WHERE lower(column_name) = ? GROUP BY ALL", [low],
        ).fetchall()
        reload: dict[tuple[str, str], _MetricsFile] = {}
        for sid, fname, digest, types in writers:
            real = [t for t in types if t != _NULL_TYPE]
            if not real:
                continue  # wrote only nulls: nothing to keep or to lose
            was = all(_fits(conn, t, old) for t in real)
            now = all(_fits(conn, t, want) for t in real)
            if now and (not was or not keep):
                path, key, _rows = self._parquet_info(digest)
                if key is not None:
                    reload[(sid, fname)] = _MetricsFile(sid, fname, digest, path, key)
            elif was and not now and keep:
                conn.execute(f"UPDATE metrics SET {col} = NULL WHERE specimen_id = ? AND file = ?",
                             [sid, fname])
        return reload

    def _load(
        self, conn: duckdb.DuckDBPyConnection, files: list[_MetricsFile],
        reload: list[_MetricsFile], grouped: bool,
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

    def _insert_grouped(self, conn: duckdb.DuckDBPyConnection, files: list[_MetricsFile]) -> None:
        """Insert many metrics files with one statement per schema instead of one per file.

        A statement costs about a millisecond whatever it reads, so a batch or a rebuild of
        thousands of small files is dominated by their count. Files are grouped by schema (one
        SELECT list each) and read by one ``read_parquet`` of a path list; the row order stays
        file by file, row by row. A path appears once per statement (identical metrics are one
        object shared by several specimens), so repeats go to a later statement.
        """
        groups: dict[_Key, list[list[_MetricsFile]]] = {}
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

    def _parquet_info(self, digest: str) -> tuple[str, _Key | None, int]:
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

    def _schema(self, conn: duckdb.DuckDBPyConnection, f: _MetricsFile) -> list[tuple[str, str, str]]:
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

    def _plan(self, conn: duckdb.DuckDBPyConnection, f: _MetricsFile) -> str:
        """The SELECT list for files of ``f``'s schema: every column whose type fits its column.

        A column that does not fit (text where the catalog holds numbers) and an all-null one
        are left out, so they are NULL.
        """
        plan = self._cache.plans.get(f.key)
        if plan is None:
            columns = self._metrics_columns(conn)
            select = []
            for src, target, dtype in self._schema(conn, f):
                if dtype != _NULL_TYPE and _fits(conn, dtype, columns[target.lower()][1]):
                    select.append(f", {_ident(src)} AS {_ident(target)}")
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

    def problems(self) -> tuple[CatalogProblem, ...]:
        """Every row of ``catalog_problems`` (on the open connection; empty if there is none)."""
        with self._mutex:
            if self._conn is None:
                return ()
            return tuple(_read_problems(self._conn))


class _BadParquet(Exception):
    def __init__(self, digest: str, why: str) -> None:
        super().__init__(why)
        self.digest = digest


# -- helpers ------------------------------------------------------------------------------------
_CATALOG_COLUMNS = (
    "specimen_id", "created", "domain", "method", "model", "tags", "status", "commit", "parents",
    "message", "author", "logical_bytes", "unique_bytes", "seq", "files", "metadata", "config",
)


def _catalog_schema() -> Any:
    import pyarrow as pa

    s, i = pa.string(), pa.int64()
    types = {"created": pa.timestamp("us"), "tags": pa.list_(s), "parents": pa.list_(s),
             "logical_bytes": i, "unique_bytes": i, "seq": i, "files": pa.int32()}
    return pa.schema([(k, types.get(k, s)) for k in _CATALOG_COLUMNS])


def _string_schema(cols: Mapping[str, Any]) -> Any:
    import pyarrow as pa

    return pa.schema([(k, pa.string()) for k in cols])


def _add_row(table: dict[str, list[Any]], **values: Any) -> None:
    for k, col in table.items():
        col.append(values.get(k))


def _insert(conn: duckdb.DuckDBPyConnection, table: str, columns: dict[str, list[Any]],
            schema: Any) -> None:
    """Append rows given as columns (in the table's column order).

    A commit's few rows go in as one parameterised VALUES statement (about four times faster
    than registering an Arrow table); a rebuild's many rows go in as one Arrow table.
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


def _raise_rollback(what: str) -> None:
    raise JournalRolledBackError(
        f"{what}: journal lines were removed or rewritten (the journal was rolled back). The "
        "catalog was left "
        "as it is, since it is the witness: run `vault verify`, and restore the journal and "
        "refs from a backup or a remote. Only if the journal was restored on purpose, "
        "`vault index --rebuild --accept-rollback` rebuilds the catalog from it"
    )


def _advance(state: _State, pending: list[_Pending]) -> _State:
    if not pending:
        return state
    last = pending[-1]
    return _State(last.entry.seq + 1, last.offset + len(last.entry.line) + 1, last.offset,
                  hash_bytes(last.entry.line))


def _metrics_file(path: str, kind: str) -> str | None:
    """``strata/<name>.parquet`` -> ``<name>`` (the ``file`` column), else None."""
    if kind != "parquet" or not path.startswith("strata/") or path.count("/") != 1:
        return None
    name = path[len("strata/"):]
    return name[: -len(".parquet")] if name.lower().endswith(".parquet") else None


def _status(metadata: Mapping[str, Any]) -> str:
    status = metadata.get("status")
    if isinstance(status, str) and status:
        return status
    return "partial" if metadata.get("partial") is True else "committed"


def _parse_time(value: str) -> _dt.datetime | None:
    try:
        return _dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except (TypeError, ValueError):
        return None


def _jsonable(value: Any) -> Any:
    # JSON has no NaN, inf or bytes: store them as strings rather than lose the row.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _to_json(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=True, default=str, allow_nan=False)


def _ident(name: str) -> str:
    """Quote a SQL identifier (double quotes, embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


_WRITER_COLUMNS = ("specimen_id", "file", "digest", "column_name", "written_type")
_PROBLEM_COLUMNS = ("specimen_id", "file", "column_name", "written_type", "catalog_type", "detail")
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


def _fits(conn: duckdb.DuckDBPyConnection, t: str, column: str) -> bool:
    """Whether values of type ``t`` go into a column of type ``column`` without turning into
    something else: a widening (INTEGER into DOUBLE, DATE into TIMESTAMP), never into text."""
    if t == column or t == _NULL_TYPE:
        return True
    if _is_numeric(column) != _is_numeric(t):
        return False
    return _supertype(conn, t, column) == column and _text_count(t) == _text_count(column)


def _column_type(conn: duckdb.DuckDBPyConnection, written: Iterable[str]) -> str:
    """The type of a metrics column, from the set of types files wrote for it (order-free).

    Numbers beat every other kind once any file wrote numbers; the numeric types widen to their
    common type, integers with floats to DOUBLE. Otherwise the types that widen losslessly into
    one another are joined, taken in a fixed order (non-text types first, then by name), and a
    type that cannot join stays out. Only nulls so far: a placeholder, replaced by the first
    real type. Every type written that does not fit the result is a problem (NULL in metrics).
    """
    real = sorted({t for t in written if t != _NULL_TYPE})
    if not real:
        return _PLACEHOLDER_TYPE
    numeric = [t for t in real if _is_numeric(t)]
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
        if joined is not None and _fits(conn, acc, joined) and _fits(conn, t, joined):
            acc = joined
    return acc


def _text_count(t: str) -> int:
    return t.count("VARCHAR")


def _add_problem(
    conn: duckdb.DuckDBPyConnection, problems: dict[str, list[Any]], sid: str, file: str,
    column: str, written: str, catalog_type: str,
) -> None:
    """Add a ``catalog_problems`` row if a file's column of type ``written`` does not fit."""
    if _fits(conn, written, catalog_type):
        return
    kind = "numbers" if _is_numeric(catalog_type) else catalog_type
    detail = (
        f"strata/{file}.parquet of {sid} has {column} as {written}, but other specimens wrote "
        f"{kind} there: in metrics its {column} is NULL (its other columns and rows are kept). "
        f"Its own values are unchanged: Vault.specimen({sid!r}).read_metrics({file!r})"
        + (f", or the view \"exp_{sid}\"" if file == "metrics" else "")
    )
    _add_row(problems, specimen_id=sid, file=file, column_name=column, written_type=written,
             catalog_type=catalog_type, detail=detail)


def _read_problems(conn: duckdb.DuckDBPyConnection) -> list[CatalogProblem]:
    rows = conn.execute(
        "SELECT specimen_id, file, column_name, written_type, catalog_type, detail "
        "FROM catalog_problems ORDER BY specimen_id, file, lower(column_name)"
    ).fetchall()
    return [CatalogProblem(*r) for r in rows]


def _is_numeric(t: str) -> bool:
    return t in _NUMERIC or t.startswith("DECIMAL")


def _is_lock_conflict(exc: BaseException) -> bool:
    # Another process has the file (a flock conflict), or this process has it open in the other
    # mode (DuckDB refuses a second configuration of one file in one process): both pass.
    text = str(exc)
    return any(m in text for m in ("Could not set lock", "Conflicting lock", "different configuration"))


def _vault_created(vault: Vault) -> str:
    from .storage import VAULT_MARKER

    try:
        marker = canonical.unpackb((vault.root / VAULT_MARKER).read_bytes())
        return str(marker.get("created", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _mark_stale(vault: Vault, reason: str) -> None:
    try:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"{reason.splitlines()[0] if reason else 'unknown'} ({stamp}); run `vault index`\n"
        write_replace(vault.root / STALE_MARKER, text.encode("utf-8"))
    except Exception:  # nothing more we can do; queries still compare the journal offsets
        pass
