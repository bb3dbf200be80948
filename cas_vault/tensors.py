"""Tensors as Zarr v3 arrays in a specimen's working directory."""

from __future__ import annotations

import math
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import fsync_dir
from .errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np
    import zarr

__all__ = ["default_chunks", "open_array", "write_array"]

ZSTD_LEVEL = 3


def default_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The seed's default: first two dims at <= 1000, the rest whole (1 for empty dims)."""
    return tuple(max(1, min(n, 1000)) if i < 2 else max(1, n) for i, n in enumerate(shape))


def check_array(array: object) -> np.ndarray:
    """Validate a tensor before anything is written.

    Raises:
        InvalidInputError: if it is not a numeric or bool numpy array.
    """
    import numpy as np

    if not isinstance(array, np.ndarray):
        raise InvalidInputError(f"tensor must be a numpy array, not {type(array).__name__}")
    if array.dtype.kind not in "biufc":
        raise InvalidInputError(
            f"tensor dtype {array.dtype} is not numeric; only numeric and bool arrays are "
            "stored as tensors (put strings in metrics or config)"
        )
    return array


def _check_chunks(chunks: Sequence[int] | int | None, shape: tuple[int, ...]) -> tuple[int, ...]:
    if chunks is None:
        return default_chunks(shape)
    if isinstance(chunks, int):
        chunks = (chunks,) * len(shape)
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != len(shape) or any(c < 1 for c in chunks):
        raise InvalidInputError(
            f"chunks {chunks} do not fit shape {shape}: give one positive size per dimension"
        )
    return chunks


def write_array(
    dest: Path, array: np.ndarray, chunks: Sequence[int] | int | None = None,
    compressor: str | None = "zstd",
) -> Path:
    """Write ``array`` as a Zarr v3 directory at ``dest``, replacing any previous one.

    The array is written into a temp directory beside ``dest`` and renamed into place, so
    readers never see a half-written array.

    Raises:
        InvalidInputError: for unsupported dtypes, chunks or compressors.
    """
    import zarr
    from zarr.codecs import ZstdCodec
    from zarr.storage import LocalStore

    array = check_array(array)
    chunk_shape = _check_chunks(chunks, array.shape)
    if compressor not in ("zstd", None):
        raise InvalidInputError(f"compressor {compressor!r} is not supported; use 'zstd' or None")
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
    try:
        z = zarr.create_array(
            store=LocalStore(tmp), shape=array.shape, dtype=array.dtype, chunks=chunk_shape,
            compressors=ZstdCodec(level=ZSTD_LEVEL) if compressor else None,
            fill_value=0, write_data=True,
        )
        if array.size and not math.prod(array.shape) == 0:
            z[...] = array
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        fsync_dir(dest.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def open_array(path: Path) -> zarr.Array:
    """Open a Zarr v3 directory read-only."""
    import zarr
    from zarr.storage import LocalStore

    return zarr.open_array(store=LocalStore(path, read_only=True), mode="r")
