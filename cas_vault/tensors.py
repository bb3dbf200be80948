"""Tensors: numpy arrays stored as Zarr v3 arrays, chunk by chunk, as content-addressed objects.

A tensor ``name`` of a specimen is the Zarr v3 array ``<results>/<name>.zarr``: the metadata
document ``zarr.json`` and one file per chunk under ``c/`` (default chunk key encoding, "/").
``<results>`` is the directory of the specimen's results: ``strata`` (the default everywhere
here), or ``runs/<run_id>`` for a run.
In a vault every one of those files is an object of ``objects/`` and nothing else: chunks are
encoded, hashed and stored the moment zarr produces them (see
:class:`~cas_vault.zarrstore.ObjectWriteStore`), and the working index records each file's digest,
so ``vault commit`` neither reads nor copies tensor bytes again, and no working path leads to a
chunk's inode (the working directory holds no copy of the array; readers go through the index). Uncompressed
chunks, whose encoding is their raw bytes, skip zarr's pipeline and go to the store straight
from the source array. Outside a vault (a bare directory) the same layout is written as a
plain Zarr directory.

Encoding is deterministic (bytes codec, little-endian, optionally zstd at a fixed level with no
checksum and no threads), so identical data gives identical chunk digests in every run, and
a tensor equal to one already stored, or sharing most chunks with one, adds only the chunks
that differ.

The on-disk layout is specified in docs/format.md ("Tensors"); user documentation is in
docs/tensors.md.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import FileLock, fsync_dir, temp_path
from .digest import Digest
from .errors import InvalidInputError, NotFoundError, VaultError
from .workdir import PRIVATE_DIR, WorkingIndex, check_writable, writing

if TYPE_CHECKING:
    import numpy as np
    import zarr
    from tqdm import tqdm

    from .commit import TreeEntry
    from .objects import ObjectStore

__all__ = [
    "COMPRESSORS",
    "TensorSummary",
    "TensorWriter",
    "ZSTD_LEVEL",
    "check_array",
    "check_compressor",
    "check_dtype",
    "chunks_for_bytes",
    "default_chunks",
    "list_tree_tensors",
    "open_tree_tensor",
    "open_working_tensor",
    "resolve_chunks",
    "summarize_tree_tensors",
    "tensor_prefix",
    "tensor_writer",
    "write_tensor",
]

#: The zstd level every zstd-compressed tensor uses (recorded in zarr.json as well).
ZSTD_LEVEL = 3
#: Accepted values of ``compressor``.
COMPRESSORS = ("zstd", None)
#: The seed's default chunking keeps the first two dimensions at or below this.
DEFAULT_CHUNK_EDGE = 1000
#: Writes shorter than this show no progress bar.
PROGRESS_DELAY_S = 1.0
#: Chunks zarr encodes concurrently per write call; with the store's queue this bounds memory.
ZARR_CONCURRENCY = 4
#: The results directory of the seed's first API, where tensors go unless told otherwise.
STRATA = "strata"


# -- validation ------------------------------------------------------------------------------
def check_dtype(dtype: Any) -> np.dtype:
    """Validate a tensor dtype and return its little-endian form (the one stored).

    Raises:
        InvalidInputError: for object, string, datetime, structured and other non-numeric
            dtypes, and numeric dtypes that Zarr v3 cannot store (``longdouble``).
    """
    import numpy as np

    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise InvalidInputError(f"{dtype!r} is not a numpy dtype") from None
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        raise InvalidInputError(
            f"tensor dtype {dt} is not numeric; only numeric and bool arrays are stored as "
            "tensors (put strings and objects in metrics or config; datetimes as int64)"
        )
    from zarr.core.dtype import get_data_type_from_native_dtype

    stored = dt.newbyteorder("<") if dt.itemsize > 1 else dt
    try:
        get_data_type_from_native_dtype(stored)
    except ValueError:
        raise InvalidInputError(
            f"tensor dtype {dt} (extended precision) has no Zarr v3 encoding; "
            "cast it to float64 or complex128 first"
        ) from None
    return stored


def check_array(array: object) -> np.ndarray:
    """Validate a tensor before anything is written.

    Raises:
        InvalidInputError: if it is not a numpy array of a numeric or bool dtype.
    """
    import numpy as np

    if not isinstance(array, np.ndarray):
        raise InvalidInputError(
            f"tensor must be a numpy array (or memmap), not {type(array).__name__}; "
            "convert it with numpy.asarray(...) first"
        )
    check_dtype(array.dtype)
    return array


def check_compressor(compressor: object) -> str | None:
    """Return ``compressor`` if it is one of :data:`COMPRESSORS`.

    Raises:
        InvalidInputError: otherwise.
    """
    if compressor not in COMPRESSORS:
        raise InvalidInputError(
            f"compressor {compressor!r} is not supported; use 'zstd' (deterministic, level "
            f"{ZSTD_LEVEL}) or None (raw bytes, best for incompressible float data)"
        )
    return compressor  # type: ignore[return-value]


def default_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """The seed's default: first two dims at <= 1000, the rest whole (1 for empty dims).

    A dimension longer than 1000 is cut into equal pieces rather than 1000 + a remainder, since
    Zarr pads edge chunks to full size: 1024 columns become 2 x 512, not 1000 + 24 (stored as
    a second chunk of 1000).
    """
    def edge(n: int) -> int:
        pieces = -(-n // DEFAULT_CHUNK_EDGE)
        return max(1, -(-n // pieces)) if n else 1

    return tuple(edge(n) if i < 2 else max(1, n) for i, n in enumerate(shape))


def chunks_for_bytes(shape: Sequence[int], itemsize: int, target: int) -> tuple[int, ...]:
    """Chunk shape of at most ``target`` bytes that keeps trailing dimensions whole.

    Leading dimensions are cut first, so one chunk holds whole rows whenever a row fits:
    ``(262144, 1024)`` float32 at 4 MiB gives ``(1024, 1024)``.
    """
    chunks = [max(1, n) for n in shape]
    for i in range(len(chunks)):
        inner = itemsize * math.prod(chunks[i + 1:])
        if inner * chunks[i] <= target:
            break
        chunks[i] = max(1, target // inner)
        if inner <= target:
            break
    return tuple(chunks)


def resolve_chunks(
    shape: Sequence[int], itemsize: int, chunks: Sequence[int] | int | None = None,
    chunk_bytes: int | None = None, growable: bool = False,
) -> tuple[int, ...]:
    """Decide a chunk shape from the caller's ``chunks`` or ``chunk_bytes``, or the default.

    Args:
        shape: the array shape (for an appending writer, axis 0 is the rows so far).
        itemsize: bytes per element.
        chunks: explicit chunk shape (an int means that size on every axis). Sizes larger
            than the array are cut down to it, except on a growable axis 0.
        chunk_bytes: target bytes per chunk instead (trailing dimensions are kept whole).
        growable: axis 0 grows (appending writer): it is never cut to the current size.

    Returns:
        One positive size per dimension.

    Raises:
        InvalidInputError: for both ``chunks`` and ``chunk_bytes``, or sizes that do not fit.
    """
    shape = tuple(shape)
    if chunks is not None and chunk_bytes is not None:
        raise InvalidInputError("give either chunks or chunk_bytes, not both")
    if chunk_bytes is not None:
        if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise InvalidInputError(f"chunk_bytes {chunk_bytes!r} must be a positive int")
        if growable:
            shape = (sys.maxsize, *shape[1:])
        return chunks_for_bytes(shape, itemsize, chunk_bytes)
    if chunks is None:
        if growable:
            shape = (DEFAULT_CHUNK_EDGE, *shape[1:])
        return default_chunks(shape)
    if isinstance(chunks, int) and not isinstance(chunks, bool):
        chunks = (chunks,) * len(shape)
    try:
        out = tuple(int(c) for c in chunks)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InvalidInputError(f"chunks {chunks!r} must be a sequence of ints") from None
    if len(out) != len(shape) or any(c < 1 for c in out):
        raise InvalidInputError(
            f"chunks {tuple(chunks)} do not fit shape {shape}: give one positive size per dimension"
        )
    return tuple(
        c if (growable and i == 0) else min(c, max(1, n)) for i, (c, n) in enumerate(zip(out, shape))
    )


def check_shape_tail(shape_tail: object) -> tuple[int, ...]:
    """Validate the trailing shape of an appending writer.

    Raises:
        InvalidInputError: unless it is a sequence of non-negative ints.
    """
    if isinstance(shape_tail, int) and not isinstance(shape_tail, bool):
        shape_tail = (shape_tail,)
    try:
        tail = tuple(int(n) for n in shape_tail)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InvalidInputError(f"shape_tail {shape_tail!r} must be a sequence of ints") from None
    if any(n < 0 for n in tail):
        raise InvalidInputError(f"shape_tail {tail} has a negative size")
    return tail


# -- tree paths ------------------------------------------------------------------------------
def tensor_prefix(name: str, results_dir: str = STRATA) -> str:
    """Tree path of tensor ``name``'s array directory: ``<results_dir>/<name>.zarr``.

    Args:
        name: the tensor (validated by the caller).
        results_dir: the results directory relative to the specimen (``strata`` or
            ``runs/<run_id>``, validated by the caller).
    """
    return f"{results_dir}/{name}.zarr"


def tensor_entries(
    tree: Mapping[str, Digest], name: str, results_dir: str = STRATA,
) -> dict[str, Digest]:
    """Store key -> digest for tensor ``name`` in a tree (relative path -> digest)."""
    prefix = tensor_prefix(name, results_dir) + "/"
    return {p[len(prefix):]: d for p, d in tree.items() if p.startswith(prefix)}


#: Files that make a directory a Zarr array: v3 metadata, or v2 (imported legacy specimens).
ARRAY_METADATA = ("zarr.json", ".zarray")


def list_tree_tensors(
    paths: Iterator[str] | Sequence[str] | Mapping[str, Any], results_dir: str = STRATA,
) -> list[str]:
    """Names of the tensors among tree paths.

    Args:
        paths: relative paths (a tree or a working index).
        results_dir: where to look: a tensor is ``<results_dir>/<name>.zarr/zarr.json`` (or
            ``.zarray``).
    """
    prefix = results_dir + "/"
    out = set()
    for p in paths:
        if not p.startswith(prefix):
            continue
        parts = p[len(prefix):].split("/")
        if len(parts) == 2 and parts[0].endswith(".zarr") and parts[1] in ARRAY_METADATA:
            out.add(parts[0][:-5])
    return sorted(out)


# -- reading ---------------------------------------------------------------------------------
def open_tree_tensor(
    objects: ObjectStore, tree: Mapping[str, Digest], name: str, *, where: str,
    verify: bool = True, results_dir: str = STRATA,
) -> zarr.Array:
    """Open tensor ``name`` of a tree lazily, straight from the object store (read-only).

    Args:
        objects: the object store.
        tree: relative path -> digest (a commit's tree, or a working index).
        name: the tensor.
        where: names the specimen in error messages.
        verify: verify every chunk read against its digest.
        results_dir: the results directory the tensor is in.

    Returns:
        A lazy ``zarr.Array``: slicing it reads only the chunks the slice touches.

    Raises:
        NotFoundError: if the tree has no such tensor (the message lists those it has).
    """
    import zarr

    from .zarrstore import ObjectTreeStore

    entries = tensor_entries(tree, name, results_dir)
    if not any(m in entries for m in ARRAY_METADATA):
        have = list_tree_tensors(tree, results_dir)
        raise NotFoundError(
            f"{where} has no tensor {name!r}"
            + ("" if results_dir == STRATA else f" in {results_dir}") + "; it has "
            + (", ".join(repr(t) for t in have) if have else "no tensors")
        )
    prefix = tensor_prefix(name, results_dir)
    store = ObjectTreeStore(objects, entries, verify=verify, where=f"{prefix} of {where}")
    return zarr.open_array(store=store, mode="r")


#: Files of a Zarr store that are metadata, not chunks (v3; v2 and its consolidated form).
_METADATA_FILES = frozenset(("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"))


@dataclass(frozen=True)
class TensorSummary:
    """One Zarr array of a commit, as its metadata document and its tree entries describe it.

    Attributes:
        path: tree path of the array directory, e.g. ``strata/acts.zarr``.
        name: the directory's name without ``.zarr`` (the tensor name, e.g. ``acts``).
        zarr_format: 3, or 2 for arrays imported from the seed's layout; None if unreadable.
        dtype: the element type in numpy's spelling (``float32``), or the metadata's own
            when numpy has no name for it.
        shape: the array's shape.
        chunks: the shape of one chunk (the regular chunk grid's).
        codecs: what the bytes pass through after serialisation, e.g. ``("zstd",)``;
            empty for raw little-endian chunks.
        logical_bytes: product of the shape times the item size: the array's size in memory
            (None when the item size is unknown).
        stored_bytes: bytes of the distinct chunk objects (encoded, compressed): a chunk
            repeated inside the array counts once, the metadata documents not at all.
        files: files of the array in the tree (metadata and chunks).
        chunk_files: chunk files in the tree (a chunk equal to the fill value may be absent).
        chunk_objects: distinct objects among the chunk files.
        grid_chunks: chunks of the full grid (None when shape or chunks are unknown).
        error: why the metadata could not be read, else None; the fields read from it are
            then None (or empty).
    """

    path: str
    name: str
    zarr_format: int | None
    dtype: str | None
    shape: tuple[int, ...] | None
    chunks: tuple[int, ...] | None
    codecs: tuple[str, ...]
    logical_bytes: int | None
    stored_bytes: int
    files: int
    chunk_files: int
    chunk_objects: int
    grid_chunks: int | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the ``tensors`` list of ``vault show --json``)."""
        return {
            "path": self.path, "name": self.name, "zarr_format": self.zarr_format,
            "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape),
            "chunks": None if self.chunks is None else list(self.chunks),
            "codecs": list(self.codecs), "logical_bytes": self.logical_bytes,
            "stored_bytes": self.stored_bytes, "files": self.files,
            "chunk_files": self.chunk_files, "chunk_objects": self.chunk_objects,
            "grid_chunks": self.grid_chunks, "error": self.error,
        }


def summarize_tree_tensors(
    objects: ObjectStore, tree: Mapping[str, TreeEntry],
) -> list[TensorSummary]:
    """Describe every Zarr array of a tree: dtype, shapes, logical and stored bytes.

    An array is a directory holding ``zarr.json`` (v3, ``node_type`` array) or ``.zarray``
    (v2) inside a ``*.zarr`` store, wherever it is: ``strata/<name>.zarr``,
    ``runs/<run_id>/<name>.zarr`` or an imported layout. Only the metadata documents are
    read, each through the object store (so verified); chunk objects are counted from the
    tree, never read.

    Args:
        objects: the object store holding the tree's objects.
        tree: relative path -> tree entry (a commit's tree).

    Returns:
        One summary per array, by path. An array whose metadata object is missing, altered or
        not valid metadata gets a summary whose ``error`` says so: describing a specimen
        never fails on one damaged array (``vault verify`` reports the damage).
    """
    found: dict[str, str] = {}
    for path, entry in tree.items():
        prefix, _, base = path.rpartition("/")
        # v3 metadata wins over a stray v2 document in the same directory.
        if entry.kind == "zarr" and base in ARRAY_METADATA and found.get(prefix) != "zarr.json":
            found[prefix] = base
    members: dict[str, list[tuple[str, TreeEntry]]] = {p: [] for p in found}
    for path, entry in tree.items():
        prefix = path.rpartition("/")[0]
        # Chunk keys nest (c/0/0, or 0/0 in v2): walk up to the array directory.
        while prefix and prefix not in members:
            prefix = prefix.rpartition("/")[0]
        if prefix:
            members[prefix].append((path, entry))
    out = []
    for prefix in sorted(found):
        meta = tree[f"{prefix}/{found[prefix]}"]
        summary = _summarize_array(objects, prefix, meta, members[prefix],
                                   v2=found[prefix] == ".zarray")
        if summary is not None:
            out.append(summary)
    return out


def _summarize_array(
    objects: ObjectStore, prefix: str, meta: TreeEntry, entries: list[tuple[str, TreeEntry]],
    *, v2: bool,
) -> TensorSummary | None:
    chunk_entries = [e for p, e in entries if p.rpartition("/")[2] not in _METADATA_FILES]
    distinct = {e.digest: e.size for e in chunk_entries}
    counted = {
        "path": prefix, "name": prefix.rpartition("/")[2].removesuffix(".zarr"),
        "stored_bytes": sum(distinct.values()), "files": len(entries),
        "chunk_files": len(chunk_entries), "chunk_objects": len(distinct),
    }
    unknown: dict[str, Any] = {
        "zarr_format": None, "dtype": None, "shape": None, "chunks": None, "codecs": (),
        "logical_bytes": None, "grid_chunks": None,
    }
    try:
        doc = json.loads(objects.get(meta.digest))
    except VaultError as e:
        return TensorSummary(**counted, **unknown, error=str(e))
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, or nested to no end
        return TensorSummary(**counted, **unknown, error=f"metadata is not valid JSON: {e}")
    if isinstance(doc, dict) and doc.get("node_type") == "group":
        return None  # a v3 group: its arrays are listed on their own
    try:
        fields = (_read_v2 if v2 else _read_v3)(doc)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        why = f"metadata is not a Zarr array document ({type(e).__name__}: {e})"
        return TensorSummary(**counted, **unknown, error=why)
    return TensorSummary(**counted, **fields)


def _read_v3(doc: dict[str, Any]) -> dict[str, Any]:
    shape = _dims(doc["shape"])
    grid = doc["chunk_grid"]
    chunks = _dims(grid["configuration"]["chunk_shape"]) if grid.get("name") == "regular" else None
    data_type = doc["data_type"]
    # Zarr 3.1 spells parametric types as {"name": ..., "configuration": ...}.
    name = data_type["name"] if isinstance(data_type, dict) else str(data_type)
    dtype, itemsize = _numpy_dtype(name)
    codecs = tuple(str(c["name"]) if isinstance(c, dict) else str(c) for c in doc.get("codecs", ())
                   if not (isinstance(c, dict) and c.get("name") == "bytes"))
    return _shaped(3, dtype or name, itemsize, shape, chunks, codecs)


def _read_v2(doc: dict[str, Any]) -> dict[str, Any]:
    shape = _dims(doc["shape"])
    chunks = _dims(doc["chunks"])
    raw = doc["dtype"]
    dtype, itemsize = _numpy_dtype(raw)
    codecs = tuple(str(f.get("id")) for f in doc.get("filters") or ())
    if doc.get("compressor"):
        codecs += (str(doc["compressor"].get("id")),)
    return _shaped(2, dtype or str(raw), itemsize, shape, chunks, codecs)


def _dims(value: Any) -> tuple[int, ...]:
    """A shape from metadata; anything but a list of non-negative integers is refused."""
    if not isinstance(value, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
        raise ValueError(f"{str(value)[:80]} is not a shape")
    return tuple(value)


def _numpy_dtype(spelled: Any) -> tuple[str | None, int | None]:
    """numpy's name and item size for a metadata dtype, or (None, None) if numpy has none."""
    import numpy as np

    try:
        dt = np.dtype(spelled)
    except (TypeError, ValueError):
        return None, None
    return dt.name if dt.fields is None else str(dt), dt.itemsize


def _shaped(
    zarr_format: int, dtype: str, itemsize: int | None, shape: tuple[int, ...],
    chunks: tuple[int, ...] | None, codecs: tuple[str, ...],
) -> dict[str, Any]:
    grid = None
    if chunks is not None and len(chunks) == len(shape) and all(c > 0 for c in chunks):
        grid = math.prod(-(-n // c) for n, c in zip(shape, chunks))
    return {
        "zarr_format": zarr_format, "dtype": dtype, "shape": shape, "chunks": chunks,
        "codecs": codecs, "grid_chunks": grid,
        "logical_bytes": None if itemsize is None else math.prod(shape) * itemsize,
    }


def open_working_tensor(
    specimen_dir: Path, name: str, objects: ObjectStore | None, results_dir: str = STRATA,
) -> zarr.Array:
    """Open tensor ``name`` of a working directory lazily (read-only).

    In a vault, a tensor written by cas-vault is read through the working index from the
    object store (a chunk listed there but lost raises IntegrityError). Anything else, e.g. a
    plain Zarr directory someone wrote there by hand, is opened as a plain directory.

    Args:
        specimen_dir: the working directory.
        name: the tensor.
        objects: the vault's object store, or None outside a vault.
        results_dir: the results directory the tensor is in.

    Raises:
        NotFoundError: if it was never written.
    """
    import zarr
    from zarr.storage import LocalStore

    prefix = tensor_prefix(name, results_dir)
    path = specimen_dir / prefix
    on_disk = any((path / m).is_file() for m in ARRAY_METADATA)
    if objects is not None:
        index = WorkingIndex(specimen_dir).load()
        if f"{prefix}/zarr.json" in index:
            if os.path.lexists(path):
                raise InvalidInputError(index_conflict(specimen_dir, prefix))
            return open_tree_tensor(objects, index, name, results_dir=results_dir,
                                    where=f"working specimen {specimen_dir.name}")
    if not on_disk:
        raise NotFoundError(f"tensor {name!r} not found at {path}; write it with write_tensors()")
    return zarr.open_array(store=LocalStore(path, read_only=True), mode="r")


def index_conflict(specimen_dir: Path, prefix: str) -> str:
    """The message for a tensor that is both in the working index and on disk."""
    return (
        f"{specimen_dir / prefix} exists as files in the working directory, but "
        f"{prefix} was also written by write_tensors (it lives in objects/ and the working "
        "index); remove the directory, or write it again with write_tensors"
    )


# -- writing: targets ------------------------------------------------------------------------
class _Target:
    """Where a tensor is written: a zarr store on a staging directory, installed atomically.

    The staging directory ``<results>/.<name>.zarr.<uuid>.tmp`` is skipped by commits (temp
    names); :meth:`finish` swaps it in place of any previous array of the same name.
    """

    def __init__(self, specimen_dir: Path, name: str, results_dir: str = STRATA) -> None:
        self.specimen_dir = specimen_dir
        self.name = name
        self.prefix = tensor_prefix(name, results_dir)
        self.results = specimen_dir / results_dir
        self.dest = specimen_dir / self.prefix
        self.staging = self.results / f".{name}.zarr.{uuid.uuid4().hex}.tmp"
        self.store: Any = None

    def open(self) -> Any:
        """Create the staging directory and return the zarr store writing into it."""
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def _swap(self) -> Path | None:
        """Rename the staging tree to ``dest``; return where the old array went (or None)."""
        old = None
        if os.path.lexists(self.dest):
            old = self.results / f".{self.name}.zarr.{uuid.uuid4().hex}.old.tmp"
            os.rename(self.dest, old)
        os.rename(self.staging, self.dest)
        fsync_dir(self.results)
        return old

    @staticmethod
    def _remove(old: Path | None) -> None:
        if old is None:
            return
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


class _DirTarget(_Target):
    """A plain Zarr directory (a specimen directory outside any vault)."""

    def open(self) -> Any:
        from zarr.storage import LocalStore

        self.results.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir()
        self.store = LocalStore(self.staging)
        return self.store

    def finish(self) -> None:
        for dirpath, _dirs, files in os.walk(self.staging):
            for f in files:  # LocalStore does not fsync; make the bytes durable before the rename
                fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for dirpath, _dirs, _files in sorted(os.walk(self.staging), key=lambda t: -len(t[0])):
            fsync_dir(Path(dirpath))
        self._remove(self._swap())


class _VaultTarget(_Target):
    """Chunks straight into ``objects/``, listed in the working index; no working copy.

    Holds ``locks/gc.lock`` shared from the first object put until the working index lists
    every new object, so a concurrent ``vault gc`` never prunes them, and the working
    directory's lock shared for the whole write, so a commit never seals half a tensor.
    """

    def __init__(self, specimen_dir: Path, name: str, vault_root: Path,
                 results_dir: str = STRATA) -> None:
        super().__init__(specimen_dir, name, results_dir)
        from .objects import ObjectStore

        self.objects = ObjectStore.of_vault(vault_root)
        # The staging tree lives in the vault's private tmp/: only the object names outlast it.
        self.staging = temp_path(self.objects.tmp_dir, "tensor")
        self._locks = ExitStack()

    def open(self) -> Any:
        from .zarrstore import ObjectWriteStore

        self._locks.enter_context(writing(self.specimen_dir))
        try:
            check_writable(self.specimen_dir, self.prefix)
            self._locks.enter_context(self.objects.writing())
            self.store = ObjectWriteStore(self.objects, self.staging)
        except BaseException:
            self._locks.close()
            raise
        return self.store

    def finish(self) -> None:
        old = None
        try:
            entries = self.store.finish()
            prefix = self.prefix
            private = self.specimen_dir / PRIVATE_DIR
            private.mkdir(exist_ok=True)
            # The index is rewritten whole; the lock keeps tensors written at once (threads or
            # processes) from losing each other's entries.
            with FileLock(private / "index.lock"):
                # A plain Zarr directory of the same name (written by other means) is replaced
                # by the new array, as writing a file replaces it.
                if os.path.lexists(self.dest):
                    old = self.results / f".{self.name}.zarr.{uuid.uuid4().hex}.old.tmp"
                    os.rename(self.dest, old)
                    # Durable before the index names the new array: after a power cut,
                    # both at once would be refused by every reader.
                    fsync_dir(self.results)
                WorkingIndex(self.specimen_dir).update(
                    {f"{prefix}/{k}": d for k, d in entries.items()}, remove_prefix=prefix,
                )
        finally:
            self._locks.close()
        self._remove(old)

    def abort(self) -> None:
        try:
            if self.store is not None:
                self.store.abort()
            super().abort()
        finally:
            self._locks.close()


def make_target(
    specimen_dir: Path, name: str, vault_root: Path | None, results_dir: str = STRATA,
) -> _Target:
    """The write target for tensor ``name``: into the vault's objects, or a plain directory."""
    if vault_root is None:
        return _DirTarget(specimen_dir, name, results_dir)
    return _VaultTarget(specimen_dir, name, vault_root, results_dir)


# -- writing ---------------------------------------------------------------------------------
def _progress_bar(total: int | None, desc: str, progress: bool | None) -> tqdm | None:
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    # delay: writes that finish within a second never draw a bar.
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                delay=PROGRESS_DELAY_S, leave=False, file=sys.stderr)


class _ArrayBuilder:
    """Writes one zarr array into a target, chunk by chunk, with a bounded number in flight.

    Each chunk is handed to zarr as exactly its own region (a view of the source), so zarr
    encodes it without first copying it into a fresh chunk buffer, and a memmap source is
    read one chunk at a time.

    Raw chunks skip zarr altogether: in a vault, without a compressor, a whole chunk's
    encoding is just its little-endian C-order bytes, so every chunk that is not cut by the
    array's edge goes straight to :meth:`ObjectWriteStore.put_chunk` (a view of the source
    when it is laid out that way already, else one copy in that layout). Zarr's event loop,
    codec pipeline and per-chunk task bookkeeping cost more CPU than hashing the chunk; edge
    chunks (padded with the fill value) and compressed chunks still go through zarr.

    Args:
        target: where the array goes.
        shape: the initial shape.
        dtype: the stored (little-endian) dtype.
        chunk_shape: the chunk shape.
        compressor: ``"zstd"`` or None.
        bar: a progress bar advanced by each chunk's logical size, or None.
    """

    def __init__(self, target: _Target, shape: tuple[int, ...], dtype: np.dtype,
                 chunk_shape: tuple[int, ...], compressor: str | None, bar: tqdm | None) -> None:
        from zarr.api.asynchronous import create_array
        from zarr.codecs import ZstdCodec
        from zarr.core.sync import sync

        self.target = target
        self.chunk_shape = chunk_shape
        self.bar = bar
        self.chunk_nbytes = dtype.itemsize * math.prod(chunk_shape)
        store = target.open()
        self.array = sync(create_array(
            store=store, shape=shape, dtype=dtype, chunks=chunk_shape,
            compressors=ZstdCodec(level=ZSTD_LEVEL, checksum=False) if compressor else None,
            filters=None, fill_value=None, attributes={},
            # Every chunk is written, even all-fill ones: they dedupe to a single object
            # anyway, and zarr's emptiness test would cost a full extra pass over the data.
            config={"write_empty_chunks": True},
        ))
        self.dtype = dtype
        self.direct = store if self._raw_chunks(store) else None

    def _raw_chunks(self, store: object) -> bool:
        """Decide whether whole chunks bypass zarr (see the class docstring).

        Checked on the array zarr created (not on our arguments), so a zarr that adds a
        codec or changes a default sends every chunk back through zarr's own pipeline.

        Args:
            store: the store the array was created in.

        Returns:
            True if it is an object store and a whole chunk's encoding is exactly its
            little-endian C-order bytes (no compressor, no other codec).
        """
        from zarr.codecs import BytesCodec
        from zarr.codecs.bytes import Endian

        from .zarrstore import ObjectWriteStore

        codecs = self.array.metadata.codecs
        # self.dtype is little-endian (check_dtype), so its bytes are what BytesCodec writes.
        return (
            isinstance(store, ObjectWriteStore) and self.array.order == "C" and len(codecs) == 1
            and isinstance(codecs[0], BytesCodec) and codecs[0].endian in (None, Endian.little)
        )

    def write(self, source: np.ndarray, row0: int = 0) -> None:
        """Write ``source`` at rows ``row0...`` (``row0`` is a multiple of the chunk rows)."""
        import itertools

        from zarr.core.sync import sync

        if source.ndim == 0:
            sync(self.array.setitem(Ellipsis, source))
            return
        if not source.size:
            return
        starts = itertools.product(
            *(range(0, n, c) for n, c in zip(source.shape, self.chunk_shape)))
        rest = starts if self.direct is None else self._put_whole_chunks(source, row0, starts)
        sync(self._write_chunks(source, row0, rest))

    def _put_whole_chunks(
        self, source: np.ndarray, row0: int, starts: Iterable[tuple[int, ...]],
    ) -> list[tuple[int, ...]]:
        """Store every whole chunk of ``source`` directly; return the starts of the others.

        Args:
            source: the block being written.
            row0: the row of the array where ``source`` starts (a multiple of the chunk rows).
            starts: the start index of each chunk region within ``source``.

        Returns:
            The starts of edge chunks (smaller than a chunk: zarr pads them).
        """
        import numpy as np

        assert self.direct is not None
        rest: list[tuple[int, ...]] = []
        key = self.array.metadata.encode_chunk_key
        for start in starts:
            sel = tuple(slice(s, s + c) for s, c in zip(start, self.chunk_shape))
            block = source[sel]
            if block.shape != self.chunk_shape:
                rest.append(start)
                continue
            # A view when the source is already little-endian and C-contiguous here (rows of a
            # C array); otherwise one copy into that layout, which is what zarr would encode.
            block = np.ascontiguousarray(block, dtype=self.dtype)
            coords = ((start[0] + row0) // self.chunk_shape[0],
                      *(s // c for s, c in zip(start[1:], self.chunk_shape[1:])))
            self.direct.put_chunk(key(coords), memoryview(block.reshape(-1).view(np.uint8)))
            if self.bar is not None:
                self.bar.update(self.chunk_nbytes)
        return rest

    async def _write_chunks(
        self, source: np.ndarray, row0: int, starts: Iterable[tuple[int, ...]],
    ) -> None:
        import asyncio

        pending: set[asyncio.Future[None]] = set()
        try:
            for start in starts:
                while len(pending) >= ZARR_CONCURRENCY:
                    await self._reap(pending)
                sel = tuple(slice(s, min(s + c, n))
                            for s, c, n in zip(start, self.chunk_shape, source.shape))
                dest = (slice(sel[0].start + row0, sel[0].stop + row0), *sel[1:])
                pending.add(asyncio.ensure_future(self.array.setitem(dest, source[sel])))
            while pending:
                await self._reap(pending)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _reap(self, pending: set[Any]) -> None:
        import asyncio

        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            pending.discard(task)
            task.result()
            if self.bar is not None:
                self.bar.update(self.chunk_nbytes)

    def resize(self, shape: tuple[int, ...]) -> None:
        """Grow the array (only its metadata changes)."""
        from zarr.core.sync import sync

        sync(self.array.resize(shape))


def write_tensor(
    specimen_dir: Path, vault_root: Path | None, name: str, array: np.ndarray, *,
    chunks: Sequence[int] | int | None = None, chunk_bytes: int | None = None,
    compressor: str | None = "zstd", progress: bool | None = None, results_dir: str = STRATA,
) -> Path:
    """Write ``array`` as tensor ``name`` of a working directory, replacing any previous one.

    Args:
        specimen_dir: the working directory.
        vault_root: its vault (chunks go straight into ``objects/``), or None (plain Zarr).
        name: the tensor name (validated by the caller).
        array: a numeric or bool numpy array or memmap; 0-d and empty arrays work. A memmap
            is read chunk by chunk: memory stays bounded by a few chunks.
        chunks: chunk shape (default: first two dims at <= 1000, the rest whole).
        chunk_bytes: target chunk size in bytes instead of ``chunks``.
        compressor: ``"zstd"`` or None.
        progress: draw a progress bar (default: when stderr is a terminal and the write takes
            over a second).
        results_dir: the results directory, relative to ``specimen_dir`` (``strata`` or
            ``runs/<run_id>``, validated by the caller).

    Returns:
        The array's directory ``<results_dir>/<name>.zarr``.

    Raises:
        InvalidInputError: bad dtype, chunks or compressor (nothing is written then).
        ImmutableError: in a vault, if :func:`~cas_vault.workdir.check_writable` refuses it.
        LockTimeoutError: if a ``vault gc`` holds the vault for too long.
    """
    array = check_array(array)
    dtype = check_dtype(array.dtype)
    compressor = check_compressor(compressor)
    chunk_shape = resolve_chunks(array.shape, dtype.itemsize, chunks, chunk_bytes)
    n_chunks = math.prod(-(-n // c) for n, c in zip(array.shape, chunk_shape)) if array.size else 0
    chunk_nbytes = dtype.itemsize * math.prod(chunk_shape)
    target = make_target(specimen_dir, name, vault_root, results_dir)
    bar = _progress_bar(n_chunks * chunk_nbytes, f"tensor {name}", progress) if n_chunks else None
    try:
        builder = _ArrayBuilder(target, array.shape, dtype, chunk_shape, compressor, bar)
        builder.write(array)
        target.finish()
    except BaseException:
        target.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    return target.dest


class TensorWriter:
    """Build a tensor larger than memory by appending blocks along axis 0.

    Use it through :meth:`cas_vault.SpecimenStorage.tensor_writer`::

        with storage.tensor_writer("acts", "float32", (768,), chunk_bytes=4 << 20) as w:
            for batch in batches:
                w.append(batch)          # shape (n, 768) or one row (768,)

    Rows are buffered until a whole chunk row is complete, then encoded and stored; at most
    one chunk row is buffered, plus the few chunks in flight. The tensor appears (replacing
    any previous one of that name) only when the ``with`` block ends without an error; on an
    error nothing changes in the working directory.

    Args:
        target: where to write (see :func:`make_target`).
        dtype: the stored element type.
        shape_tail: the shape of one row (``()`` for a 1-D tensor).
        chunk_shape: the full chunk shape (axis 0 = rows per chunk).
        compressor: ``"zstd"`` or None.
        progress: draw a progress bar (default: on a terminal, for writes over a second).
    """

    def __init__(
        self, target: _Target, dtype: np.dtype, shape_tail: tuple[int, ...],
        chunk_shape: tuple[int, ...], compressor: str | None, progress: bool | None = None,
    ) -> None:
        self.target = target
        self.dtype = dtype
        self.shape_tail = shape_tail
        self.chunk_shape = chunk_shape
        self.compressor = compressor
        self.rows = 0
        self._progress = progress
        self._builder: _ArrayBuilder | None = None
        self._buf: np.ndarray | None = None
        self._fill = 0
        self._bar: tqdm | None = None
        self._done = False

    @property
    def path(self) -> Path:
        """The array's directory once the writer is closed: ``<results>/<name>.zarr``."""
        return self.target.dest

    def __enter__(self) -> TensorWriter:
        self.open()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        """Start writing (in a vault: takes ``locks/gc.lock`` shared until close or abort)."""
        if self._builder is not None or self._done:
            return
        self._bar = _progress_bar(None, f"tensor {self.target.name}", self._progress)
        try:
            self._builder = _ArrayBuilder(self.target, (0, *self.shape_tail), self.dtype,
                                          self.chunk_shape, self.compressor, self._bar)
        except BaseException:
            self.abort()
            raise

    def append(self, block: np.ndarray) -> None:
        """Append rows: an array of shape ``(n, *shape_tail)``, or one row ``shape_tail``.

        Raises:
            InvalidInputError: wrong shape, or a dtype that cannot be cast safely to the
                tensor's (e.g. float into int); nothing is appended then.
        """
        import numpy as np

        if self._builder is None or self._done:
            raise InvalidInputError(
                "this tensor writer is not open; use it in a `with` block and append inside it"
            )
        if not isinstance(block, np.ndarray):
            block = np.asarray(block)
        if block.dtype.kind not in "biufc" or not np.can_cast(block.dtype, self.dtype, "same_kind"):
            raise InvalidInputError(
                f"cannot append {block.dtype} data to a {self.dtype} tensor without losing "
                f"values; cast it with .astype({str(self.dtype)!r}) if that is what you want"
            )
        if block.shape == self.shape_tail:
            block = block[np.newaxis]
        if block.shape[1:] != self.shape_tail:
            raise InvalidInputError(
                f"cannot append a block of shape {block.shape} to a tensor whose rows have shape "
                f"{self.shape_tail}; pass shape (n, {', '.join(map(str, self.shape_tail))})"
            )
        c0 = self.chunk_shape[0]
        i, n = 0, block.shape[0]
        while i < n:
            if self._buf is None:
                # A fresh buffer per chunk row: the previous one may still be queued for storing.
                self._buf = np.empty((c0, *self.shape_tail), dtype=self.dtype)
            take = min(c0 - self._fill, n - i)
            self._buf[self._fill:self._fill + take] = block[i:i + take]
            self._fill += take
            i += take
            if self._fill == c0:
                self._flush()

    def _flush(self) -> None:
        if not self._fill:
            return
        assert self._builder is not None and self._buf is not None
        start, k = self.rows, self._fill
        self._builder.resize((start + k, *self.shape_tail))
        self._builder.write(self._buf[:k], start)
        self.rows += k
        self._buf, self._fill = None, 0

    def close(self) -> Path:
        """Store the last partial chunk row and the metadata; install the tensor.

        Returns:
            The array's directory.
        """
        if self._done:
            return self.target.dest
        self.open()
        try:
            self._flush()
            self.target.finish()
        except BaseException:
            self.abort()
            raise
        self._done = True
        if self._bar is not None:
            self._bar.close()
        return self.target.dest

    def abort(self) -> None:
        """Stop without changing the working directory (stored chunks are left to gc)."""
        if self._done:
            return
        self._done = True
        try:
            self.target.abort()
        finally:
            if self._bar is not None:
                self._bar.close()


def tensor_writer(
    specimen_dir: Path, vault_root: Path | None, name: str, dtype: Any,
    shape_tail: Sequence[int] | int = (), *, chunks: Sequence[int] | int | None = None,
    chunk_bytes: int | None = None, compressor: str | None = "zstd",
    progress: bool | None = None, results_dir: str = STRATA,
) -> TensorWriter:
    """Validate everything and return an unopened :class:`TensorWriter` (see its docs).

    ``results_dir`` is the results directory relative to ``specimen_dir`` (``strata`` or
    ``runs/<run_id>``, validated by the caller).

    Raises:
        InvalidInputError: bad dtype, shape_tail, chunks or compressor.
    """
    stored = check_dtype(dtype)
    tail = check_shape_tail(shape_tail)
    compressor = check_compressor(compressor)
    chunk_shape = resolve_chunks((0, *tail), stored.itemsize, chunks, chunk_bytes, growable=True)
    return TensorWriter(make_target(specimen_dir, name, vault_root, results_dir), stored, tail,
                        chunk_shape, compressor, progress)
