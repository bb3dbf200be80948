"""Step-wise logging for training loops, crash-safe and never downsampled::

    with Vault.open().start_specimen("2024_12_19_run", domain="training",
                                     method="fine_tuning") as s:
        for i in range(steps):
            s.log({"loss": loss, "acc": acc}, step=i)

Rows are buffered in memory and flushed every ``flush_rows`` rows (by default, every
500,000 values: 100,000 rows of 4 metrics) or, checked at each ``log()`` call, once
``flush_seconds`` have passed since the last flush. A Parquet file is only readable once its footer is written,
which a killed process never does, so each flush writes one complete, durable Parquet file
``specimens/<id>/.cas/log/<name>/part-<n>.parquet``: after a crash every flushed row is
readable (:func:`read_log`). When the block exits normally the parts are assembled into
``strata/<name>.parquet``, one row group per flush, and the specimen is committed. After a
crash the specimen stays uncommitted; ``vault commit ID --partial`` assembles what was flushed
and seals it flagged as partial. Columns that appear later or vanish are NULL where missing.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import FileLock, lock_state, makedirs_durable, write_replace
from .commit import Commit, utc_now
from .errors import (
    AlreadyExistsError,
    InvalidInputError,
    LockTimeoutError,
    NotFoundError,
)
from .storage import check_name
from .workdir import PRIVATE_DIR, writing

if TYPE_CHECKING:
    import polars as pl

    from .provenance import Capture
    from .repository import Repository

__all__ = [
    "LOG_DIR",
    "SpecimenLogger",
    "busy_logs",
    "finalize_logs",
    "prepare_commit",
    "read_log",
    "unfinished_logs",
]

#: Where unfinished logs live, relative to the working directory (private: never committed).
LOG_DIR = f"{PRIVATE_DIR}/log"
_PART_PREFIX = "part-"
_MAX_KEY = 256
#: Default flush threshold in buffered values (rows x columns, ``step`` included).
_FLUSH_VALUES = 500_000


def _log_root(specimen_dir: Path) -> Path:
    return specimen_dir / LOG_DIR


def _parts(specimen_dir: Path, name: str) -> list[Path]:
    d = _log_root(specimen_dir) / name
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir()
                  if p.name.startswith(_PART_PREFIX) and p.name.endswith(".parquet"))


def unfinished_logs(specimen_dir: Path) -> list[str]:
    """Names of step-wise logs in ``specimen_dir`` that were flushed but never finished.

    A log is unfinished while its process runs, and forever after that process crashed.
    """
    root = _log_root(specimen_dir)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and _parts(specimen_dir, d.name))


def read_log(specimen_dir: str | os.PathLike[str], name: str = "metrics") -> pl.DataFrame:
    """Every row flushed so far by a step-wise log, finished or not.

    Args:
        specimen_dir: the working directory ``specimens/<id>``.
        name: the log's name (default ``metrics``).

    Returns:
        A DataFrame with ``step`` first, then the metrics in order of first appearance.

    Raises:
        NotFoundError: if nothing was flushed under that name.
    """
    import polars as pl

    wd = Path(specimen_dir)
    check_name(name, "log")
    parts = _parts(wd, name)
    if parts:
        return pl.concat([pl.read_parquet(p) for p in parts], how="diagonal_relaxed")
    final = wd / "strata" / f"{name}.parquet"
    if final.is_file():
        return pl.read_parquet(final)
    raise NotFoundError(f"no step-wise log {name!r} in {wd}: nothing was flushed yet")


#: Seconds a logger waits for its log's lock. A live logger holds it for its whole life, so a
#: second one is refused all the same; the wait only lets a read-only probe (`vault status`,
#: the UI's live page, which take the lock for an instant to ask) pass without failing a start.
_LOCK_WAIT = 1.0


def _log_lock(specimen_dir: Path, name: str) -> FileLock:
    root = _log_root(specimen_dir)
    root.mkdir(parents=True, exist_ok=True)
    return FileLock(root / f"{name}.lock", timeout=_LOCK_WAIT)


def _assemble(specimen_dir: Path, name: str) -> int:
    """Write the parts of log ``name`` as ``strata/<name>.parquet`` (one row group per part),
    then remove them. Returns the number of rows. The caller holds the log's lock."""
    import polars as pl
    import pyarrow.parquet as pq

    parts = _parts(specimen_dir, name)
    if not parts:
        return 0
    frames = [pl.read_parquet(p) for p in parts]
    table = pl.concat(frames, how="diagonal_relaxed").to_arrow()
    buf = io.BytesIO()
    # No dictionary encoding: metric values are nearly all distinct, and building a dictionary
    # only to discard it more than doubles the write time.
    with pq.ParquetWriter(buf, table.schema, compression="zstd", write_statistics=True,
                          use_dictionary=False) as w:
        offset = 0
        for f in frames:
            w.write_table(table.slice(offset, f.height), row_group_size=max(f.height, 1))
            offset += f.height
    (specimen_dir / "strata").mkdir(exist_ok=True)
    # The assembled file is durable before the parts go: a crash in between leaves both,
    # and the next assembly simply rewrites the same rows.
    write_replace(specimen_dir / "strata" / f"{name}.parquet", buf.getbuffer())
    shutil.rmtree(_log_root(specimen_dir) / name)
    return table.num_rows


