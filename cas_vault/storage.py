"""SpecimenStorage: how an experiment writes and reads its results (the seed's API).

    storage = SpecimenStorage(Path(__file__).parent)
    storage.write_metrics({"step": [0, 1], "loss": [0.5, 0.3]})   # strata/metrics.parquet
    storage.write_config({"lr": 3e-4})                              # strata/config.msgpack
    storage.write_tensors("activations", array)                     # strata/activations.zarr
    storage.read_metrics(); storage.read_tensor_lazy("activations")

Every write is atomic (temp file + rename), so a crash never leaves a half-written result.
In a vault, every write holds the working directory's writer lock, so a commit never seals a
half-written result. Writing to a specimen that is already committed is refused: committed
specimens never change.
Constructing a SpecimenStorage creates nothing.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import canonical
from .atomic import write_replace
from .errors import InvalidInputError, NotFoundError
from .workdir import (
    WorkingCopies,
    WorkingIndex,
    check_uncommitted,
    writing,
)

if TYPE_CHECKING:  # heavy imports stay lazy so `vault --help` is fast
    import numpy as np
    import polars as pl
    import zarr

    from .tensors import TensorWriter

__all__ = ["SpecimenStorage"]

_NAME_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
VAULT_MARKER = "vault.msgpack"


def check_name(name: object, what: str) -> str:
    """Validate a result name (file stem inside ``strata/``).

    Raises:
        InvalidInputError: if it could escape the directory or is empty.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise InvalidInputError(
            f"{what} name {name!r} is invalid; use letters, digits, '_', '-', '.' (max 128)"
        )
    return name


