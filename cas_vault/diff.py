"""``vault diff A B``: what differs between two committed specimens.

Four parts: the manifest (domain, method, model, tags and every metadata key, provenance
included, flattened to dotted paths), the config (``strata/config.msgpack``, flattened), the
files (added, removed, changed by digest) and, for every Parquet file both specimens have, a
summary of each numeric column both have: final value, min and max, for A and for B.

Manifest and config differences come twice: ``manifest``/``config`` stop at a subtree present
on one side only (one change holds it whole), ``manifest_fields``/``config_fields`` go down to
every leaf value (``metadata.provenance.git.commit``, ``metadata.provenance.seeds[0].seed``),
so a reader sees field by field what differs, never a map.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import canonical
from .errors import InvalidInputError

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["Change", "MetricSummary", "SpecimenDiff", "diff_specimens", "field_changes", "flatten"]


@dataclass(frozen=True)
class Change:
    """One differing key (a dotted path).

    Attributes:
        key: the dotted path, e.g. ``metadata.provenance.packages.numpy``.
        a: the value in A (None when absent there; see ``only_in``).
        b: the value in B.
        only_in: ``"a"`` or ``"b"`` when the key exists on one side only (a whole subtree is
            then one change), else None.
    """

    key: str
    a: Any
    b: Any
    only_in: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"key": self.key, "a": _jsonable(self.a), "b": _jsonable(self.b),
                "only_in": self.only_in}


@dataclass(frozen=True)
class MetricSummary:
    """Final, min and max of one numeric column in both specimens."""

    file: str
    metric: str
    a: dict[str, float | None]
    b: dict[str, float | None]

    @property
    def changed(self) -> bool:
        """Whether any of final/min/max differs."""
        return any(not _same(self.a[k], self.b[k]) for k in ("final", "min", "max"))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (NaN stays NaN; the CLI prints it as JSON's NaN)."""
        return {"file": self.file, "metric": self.metric, "a": dict(self.a), "b": dict(self.b),
                "changed": self.changed}


@dataclass
class SpecimenDiff:
    """The differences between specimens ``a`` and ``b``.

    Attributes:
        a: the first specimen id.
        b: the second.
        manifest: differing manifest keys; a subtree on one side only is one change.
        config: the same for ``strata/config.msgpack``.
        added: files only B has.
        removed: files only A has.
        changed: files both have, with different contents.
        unchanged: how many files both have with the same contents.
        metrics: final/min/max of every numeric column of the Parquet files both have.
        manifest_fields: differing manifest leaf values, one per path (see :func:`field_changes`).
        config_fields: the same for the config.
    """

    a: str
    b: str
    manifest: list[Change] = field(default_factory=list)
    config: list[Change] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    metrics: list[MetricSummary] = field(default_factory=list)
    manifest_fields: list[Change] = field(default_factory=list)
    config_fields: list[Change] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """True when manifest, config and files are all the same."""
        return not (self.manifest or self.config or self.added or self.removed or self.changed)

    def to_dict(self) -> dict[str, Any]:
        """The stable ``vault diff --json`` form (docs/runs.md)."""
        return {
            "a": self.a, "b": self.b, "identical": self.identical,
            "manifest": [c.to_dict() for c in self.manifest],
            "config": [c.to_dict() for c in self.config],
            "files": {"added": self.added, "removed": self.removed, "changed": self.changed,
                      "unchanged": self.unchanged},
            "metrics": [m.to_dict() for m in self.metrics],
            "manifest_fields": [c.to_dict() for c in self.manifest_fields],
            "config_fields": [c.to_dict() for c in self.config_fields],
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same(i, j) for i, j in zip(x, y))
    return type(x) is type(y) and x == y


