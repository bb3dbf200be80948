"""Canonical msgpack: one fixed encoding, so the same content always gives the same bytes.

Rules (docs/format.md, "Canonical msgpack"):

* maps have string keys, written in ascending order of their UTF-8 bytes;
* integers use msgpack's shortest form; floats are always float64; strings are str8/16/32
  (UTF-8), byte strings bin8/16/32; tuples and lists are both arrays;
* only nil, bool, int, float, str, bytes, array and map may appear (no ext types, no timestamps).

Decoding is strict: bytes that do not re-encode to themselves are not canonical and rejected,
so two implementations can never disagree about a commit's digest.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from .errors import InvalidInputError

__all__ = ["MAX_DOCUMENT_BYTES", "packb", "unpackb", "normalize"]

#: Manifests, configs and commits larger than this are refused (they are metadata, not data).
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024


def normalize(value: Any, where: str = "value") -> Any:
    """Return ``value`` with maps sorted and containers as plain lists/dicts.

    Args:
        value: a tree of msgpack-compatible Python values (numpy scalars are converted).
        where: a path used in error messages.

    Raises:
        InvalidInputError: for keys that are not strings or values msgpack cannot hold.
    """
    if value is None or isinstance(value, (bool, str, bytes)):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise InvalidInputError(f"{where}: integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, dict):
        out = {}
        for k in sorted(value, key=lambda k: k.encode("utf-8") if isinstance(k, str) else b""):
            if not isinstance(k, str):
                raise InvalidInputError(
                    f"{where}: map key {k!r} is not a string; use string keys"
                )
            out[k] = normalize(value[k], f"{where}.{k}")
        return out
    if isinstance(value, msgpack.ExtType):  # a tuple subclass: must not pass as an array
        raise InvalidInputError(f"{where}: msgpack extension types cannot be stored")
    if isinstance(value, (list, tuple)):
        return [normalize(v, f"{where}[{i}]") for i, v in enumerate(value)]
    # numpy scalars and similar: accept anything with .item() that yields a plain value.
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return normalize(item(), where)
    raise InvalidInputError(
        f"{where}: {type(value).__name__} cannot be stored in msgpack; "
        "use None, bool, int, float, str, bytes, lists and string-keyed dicts"
    )


def packb(value: Any) -> bytes:
    """Encode ``value`` canonically.

    Raises:
        InvalidInputError: if it holds unsupported types or exceeds ``MAX_DOCUMENT_BYTES``.
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
            or (with ``strict``) are not canonical.
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