class SpecimenStorage:
    """Read and write one specimen's results in its working directory.

    Args:
        specimen_dir: ``specimens/<id>/`` (usually ``Path(__file__).parent`` in a protocol).
    """

    def __init__(self, specimen_dir: str | Path) -> None:
        self.path = Path(specimen_dir).resolve()
        self.strata = self.path / "strata"

    # -- helpers -----------------------------------------------------------------------------
    @property
    def specimen_id(self) -> str:
        """The specimen id (the working directory's name)."""
        return self.path.name

    def vault_root(self) -> Path | None:
        """Return the vault this working directory belongs to, if any."""
        parent = self.path.parent
        if parent.name == "specimens" and (parent.parent / VAULT_MARKER).is_file():
            return parent.parent
        return None

    def _check_writable(self) -> None:
        if not self.path.is_dir():
            raise NotFoundError(
                f"specimen directory {self.path} does not exist; create it with `vault new`"
            )
        if self.vault_root() is not None:
            check_uncommitted(self.path)
        self.strata.mkdir(exist_ok=True)

    def _write_result(self, path: Path, data: bytes | memoryview) -> None:
        """Write a result file; in a vault, also store its bytes as an object right away.

        The bytes are in memory now, so making the object costs one small file; at commit it
        would cost reading, hashing and creating a copy. (Results over ``SMALL_FILE`` bytes are
        left to the commit.) The working file stays the user's
        own inode (nothing links it to the object); ``.cas/copies.msgpack`` records which
        object it equals while it stays unchanged, and the commit uses that record.
        """
        from .objects import SMALL_FILE, ObjectStore

        with self._writing():
            root = self.vault_root()
            # Only small results: a result rewritten again and again (after every epoch,
            # say) leaves each earlier object unused until gc, so that waste stays small;
            # large ones are copied once, at commit.
            if root is None or memoryview(data).nbytes > SMALL_FILE:
                write_replace(path, data, sync_dir=False)
                return

            # No directory fsync: nothing durable depends on the working file's name until a
            # commit; a crash leaves the old file or the new one.
            write_replace(path, data, sync_dir=False)
            WorkingCopies(self.path).store(
                ObjectStore.of_vault(root), {path.relative_to(self.path).as_posix(): data})

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the working directory's writer lock (in a vault) and check it may change."""
        if self.vault_root() is None or not self.path.is_dir():
            self._check_writable()
            yield
            return
        with writing(self.path):
            self._check_writable()  # under the lock: no commit can start before we are done
            yield

    # -- metrics -----------------------------------------------------------------------------
    def write_metrics(
        self, metrics: Mapping[str, Sequence[Any]] | pl.DataFrame, name: str = "metrics"
    ) -> Path:
        """Write a table of metrics as ``strata/<name>.parquet``.

        Args:
            metrics: a polars DataFrame or a dict of equally long columns. NaN and inf are kept.
            name: the file stem (default ``metrics``).

        Returns:
            The written path.

        Raises:
            InvalidInputError: ragged or untypeable columns, or an empty table with no columns.
            ImmutableError: if the specimen is committed.
        """
        check_name(name, "metrics")
        df = to_frame(metrics)
        self._check_writable()
        buf = io.BytesIO()
        # zstd + statistics: compact and fast for DuckDB; polars writes no timestamps into the
        # file, so identical tables give identical bytes (and one object).
        df.write_parquet(buf, compression="zstd", statistics=True)
        path = self.strata / f"{name}.parquet"
        self._write_result(path, buf.getbuffer())
        return path

    def read_metrics(self, name: str = "metrics") -> pl.DataFrame:
        """Read ``strata/<name>.parquet`` as a polars DataFrame.

        Raises:
            NotFoundError: if it was never written.
        """
        import polars as pl

        path = self.strata / f"{check_name(name, 'metrics')}.parquet"
        if not path.is_file():
            raise NotFoundError(f"{path} does not exist; write it with write_metrics()")
        return pl.read_parquet(path)

    # -- config ------------------------------------------------------------------------------
    def write_config(self, config: Mapping[str, Any], name: str = "config") -> Path:
        """Write a config dict as canonical msgpack ``strata/<name>.msgpack``.

        Raises:
            InvalidInputError: if it holds values msgpack cannot store.
            ImmutableError: if the specimen is committed.
        """
        check_name(name, "config")
        if not isinstance(config, Mapping):
            raise InvalidInputError(f"config must be a dict, not {type(config).__name__}")
        data = canonical.packb(dict(config))
        path = self.strata / f"{name}.msgpack"
        self._write_result(path, data)
        return path

    def read_config(self, name: str = "config") -> dict[str, Any]:
        """Read ``strata/<name>.msgpack``.

        Raises:
            NotFoundError: if it was never written.
        """
        path = self.strata / f"{check_name(name, 'config')}.msgpack"
        try:
            return canonical.unpackb(path.read_bytes(), str(path))
        except FileNotFoundError:
            raise NotFoundError(f"{path} does not exist; write it with write_config()") from None

    # -- tensors -----------------------------------------------------------------------------
    def write_tensors(
        self, name: str, array: np.ndarray, chunks: Sequence[int] | int | None = None,
        compressor: str | None = "zstd", *, chunk_bytes: int | None = None,
        progress: bool | None = None,
    ) -> Path:
        """Write ``array`` as the Zarr v3 array ``strata/<name>.zarr``, replacing any previous one.

        In a vault every chunk goes straight into ``objects/`` as it is encoded and the working
        index lists it (the working directory holds no copy), so committing never reads or
        copies tensor bytes again, and chunks equal to ones already stored take no new space
        (docs/tensors.md). Read it back with :meth:`read_tensor_lazy`.

        Args:
            name: the tensor's name.
            array: any numeric or bool numpy array or memmap (0-d and empty included); a
                memmap is streamed chunk by chunk, so it may be larger than memory.
            chunks: chunk shape; default chunks the first two dims at <= 1000 and keeps the rest.
            compressor: ``"zstd"`` (deterministic, level 3) or None for raw bytes.
            chunk_bytes: a target chunk size in bytes instead of ``chunks`` (e.g. ``4 << 20``).
            progress: show a progress bar (default: on a terminal, for writes over a second).

        Returns:
            The array's directory.

        Raises:
            InvalidInputError: object/string dtypes, bad chunks, compressor or names (nothing
                is written then).
            ImmutableError: if the specimen is committed.
        """
        from .tensors import check_array, check_compressor, write_tensor

        check_name(name, "tensor")
        check_array(array)
        check_compressor(compressor)
        self._check_writable()
        return write_tensor(
            self.path, self.vault_root(), name, array, chunks=chunks, chunk_bytes=chunk_bytes,
            compressor=compressor, progress=progress,
        )

    def tensor_writer(
        self, name: str, dtype: Any, shape_tail: Sequence[int] | int = (), *,
        chunks: Sequence[int] | int | None = None, chunk_bytes: int | None = None,
        compressor: str | None = "zstd", progress: bool | None = None,
    ) -> TensorWriter:
        """Return an appending writer for a tensor that grows along axis 0 (larger than memory).

        ::

            with storage.tensor_writer("acts", "float32", (768,)) as w:
                for batch in batches:
                    w.append(batch)             # (n, 768), or one row of shape (768,)

        At most one chunk row is buffered. The tensor replaces any previous one of that name
        when the ``with`` block ends; if it raises, the working directory is left unchanged.

        Args:
            name: the tensor's name.
            dtype: the element type (numeric or bool).
            shape_tail: the shape of one row (``()`` for a 1-D tensor).
            chunks: chunk shape, axis 0 included (default: 1000 rows, the next dim at <= 1000).
            chunk_bytes: a target chunk size in bytes instead of ``chunks``.
            compressor: ``"zstd"`` or None.
            progress: show a progress bar (default: on a terminal, for writes over a second).

        Raises:
            InvalidInputError: bad dtype, shape, chunks, compressor or name.
            ImmutableError: if the specimen is committed.
        """
        from .tensors import tensor_writer

        check_name(name, "tensor")
        writer = tensor_writer(
            self.path, self.vault_root(), name, dtype, shape_tail, chunks=chunks,
            chunk_bytes=chunk_bytes, compressor=compressor, progress=progress,
        )
        self._check_writable()
        return writer

    def read_tensor_lazy(self, name: str) -> zarr.Array:
        """Open ``strata/<name>.zarr`` lazily (read-only): slicing reads only the chunks needed.

        In a vault, chunks are read from ``objects/`` and verified against their digests.

        Raises:
            NotFoundError: if it was never written.
            IntegrityError: on reading a chunk whose object is missing or altered.
        """
        from .tensors import open_working_tensor

        check_name(name, "tensor")
        root = self.vault_root()
        objects = None
        if root is not None:
            from .objects import ObjectStore

            objects = ObjectStore.of_vault(root)
        return open_working_tensor(self.path, name, objects)

    def list_tensors(self) -> list[str]:
        """Names of the tensors written so far (in the working index or as Zarr directories)."""
        from .tensors import list_tree_tensors

        names = set(list_tree_tensors(WorkingIndex(self.path).load())) \
            if self.vault_root() is not None else set()
        if self.strata.is_dir():
            names.update(p.name[:-5] for p in self.strata.glob("*.zarr")
                         if (p / "zarr.json").is_file() or (p / ".zarray").is_file())
        return sorted(names)


