"""What verify reads from the catalog (``vault.duckdb``): its commits and its journal tip.

The catalog is derived data, so a missing catalog is no problem and an unreadable one is no
witness. Opening DuckDB is slow, so verify calls these in a background thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..journal import JournalTip

if TYPE_CHECKING:
    from ..repository import Repository

__all__ = ["CATALOG_TIMEOUT", "catalog_commits", "catalog_tip"]

#: Seconds verify waits for a process writing the catalog before skipping the catalog check.
CATALOG_TIMEOUT = 10.0


def catalog_commits(vault: Repository) -> dict[str, str] | None:
    """specimen id -> commit digest as the catalog records them; None without a catalog.

    Raises:
        LockTimeoutError: if another process kept the catalog open for writing too long.
    """
    if not vault.catalog_path.exists():
        return None  # derived data: no catalog is not a problem
    from ..catalog import indexed_commits

    return dict(indexed_commits(vault, timeout=CATALOG_TIMEOUT))


def catalog_tip(vault: Repository) -> JournalTip | None:
    """The journal tip the catalog recorded, or None (no catalog, busy, unreadable)."""
    from ..catalog import indexed_tip

    try:
        return indexed_tip(vault, timeout=CATALOG_TIMEOUT)
    except Exception:  # derived data that cannot be read is no witness, never a failure
        return None
