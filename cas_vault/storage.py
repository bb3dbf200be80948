"""SpecimenStorage: how an experiment writes and reads its results (the original's API).

The original's storage API had two eras, and protocols written against either run unchanged.
The first (the seed's) writes results straight into ``strata/``::

    storage = SpecimenStorage(Path(__file__).parent)
    storage.write_metrics({"step": [0, 1], "loss": [0.5, 0.3]})   # strata/metrics.parquet
    storage.write_config({"lr": 3e-4})                              # strata/config.msgpack
    storage.write_tensors("activations", array)                     # strata/activations.zarr
    storage.read_metrics(); storage.read_tensor_lazy("activations")

The later one makes every execution of the protocol a run of its own, ``runs/<run_id>/``::

    storage = SpecimenStorage(Path(__file__).parent)   # a specimen in the runs layout
    storage.write_manifest({"lr": 3e-4})                # runs/<run_id>/manifest.msgpack
    storage.write_metrics({"loss": [0.5, 0.3]})         # runs/<run_id>/metrics.parquet
    storage.write_tensors("activations", array)         # runs/<run_id>/activations.zarr
    storage.list_runs(); storage.read_all_runs()

Which of the two an instance speaks is its mode (see :class:`SpecimenStorage`).

Every write is atomic (temp file + rename), so a crash never leaves a half-written result.
In a vault, every write holds the working directory's writer lock, so a commit never seals a
half-written result, and asks :func:`~cas_vault.workdir.check_writable` whether its path may
change: nothing sealed ever does. Constructing a SpecimenStorage creates nothing.
"""

from __future__ import annotations

import enum
import io
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import canonical
from .atomic import put_if_absent, write_replace
from .errors import AlreadyExistsError, InvalidInputError, NotFoundError
from .workdir import (
    MANIFEST_NAME,
    RUNS_DIR,
    WorkingCopies,
    WorkingIndex,
    check_writable,
    writing,
)

if TYPE_CHECKING:  # heavy imports stay lazy so `vault --help` is fast
    import numpy as np
    import polars as pl
    import zarr

    from .tensors import TensorWriter

__all__ = ["RUN_ID_FORMAT", "SpecimenStorage", "check_run_id", "is_runs_layout", "run_sort_key"]

_NAME_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
VAULT_MARKER = "vault.msgpack"
STRATA_DIR = "strata"
#: A new run's id: the local time it started, as the original names its runs.
RUN_ID_FORMAT = "%Y%m%d_%H%M%S"
#: The file whose presence makes a run directory a run (``list_runs``).
METRICS_FILE = "metrics.parquet"
#: A run id made unique by a suffix: the second run started within one second is ``<ts>_2``.
_SUFFIXED_RE = re.compile(r"\A(\d{8}_\d{6})_(\d+)\Z")


class _Unset(enum.Enum):
    """The default of ``run_id``: not passed at all (an explicit None starts a new run)."""

    UNSET = "unset"


