"""The DuckDB catalog ``<vault>/vault.duckdb``: every specimen, edge, object and metric row in SQL.

The catalog is derived data. Everything in it comes from the journal (for the order of commits),
the commit objects (manifest, parents, tree) and the Parquet objects (metrics), so deleting the
file loses nothing: the next ``vault index`` (or query) rebuilds it. docs/catalog.md describes
it for users; the modules, lowest first:

- :mod:`~cas_vault.catalog.connection`: opening the file: sandboxed readers, the writer's open
  with its WAL repair, waiting while another process has it.
- :mod:`~cas_vault.catalog.schema`: the tables (DDL, :data:`SCHEMA_VERSION`), the
  :class:`CatalogProblem` row, and how rows are appended.
- :mod:`~cas_vault.catalog.stale`: whether the catalog reflects the vault (the stale marker).
- :mod:`~cas_vault.catalog.metric_types`: which type a ``metrics`` column gets, what fits it.
- :mod:`~cas_vault.catalog.rows`: the ``catalog``, ``lineage`` and ``objects`` rows of commits.
- :mod:`~cas_vault.catalog.metrics`: the ``metrics`` rows, and retyping its columns.
- :mod:`~cas_vault.catalog.writer`: the incremental updater, one per vault per process.
- :mod:`~cas_vault.catalog.recorded`: what the catalog records now, for ``vault verify``.

This module holds the entry points: :func:`index` (``vault index``) and the commit hooks
:func:`after_commit` and :func:`update_after_batch` (registered by name in
``cas_vault/__init__.py``), which never raise: a commit stands whatever happens to derived data,
and a failed update leaves the stale marker instead.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from .connection import connect_read_only
from .recorded import catalog_problems, indexed_commits, indexed_tip
from .schema import CATALOG_TABLES, SCHEMA_VERSION, CatalogProblem
from .stale import STALE_MARKER, mark_stale, stale_reason
from .writer import IDLE_CLOSE_SECONDS, CatalogWriter, IndexResult, release_writer, writer_for

if TYPE_CHECKING:
    from ..commit import Commit
    from ..digest import Digest
    from ..repository import Repository

__all__ = [
    "CATALOG_TABLES",
    "IDLE_CLOSE_SECONDS",
    "MAX_LINES_PER_COMMIT",
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
    "update_after_batch",
]

#: A commit indexes at most this many journal lines itself; more is left to `vault index`.
MAX_LINES_PER_COMMIT = 256


def index(
    vault: Repository, rebuild: bool = False, lock_timeout: float = 60.0, accept_rollback: bool = False,
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
    writer = writer_for(vault)
    try:
        result = writer.update(rebuild=rebuild, lock_timeout=lock_timeout,
                               open_timeout=lock_timeout, accept_rollback=accept_rollback)
        writer.checkpoint()
        return replace(result, problems=writer.problems())
    finally:
        writer.close()


def after_commit(vault: Repository, specimen_id: str, digest: Digest, commit: Commit) -> None:
    """Index a commit just made; on any failure mark the catalog stale. Never raises.

    The update is done before the commit returns, so no file of the vault changes afterwards
    (closing the idle connection later writes nothing).
    """
    try:
        writer = writer_for(vault)
        writer.update_best_effort({digest: commit}, max_lines=MAX_LINES_PER_COMMIT)
        writer.schedule_idle_close()
    except Exception as exc:  # the commit stands whatever happens to derived data
        mark_stale(vault, f"the catalog update after committing {specimen_id} failed: {exc}")


def update_after_batch(vault: Repository) -> None:
    """Index the commits of a :meth:`Repository.batch` in one update; on failure mark stale. Never raises."""
    try:
        writer = writer_for(vault)
        writer.update(lock_timeout=5.0, open_timeout=5.0)
        writer.schedule_idle_close()
    except Exception as exc:  # the commits stand whatever happens to derived data
        mark_stale(vault, f"the catalog update after a batch of commits failed: {exc}")