def to_frame(metrics: Any) -> pl.DataFrame:
    """Turn a dict of columns or a DataFrame into a DataFrame, with clear errors.

    Raises:
        InvalidInputError: for ragged columns, non-string names or unsupported values.
    """
    import polars as pl

    if isinstance(metrics, pl.DataFrame):
        df = metrics
    elif isinstance(metrics, Mapping):
        if not metrics:
            raise InvalidInputError("metrics has no columns; pass a dict of equally long lists")
        lengths = {}
        for k, v in metrics.items():
            if not isinstance(k, str):
                raise InvalidInputError(f"metric column name {k!r} must be a string")
            try:
                lengths[k] = len(v)
            except TypeError:
                raise InvalidInputError(
                    f"metric column {k!r} is a {type(v).__name__}, not a list of values"
                ) from None
        if len(set(lengths.values())) > 1:
            desc = ", ".join(f"{k}={n}" for k, n in lengths.items())
            raise InvalidInputError(
                f"metric columns have different lengths ({desc}); every column needs one value per row"
            )
        try:
            df = pl.DataFrame(dict(metrics), strict=False)
        except Exception as exc:  # polars raises several types for untypeable input
            raise InvalidInputError(f"metrics could not be made into a table: {exc}") from None
    else:
        raise InvalidInputError(
            f"metrics must be a dict of columns or a polars DataFrame, not {type(metrics).__name__}"
        )
    if df.width == 0:
        raise InvalidInputError("metrics has no columns")
    if any(dt == pl.Object for dt in df.dtypes):
        raise InvalidInputError("metrics hold Python objects; use numbers, strings or booleans")
    return df
