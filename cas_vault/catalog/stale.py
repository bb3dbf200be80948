"""Whether the catalog reflects the vault: the stale marker, the reasons it may not, and the
identity of the vault a catalog was built for.

A commit's catalog update is best effort: when it fails, the commit stands and
``<vault>/catalog.stale`` (:data:`STALE_MARKER`) says why, until the next successful update
removes it. :func:`stale_reason` also compares the catalog's ``_state`` row with the vault
itself, so a catalog built for another vault or version, or behind the journal, is noticed
without the marker.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

from .. import canonical
from ..atomic import write_replace
from .schema import SCHEMA_VERSION

if TYPE_CHECKING:
    import duckdb

    from ..repository import Repository

__all__ = ["STALE_MARKER", "mark_stale", "stale_reason", "vault_created"]

#: File written next to ``vault.duckdb`` when a commit could not update the catalog.
STALE_MARKER = "catalog.stale"


def stale_reason(vault: Repository, conn: duckdb.DuckDBPyConnection) -> str | None:
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
    if row[1] != vault_created(vault):
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


def vault_created(vault: Repository) -> str:
    """The creation stamp in the vault's marker file ("" if unreadable): the vault's identity,
    recorded in ``_state`` so that a catalog copied to another vault is rebuilt."""
    from ..storage import VAULT_MARKER

    try:
        marker = canonical.unpackb((vault.root / VAULT_MARKER).read_bytes())
        return str(marker.get("created", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def mark_stale(vault: Repository, reason: str) -> None:
    """Write :data:`STALE_MARKER` with the first line of ``reason``. Never raises."""
    try:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"{reason.splitlines()[0] if reason else 'unknown'} ({stamp}); run `vault index`\n"
        write_replace(vault.root / STALE_MARKER, text.encode("utf-8"))
    except Exception:  # nothing more we can do; queries still compare the journal offsets
        pass