def finalize_logs(specimen_dir: Path) -> list[str]:
    """Assemble every unfinished log of a crashed run into ``strata/`` (for partial commits).

    Returns:
        The names of the logs assembled.

    Raises:
        LockTimeoutError: if a log is still being written by a running process.
    """
    done = []
    for name in unfinished_logs(specimen_dir):
        lock = _log_lock(specimen_dir, name)
        try:
            lock.acquire()
        except LockTimeoutError:
            raise LockTimeoutError(
                f"step-wise log {name!r} of {specimen_dir.name} is still being written by a "
                "running process; wait for it to finish (or stop it) before committing"
            ) from None
        try:
            _assemble(specimen_dir, name)
            done.append(name)
        finally:
            lock.release()
    return done


def busy_logs(specimen_dir: Path) -> list[str]:
    """Names of the step-wise logs in ``specimen_dir`` that a live process is writing now.

    A logging process holds its log's lock for its whole life; the lock is probed without
    waiting and without writing anything (:func:`~cas_vault.atomic.lock_state`).
    """
    root = _log_root(specimen_dir)
    if not root.is_dir():
        return []
    return [p.name[: -len(".lock")] for p in sorted(root.glob("*.lock"))
            if lock_state(p) is not None]


def prepare_commit(
    specimen_dir: Path, specimen_id: str, partial: bool, extra_metadata: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """What :meth:`Repository.commit` does about step-wise logs before sealing a working directory.

    Args:
        specimen_dir: the working directory.
        specimen_id: its id (for messages).
        partial: whether the caller asked for a partial commit.
        extra_metadata: the caller's extra metadata.

    Returns:
        The extra metadata to use: for a partial commit, with ``partial: True`` and, after a
        failed ``vault run``, that run's ``provenance`` (unless the caller gave one).

    Raises:
        InvalidInputError: an unfinished log without ``partial`` (nothing is written).
        LockTimeoutError: a log is still being written by a live process.
    """
    busy = busy_logs(specimen_dir)
    if busy:
        raise LockTimeoutError(
            f"specimen {specimen_id} is still being logged into ({', '.join(busy)}) by a running "
            "process; commit after it finishes (its `with` block commits by itself)"
        )
    if not partial:
        pending = unfinished_logs(specimen_dir)
        if pending:
            raise InvalidInputError(
                f"specimen {specimen_id} has an unfinished step-wise log ({', '.join(pending)}): "
                "the process writing it crashed. Inspect the flushed rows with "
                f"cas_vault.logger.read_log, then seal them with `vault commit {specimen_id} "
                "--partial`"
            )
        return extra_metadata
    finalize_logs(specimen_dir)
    extra = {**(extra_metadata or {}), "partial": True}
    if "provenance" not in extra:
        from .run import failed_run_provenance

        failed = failed_run_provenance(specimen_dir)
        if failed is not None:  # a failed `vault run`: keep how it was made, exit status included
            extra["provenance"] = failed
    return extra


def _number(key: str, value: Any) -> float | int:
    """Coerce a metric value to a Python number, or raise a clear error."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    # numpy scalars, 0-d arrays and one-element torch tensors all have .item()
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes)):
        numel = getattr(value, "numel", None)  # torch; numpy has .size
        n = numel() if callable(numel) else getattr(value, "size", 1)
        if n == 1:
            try:
                out = item()
            except (TypeError, ValueError):
                out = None
            if isinstance(out, (bool, int, float)):
                return _number(key, out)
    raise InvalidInputError(
        f"metric {key!r} has value {value!r} of type {type(value).__name__}; metric values must "
        "be numbers (int, float, bool, numpy scalars or one-element tensors); put text in the "
        "config or field notes"
    )


_PLAIN = frozenset((float, int))


def _clean(metrics: Mapping[str, Any]) -> dict[str, float | int]:
    """Validate names and coerce values of one row, before anything is buffered."""
    return {_check_key(k): _number(k, v) for k, v in metrics.items()}


def _check_step(step: Any) -> int:
    if not isinstance(step, bool):
        try:
            value = _number("step", step)
        except InvalidInputError:
            value = None
        if type(value) is int:
            return value
    raise InvalidInputError(f"step must be an integer, not {step!r}")


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY:
        raise InvalidInputError(f"metric name {key!r} must be a non-empty string of at most {_MAX_KEY} characters")
    if key == "step":
        raise InvalidInputError("'step' is not a metric name: pass it as log(..., step=i)")
    return key


class SpecimenLogger:
    """A context manager that logs a training loop into a specimen and commits it.

    Create it with :meth:`Vault.start_specimen`; see the module docstring for the life cycle.

    Args:
        vault: the vault.
        specimen_id: the specimen to create (or an uncommitted one to fill).
        domain: taxonomy domain (required to create; checked against an existing one).
        method: taxonomy method (same).
        tags: tags for a new specimen.
        model: model for a new specimen.
        parents: committed parents of a new specimen.
        metadata: free metadata for a new specimen.
        message: the commit message.
        name: the log's name: rows go to ``strata/<name>.parquet``.
        flush_rows: flush after this many buffered rows; default: when the buffer holds about
            500,000 values (rows x columns), which bounds its memory to ~20 MB.
        flush_seconds: flush when this many seconds passed since the last flush.
        commit: commit on normal exit; default: yes, unless running under ``vault run`` for
            this same specimen (the runner commits, with its own provenance).
        code_dir: the code repository whose git state is recorded, and whose uncommitted
            changes the commit keeps as ``provenance/git.diff`` (default: the cwd).

    Attributes:
        path: the working directory.
        rows: rows logged so far. flushes: parts written so far.
        commit_result: the commit made on exit, if any.
    """

    def __init__(
        self,
        vault: Repository,
        specimen_id: str,
        *,
        domain: str | None = None,
        method: str | None = None,
        tags: Sequence[str] = (),
        model: str | None = None,
        parents: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        message: str = "",
        name: str = "metrics",
        flush_rows: int | None = None,
        flush_seconds: float = 10.0,
        commit: bool | None = None,
        code_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        check_name(name, "log")
        if flush_rows is not None and (
            isinstance(flush_rows, bool) or not isinstance(flush_rows, int) or flush_rows < 1
        ):
            raise InvalidInputError(f"flush_rows must be a positive integer, not {flush_rows!r}")
        if not isinstance(flush_seconds, (int, float)) or not flush_seconds > 0:
            raise InvalidInputError(f"flush_seconds must be a positive number, not {flush_seconds!r}")
        self.vault = vault
        self.specimen_id = specimen_id
        self.path = vault.specimen_dir(specimen_id)
        self.name = name
        self._new_args = {"domain": domain, "method": method, "tags": list(tags), "model": model,
                          "parents": list(parents), "metadata": metadata}
        self._message = message
        self._flush_rows = flush_rows
        self._flush_at = flush_rows or _FLUSH_VALUES
        self._flush_seconds = float(flush_seconds)
        if commit is None:
            from .run import RUN_SPECIMEN_ENV

            commit = os.environ.get(RUN_SPECIMEN_ENV) != specimen_id
        self._commit = commit
        self._code_dir = code_dir
        self._steps: list[int] = []
        self._cols: dict[str, list[float | int | None]] = {}
        self._n = 0
        self._last = -1
        self._next_flush = 0.0
        self._lock: FileLock | None = None
        self._open = False
        self._captured: Capture | None = None
        self._started = ""
        self._t0 = 0.0
        self.rows = 0
        self.flushes = 0
        self.commit_result: Commit | None = None

    # -- life cycle --------------------------------------------------------------------------
    def __enter__(self) -> SpecimenLogger:
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()

    def start(self) -> None:
        """Create (or check) the specimen and take the log's lock.

        Raises:
            ImmutableError: if the specimen is committed.
            InvalidInputError / TaxonomyError: for a bad new specimen, or a domain/method that
                differs from the existing working directory's.
            AlreadyExistsError: if ``strata/<name>.parquet`` or an unfinished log exists.
            LockTimeoutError: if another process is logging into it.
        """
        from .provenance import capture
        from .workdir import read_manifest

        v, sid = self.vault, self.specimen_id
        v.check_uncommitted(
            sid, "committed specimens never change: log into a new one, e.g. "
                 f"start_specimen('{sid}_v2', parents=['{sid}'], ...)",
        )
        if not self.path.is_dir():
            a = self._new_args
            if a["domain"] is None or a["method"] is None:
                raise InvalidInputError(
                    f"specimen {sid} does not exist yet; pass domain= and method= to create it"
                )
            v.new(sid, domain=a["domain"], method=a["method"], tags=a["tags"], model=a["model"],
                  parents=a["parents"], metadata=a["metadata"])
        else:
            raw = read_manifest(self.path)
            for key in ("domain", "method"):
                want = self._new_args[key]
                if want is not None and raw.get(key) != want:
                    raise InvalidInputError(
                        f"specimen {sid} exists with {key} {raw.get(key)!r}, not {want!r}; use "
                        "another id or drop the argument"
                    )
        lock = _log_lock(self.path, self.name)
        try:
            lock.acquire()
        except LockTimeoutError:
            raise LockTimeoutError(
                f"another process is logging {self.name!r} into {sid}; one log per process"
            ) from None
        try:
            if _parts(self.path, self.name):
                raise AlreadyExistsError(
                    f"{sid} has an unfinished log {self.name!r} from a run that crashed; seal it "
                    f"with `vault commit {sid} --partial`, or log under another name="
                )
            final = self.path / "strata" / f"{self.name}.parquet"
            if final.exists():
                raise AlreadyExistsError(
                    f"{final} exists already; log under another name= or into a new specimen"
                )
            # Every level durable in its parent, so flushed parts keep their names.
            makedirs_durable(_log_root(self.path) / self.name)
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        self._captured = capture(self._code_dir)
        self._started = utc_now()
        self._t0 = time.monotonic()
        self._next_flush = self._t0 + self._flush_seconds
        self._open = True

    def finish(self) -> Commit | None:
        """Flush, assemble ``strata/<name>.parquet``, release the lock and commit.

        Returns:
            The commit, or None when committing is left to ``vault run`` or disabled.
        """
        from .seeding import recorded_seeds

        self._check_open()
        try:
            with writing(self.path):  # a commit never sees the parts half assembled
                self.flush()
                _assemble(self.path, self.name)
        finally:
            self._close()
        if not self._commit:
            return None
        from .provenance import keep_patch

        assert self._captured is not None
        # The patch of a dirty checkout becomes a file of this commit (provenance/git.diff).
        environment = keep_patch(self._captured, self.path)
        provenance = {
            **environment,
            "command": list(sys.argv),
            "started": self._started,
            "finished": utc_now(),
            "wall_time_s": round(time.monotonic() - self._t0, 6),
            "exit_status": 0,
            "seeds": recorded_seeds(),
            "logger": {"name": self.name, "rows": self.rows, "flushes": self.flushes},
        }
        self.commit_result = self.vault.commit(
            self.specimen_id, message=self._message, extra_metadata={"provenance": provenance},
        )
        return self.commit_result

    def abort(self) -> None:
        """Flush what was logged and leave the specimen uncommitted (the block raised)."""
        if not self._open:
            return
        try:
            self.flush()
        finally:
            self._close()

    def _close(self) -> None:
        self._open = False
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _check_open(self) -> None:
        if not self._open:
            raise InvalidInputError(
                "this logger is not open; use it as `with vault.start_specimen(...) as s:`"
            )

    # -- logging -----------------------------------------------------------------------------
    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record one row of scalar metrics.

        Args:
            metrics: metric name -> number.
            step: the step; default: one more than the last. Steps never decrease; logging the
                same step again adds the new metrics to that step's row.

        Raises:
            InvalidInputError: non-numeric values, bad names, a decreasing step, or a metric
                logged twice for one step. Nothing is recorded then.
        """
        if not self._open:
            self._check_open()
        if type(metrics) is not dict and not isinstance(metrics, Mapping):
            raise InvalidInputError(
                f"log() takes a dict of metric name -> number, not {type(metrics).__name__}"
            )
        last = self._last
        if step is None:
            step = last + 1
        else:
            if type(step) is not int:
                step = _check_step(step)
            if step < 0:
                raise InvalidInputError(f"step must be >= 0, not {step}")
        n = self._n
        if step <= last:
            if step < last:
                raise InvalidInputError(
                    f"step {step} comes after step {last}: steps must not decrease (omit "
                    "step= to count automatically)"
                )
            if n:
                self._merge(metrics, step)
                return
        # A new step: flush first if due, so the last row stays buffered until its step is
        # over and logging more metrics for the same step always joins it.
        if n and (n >= self._flush_at or time.monotonic() >= self._next_flush):
            self.flush()
            n = 0
        # Columnar buffer: one list per metric, None where a row lacks it. Fast path: plain
        # floats/ints under names already seen are appended as they are checked.
        cols = self._cols
        done = 0
        for k, v in metrics.items():
            if type(v) not in _PLAIN:
                break
            col = cols.get(k)
            if col is None:
                break
            col.append(v)
            done += 1
        if done != len(metrics):
            for k in itertools.islice(metrics, done):  # undo, so a refused row leaves no trace
                cols[k].pop()
            metrics = _clean(metrics)
            for k, v in metrics.items():
                col = cols.get(k)
                if col is None:
                    col = cols[k] = [None] * n
                col.append(v)
            if self._flush_rows is None:  # columns changed: keep the buffer's size bounded
                self._flush_at = max(1, _FLUSH_VALUES // (len(cols) + 1))
        n += 1
        if len(metrics) != len(cols):
            for col in cols.values():
                if len(col) < n:
                    col.append(None)
        self._steps.append(step)
        self._n = n
        self._last = step
        self.rows += 1

    def _merge(self, metrics: Mapping[str, Any], step: int) -> None:
        """Add metrics to the last buffered row (same step), refusing any logged twice."""
        metrics = _clean(metrics)
        cols, n = self._cols, self._n
        for k in metrics:
            col = cols.get(k)
            if col is not None and col[-1] is not None:
                raise InvalidInputError(f"metric {k!r} was already logged for step {step}")
        for k, v in metrics.items():
            col = cols.get(k)
            if col is None:
                col = cols[k] = [None] * n
            col[-1] = v

    def flush(self) -> None:
        """Write the buffered rows as one durable Parquet part now (no-op when empty).

        Flushing happens by itself; call this to bound what a crash could lose at a point of
        your choosing. Metrics logged afterwards for the step just flushed go into a new row
        with the same step.
        """
        self._check_open()
        self._next_flush = time.monotonic() + self._flush_seconds
        if not self._n:
            return
        import polars as pl

        series = [pl.Series("step", self._steps, dtype=pl.Int64)]
        series += [pl.Series(k, values, strict=False) for k, values in self._cols.items()]
        df = pl.DataFrame(series)
        # Integer columns with floats mixed in become Float64 (ints stay Int64).
        df = df.with_columns(
            pl.col(c).cast(pl.Float64) for c, dt in df.schema.items()
            if c != "step" and not (dt.is_integer() or dt == pl.Float64)
        )
        buf = io.BytesIO()
        # Parts are transient (re-encoded with zstd on assembly): lz4 is ~8x faster to write.
        df.write_parquet(buf, compression="lz4", statistics=False)
        part = _log_root(self.path) / self.name / f"{_PART_PREFIX}{self.flushes:08d}.parquet"
        with writing(self.path):
            write_replace(part, buf.getbuffer())
        self.flushes += 1
        self._cols, self._steps, self._n = {}, [], 0


def start_specimen(vault: Repository, specimen_id: str, **kwargs: Any) -> SpecimenLogger:
    """Return a :class:`SpecimenLogger` (see :meth:`Vault.start_specimen`)."""
    return SpecimenLogger(vault, specimen_id, **kwargs)