def check_name(name: object, what: str) -> str:
    """Validate a result name (file stem inside ``strata/`` or a run).

    Raises:
        InvalidInputError: if it could escape the directory or is empty.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise InvalidInputError(
            f"{what} name {name!r} is invalid; use letters, digits, '_', '-', '.' (max 128)"
        )
    return name


def check_run_id(run_id: object) -> str:
    """Validate a run id before it is joined into a path (the rule of result names).

    Raises:
        InvalidInputError: for a non-string, a path separator, ``..``, a leading ``.`` or
            ``-``, or over 128 characters.
    """
    if not isinstance(run_id, str) or not _NAME_RE.match(run_id) or ".." in run_id:
        raise InvalidInputError(
            f"run id {run_id!r} is invalid; use letters, digits, '_', '-', '.' (max 128, no "
            "'/' or '..'), e.g. 20250101_120000, or run_id=None for a new run"
        )
    return run_id


def run_sort_key(run_id: str) -> tuple[str, int]:
    """Sort key of run ids, oldest first: by name, a same-second suffix counted as a number.

    ``20250101_120000`` < ``20250101_120000_2`` < ``20250101_120000_10`` <
    ``20250101_120001``; plain string order would put ``_10`` before ``_2``.
    """
    m = _SUFFIXED_RE.match(run_id)
    return (m[1], int(m[2])) if m else (run_id, 1)


def is_runs_layout(specimen_dir: Path) -> bool:
    """Whether a specimen keeps its results in runs: it has ``runs/``, or its manifest says so.

    Args:
        specimen_dir: the specimen's directory.

    Returns:
        True if ``runs/`` is a directory or ``manifest.msgpack`` is a map whose ``layout`` is
        ``"runs"``; a missing or unreadable manifest counts as no.
    """
    if (specimen_dir / RUNS_DIR).is_dir():
        return True
    try:
        data = (specimen_dir / MANIFEST_NAME).read_bytes()
    except OSError:
        return False
    try:
        value = canonical.unpackb(data, f"manifest {specimen_dir / MANIFEST_NAME}")
    except InvalidInputError:
        return False
    return isinstance(value, dict) and value.get("layout") == "runs"


def _now() -> datetime:
    """The local time with its UTC offset (one function, so tests can set the clock)."""
    return datetime.now().astimezone()


def _free_run_id(runs_path: Path, base: str) -> str:
    """``base``, or ``base_2``, ``base_3``, ... : the first with no directory in ``runs/``."""
    run_id, n = base, 1
    while (runs_path / run_id).exists():
        n += 1
        run_id = f"{base}_{n}"
    return run_id


class SpecimenStorage:
    """Read and write one specimen's results in its working directory.

    An instance is in one of two modes, fixed when it is created:

    - **runs** mode if ``run_id`` was passed at all (``run_id=None`` too: it starts a new
      run), or the specimen is in the runs layout: it has a ``runs/`` directory, or its
      ``manifest.msgpack`` has ``"layout": "runs"``. Results go to ``runs/<run_id>/``.
    - **strata** mode otherwise: results go to ``strata/``, as in the seed's API.

    A new run is named by the local time, ``%Y%m%d_%H%M%S``; when a run of that name exists
    already (two runs within one second), it becomes ``<time>_2``, ``<time>_3``, ...: two
    executions never share a run. The name is claimed by creating the run directory at the
    first write, so :attr:`run_id` may still move to the next free suffix then, if another
    process took that name in between; after the first write it is fixed.

    The runs-era attributes exist in both modes, so code that mixes the two APIs works: in
    strata mode :attr:`run_id` is None, :attr:`run_path` and :attr:`strata_path` are
    ``strata/`` and :meth:`list_runs` is empty.

    Errors are those the original's callers catch: everything missing raises
    :class:`~cas_vault.errors.NotFoundError` (a ``FileNotFoundError``), a refused write
    :class:`~cas_vault.errors.AlreadyExistsError` or
    :class:`~cas_vault.errors.ImmutableError` (both ``RuntimeError``), bad arguments
    :class:`~cas_vault.errors.InvalidInputError` (a ``ValueError``).

    Args:
        specimen_path: ``specimens/<id>/`` (usually ``Path(__file__).parent`` in a protocol).
        run_id: an existing or new run to open (runs mode), None for a new run (runs mode),
            or not given (mode from the specimen's layout; a new run in runs mode).

    Attributes:
        specimen_path: the specimen directory (also :attr:`path`).
        runs_path: ``<specimen>/runs``.
        layout: ``"runs"`` or ``"strata"``: the mode.

    Raises:
        InvalidInputError: if ``run_id`` could escape ``runs/`` (see :func:`check_run_id`).
    """

    def __init__(
        self, specimen_path: str | Path,
        run_id: str | None | Literal[_Unset.UNSET] = _Unset.UNSET,
    ) -> None:
        self.path = Path(specimen_path).resolve()
        self.specimen_path = self.path
        self.runs_path = self.path / RUNS_DIR
        runs = run_id is not _Unset.UNSET or is_runs_layout(self.path)
        self.layout: Literal["runs", "strata"] = "runs" if runs else "strata"
        # A new run (named here, claimed at the first write) or one given by the caller.
        self._new_run = runs and run_id in (None, _Unset.UNSET)
        self._claimed = False
        self._base_run_id: str | None = None
        self.run_id: str | None = None
        if self._new_run:
            self._base_run_id = _now().strftime(RUN_ID_FORMAT)
            self.run_id = _free_run_id(self.runs_path, self._base_run_id)
        elif runs:
            self.run_id = check_run_id(run_id)

    # -- paths -------------------------------------------------------------------------------
    @property
    def run_path(self) -> Path:
        """Where this instance writes: ``runs/<run_id>/``, or ``strata/`` in strata mode."""
        return self.path / self._results_dir

    @property
    def strata_path(self) -> Path:
        """The same as :attr:`run_path` (the original kept the name for older code)."""
        return self.run_path

    @property
    def strata(self) -> Path:
        """The same as :attr:`run_path` (this class's name for it before runs)."""
        return self.run_path

    @property
    def _results_dir(self) -> str:
        """:attr:`run_path` relative to the specimen: ``strata`` or ``runs/<run_id>``."""
        return STRATA_DIR if self.run_id is None else f"{RUNS_DIR}/{self.run_id}"

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

    # -- writing -----------------------------------------------------------------------------
    def _check_writable(self) -> None:
        """Refuse a write that may not happen, then make :attr:`run_path` (claiming the run)."""
        if not self.path.is_dir():
            raise NotFoundError(
                f"specimen directory {self.path} does not exist; create it with `vault new`"
            )
        in_vault = self.vault_root() is not None
        if in_vault:
            check_writable(self.path, self._results_dir)
        if self._claim() and in_vault:
            check_writable(self.path, self._results_dir)  # the run moved to a new name

    def _claim(self) -> bool:
        """Create :attr:`run_path`; for a new run, take a name no other run has.

        Returns:
            True if :attr:`run_id` changed (another writer took the name it had).
        """
        if not self._new_run or self._claimed:
            self.run_path.mkdir(parents=True, exist_ok=True)
            return False
        assert self._base_run_id is not None and self.run_id is not None
        before = self.run_id
        self.runs_path.mkdir(exist_ok=True)
        while True:
            try:
                # Exclusive: two runs started within a second must not share a directory.
                self.run_path.mkdir()
                break
            except FileExistsError:
                self.run_id = _free_run_id(self.runs_path, self._base_run_id)
        self._claimed = True
        return self.run_id != before

    def _write_result(self, path: Path, data: bytes | memoryview, overwrite: bool = True) -> None:
        """Write a result file; in a vault, also store its bytes as an object right away.

        The bytes are in memory now, so making the object costs one small file; at commit it
        would cost reading, hashing and creating a copy. (Results over ``SMALL_FILE`` bytes are
        left to the commit.) The working file stays the user's
        own inode (nothing links it to the object); ``.cas/copies.msgpack`` records which
        object it equals while it stays unchanged, and the commit uses that record.

        Args:
            path: the result file.
            data: its bytes.
            overwrite: replace an existing file; if False, an existing one is kept and the
                write refused (decided atomically: the new file is linked into place).

        Raises:
            AlreadyExistsError: if ``overwrite`` is False and ``path`` exists.
        """
        from .objects import SMALL_FILE, ObjectStore

        with self._writing():
            # No directory fsync: nothing durable depends on the working file's name until a
            # commit; a crash leaves the old file or the new one.
            if overwrite:
                write_replace(path, data, sync_dir=False)
            elif not put_if_absent(path, data, path.parent, mode=0o644, sync_dir=False):
                hint = (f"start a new run with {type(self).__name__}(path)"
                        if self.run_id is not None else
                        f"keep each execution in a run of its own (create {self.runs_path}, "
                        "or pass run_id=None)")
                raise AlreadyExistsError(
                    f"{path} exists already; pass overwrite=True to replace it, or {hint}"
                )
            root = self.vault_root()
            # Only small results: a result rewritten again and again (after every epoch,
            # say) leaves each earlier object unused until gc, so that waste stays small;
            # large ones are copied once, at commit.
            if root is None or memoryview(data).nbytes > SMALL_FILE:
                return
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

    # -- reading -----------------------------------------------------------------------------
    def _run_ids(self) -> list[str]:
        """Every run directory's id (with or without metrics), newest first."""
        try:
            names = [p.name for p in self.runs_path.iterdir() if p.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return []
        ok = [n for n in names if _NAME_RE.match(n) and ".." not in n]
        return sorted(ok, key=run_sort_key, reverse=True)

    def _find(self, file: str, run_id: str | None, writer: str) -> Path:
        """The result file ``file``: of run ``run_id``, else this instance's, else the latest.

        Args:
            file: the file name inside a run (or ``strata/``).
            run_id: the run to read, or None.
            writer: the method that writes it (for messages).

        Raises:
            NotFoundError: if there is no such file where it was looked for.
        """
        if run_id is not None:
            path = self.runs_path / check_run_id(run_id) / file
            if path.is_file():
                return path
            raise NotFoundError(f"{path} does not exist (run {run_id} has no {file})")
        path = self.run_path / file
        if path.is_file():
            return path
        if self.run_id is None:
            raise NotFoundError(f"{path} does not exist; write it with {writer}()")
        for run in self._run_ids():
            if (self.runs_path / run / file).is_file():
                return self.runs_path / run / file
        raise NotFoundError(
            f"no run of {self.path} has {file} (looked in {self.runs_path}); write it with "
            f"{writer}()"
        )

    def list_runs(self) -> list[str]:
        """The ids of the runs that have a ``metrics.parquet``, newest first.

        Newest first is by name, which starts with the run's start time; a same-second
        suffix counts as a number (``<time>_10`` is newer than ``<time>_2``). Empty in
        strata mode.
        """
        return [r for r in self._run_ids() if (self.runs_path / r / METRICS_FILE).is_file()]

    def get_latest_run(self) -> str | None:
        """The newest run that has metrics (the first of :meth:`list_runs`), or None."""
        runs = self.list_runs()
        return runs[0] if runs else None

    # -- manifest ----------------------------------------------------------------------------
    def write_manifest(self, metadata: Mapping[str, Any], overwrite: bool = False) -> Path:
        """Write the run's manifest: ``metadata`` plus ``run_id`` and ``run_timestamp``.

        Stored as canonical msgpack ``<run>/manifest.msgpack`` (``strata/manifest.msgpack``
        in strata mode, with ``run_id`` nil). ``run_timestamp`` is the local time of the
        write in ISO 8601 with its UTC offset; both keys replace any the caller passed.

        Args:
            metadata: a dict of msgpack-storable values (str keys).
            overwrite: replace an existing manifest of this run.

        Returns:
            The written path.

        Raises:
            InvalidInputError: if ``metadata`` is not a dict or holds values msgpack cannot
                store (nothing is written then).
            AlreadyExistsError: if the run has a manifest and ``overwrite`` is False (a
                ``RuntimeError``).
            ImmutableError: if the run is sealed, or in strata mode the specimen committed.
        """
        if not isinstance(metadata, Mapping):
            raise InvalidInputError(
                f"manifest metadata must be a dict, not {type(metadata).__name__}")
        if not isinstance(overwrite, bool):
            raise InvalidInputError(f"overwrite must be True or False, not {overwrite!r}")
        canonical.packb(dict(metadata))  # refuse unstorable values before the run is claimed
        self._check_writable()
        value = {**metadata, "run_id": self.run_id, "run_timestamp": _now().isoformat()}
        path = self.run_path / MANIFEST_NAME
        self._write_result(path, canonical.packb(value), overwrite=overwrite)
        return path

    def read_manifest(self, *, run_id: str | None = None) -> dict[str, Any]:
        """Read a run's manifest (this instance's run, else the latest that has one).

        Raises:
            NotFoundError: if there is none.
        """
        path = self._find(MANIFEST_NAME, run_id, "write_manifest")
        value = canonical.unpackb(path.read_bytes(), str(path))
        if not isinstance(value, dict):
            raise InvalidInputError(f"{path} is not a map; write it again with write_manifest()")
        return value

    # -- metrics -----------------------------------------------------------------------------
    def write_metrics(
        self, data: Mapping[str, Sequence[Any]] | pl.DataFrame,
        overwrite: bool | str | None = None, name: str = "metrics",
    ) -> Path:
        """Write a table of metrics as ``<run>/<name>.parquet`` (``strata/`` in strata mode).

        In runs mode a constant ``run_id`` column (the run's id) is added, replacing any
        column of that name.

        Args:
            data: a polars DataFrame or a dict of equally long columns. NaN and inf are kept.
            overwrite: replace an existing file. Default: False in runs mode (the original's
                runs API), True in strata mode (the seed's API always replaced). A string
                here is the seed's positional ``name``: ``write_metrics(df, "spectra")``.
            name: the file stem (default ``metrics``).

        Returns:
            The written path.

        Raises:
            InvalidInputError: ragged or untypeable columns, an empty table with no columns,
                or a bad name (nothing is written then).
            AlreadyExistsError: if the file exists and ``overwrite`` is False (a
                ``RuntimeError``).
            ImmutableError: if the run is sealed, or in strata mode the specimen committed.
        """
        import polars as pl

        if isinstance(overwrite, str):
            if name != "metrics":
                raise InvalidInputError(f"metrics name given twice ({overwrite!r} and {name!r})")
            name, overwrite = overwrite, None
        if overwrite is None:
            overwrite = self.run_id is None
        if not isinstance(overwrite, bool):
            raise InvalidInputError(f"overwrite must be True or False, not {overwrite!r}")
        check_name(name, "metrics")
        df = to_frame(data)
        self._check_writable()
        if self.run_id is not None:
            df = df.with_columns(pl.lit(self.run_id, dtype=pl.String).alias("run_id"))
        buf = io.BytesIO()
        # zstd + statistics: compact and fast for DuckDB; polars writes no timestamps into the
        # file, so identical tables give identical bytes (and one object).
        df.write_parquet(buf, compression="zstd", statistics=True)
        path = self.run_path / f"{name}.parquet"
        self._write_result(path, buf.getbuffer(), overwrite=overwrite)
        return path

    def read_metrics(
        self, which: str | None = None, /, *, run_id: str | None = None, name: str | None = None,
    ) -> pl.DataFrame:
        """Read a metrics table as a polars DataFrame.

        The positional argument means what it meant in each API: the name in strata mode
        (``read_metrics("spectra")``, the seed's), the run in runs mode
        (``read_metrics("20250101_120000")``, the original's). The keywords mean the same in
        both modes.

        Args:
            which: ``name`` in strata mode, ``run_id`` in runs mode.
            run_id: the run to read; default this instance's run if it has the table, else
                the latest run that has it.
            name: the file stem (default ``metrics``).

        Raises:
            NotFoundError: if there is no such table.
            InvalidInputError: a bad name or run id, or one given twice.
        """
        import polars as pl

        if which is not None:
            if self.run_id is None:
                if name is not None:
                    raise InvalidInputError("name given twice (positionally and as name=)")
                name = which
            else:
                if run_id is not None:
                    raise InvalidInputError("run_id given twice (positionally and as run_id=)")
                run_id = which
        name = check_name("metrics" if name is None else name, "metrics")
        return pl.read_parquet(self._find(f"{name}.parquet", run_id, "write_metrics"))

    def read_all_runs(self) -> pl.DataFrame:
        """Every run's ``metrics.parquet`` in one table, newest run first.

        Each row keeps its run's ``run_id`` (added from the directory name if a file lacks
        the column). Runs with different columns concatenate: a column a run lacks is null
        there, and a column whose type differs between runs takes a type that holds both
        (polars' ``diagonal_relaxed``: int and float give float, anything and text gives text).

        Raises:
            NotFoundError: if no run has metrics (always in strata mode).
            InvalidInputError: if the runs' tables cannot be combined.
        """
        import polars as pl

        runs = self.list_runs()
        if not runs:
            raise NotFoundError(
                f"{self.path} has no runs with metrics ({self.runs_path}/<run_id>/{METRICS_FILE}); "
                "run the protocol first"
            )
        frames = []
        for run in runs:
            df = pl.read_parquet(self.runs_path / run / METRICS_FILE)
            if "run_id" not in df.columns:
                df = df.with_columns(pl.lit(run, dtype=pl.String).alias("run_id"))
            frames.append(df)
        try:
            return pl.concat(frames, how="diagonal_relaxed")
        except pl.exceptions.PolarsError as exc:
            raise InvalidInputError(
                f"the metrics of the runs of {self.path} cannot be combined ({exc}); read them "
                "one run at a time with read_metrics(run_id)"
            ) from None

    # -- config ------------------------------------------------------------------------------
    def write_config(self, config: Mapping[str, Any], name: str = "config") -> Path:
        """Write a config dict as canonical msgpack ``<run>/<name>.msgpack``, replacing it.

        Raises:
            InvalidInputError: if it holds values msgpack cannot store.
            ImmutableError: if the run is sealed, or in strata mode the specimen committed.
        """
        check_name(name, "config")
        if not isinstance(config, Mapping):
            raise InvalidInputError(f"config must be a dict, not {type(config).__name__}")
        data = canonical.packb(dict(config))
        self._check_writable()
        path = self.run_path / f"{name}.msgpack"
        self._write_result(path, data)
        return path

    def read_config(self, name: str = "config", *, run_id: str | None = None) -> dict[str, Any]:
        """Read ``<run>/<name>.msgpack`` (of ``run_id``, else this run's, else the latest).

        Raises:
            NotFoundError: if it was never written.
        """
        path = self._find(f"{check_name(name, 'config')}.msgpack", run_id, "write_config")
        return canonical.unpackb(path.read_bytes(), str(path))

    # -- tensors -----------------------------------------------------------------------------
    def write_tensors(
        self, name: str, array: np.ndarray, chunks: Sequence[int] | int | None = None,
        compressor: str | None = "zstd", *, chunk_bytes: int | None = None,
        progress: bool | None = None,
    ) -> Path:
        """Write ``array`` as the Zarr v3 array ``<run>/<name>.zarr``, replacing any previous one.

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
            ImmutableError: if the run is sealed, or in strata mode the specimen committed.
        """
        from .tensors import check_array, check_compressor, write_tensor

        check_name(name, "tensor")
        check_array(array)
        check_compressor(compressor)
        self._check_writable()
        return write_tensor(
            self.path, self.vault_root(), name, array, chunks=chunks, chunk_bytes=chunk_bytes,
            compressor=compressor, progress=progress, results_dir=self._results_dir,
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
            ImmutableError: if the run is sealed, or in strata mode the specimen committed.
        """
        from .tensors import tensor_writer

        check_name(name, "tensor")
        options = dict(chunks=chunks, chunk_bytes=chunk_bytes, compressor=compressor,
                       progress=progress)
        # Validates every argument and creates nothing, so a bad one leaves no trace (not
        # even a claimed run); the writer is made again once the run's name is final.
        tensor_writer(self.path, self.vault_root(), name, dtype, shape_tail, **options)
        self._check_writable()
        return tensor_writer(self.path, self.vault_root(), name, dtype, shape_tail, **options,
                             results_dir=self._results_dir)

    def _has_tensor(self, results_dir: str, name: str, index: Mapping[str, Any]) -> bool:
        """Whether tensor ``name`` exists in ``results_dir`` (working index or on disk)."""
        from .tensors import ARRAY_METADATA, tensor_prefix

        prefix = tensor_prefix(name, results_dir)
        return f"{prefix}/zarr.json" in index or any(
            (self.path / prefix / m).is_file() for m in ARRAY_METADATA)

    def read_tensor_lazy(self, name: str, *, run_id: str | None = None) -> zarr.Array:
        """Open tensor ``name`` lazily (read-only): slicing reads only the chunks needed.

        In strata mode it is ``strata/<name>.zarr``. In runs mode it is the given run's; by
        default this instance's run's if it has one of that name, else the newest run's that
        has one (as :meth:`read_metrics` falls back to the latest run).

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
        if run_id is not None:
            return open_working_tensor(self.path, name, objects,
                                       f"{RUNS_DIR}/{check_run_id(run_id)}")
        if self.run_id is None:
            return open_working_tensor(self.path, name, objects)
        index = WorkingIndex(self.path).load() if root is not None else {}
        for run in [self.run_id] + [r for r in self._run_ids() if r != self.run_id]:
            if self._has_tensor(f"{RUNS_DIR}/{run}", name, index):
                return open_working_tensor(self.path, name, objects, f"{RUNS_DIR}/{run}")
        raise NotFoundError(
            f"no run of {self.path} has a tensor {name!r} (looked in {self.runs_path}); write "
            "it with write_tensors()"
        )

    def list_tensors(self) -> list[str]:
        """Names of the tensors in :attr:`run_path` (in the working index or as Zarr dirs)."""
        from .tensors import list_tree_tensors

        names = set(list_tree_tensors(WorkingIndex(self.path).load(), self._results_dir)) \
            if self.vault_root() is not None else set()
        if self.run_path.is_dir():
            names.update(p.name[:-5] for p in self.run_path.glob("*.zarr")
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
