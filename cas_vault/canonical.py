"""Canonical msgpack: one fixed encoding, so the same content always gives the same bytes.

Rules (docs/format.md, "Canonical msgpack"):

* maps have string keys, written in ascending order of their UTF-8 bytes;
* integers use msgpack's shortest form; floats are always float64; strings are str8/16/32
  (UTF-8), byte strings bin8/16/32; tuples and lists are both arrays;
* only nil, bool, int, float, str, bytes, array and map may appear (no ext types, no timestamps);
* arrays and maps nest at most ``MAX_DEPTH`` levels, and a value may not contain itself.

Decoding is strict: bytes that do not re-encode to themselves are not canonical and rejected,
so two implementations can never disagree about a commit's digest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack

from .errors import InvalidInputError

__all__ = ["MAX_DEPTH", "MAX_DOCUMENT_BYTES", "check_nesting", "normalize", "packb", "unpackb"]

#: Manifests, configs and commits larger than this are refused (they are metadata, not data).
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024

#: Arrays and maps nest at most this many levels (the outermost container is level 1). Deeper
#: documents are refused when written and when read: encoding recurses once per level, so the
#: bound keeps well inside Python's recursion limit (1000 frames) from any caller's stack.
MAX_DEPTH = 256


class _TooDeep(Exception):
    """Raised inside :func:`_normalize`; turned into a message by :func:`check_nesting`."""


def _where(path: list[str]) -> str:
    """Name a position for an error message, eliding the middle of a deep path."""
    text = "".join(path)
    return text if len(text) <= 80 else f"{text[:40]}...{text[-37:]}"


def check_nesting(value: Any, what: str = "value", limit: int = MAX_DEPTH) -> None:
    """Refuse a value that nests arrays and maps deeper than ``limit`` or contains itself.

    The walk is iterative, so a hostile value cannot exhaust the interpreter's stack, and it
    stops at the first container past ``limit``, so a cycle costs at most ``limit`` steps.

    Args:
        value: the value (maps, sequences and scalars; anything else is a leaf here).
        what: how to name the value in errors.
        limit: the deepest level allowed; the outermost container is level 1.

    Raises:
        InvalidInputError: saying where the value is too deep, or where it refers to itself.
    """
    if not isinstance(value, (Mapping, list, tuple)):
        return
    # Each frame: (container, its level, the frame of its parent, the key that leads to it).
    # Keys are formatted only for the message: most documents are wide, not deep.
    stack: list[tuple[Any, int, Any, Any]] = [(value, 1, None, None)]
    while stack:
        frame = stack.pop()
        node, level = frame[0], frame[1]
        if level > limit:
            chain, ids, cycle = [], set(), False
            f = frame
            while f[2] is not None:
                cycle = cycle or id(f[0]) in ids
                ids.add(id(f[0]))
                chain.append(f".{f[3]}" if isinstance(f[2][0], Mapping) else f"[{f[3]}]")
                f = f[2]
            cycle = cycle or id(f[0]) in ids
            where = _where([what, *reversed(chain)])
            if cycle:
                raise InvalidInputError(
                    f"{where}: the value contains itself (a map or list refers to one of its own "
                    "ancestors); msgpack can only store trees, so pass a copy without the cycle"
                )
            raise InvalidInputError(
                f"{where}: nested deeper than {limit} levels of maps and lists; flatten it (e.g. "
                "join keys with '.') or store it as a table"
            )
        items = node.items() if isinstance(node, Mapping) else enumerate(node)
        for key, child in items:
            if isinstance(child, (Mapping, list, tuple)):
                stack.append((child, level + 1, frame, key))


def _decoded_within(value: Any, limit: int) -> bool:
    """True if a decoded document (plain dicts and lists, no cycles) nests at most ``limit``.

    Level by level, so the per-item work stays in comprehensions: decoding a large commit
    pays a few percent for it, where the general :func:`check_nesting` walk would pay a third.
    """
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return False
        below: list[Any] = []
        for node in level:
            below += [c for c in (node.values() if type(node) is dict else node)
                      if type(c) is dict or type(c) is list]
        level = below
    return True


def normalize(value: Any, where: str = "value") -> Any:
    """Return ``value`` with maps sorted and containers as plain lists/dicts.

    Args:
        value: a tree of msgpack-compatible Python values (numpy scalars are converted).
        where: a path used in error messages.

    Raises:
        InvalidInputError: for keys that are not strings, values msgpack cannot hold, nesting
            deeper than :data:`MAX_DEPTH` or a value that contains itself.
    """
    try:
        return _normalize(value, where, 0)
    except _TooDeep:
        check_nesting(value, where)  # says where, and whether it is a cycle
        raise AssertionError("unreachable: _normalize and check_nesting disagree") from None


def _normalize(value: Any, where: str, depth: int) -> Any:
    """:func:`normalize` of a value found inside ``depth`` containers."""
    if value is None or isinstance(value, (bool, str, bytes)):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise InvalidInputError(f"{where}: integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise _TooDeep  # also ends a cycle, which would nest forever
        out = {}
        for k in sorted(value, key=lambda k: k.encode("utf-8") if isinstance(k, str) else b""):
            if not isinstance(k, str):
                raise InvalidInputError(
                    f"{where}: map key {k!r} is not a string; use string keys"
                )
            out[k] = _normalize(value[k], f"{where}.{k}", depth + 1)
        return out
    if isinstance(value, msgpack.ExtType):  # a tuple subclass: must not pass as an array
        raise InvalidInputError(f"{where}: msgpack extension types cannot be stored")
    if isinstance(value, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise _TooDeep
        items = []  # a loop, not a comprehension: one frame per level on Python 3.11, not two
        for i, v in enumerate(value):
            items.append(_normalize(v, f"{where}[{i}]", depth + 1))
        return items
    # numpy scalars and similar: accept anything with .item() that yields a plain value.
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return _normalize(item(), where, depth)
    raise InvalidInputError(
        f"{where}: {type(value).__name__} cannot be stored in msgpack; "
        "use None, bool, int, float, str, bytes, lists and string-keyed dicts"
    )


def packb(value: Any) -> bytes:
    """Encode ``value`` canonically.

    Raises:
        InvalidInputError: if it holds unsupported types, nests deeper than :data:`MAX_DEPTH`,
            contains itself, or exceeds ``MAX_DOCUMENT_BYTES``.
    """
    data = msgpack.packb(normalize(value), use_bin_type=True, use_single_float=False)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise InvalidInputError(
            f"msgpack document is {len(data)} bytes, over the {MAX_DOCUMENT_BYTES} byte limit; "
            "store large data as metrics (Parquet) or tensors (Zarr) instead"
        )
    return data


def unpackb(data: bytes, what: str = "msgpack document", strict: bool = False) -> Any:
    """Decode msgpack bytes.

    Args:
        data: the bytes.
        what: how to name the document in errors.
        strict: also require the bytes to be in canonical form.

    Raises:
        InvalidInputError: if the bytes are malformed, truncated, oversized, have trailing data,
            nest deeper than :data:`MAX_DEPTH`, or (with ``strict``) are not canonical.
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise InvalidInputError(
            f"{what} is {len(data)} bytes, over the {MAX_DOCUMENT_BYTES} byte limit"
        )
    try:
        value = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
        )
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise InvalidInputError(f"{what} is not valid msgpack ({exc}); it is corrupt or truncated") from None
    if not _decoded_within(value, MAX_DEPTH):
        check_nesting(value, what)  # raises, saying where
    if strict:
        try:
            again = packb(value)
        except InvalidInputError:
            again = b""
        if again != data:
            raise InvalidInputError(f"{what} is not in canonical msgpack form")
    return value


def is_finite_number(x: object) -> bool:
    """True for ints and finite floats."""
    return isinstance(x, int) or (isinstance(x, float) and math.isfinite(x))
