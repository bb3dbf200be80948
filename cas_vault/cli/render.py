"""Rendering values for people: nested maps as key paths, long values cut with a marker.

Metadata, provenance and config hold anything a protocol put there: a 150-package map, a
command line of 300 arguments, a 4 KiB string. The human-readable output shows each value on
one line, cut at a width with an explicit ``… (N more)`` so nothing is silently lost (``--json``
has everything), and every piece of user text goes through :func:`~cas_vault.cli.text.escape`.
A file listing is cut the same way: :func:`summary_rows` folds directories until it fits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .text import escape

if TYPE_CHECKING:
    from ..commit import TreeEntry

__all__ = ["MORE", "map_lines", "summary_rows", "value_text"]

#: Starts every marker of something left out: ``… (12 more)``.
MORE = "…"
#: Characters of one value shown before it is cut.
VALUE_WIDTH = 100


def _more(n: int, what: str = "") -> str:
    return f"{MORE} ({n:,} more{' ' + what if what else ''})"


def value_text(value: Any, width: int = VALUE_WIDTH) -> str:
    """One value on one line, safe for a terminal and at most about ``width`` characters.

    Strings are shown without quotes (``""`` for the empty one), escaped; lists and maps are
    shown item by item until the width is used, then ``… (N more)``; a long string ends in
    ``… (N more chars)``; bytes as their size and first bytes in hex.

    Args:
        value: a decoded msgpack value (str, int, float, bool, None, bytes, list, map).
        width: the width to keep to (a first item longer than it is itself cut).

    Returns:
        The text.
    """
    if isinstance(value, str):
        return _cut(escape(value), width) if value else '""'
    if isinstance(value, bytes):
        head = value[:16].hex()
        return f"<{len(value):,} bytes> {head}" + (MORE if len(value) > 16 else "")
    if isinstance(value, (list, tuple)):
        return _items("[", "]", [(None, x) for x in value], width)
    if isinstance(value, dict):
        return _items("{", "}", list(value.items()), width)
    return _cut(escape(str(value)), width)


def _cut(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return f"{text[:width]}{_more(len(text) - width, 'chars')}"


def _items(open_: str, close: str, items: list[tuple[Any, Any]], width: int) -> str:
    parts: list[str] = []
    used = len(open_) + len(close)
    for i, (key, item) in enumerate(items):
        room = max(20, width - used)
        text = value_text(item, room)
        if key is not None:
            text = f"{_cut(escape(str(key)), room)}: {text}"
        if parts and used + len(text) + 2 > width:
            parts.append(_more(len(items) - i))
            break
        parts.append(text)
        used += len(text) + 2
    return open_ + ", ".join(parts) + close


def map_lines(
    value: Mapping[str, Any], *, max_entries: int = 10, max_lines: int = 60,
    width: int = VALUE_WIDTH,
) -> list[str]:
    """A nested map as ``key.sub: value`` lines, field by field.

    Maps are walked key by key and lists of maps item by item (``seeds[0].seed: 42``); every
    other value is one line (:func:`value_text`). A nested map or list with more than
    ``max_entries`` entries shows its first ones and then ``path: … (N more)``, and past
    ``max_lines`` lines the rest is one such line too, so a 150-package provenance stays
    readable. The top-level keys are all shown (up to ``max_lines``).

    Args:
        value: the map (a manifest's metadata).
        max_entries: entries shown of one map or list.
        max_lines: lines in all.
        width: width of one value.

    Returns:
        The lines, escaped, without indentation.
    """
    lines = [line for k, v in value.items()
             for line in _walk(v, escape(str(k)), max_entries, width)]
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [_more(len(lines) - max_lines + 1, "lines; --json has all")]
    return lines


def _walk(value: Any, path: str, max_entries: int, width: int) -> Iterator[str]:
    if isinstance(value, dict) and value:
        steps = [(f"{path}.{escape(str(k))}" if path else escape(str(k)), v)
                 for k, v in value.items()]
    elif isinstance(value, list) and any(isinstance(x, dict) for x in value):
        steps = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    else:
        yield f"{path}: {value_text(value, width)}"
        return
    for sub, item in steps[:max_entries]:
        yield from _walk(item, sub, max_entries, width)
    if len(steps) > max_entries:
        yield f"{path}: {_more(len(steps) - max_entries)}"


# -- file listings ---------------------------------------------------------------------------
def _zarr_store(path: str, entry: TreeEntry) -> str | None:
    """The Zarr store directory (``strata/x.zarr/``) a file belongs to, if any."""
    i = path.find(".zarr/")
    return path[:i + 6] if entry.kind == "zarr" and i >= 0 else None


def _ancestor(key: str, depth: int) -> str | None:
    """The directory ``depth`` levels down (``a/`` is 1) holding ``key``, if key is below it."""
    parts = key.rstrip("/").split("/")
    return "/".join(parts[:depth]) + "/" if len(parts) > depth else None


def summary_rows(tree: Mapping[str, TreeEntry], budget: int) -> list[tuple[str, str, int, str]]:
    """At most ``budget`` rows describing every file of a tree: files, stores and directories.

    Each Zarr store is one row (its files, bytes and distinct objects). While there are more
    rows than ``budget``, the directories holding the most rows are folded into one row
    each, deepest first, so a directory of 500 images becomes one line and the few files
    beside it stay listed; in the end, if need be, the top-level files fold into ``./``.

    Args:
        tree: relative path -> tree entry.
        budget: the most rows wanted (at least 1).

    Returns:
        ``(label, kind, bytes, note)`` rows sorted by label, the label not yet escaped; kind
        is the file's kind, ``zarr`` for a store, ``dir`` for a folded directory, whose note
        counts its files by kind.
    """
    lines: dict[str, list[TreeEntry]] = {}
    for path, e in tree.items():
        lines.setdefault(_zarr_store(path, e) or path, []).append(e)
    folded: set[str] = set()
    deepest = max((k.rstrip("/").count("/") for k in lines), default=0)
    for depth in range(deepest, 0, -1):
        groups: dict[str, list[str]] = {}
        for k in lines:
            d = _ancestor(k, depth)
            if d is not None:
                groups.setdefault(d, []).append(k)
        for d, keys in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])):
            if len(lines) <= budget:
                break
            if len(keys) > 1:  # folding one row into one saves nothing
                lines[d] = [e for k in keys for e in lines.pop(k)]
                folded.difference_update(keys)
                folded.add(d)
    # Then the top-level files, and, with hundreds of top-level directories, everything.
    for everything in (False, True):
        keys = [k for k in lines if everything or "/" not in k]
        if len(lines) > budget and len(keys) > 1:
            lines["./"] = [e for k in keys for e in lines.pop(k)]
            folded.difference_update(keys)
            folded.add("./")
    rows = []
    for key in sorted(lines):
        entries = lines[key]
        size = sum(e.size for e in entries)
        if key in folded:
            kinds = Counter(e.kind for e in entries).most_common()
            rows.append((key, "dir", size, f"{len(entries):,} files: "
                         + ", ".join(f"{kind} {n:,}" for kind, n in kinds)))
        elif key.endswith("/"):
            rows.append((key, "zarr", size,
                         f"{len(entries):,} files, {len({e.digest for e in entries}):,} distinct"))
        else:
            rows.append((key, entries[0].kind, size, entries[0].digest[:16]))
    return rows
