"""What the catalog records now, read without updating it first (for ``vault verify``).

Each reader closes this process's writer connection first (a file open read-write in a process
cannot also be opened read-only there), and treats a catalog that does not exist, cannot be
opened or lacks the table as recording nothing: the catalog is derived data, and ``verify``
compares it with the vault only as a witness.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..digest import Digest
from ..errors import InvalidInputError
from ..journal import JournalTip
from .connection import connect_read_only
from .schema import CatalogProblem, read_problems
from .stale import vault_created
from .writer import release_writer

if TYPE_CHECKING:
    from ..repository import Repository

__all__ = ["catalog_problems", "indexed_commits", "indexed_tip"]


def indexed_commits(vault: Repository, timeout: float = 30.0) -> dict[str, str]:
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


def indexed_tip(vault: Repository, timeout: float = 30.0) -> JournalTip | None:
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
    if len(rows) != 1 or rows[0][0] != vault_created(vault) or not rows[0][1]:
        return None
    return JournalTip.decode(JournalTip(int(rows[0][1]), Digest(str(rows[0][2]))).encode())


def catalog_problems(vault: Repository, timeout: float = 30.0) -> list[CatalogProblem]:
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
        return read_problems(conn)
    except duckdb.Error:
        return []
    finally:
        conn.close()
