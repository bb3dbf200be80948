"""What is not sealed yet, and what is running: ``vault status``, read-only.

:func:`status` looks at every working directory in ``specimens/`` and reports, as values:

- **uncommitted specimens** (no ref): what was added since ``vault new`` (files on disk and
  tensors that exist only in the working index), summarised per file or tensor and per
  top-level directory when there are many, and which of the files ``vault new`` wrote were
  changed or removed;
- **committed specimens with runs not sealed yet**: ``runs/<run_id>/`` with files and no ref
  ``<id>.run_<run_id>`` (the rule :func:`cas_vault.seal.unsealed_runs` applies at commit);
- **work in progress**: a ``vault run`` holding ``.cas/run.lock``, a writer or a commit holding
  ``.cas/write.lock``, step-wise logs being written, and logs left unfinished by a process
  that is gone;
- **the catalog's freshness**: up to date, or why not.

Nothing is written, not even a lock file: locks are probed without waiting on files opened
read-only (:func:`cas_vault.atomic.lock_state`), and the catalog is read, never built.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import canonical
from .atomic import lock_state
from .errors import InvalidInputError, LockTimeoutError, NotFoundError, VaultError
from .ids import is_valid_id
from .logger import busy_logs, unfinished_logs
from .query import VaultQuery
from .run import RUN_LOCK_PATH
from .scaffold import SCAFFOLD_FILES, scaffold_files
from .seal import unsealed_runs
from .workdir import (
    LOCK_PATH,
    MANIFEST_NAME,
    RUNS_DIR,
    WorkingCopies,
    WorkingIndex,
    file_identity,
    iter_files,
)

if TYPE_CHECKING:
    from .repository import Repository

__all__ = [
    "CATALOG_WAIT",
    "MAX_LISTED",
    "CatalogState",
    "InProgress",
    "PathSummary",
    "ScaffoldChange",
    "SpecimenRuns",
    "StatusReport",
    "UncommittedSpecimen",
    "UnsealedRun",
    "is_committed",
    "specimen_in_progress",
    "status",
    "working_dirs",
]

#: Added files are listed one by one (a tensor counts as one) up to this many entries; beyond
#: it they are summarised per top-level directory, so a status stays a screenful.
MAX_LISTED = 20
#: Seconds status waits while another process writes the catalog before saying so.
CATALOG_WAIT = 2.0


@dataclass(frozen=True)
class PathSummary:
    """Added files under one path.

    Attributes:
        path: a file (``strata/metrics.parquet``), a tensor (``strata/acts.zarr/``) or, when
            there are more than :data:`MAX_LISTED` of those, a top-level directory
            (``strata/``); directories end with ``/``.
        files: how many files (tensor chunks and metadata included).
        bytes: their total size.
    """

    path: str
    files: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form."""
        return {"path": self.path, "files": self.files, "bytes": self.bytes}


@dataclass(frozen=True)
class ScaffoldChange:
    """A file ``vault new`` wrote that is no longer as it wrote it.

    Attributes:
        path: ``manifest.msgpack``, ``protocol.py`` or ``field_notes.md``.
        change: ``"modified"``, ``"removed"``, or ``"unknown"`` when what ``vault new`` wrote
            cannot be told (a vault without the record of it, an unreadable manifest).
    """

    path: str
    change: str

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form."""
        return {"path": self.path, "change": self.change}


@dataclass(frozen=True)
class UncommittedSpecimen:
    """A working directory without a ref, and what changed in it since ``vault new``.

    Attributes:
        specimen_id: the specimen.
        added: the added files, summarised (:class:`PathSummary`), in path order.
        added_files: how many files were added.
        added_bytes: their total size.
        scaffold: the scaffold files changed or removed.
        problem: why a commit would refuse the directory as it is (a symlink, a damaged
            working index), else None; the lists may then be incomplete.
    """

    specimen_id: str
    added: tuple[PathSummary, ...]
    added_files: int
    added_bytes: int
    scaffold: tuple[ScaffoldChange, ...]
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form."""
        return {
            "specimen_id": self.specimen_id, "added": [a.to_dict() for a in self.added],
            "added_files": self.added_files, "added_bytes": self.added_bytes,
            "scaffold": [c.to_dict() for c in self.scaffold], "problem": self.problem,
        }