def _changes(a: Any, b: Any, prefix: str = "") -> list[Change]:
    """Differences between two trees of maps; a subtree missing on one side is one change."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[Change] = []
        for key in sorted(set(a) | set(b)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in b:
                out.append(Change(path, a[key], None, "a"))
            elif key not in a:
                out.append(Change(path, None, b[key], "b"))
            else:
                out.extend(_changes(a[key], b[key], path))
        return out
    return [] if _same(a, b) else [Change(prefix, a, b)]


#: One step of a key path: a map key, or a list index (shown ``[i]``).
_Step = str | int


def _leaves(value: Any, path: tuple[_Step, ...] = ()) -> Iterator[tuple[tuple[_Step, ...], Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, (*path, str(key)))
    elif isinstance(value, list) and any(isinstance(x, dict) for x in value):
        # A list of maps (provenance seeds) is a list of records: compare them field by field.
        # A list of plain values (tags, a command line) stays one value.
        for i, item in enumerate(value):
            yield from _leaves(item, (*path, i))
    elif path or not isinstance(value, dict):  # an empty map at the top has no leaves
        yield path, value


def _path_text(path: tuple[_Step, ...]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def _order(path: tuple[_Step, ...]) -> tuple[tuple[int, int, str], ...]:
    # Indexes sort as numbers (seeds[2] before seeds[10]) and before keys at the same depth.
    return tuple((0, s, "") if isinstance(s, int) else (1, 0, s) for s in path)


def flatten(value: Any) -> list[tuple[str, Any]]:
    """The leaf values of a tree of maps, each with its key path.

    Maps are walked key by key (``a.b.c``), lists of maps item by item (``seeds[0].seed``);
    every other value, a list of plain values and an empty map included, is a leaf.

    Args:
        value: a map (a manifest, its metadata, a config).

    Returns:
        ``(path, value)`` pairs in the map's own order (none for an empty map); a value that
        is not a map is one leaf with the empty path.
    """
    return [(_path_text(p), v) for p, v in _leaves(value)]


def field_changes(a: Any, b: Any) -> list[Change]:
    """Every leaf value that differs between two trees of maps, one change per key path.

    Unlike the changes of :class:`SpecimenDiff`'s ``manifest``, a subtree present on one side
    only gives one change per leaf of it (``only_in`` set on each), and a value that is a map
    on one side and not on the other (``git``: None in A, a map in B) gives the plain value
    and the map's leaves, each on its side.

    Args:
        a: the tree in A.
        b: the tree in B.

    Returns:
        The changes, sorted by path (list indexes in numeric order).
    """
    la, lb = dict(_leaves(a)), dict(_leaves(b))
    out = []
    for path in sorted(la.keys() | lb.keys(), key=_order):
        key = _path_text(path)
        if path not in lb:
            out.append(Change(key, la[path], None, "a"))
        elif path not in la:
            out.append(Change(key, None, lb[path], "b"))
        elif not _same(la[path], lb[path]):
            out.append(Change(key, la[path], lb[path]))
    return out


def _summaries(vault: Repository, sa: Any, sb: Any, rel: str) -> list[MetricSummary]:
    import polars as pl

    try:
        da = pl.read_parquet(sa.object_path(rel))
        db = pl.read_parquet(sb.object_path(rel))
    except Exception:  # an unreadable Parquet file is reported by `vault verify`, not here
        return []
    out = []
    for col in da.columns:
        if col == "step" or col not in db.columns:
            continue
        if not (da.schema[col].is_numeric() and db.schema[col].is_numeric()):
            continue
        out.append(MetricSummary(rel, col, _summary(da[col]), _summary(db[col])))
    return out


def _summary(s: Any) -> dict[str, float | None]:
    values = s.drop_nulls()
    if values.len() == 0:
        return {"final": None, "min": None, "max": None}
    return {"final": float(values[-1]), "min": float(values.min()), "max": float(values.max())}


def diff_specimens(vault: Repository, a: str, b: str) -> SpecimenDiff:
    """Compare two committed specimens.

    Args:
        vault: the vault.
        a: the first specimen id.
        b: the second.

    Returns:
        The differences.

    Raises:
        NotFoundError: if either is not committed.
    """
    sa, sb = vault.specimen(a), vault.specimen(b)
    d = SpecimenDiff(a, b)
    ma, mb = sa.commit.manifest.to_map(), sb.commit.manifest.to_map()
    d.manifest = _changes(ma, mb)
    d.manifest_fields = field_changes(ma, mb)
    ta, tb = sa.commit.tree, sb.commit.tree
    conf = "strata/config.msgpack"
    ca = _config(sa, conf) if conf in ta else {}
    cb = _config(sb, conf) if conf in tb else {}
    d.config = _changes(ca, cb)
    d.config_fields = field_changes(ca, cb)
    d.added = sorted(set(tb) - set(ta))
    d.removed = sorted(set(ta) - set(tb))
    both = sorted(set(ta) & set(tb))
    d.changed = [p for p in both if ta[p].digest != tb[p].digest]
    d.unchanged = len(both) - len(d.changed)
    for rel in both:
        if ta[rel].kind == "parquet":
            d.metrics.extend(_summaries(vault, sa, sb, rel))
    return d


def _config(spec: Any, rel: str) -> dict[str, Any]:
    try:
        value = canonical.unpackb(spec.read_bytes(rel), rel)
    except InvalidInputError:
        return {"<unreadable>": True}
    return value if isinstance(value, dict) else {"<value>": value}
