"""The rows each commit adds to ``catalog``, ``lineage`` and ``objects`` (and its metrics files).

One ``catalog`` row per journal line (a commit that cannot be read still gets one, with status
``unreadable``), one ``lineage`` row per parent, one ``objects`` row per tree entry. Manifest
metadata and ``strata/config.msgpack`` are stored as JSON; values JSON has no form for (NaN,
infinities, bytes) are stored as strings rather than losing the row. The Parquet files under
``strata/`` are only named here: their rows go into ``metrics`` by way of
:mod:`cas_vault.catalog.metrics`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import canonical
from ..commit import Commit
from ..errors import VaultError
from ..events import decode_event
from ..journal import JournalEntry
from ..taxonomies import TaxonomyChange, TaxonomyPair, change_from_event, replay
from .schema import CATALOG_COLUMNS, add_row, catalog_schema, insert, string_schema

if TYPE_CHECKING:
    import duckdb

    from ..repository import Repository

__all__ = [
    "RUN_CONFIG_KEYS", "CommitRows", "build_rows", "experiment_time", "insert_events",
    "insert_rows", "insert_seed_taxonomy",
    "parse_any_time", "parse_run_id_time",
]

#: The rows a retired specimen leaves: (table, column naming the specimen).
RETIRED_LEAVE = (("catalog", "specimen_id"), ("objects", "specimen_id"), ("metrics", "specimen_id"),
                 ("_metric_writers", "specimen_id"), ("catalog_problems", "specimen_id"),
                 ("lineage", "child"))
#: Keys of a run's own manifest that hold its config, in the order they are looked for.
RUN_CONFIG_KEYS = ("config", "configuration")
_RUN_ID_TIME = re.compile(r"\A\d{8}_\d{6}(_\d+)?\Z")


@dataclass
class CommitRows:
    """Rows gathered column by column (see :func:`cas_vault.catalog.schema.add_row`).

    Attributes:
        catalog: rows of ``catalog``.
        lineage: rows of ``lineage``.
        objects: rows of ``objects``.
        metrics_files: ``(specimen_id, file, digest)`` of each Parquet file for ``metrics``.
    """

    catalog: dict[str, list[Any]]
    lineage: dict[str, list[Any]]
    objects: dict[str, list[Any]]
    metrics_files: list[tuple[str, str, str]]


def build_rows(
    vault: Repository, entries: Iterable[JournalEntry], known: Mapping[str, Commit], skip: set[str],
    seen: set[str],
) -> CommitRows:
    """Read the commits these journal lines name and make their rows.

    Args:
        vault: the vault.
        entries: the journal lines, in journal order.
        known: commits already in memory (the one just made), by digest.
        skip: digests of Parquet objects to leave out of ``metrics`` (unreadable ones).
        seen: every digest already in ``objects``, for ``unique_bytes``; the digests of these
            commits are added to it.

    Returns:
        The rows.
    """
    commits: dict[str, Commit | None] = dict(known)

    def load(d: str) -> Commit | None:
        if d not in commits:
            try:
                commits[d] = vault.read_commit(d)
            except VaultError:
                commits[d] = None
        return commits[d]

    cat: dict[str, list[Any]] = {k: [] for k in CATALOG_COLUMNS}
    lin: dict[str, list[Any]] = {k: [] for k in ("child", "parent", "child_commit", "parent_commit")}
    obj: dict[str, list[Any]] = {k: [] for k in ("digest", "size", "kind", "specimen_id", "path")}
    parquet: list[tuple[str, str, str]] = []
    for e in entries:
        c = load(e.commit)
        if c is None:
            add_row(cat, specimen_id=e.specimen_id, created=_parse_time(e.time),
                    status="unreadable", commit=e.commit, seq=e.seq)
            continue
        own = {t.digest: t.size for t in c.tree.values()}
        unique = sum(s for d, s in own.items() if d not in seen)
        seen.update(own)
        m = c.manifest
        run = m.run
        committed = _parse_time(c.created)
        add_row(
            cat, specimen_id=e.specimen_id, created=experiment_time(c) or committed,
            domain=m.domain, method=m.method, model=m.model, tags=list(m.tags),
            status=_status(m.metadata), commit=e.commit, parents=list(c.parents),
            message=c.message, author=c.author, logical_bytes=c.logical_bytes,
            unique_bytes=unique, seq=e.seq, files=len(c.tree), metadata=_to_json(m.metadata),
            config=_config_json(vault, c), committed=committed,
            run_of=run[0] if run else None, run_id=run[1] if run else None,
        )
        for parent in c.parents:
            pc = load(parent)
            add_row(lin, child=e.specimen_id, parent=pc.specimen_id if pc else None,
                    child_commit=e.commit, parent_commit=parent)
        for path, t in c.tree.items():
            add_row(obj, digest=t.digest, size=t.size, kind=t.kind, specimen_id=e.specimen_id,
                    path=path)
            name = _metrics_file(path, t.kind)
            if name is not None and t.digest not in skip:
                parquet.append((e.specimen_id, name, t.digest))
    return CommitRows(cat, lin, obj, parquet)


def insert_events(conn: duckdb.DuckDBPyConnection, vault: Repository,
                  entries: Iterable[JournalEntry]) -> None:
    """Apply these journal event lines: ``label_moves`` and ``notes`` rows, retirements and
    taxonomy changes.

    A retired specimen leaves ``catalog``, ``objects``, ``metrics`` and ``lineage`` (as a child:
    a live child still names it as its parent) and gets a ``retired`` row. Taxonomy changes are
    replayed (:func:`cas_vault.taxonomies.replay`) over the rows ``taxonomy`` holds. An event
    whose object cannot be read is left out (``vault verify`` reports it).
    """
    moves: list[tuple[Any, ...]] = []
    notes: list[tuple[Any, ...]] = []
    retired: list[tuple[Any, ...]] = []
    changes: list[TaxonomyChange] = []
    for e in entries:
        try:
            ev = decode_event(vault.objects.get(e.commit), e)
        except VaultError:
            continue
        when = _parse_time(ev.time)
        if ev.kind == "label":
            moves.append((ev.fields.get("name"), ev.subject, ev.fields.get("commit"), when,
                           ev.author, ev.seq))
        elif ev.kind == "note":
            notes.append((ev.subject, ev.fields.get("commit"), when, ev.author,
                           ev.fields.get("text"), ev.seq))
        elif ev.kind == "retire":
            retired.append((ev.subject, ev.fields.get("commit"), ev.fields.get("reason"),
                            ev.fields.get("purge") is True, when, ev.author, ev.seq))
        elif ev.kind == "taxonomy":
            try:
                changes.append(change_from_event(ev))
            except VaultError:
                continue
    if moves:
        conn.executemany("INSERT INTO label_moves VALUES (?, ?, ?, ?, ?, ?)", moves)
    if notes:
        conn.executemany("INSERT INTO notes VALUES (?, ?, ?, ?, ?, ?)", notes)
    for row in retired:
        if conn.execute("SELECT count(*) FROM retired WHERE specimen_id = ?",
                        [row[0]]).fetchone()[0]:
            continue  # retired twice by hand: the first counts (cas_vault.retirement)
        for table, column in RETIRED_LEAVE:
            conn.execute(f"DELETE FROM {table} WHERE {column} = ?", [row[0]])
        conn.execute("INSERT INTO retired VALUES (?, ?, ?, ?, ?, ?, ?)", list(row))
    if changes:
        _write_taxonomy(conn, replay(changes, start=_taxonomy_rows(conn)))


def insert_seed_taxonomy(conn: duckdb.DuckDBPyConnection) -> None:
    """Fill a new ``taxonomy`` table with the seed's pairs (the journal's changes follow)."""
    _write_taxonomy(conn, replay([]))


def _taxonomy_rows(conn: duckdb.DuckDBPyConnection) -> list[TaxonomyPair]:
    rows = conn.execute(
        "SELECT domain, method, description, added_by, added_at FROM taxonomy").fetchall()
    return [TaxonomyPair(d, m, desc or "", by,
                         None if at is None else at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
            for d, m, desc, by, at in rows]


def _write_taxonomy(conn: duckdb.DuckDBPyConnection, pairs: Iterable[TaxonomyPair]) -> None:
    conn.execute("DELETE FROM taxonomy")
    rows = [(p.domain, p.method, p.description, p.added_by,
             None if p.added_at is None else _parse_time(p.added_at)) for p in pairs]
    if rows:
        conn.executemany("INSERT INTO taxonomy VALUES (?, ?, ?, ?, ?)", rows)


def insert_rows(conn: duckdb.DuckDBPyConnection, rows: CommitRows) -> None:
    """Append the ``catalog``, ``lineage`` and ``objects`` rows (not ``metrics_files``)."""
    import pyarrow as pa

    lin, obj = rows.lineage, rows.objects
    insert(conn, "catalog", rows.catalog, catalog_schema)
    if lin["child"]:
        insert(conn, "lineage", lin, lambda: string_schema(lin))
    if obj["digest"]:
        insert(conn, "objects", obj, lambda: pa.schema([
            ("digest", pa.string()), ("size", pa.int64()), ("kind", pa.string()),
            ("specimen_id", pa.string()), ("path", pa.string())]))


def _config_json(vault: Repository, c: Commit) -> str | None:
    """The ``config`` column: ``strata/config.msgpack``, else (a run) the ``config`` or
    ``configuration`` of the run's own manifest, as the original's runs kept it."""

    def read(path: str) -> Any:
        entry = c.tree.get(path)
        if entry is None:
            return None
        try:
            return canonical.unpackb(vault.objects.get(entry.digest, verify=False))
        except (VaultError, OSError, ValueError):
            return None

    config = read("strata/config.msgpack")
    if config is None and c.manifest.run is not None:
        run_manifest = read("strata/manifest.msgpack")
        if isinstance(run_manifest, Mapping):
            config = next((run_manifest[k] for k in RUN_CONFIG_KEYS
                           if run_manifest.get(k) is not None), None)
    return None if config is None else _to_json(config)


def experiment_time(c: Commit) -> _dt.datetime | None:
    """When the experiment itself happened, as ``catalog.created`` shows it (UTC, naive).

    An imported specimen's own ``created`` (``metadata.legacy.created``), else a run's id when
    it is a timestamp (``YYYYMMDD_HHMMSS``, which carries no time zone: taken as written),
    else None (the commit's time is used).
    """
    legacy = c.manifest.metadata.get("legacy")
    if isinstance(legacy, Mapping):
        t = parse_any_time(legacy.get("created"))
        if t is not None:
            return t
    run = c.manifest.run
    if run is not None:
        return parse_run_id_time(run[1])
    return None


def parse_any_time(value: Any) -> _dt.datetime | None:
    """An ISO 8601 string or a POSIX timestamp as a naive UTC datetime, else None."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            t = _dt.datetime.fromtimestamp(value, _dt.timezone.utc)
        elif isinstance(value, str):
            t = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return None
    return t.astimezone(_dt.timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def parse_run_id_time(run_id: str) -> _dt.datetime | None:
    """The start time a run id names (``YYYYMMDD_HHMMSS``, maybe ``_N`` after it), else None."""
    if not _RUN_ID_TIME.match(run_id):
        return None
    try:
        return _dt.datetime.strptime(run_id[:15], "%Y%m%d_%H%M%S")
    except ValueError:
        return None


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
