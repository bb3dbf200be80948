"""The catalog's updater: one :class:`CatalogWriter` per vault per process, reading only new
journal lines.

Updates are incremental. The ``_state`` table remembers how far into the journal the catalog has
read (line count, byte offset and the BLAKE3 of the last line read); an update reads only the
journal lines after that offset and the commits they name, and writes their rows and the new
``_state`` in one transaction. A catalog whose last line no longer matches the journal, or that
was built for another vault or by another schema version, is rebuilt, except over a journal
that lost lines the catalog or the tip record witnessed (a rollback).

Concurrency (docs/catalog.md): writers serialise on ``locks/catalog.lock``. A process keeps its
writer connection open while it commits in a burst (opening a DuckDB file costs ~20 ms, more
than a whole commit) and closes it after :data:`IDLE_CLOSE_SECONDS` without commits, so readers
in other processes get in. Closing writes nothing (no checkpoint on close), so no vault file
changes after a commit returns. The writer's caches are valid only while it alone has the file
open, hence one writer per vault per process (:func:`writer_for`).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import journal as _journal
from ..atomic import FileLock
from ..commit import Commit
from ..digest import Digest, hash_bytes
from ..errors import IntegrityError, JournalRolledBackError, VaultError
from ..journal import JournalEntry, JournalTip, rollback
from .connection import connect_writer
from .metrics import BadParquet, MetricsCache, MetricsLoader
from .rows import build_rows, insert_events, insert_rows, insert_seed_taxonomy
from .schema import DDL, DROP, SCHEMA_VERSION, CatalogProblem, read_problems
from .stale import STALE_MARKER, mark_stale, vault_created

if TYPE_CHECKING:
    import duckdb

    from ..repository import Repository

__all__ = [
    "BIG_UPDATE",
    "CHECKPOINT_THRESHOLD",
    "IDLE_CLOSE_SECONDS",
    "CatalogWriter",
    "IndexResult",
    "release_writer",
    "writer_for",
]

#: A writer connection unused for this long is closed so other processes can open the file.
IDLE_CLOSE_SECONDS = 0.5
#: Updates indexing more journal lines than this use all of DuckDB's threads.
BIG_UPDATE = 64
#: WAL size at which a writer's commit checkpoints it into the database file.
CHECKPOINT_THRESHOLD = "1MB"


@dataclass(frozen=True)
class IndexResult:
    """What one catalog update did.

    Attributes:
        indexed: commits added by this update.
        total: specimens in the catalog afterwards.
        rebuilt: whether the catalog was rebuilt from scratch.
        seconds: wall time of the update.
        problems: every row of ``catalog_problems`` afterwards (filled by
            :func:`cas_vault.catalog.index` only).
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


@dataclass
class _Cache:
    """What a writer knows about the file; valid only while it alone has the file open."""

    state: _State | None = None
    total: int = 0
    digests: set[str] | None = None  # every digest in `objects`, for unique_bytes
    metrics: MetricsCache = field(default_factory=MetricsCache)


class _TooMuchPending(VaultError):
    """More journal lines are waiting than a commit should index on its own."""


# -- one writer per vault per process -------------------------------------------------------------
_WRITERS: dict[Path, CatalogWriter] = {}
_WRITERS_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    # Close idle connections while the interpreter is whole: a timer thread closing one during
    # interpreter shutdown would be torn down inside DuckDB's C++ code and abort the process.
    for writer in list(_WRITERS.values()):
        if writer.pid == os.getpid():
            writer.close()


def writer_for(vault: Repository) -> CatalogWriter:
    """This process's writer for ``vault``, made on first use."""
    # One writer per vault per process: its caches are valid only while it alone writes.
    with _WRITERS_LOCK:
        w = _WRITERS.get(vault.root)
        if w is None or w.pid != os.getpid():
            w = _WRITERS[vault.root] = CatalogWriter(vault)
        return w


def release_writer(vault_root: Path) -> None:
    """Close this process's writer connection to the catalog (after an update in progress).

    A DuckDB file open read-write in a process cannot be opened read-only by the same process,
    so readers call this before connecting.
    """
    writer = _WRITERS.get(Path(vault_root))
    if writer is not None and writer.pid == os.getpid():
        writer.close()


class CatalogWriter:
    """Updates one vault's catalog; keeps its connection open across a burst of commits.

    Args:
        vault: the vault.
    """

    def __init__(self, vault: Repository) -> None:
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
        self._conn = connect_writer(self.path, timeout, rebuild)
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

    def update_best_effort(self, known: Mapping[str, Commit], *, max_lines: int) -> None:
        """:meth:`update` for a commit: short waits, bounded work; failures mark the catalog stale.

        Args:
            known: the commits just made, by digest.
            max_lines: leave the update to ``vault index`` if more journal lines are pending.
        """
        try:
            self.update(lock_timeout=0.05, open_timeout=0.05, known=known, max_lines=max_lines)
        except Exception as exc:  # the commits stand; the marker says what to do
            ids = ", ".join(sorted(c.specimen_id for c in known.values())) or "earlier commits"
            mark_stale(self.vault, f"the catalog update after committing {ids} failed: {exc}")

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
                mark_stale(self.vault, str(exc))
                raise
            except BaseException as exc:
                self._forget()
                mark_stale(self.vault, f"the last catalog update failed: {exc}")
                raise
            return result

    def _forget(self) -> None:
        # After a failed transaction, or when the file was closed, no cached fact can be trusted.
        self._cache = _Cache()

    def _update_locked(
        self, conn: duckdb.DuckDBPyConnection, rebuild: bool, known: Mapping[str, Commit],
        max_lines: int | None, t0: float, accept_rollback: bool = False,
    ) -> IndexResult:
        created = vault_created(self.vault)
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
                    conn.execute(DROP + DDL)
                    insert_seed_taxonomy(conn)
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
            except BadParquet as bad:
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
        refs = [p.entry for p in pending if p.entry.is_ref]
        if refs:
            rows = build_rows(self.vault, refs, known, skip, seen)
            insert_rows(conn, rows)
            MetricsLoader(self.vault, self._cache.metrics).index(conn, rows.metrics_files, grouped)
        # After the commits: an event is always journaled after the commit it is about (a
        # retirement removes rows the same update may have just added).
        insert_events(conn, self.vault, [p.entry for p in pending if not p.entry.is_ref])

    def problems(self) -> tuple[CatalogProblem, ...]:
        """Every row of ``catalog_problems`` (on the open connection; empty if there is none)."""
        with self._mutex:
            if self._conn is None:
                return ()
            return tuple(read_problems(self._conn))


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
