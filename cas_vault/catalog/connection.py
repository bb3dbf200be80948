"""Opening ``vault.duckdb``: sandboxed readers, the writer with its WAL repair, and the retry loop.

DuckDB lets one process open a file read-write, and no process open it read-only meanwhile, so
every open waits (with backoff) while another process has the file in a conflicting mode.

Readers are sandboxed (:func:`connect_read_only`): no file outside the vault's ``objects/``, no
network, no extensions, and a locked configuration, so SQL cannot undo any of it.

The writer's open (:func:`connect_writer`) repairs what a person can leave behind by hand: a
write-ahead log without its database, or one that belongs to another database file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, LockTimeoutError

if TYPE_CHECKING:
    import duckdb

__all__ = ["connect_read_only", "connect_writer"]

#: Settings every reader connection is opened with (before any SQL runs).
_READER_CONFIG: dict[str, Any] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "python_enable_replacements": False,
}


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


def connect_writer(path: Path, timeout: float, rebuild: bool) -> duckdb.DuckDBPyConnection:
    """Open the catalog read-write for the writer, repairing a stray write-ahead log.

    Args:
        path: the database file (``<vault>/vault.duckdb``).
        timeout: seconds to wait while another process has the file open.
        rebuild: the caller rebuilds every table anyway: a file that cannot be opened is
            deleted and started afresh instead of refused.

    Raises:
        LockTimeoutError: if another process kept the file open for longer than ``timeout``.
        InvalidInputError: if the file cannot be opened as a DuckDB catalog (and not
            ``rebuild``).
    """
    wal = Path(f"{path}.wal")
    if not path.exists():  # a log without its database (deleted by hand) is garbage
        wal.unlink(missing_ok=True)

    def repair(exc: Exception) -> bool:
        nonlocal rebuild
        if "WAL" in str(exc) and "does not match" in str(exc) and wal.exists():
            # The log belongs to another database file (one was replaced by hand). It
            # only holds catalog transactions, which `_state` will make us redo.
            wal.unlink()
            return True
        if rebuild:  # derived data we cannot open: start from an empty file
            path.unlink(missing_ok=True)
            wal.unlink(missing_ok=True)
            rebuild = False
            return True
        return False

    return _connect_retrying(
        path, timeout, read_only=False, repair=repair,
        busy=f"{path} is open in another process (a query or a commit) for over "
             f"{timeout:g} s; try again when it finishes",
    )


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


def _is_lock_conflict(exc: BaseException) -> bool:
    # Another process has the file (a flock conflict), or this process has it open in the other
    # mode (DuckDB refuses a second configuration of one file in one process): both pass.
    text = str(exc)
    return any(m in text for m in ("Could not set lock", "Conflicting lock", "different configuration"))