@dataclass(frozen=True)
class UnsealedRun:
    """A run of a committed specimen that the next ``vault commit`` of it seals.

    Attributes:
        run_id: the run (``runs/<run_id>/``).
        sealed_as: the id it will be sealed as, ``<id>.run_<run_id>``.
        files: its files (working-index entries included).
        bytes: their total size.
    """

    run_id: str
    sealed_as: str
    files: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form."""
        return {"run_id": self.run_id, "sealed_as": self.sealed_as, "files": self.files,
                "bytes": self.bytes}


@dataclass(frozen=True)
class SpecimenRuns:
    """A committed specimen with runs not sealed yet.

    Attributes:
        specimen_id: the specimen.
        runs: its unsealed runs, oldest first (the order a commit seals them in).
        problem: why its runs cannot be listed (a run id that cannot be part of a specimen
            id, a damaged working index), else None.
    """

    specimen_id: str
    runs: tuple[UnsealedRun, ...]
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form."""
        return {"specimen_id": self.specimen_id, "runs": [r.to_dict() for r in self.runs],
                "problem": self.problem}


@dataclass(frozen=True)
class InProgress:
    """Something happening in a working directory right now, or left by a process that died.

    Attributes:
        specimen_id: the working directory's specimen.
        kind: ``"run"`` (a ``vault run`` holds ``.cas/run.lock``), ``"writing"`` (writers hold
            ``.cas/write.lock`` shared; not listed besides a run, which holds it to write its
            log), ``"committing"`` (a commit, or a ``vault rm``, holds
            it exclusively), ``"logging"`` (a step-wise log's process is alive) or
            ``"unfinished_log"`` (a step-wise log whose process is gone: ``vault commit ID
            --partial`` seals what it flushed).
        name: the log's name for the two log kinds, else None.
    """

    specimen_id: str
    kind: str
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form."""
        return {"specimen_id": self.specimen_id, "kind": self.kind, "name": self.name}


@dataclass(frozen=True)
class CatalogState:
    """Whether ``vault.duckdb`` reflects the vault.

    Attributes:
        up_to_date: True if it does (or nothing was ever committed, so there is nothing to
            index).
        reason: why not (:func:`cas_vault.catalog.stale_reason`'s words), else None.
    """

    up_to_date: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form."""
        return {"up_to_date": self.up_to_date, "reason": self.reason}


@dataclass(frozen=True)
class StatusReport:
    """Everything ``vault status`` reports; every list is in specimen id order.

    Attributes:
        uncommitted: working directories without a ref.
        unsealed_runs: committed specimens whose runs are not all sealed.
        in_progress: runs, writers, commits and logs going on (or left unfinished).
        catalog: the catalog's freshness.
    """

    uncommitted: tuple[UncommittedSpecimen, ...]
    unsealed_runs: tuple[SpecimenRuns, ...]
    in_progress: tuple[InProgress, ...]
    catalog: CatalogState

    @property
    def clean(self) -> bool:
        """True when everything is sealed, nothing runs and the catalog is up to date."""
        return not (self.uncommitted or self.unsealed_runs or self.in_progress
                    or not self.catalog.up_to_date)

    def to_dict(self) -> dict[str, Any]:
        """The stable ``vault status --json`` form (documented in README): keys are only ever
        added, never renamed or removed."""
        return {
            "uncommitted": [u.to_dict() for u in self.uncommitted],
            "unsealed_runs": [s.to_dict() for s in self.unsealed_runs],
            "in_progress": [p.to_dict() for p in self.in_progress],
            "catalog": self.catalog.to_dict(),
        }


def status(repo: Repository) -> StatusReport:
    """Report what is not sealed yet in ``repo``, what is in progress, and the catalog's state.

    Writes nothing at all: no lock file, no catalog, no working-directory record. Locks are
    probed without waiting; the catalog is opened read-only (waiting at most
    :data:`CATALOG_WAIT` seconds for a process that writes it).

    What "changed since ``vault new``" means, exactly:

    - **added**: every file a commit would seal (:func:`cas_vault.workdir.iter_files`) other
      than the three scaffold files, plus every working-index entry (tensors written straight
      into ``objects/``, sized by their object);
    - ``manifest.msgpack`` is **modified** when its bytes differ from the object
      ``vault new`` recorded for it in ``.cas/copies.msgpack`` (an unchanged file identity
      means unchanged bytes, as at commit; otherwise the bytes are compared);
    - ``protocol.py`` and ``field_notes.md`` are **modified** when their bytes differ from
      the templates this version of cas-vault fills in with the manifest ``vault new``
      recorded (the current manifest when there is no record). A specimen made by a version
      whose templates differ shows them modified; ``vault note`` modifies the notes;
    - a scaffold file that is absent is **removed**.

    Args:
        repo: the repository.

    Returns:
        The report.

    Raises:
        OSError: if a working directory or lock file cannot be read at all (permissions).
    """
    uncommitted: list[UncommittedSpecimen] = []
    runs: list[SpecimenRuns] = []
    in_progress: list[InProgress] = []
    for sid, wd in working_dirs(repo):
        in_progress.extend(specimen_in_progress(sid, wd))
        if is_committed(repo, sid):
            pending = _unsealed(repo, sid, wd)
            if pending is not None:
                runs.append(pending)
        else:
            uncommitted.append(_uncommitted(repo, sid, wd))
    return StatusReport(tuple(uncommitted), tuple(runs), tuple(in_progress), _catalog(repo))


def working_dirs(repo: Repository) -> list[tuple[str, Path]]:
    """``(id, path)`` of each working directory, in id order; hidden entries (temp leftovers)
    and names that are not specimen ids are no specimens."""
    try:
        with os.scandir(repo.specimens_dir) as it:
            return sorted((e.name, Path(e.path)) for e in it
                          if is_valid_id(e.name) and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def is_committed(repo: Repository, specimen_id: str) -> bool:
    """True if ``specimen_id`` has a ref (a damaged one counts: `vault verify` reports it)."""
    try:
        return repo.refs.get(specimen_id) is not None
    except InvalidInputError:
        return True  # a damaged ref is still a ref: `vault verify` reports it


# -- uncommitted specimens -------------------------------------------------------------------
def _uncommitted(repo: Repository, sid: str, wd: Path) -> UncommittedSpecimen:
    sizes: dict[str, int] = {}
    problem = None
    try:
        for rel in iter_files(wd):
            if rel not in SCAFFOLD_FILES:
                sizes[rel] = _size(wd / rel)
    except InvalidInputError as exc:
        problem = str(exc)
    try:
        indexed = WorkingIndex(wd).load(strict=True)
    except VaultError as exc:
        problem = problem or str(exc)
        indexed = WorkingIndex(wd).load()
    for rel, digest in indexed.items():
        if rel not in sizes:
            sizes[rel] = _object_size(repo, digest)
    return UncommittedSpecimen(
        sid, _summarise(sizes), len(sizes), sum(sizes.values()), _scaffold_changes(repo, wd),
        problem)


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except FileNotFoundError:
        return 0  # removed while we looked


def _object_size(repo: Repository, digest: str) -> int:
    try:
        return repo.objects.size(digest)
    except NotFoundError:
        return 0  # `vault verify` names a working index whose object is gone


def _unit(rel: str) -> str:
    """The entry a file is listed under: its tensor's directory, else the file itself."""
    parts = rel.split("/")
    for i, part in enumerate(parts[:-1]):
        if part.endswith(".zarr"):
            return "/".join(parts[: i + 1]) + "/"
    return rel


def _top(rel: str) -> str:
    head, sep, _ = rel.partition("/")
    return head + "/" if sep else rel


def _summarise(sizes: dict[str, int]) -> tuple[PathSummary, ...]:
    """One entry per file or tensor; per top-level directory when that makes too many."""
    groups = _group(sizes, _unit)
    if len(groups) > MAX_LISTED:
        groups = _group(sizes, _top)
    return tuple(PathSummary(k, len(v), sum(v)) for k, v in sorted(groups.items()))


def _group(sizes: dict[str, int], key: Callable[[str], str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for rel, size in sizes.items():
        groups.setdefault(key(rel), []).append(size)
    return groups


def _scaffold_changes(repo: Repository, wd: Path) -> tuple[ScaffoldChange, ...]:
    recorded = WorkingCopies(wd).load().get(MANIFEST_NAME)
    original: bytes | None = None
    if recorded is not None:
        try:
            original = repo.objects.get(recorded[0], verify=True)
        except VaultError:
            original = None  # gone or altered: `vault verify` says which
    # The templates were filled in with the manifest as `vault new` wrote it, which is the
    # recorded object: the current manifest may have been edited since.
    basis = _decoded(original) or _decoded(_read(wd / MANIFEST_NAME))
    expected: dict[str, bytes | None] = {MANIFEST_NAME: original}
    try:
        made = scaffold_files(basis) if basis is not None else {}
    except (KeyError, VaultError):
        made = {}
    for name in SCAFFOLD_FILES[1:]:
        expected[name] = made.get(name)
    out = []
    for name in SCAFFOLD_FILES:
        path = wd / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            out.append(ScaffoldChange(name, "removed"))
            continue
        want = expected[name]
        if want is None:
            out.append(ScaffoldChange(name, "unknown"))
        elif name == MANIFEST_NAME and recorded is not None and file_identity(st) == recorded[1]:
            continue  # the identity a commit trusts: the bytes are those recorded
        elif st.st_size != len(want) or _read(path) != want:
            out.append(ScaffoldChange(name, "modified"))
    return tuple(out)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _decoded(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        value = canonical.unpackb(data, "manifest")
    except InvalidInputError:
        return None
    return value if isinstance(value, dict) else None


# -- committed specimens: unsealed runs -------------------------------------------------------
def _unsealed(repo: Repository, sid: str, wd: Path) -> SpecimenRuns | None:
    try:
        pending = unsealed_runs(repo, sid, wd)
    except VaultError as exc:
        return SpecimenRuns(sid, (), str(exc))
    if not pending:
        return None
    indexed = WorkingIndex(wd).load()
    out = []
    for run_id, sealed_as in pending:
        prefix = f"{RUNS_DIR}/{run_id}/"
        sizes = {rel: _object_size(repo, d) for rel, d in indexed.items()
                 if rel.startswith(prefix)}
        try:
            for rel in iter_files(wd / RUNS_DIR / run_id):
                sizes[prefix + rel] = _size(wd / RUNS_DIR / run_id / rel)
        except InvalidInputError as exc:
            return SpecimenRuns(sid, tuple(out), str(exc))
        out.append(UnsealedRun(run_id, sealed_as, len(sizes), sum(sizes.values())))
    return SpecimenRuns(sid, tuple(out))


# -- work in progress --------------------------------------------------------------------------
def specimen_in_progress(sid: str, wd: Path) -> list[InProgress]:
    """What is in progress in working directory ``wd`` of ``sid``: a ``vault run``, a commit,
    a writer, step-wise logs being written and logs whose process is gone. Locks are probed
    without waiting."""
    out = []
    running = lock_state(wd / RUN_LOCK_PATH) is not None
    if running:
        out.append(InProgress(sid, "run"))
    held = lock_state(wd / LOCK_PATH)
    if held == "exclusive":
        out.append(InProgress(sid, "committing"))
    elif held == "shared" and not running:  # a run writes its log under it all along
        out.append(InProgress(sid, "writing"))
    busy = busy_logs(wd)
    out.extend(InProgress(sid, "logging", name) for name in busy)
    out.extend(InProgress(sid, "unfinished_log", name) for name in unfinished_logs(wd)
               if name not in busy)
    return out


# -- the catalog -------------------------------------------------------------------------------
def _catalog(repo: Repository) -> CatalogState:
    if not repo.catalog_path.exists() and _journal_empty(repo):
        return CatalogState(True)  # nothing was ever committed: nothing to index
    try:
        why = VaultQuery(repo, refresh=False, timeout=CATALOG_WAIT).stale_reason()
    except LockTimeoutError:
        why = ("another process has been writing the catalog for over "
               f"{CATALOG_WAIT:g} s (a commit or `vault index`); ask again when it finishes")
    return CatalogState(why is None, why)


def _journal_empty(repo: Repository) -> bool:
    try:
        return repo.refs.journal.stat().st_size == 0
    except FileNotFoundError:
        return True
