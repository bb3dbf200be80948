"""The repository: one vault directory, the core every feature works on.

Layout (docs/format.md)::

    <vault>/vault.msgpack     marker and format version
    <vault>/objects/ab/<digest>
    <vault>/refs/<specimen_id>
    <vault>/journal
    <vault>/specimens/<specimen_id>/
    <vault>/tmp/              temp files (crash leftovers are garbage)
    <vault>/locks/
    <vault>/vault.duckdb      derived catalog

:class:`Repository` opens and creates vaults, resolves ids, reads commits, lists the log,
describes and checks out specimens, and hands scaffolding (:mod:`cas_vault.scaffold`) and
sealing (:mod:`cas_vault.seal`) the repository they work on. It imports no feature: verify,
gc, the catalog, queries, runs and engines are modules that take a repository, and
:class:`cas_vault.vault.Vault` adds them as methods for the Python API.
"""

from __future__ import annotations

import os
import shlex
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from . import canonical, names, seal
from .annotations import ANNOTATIONS_NAME, Annotation, annotations, render_annotations
from .atomic import fsync_dir, fsync_many, write_durable, write_replace
from .commit import FORMAT_VERSION, Commit, utc_now
from .digest import Digest, Hasher, is_digest
from .errors import (
    AlreadyExistsError,
    ChecksumMismatch,
    ImmutableError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    VaultError,
)
from .findings import Finding
from .ids import RUN_INFIX, run_specimen_id, validate_id
from .journal import decodable
from .labels import labels
from .retirement import retirements
from .objects import ObjectStore
from .progress import Progress
from .refs import RefStore
from .scaffold import new_specimen
from .seal import BatchState
from .specimen import CommittedSpecimen
from .storage import VAULT_MARKER, SpecimenStorage, run_sort_key
from .tensors import TensorSummary, summarize_tree_tensors
from .workdir import COMMIT_LOCK_TIMEOUT

if TYPE_CHECKING:
    from .journal import JournalEntry

__all__ = ["LogEntry", "MARKER_FORMAT", "Repository", "ShowInfo", "VAULT_ENV"]

#: Environment variable naming the vault when none is given.
VAULT_ENV = "CAS_VAULT_DIR"
#: The ``format`` field of ``vault.msgpack``.
MARKER_FORMAT = "cas-vault"


@dataclass(frozen=True)
class LogEntry:
    """One committed specimen, as listed by :meth:`Repository.log`.

    Attributes:
        seq: position in the journal (commit order).
        specimen_id: the specimen.
        digest: its commit digest.
        commit: the decoded commit.
        labels: the labels pointing at it now.
    """

    seq: int
    specimen_id: str
    digest: Digest
    commit: Commit
    labels: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The stable ``vault log --json`` form (documented in README)."""
        c = self.commit
        return {
            "specimen_id": self.specimen_id, "commit": self.digest, "created": c.created,
            "author": c.author, "message": c.message, "domain": c.manifest.domain,
            "method": c.manifest.method, "model": c.manifest.model, "tags": list(c.manifest.tags),
            "parents": list(c.parents), "files": len(c.tree), "logical_bytes": c.logical_bytes,
            "labels": list(self.labels),
        }


@dataclass(frozen=True)
class ShowInfo:
    """Everything :meth:`Repository.show` reports about one committed specimen.

    Attributes:
        specimen_id: the specimen.
        digest: its commit digest.
        commit: the decoded commit.
        parent_ids: specimen ids of its parents (None for a parent commit with no ref).
        logical_bytes: total size of its files.
        unique_bytes: bytes of objects that no earlier commit referenced (what it added).
        runs: ids of the sealed runs of the specimen asked for, newest first (empty for a
            specimen without runs).
        run: the run shown (its commit is ``commit``), or None for the specimen's own commit.
        tensors: its Zarr arrays: dtype, shape, chunks, logical and stored bytes (see
            :func:`cas_vault.tensors.summarize_tree_tensors`).
        labels: the labels pointing at it (or at the specimen whose run it is).
        annotations: notes added to it after it was sealed, oldest first.
    """

    specimen_id: str
    digest: Digest
    commit: Commit
    parent_ids: tuple[str | None, ...]
    logical_bytes: int
    unique_bytes: int | None
    runs: tuple[str, ...] = ()
    run: str | None = None
    labels: tuple[str, ...] = ()
    annotations: tuple[Annotation, ...] = ()
    tensors: tuple[TensorSummary, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The stable ``vault show --json`` form (documented in README)."""
        c = self.commit
        return {
            "specimen_id": self.specimen_id, "commit": self.digest, "format_version": c.version,
            "created": c.created, "author": c.author, "message": c.message,
            "manifest": c.manifest.to_map(),
            "parents": [{"commit": d, "specimen_id": sid} for d, sid in zip(c.parents, self.parent_ids)],
            "files": [{"path": p, "digest": e.digest, "size": e.size, "kind": e.kind}
                      for p, e in c.tree.items()],
            "logical_bytes": self.logical_bytes, "unique_bytes": self.unique_bytes,
            "runs": list(self.runs), "run": self.run, "labels": list(self.labels),
            "annotations": [a.to_dict() for a in self.annotations],
            "tensors": [t.to_dict() for t in self.tensors],
        }


class Repository:
    """A cas-vault directory: the core every feature works on.

    Use :meth:`init` to create one and :meth:`open` to open an existing one.

    Args:
        root: the vault directory (must already be a vault).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.objects = ObjectStore.of_vault(self.root)
        self.refs = RefStore(
            self.root / "refs", self.root / "journal", self.root / "locks" / "refs.lock",
            self.root / "tmp",
        )
        self.batching = BatchState()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------
    @property
    def specimens_dir(self) -> Path:
        """``<vault>/specimens``."""
        return self.root / "specimens"

    @property
    def catalog_path(self) -> Path:
        """``<vault>/vault.duckdb``."""
        return self.root / "vault.duckdb"

    @property
    def gc_lock_path(self) -> Path:
        """Lock shared by writers and held exclusively by gc."""
        return self.objects.writer_lock_path

    def specimen_dir(self, specimen_id: str) -> Path:
        """The working directory of ``specimen_id`` (validated)."""
        return self.specimens_dir / validate_id(specimen_id)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike[str]) -> Self:
        """Create a new vault at ``path`` (the directory may exist; it must not be a vault).

        Raises:
            AlreadyExistsError: if ``path`` already holds a vault.
            InvalidInputError: if ``path`` is a file.
        """
        root = Path(path).resolve()
        if (root / VAULT_MARKER).exists():
            raise AlreadyExistsError(f"{root} is already a vault; use it as it is")
        if root.exists() and not root.is_dir():
            raise InvalidInputError(f"{root} exists and is not a directory; choose another path")
        root.mkdir(parents=True, exist_ok=True)
        for sub in ("objects", "refs", "specimens", "tmp", "locks"):
            (root / sub).mkdir(exist_ok=True)
        for i in range(256):
            (root / "objects" / f"{i:02x}").mkdir(exist_ok=True)
        fsync_dir(root / "objects")
        # The marker is written last: a directory is a vault only once its layout exists.
        marker = {"format": MARKER_FORMAT, "version": FORMAT_VERSION, "created": utc_now()}
        write_replace(root / VAULT_MARKER, canonical.packb(marker))
        fsync_dir(root.parent)
        return cls(root)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> Self:
        """Open an existing vault.

        Args:
            path: the vault directory. If None: ``$CAS_VAULT_DIR``, else the nearest directory
                at or above the current one that holds ``vault.msgpack`` (like git).

        Raises:
            NotFoundError: if no vault is found, saying where it looked.
            InvalidInputError: if the marker is from an unknown format or a newer version.
        """
        if path is None and os.environ.get(VAULT_ENV):
            path = os.environ[VAULT_ENV]
        if path is not None:
            root = Path(path).resolve()
            if not (root / VAULT_MARKER).is_file():
                raise NotFoundError(
                    f"{root} is not a vault (no {VAULT_MARKER}); create one with "
                    f"`vault init {path}` or pass the right --vault"
                )
        else:
            cwd = Path.cwd().resolve()
            for candidate in (cwd, *cwd.parents):
                if (candidate / VAULT_MARKER).is_file():
                    root = candidate
                    break
            else:
                raise NotFoundError(
                    f"no vault in {cwd} or any parent directory; create one with `vault init`, "
                    f"or pass --vault PATH, or set {VAULT_ENV}"
                )
        marker = canonical.unpackb((root / VAULT_MARKER).read_bytes(), f"{root / VAULT_MARKER}")
        if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
            raise InvalidInputError(f"{root / VAULT_MARKER} is not a cas-vault marker")
        version = marker.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise InvalidInputError(
                f"{root} uses vault format {version!r}; this cas-vault reads up to "
                f"{FORMAT_VERSION}: upgrade cas-vault"
            )
        return cls(root)

    @classmethod
    def open_or_init(cls, path: str | os.PathLike[str]) -> Self:
        """Open the vault at ``path``, creating it if the directory holds none."""
        if (Path(path) / VAULT_MARKER).is_file():
            return cls.open(path)
        return cls.init(path)

    # -- scaffolding -------------------------------------------------------------------------

    # -- scaffolding and sealing (cas_vault.scaffold, cas_vault.seal) -----------------------
    def new(
        self,
        specimen_id: str,
        *,
        domain: str,
        method: str,
        tags: Iterable[str] = (),
        model: str | None = None,
        parents: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        layout: str = "strata",
    ) -> Path:
        """Scaffold ``specimens/<id>/``; see :func:`cas_vault.scaffold.new_specimen`.

        ``layout="runs"`` makes a specimen whose protocol writes one run per execution.

        Returns:
            The new working directory.

        Raises:
            InvalidIdError: for a bad id. TaxonomyError: for a bad domain/method pair.
            AlreadyExistsError: if the specimen exists (working directory or commit).
            NotFoundError: if a parent is not committed.
        """
        return new_specimen(self, specimen_id, domain=domain, method=method, tags=tags,
                            model=model, parents=parents, metadata=metadata, layout=layout)

    def storage(self, specimen_id: str) -> SpecimenStorage:
        """Return the :class:`SpecimenStorage` of a working directory (creates nothing)."""
        return SpecimenStorage(self.specimen_dir(specimen_id))

    def commit(
        self,
        specimen_id: str,
        *,
        message: str = "",
        parents: Sequence[str] = (),
        author: str | None = None,
        extra_metadata: dict[str, Any] | None = None,
        partial: bool = False,
        lock_timeout: float = COMMIT_LOCK_TIMEOUT,
        progress: Progress | None = None,
    ) -> Commit:
        """Seal ``specimens/<id>/`` as an immutable commit; see :func:`cas_vault.seal.commit`.

        A specimen in the runs layout is sealed once, then each new run as a commit of its own
        (``<id>.run_<run_id>``, whose parent is the run before it). ``progress`` is called with
        ``(advance_bytes, total_bytes)`` as working files are sealed.

        Returns:
            The last commit made (``commit.digest`` is its id): the specimen's, or its newest
            run's.

        Raises:
            ImmutableError: if the specimen is committed already and has no new run (names
                the commit).
            NotFoundError: if the working directory, manifest or a parent is missing.
            InvalidInputError: for a corrupt manifest, bad taxonomy, symlinks, bad message.
            FileChangedError: a working file changed while it was copied (nothing sealed).
            LockTimeoutError: a writer kept the working directory for too long.
        """
        return seal.commit(self, specimen_id, message=message, parents=parents, author=author,
                           extra_metadata=extra_metadata, partial=partial,
                           lock_timeout=lock_timeout, progress=progress)[-1]

    @contextmanager
    def batch(self) -> Iterator[Self]:
        """Commit many specimens with one catalog update at the end; see :func:`cas_vault.seal.batch`.

        Example::

            with vault.batch():
                for run in runs:
                    vault.commit(run.id)
        """
        with seal.batch(self):
            yield self

    def check_uncommitted(self, specimen_id: str, advice: str) -> None:
        """Refuse to go on if ``specimen_id`` is committed: sealed specimens never change.

        Args:
            specimen_id: a validated id.
            advice: what the user should do instead (the end of the message).

        Raises:
            ImmutableError: naming the commit and giving ``advice``.
        """
        existing = self.refs.get(specimen_id)
        if existing is not None:
            raise ImmutableError(f"specimen {specimen_id} is already committed as {existing}; {advice}")

    def resolve_parents(self, parents: Sequence[str]) -> list[Digest]:
        """Commit digests of parents given as specimen ids or commit digests, without repeats.

        Raises:
            NotFoundError: for an uncommitted id or a digest that is not in the vault.
            InvalidInputError: for a digest of an object that is not a commit, or a retired
                specimen (its commit may be gone after gc).
        """
        out: list[Digest] = []
        retired = retirements(self) if parents else {}
        for p in parents:
            if p in retired:
                raise InvalidInputError(
                    f"parent {p} is retired ({retired[p].reason!r}); derive from a live specimen")
            d = Digest(p) if is_digest(p) else self.resolve(p)
            if is_digest(p) and not self.objects.has(d):
                raise NotFoundError(f"parent commit {p} is not in this vault")
            if is_digest(p):
                try:  # any object has a digest: only a commit may become a parent
                    self.read_commit(d)
                except InvalidInputError:
                    raise InvalidInputError(
                        f"parent {p} is an object of this vault but not a commit; pass a "
                        "specimen id or a commit digest (`vault log` lists them)"
                    ) from None
            if d not in out:
                out.append(d)
        return out

    # -- reading -----------------------------------------------------------------------------
    def lookup(self, text: str) -> str:
        """Return the id of the committed specimen a user named: an id or a commit digest prefix.

        For what people type (the CLI's arguments, :meth:`show`, :meth:`log`, :meth:`checkout`);
        :meth:`resolve` stays exact. The rules are :func:`cas_vault.names.lookup`'s.

        Raises:
            InvalidIdError: for text that is neither an id nor a digest prefix.
            InvalidInputError: for a digest prefix of several commits (listing them).
            NotFoundError: if it names nothing committed (with the closest ids, and
                ``vault commit ID`` for an uncommitted one).
        """
        return names.lookup(self, text)

    def resolve(self, specimen_id: str) -> Digest:
        """Return the commit digest of a committed specimen.

        Raises:
            NotFoundError: if it is not committed (saying whether it is merely uncommitted).
        """
        d = self.refs.get(specimen_id)
        if d is None:
            if self.specimen_dir(specimen_id).is_dir():
                raise NotFoundError(
                    f"specimen {specimen_id} is not committed yet; seal it with "
                    f"`vault commit {specimen_id}`"
                )
            raise NotFoundError(
                f"no specimen {specimen_id} in {self.root}; `vault log` lists committed specimens"
            )
        return d

    def read_commit(self, digest: Digest | str) -> Commit:
        """Load and verify a commit object.

        Raises:
            NotFoundError: if missing. ChecksumMismatch: if altered. InvalidInputError: if malformed.
        """
        return Commit.from_bytes(self.objects.get(digest, verify=True))

    def runs(self, specimen_id: str) -> list[str]:
        """Ids of the sealed runs of a specimen, newest first (the original's ``list_runs``).

        A run ``R`` of specimen ``X`` is sealed as the specimen ``X.run_R`` (docs/format.md,
        "Runs"); a specimen that merely has such an id but does not say in its metadata that it
        is that run is not counted, nor is one whose commit cannot be read (``vault verify``
        reports it).

        Raises:
            InvalidIdError: for a malformed id.
        """
        prefix = validate_id(specimen_id) + RUN_INFIX
        found = []
        for name, digest in self.refs.all(prefix).items():
            run_id = name[len(prefix):]
            try:
                commit = self.read_commit(digest)
            except VaultError:
                continue
            if commit.manifest.run == (specimen_id, run_id):
                found.append(run_id)
        return sorted(found, key=run_sort_key, reverse=True)

    def latest(self, specimen_id: str) -> Digest:
        """The commit of a specimen's newest sealed run, or its own commit if it has none.

        Raises:
            NotFoundError: if it is not committed.
        """
        runs = self.runs(specimen_id)
        if runs:
            return self.resolve(run_specimen_id(specimen_id, runs[0]))
        return self.resolve(specimen_id)

    def get(self, specimen_id: str) -> Commit:
        """Return the commit of a committed specimen."""
        return self.read_commit(self.resolve(specimen_id))

    def log(
        self, specimen_id: str | None = None, *,
        on_damage: Callable[[Finding], None] | None = None, include_retired: bool = False,
    ) -> list[LogEntry]:
        """List commits, newest first.

        The whole-vault log leaves retired specimens out (:mod:`cas_vault.retirement`; a
        purged one may have no commit left to read), unless ``include_retired``.

        One damaged commit must not hide the others. With ``on_damage``, every commit that
        cannot be read (missing, altered or undecodable) is passed to it as a
        :class:`~cas_vault.verify.Finding` (the kind ``vault verify`` reports, the specimen, the
        commit digest and a message saying what is wrong) and left out of the list; so are, for
        the whole-vault log, refs that do not hold a digest and journal lines whose ref is gone.

        Args:
            specimen_id: if given, that specimen and all its ancestors (its lineage); an id or
                a commit digest prefix (:meth:`lookup`).
            on_damage: called with each damaged entry; without it the first damaged commit
                raises.
            include_retired: list retired specimens too (those whose commit is still there).

        Returns:
            The readable entries.

        Raises:
            NotFoundError: if ``specimen_id`` is not committed.
            IntegrityError: if the ref of ``specimen_id`` is corrupt or was deleted (the
                message gives the repair), or, without ``on_damage``, at the first commit that
                cannot be read.
        """

        def damaged(finding: Finding) -> None:
            if on_damage is None:
                raise IntegrityError(finding.message)
            on_damage(finding)

        journal = self._journal_entries()
        seqs: dict[str, int] = {}
        for e in journal:
            seqs.setdefault(e.specimen_id, e.seq)
        wanted: list[tuple[str, Digest, Commit]] = []
        if specimen_id is None:
            refs = self.refs.all()
            retired = retirements(self)
            if on_damage is not None:
                names = set(self.refs.names())
                for name in sorted(names - set(refs)):
                    on_damage(self._bad_ref_finding(name))
                for e in journal:
                    if e.specimen_id not in names:
                        names.add(e.specimen_id)  # one finding for an id journaled twice
                        on_damage(self._missing_ref_finding(e))
            for sid, d in refs.items():
                if sid in retired and not include_retired:
                    continue
                c = self._read_logged(d, sid)
                if isinstance(c, Commit):
                    wanted.append((sid, d, c))
                elif sid not in retired:  # a purged specimen's commit goes with it
                    damaged(c)
        else:
            specimen_id = self.lookup(specimen_id)
            by_digest = {d: sid for sid, d in self.refs.all().items()}
            start = self._resolve_logged(specimen_id)
            seen: set[Digest] = set()
            stack: list[tuple[Digest, str | None]] = [(start, None)]
            while stack:
                d, child = stack.pop()
                if d in seen:
                    continue
                seen.add(d)
                owner = specimen_id if child is None else by_digest.get(d)
                c = self._read_logged(d, owner, child)
                if not isinstance(c, Commit):
                    damaged(c)
                    continue
                wanted.append((c.specimen_id, d, c))
                stack.extend((p, c.specimen_id) for p in c.parents)
        named: dict[str, list[str]] = {}
        for name, lb in labels(self).items():
            named.setdefault(lb.specimen_id, []).append(name)
        entries = [LogEntry(seqs.get(sid, len(seqs)), sid, d, c, tuple(named.get(sid, ())))
                   for sid, d, c in wanted]
        entries.sort(key=lambda e: (e.commit.created, e.seq), reverse=True)
        return entries

    def show(self, specimen_id: str, run: str | None = None, *,
             unique_bytes: bool = True, retired: bool = False) -> ShowInfo:
        """Describe a committed specimen: manifest, files, parents and byte accounting.

        A specimen with sealed runs is shown by its newest run (as the original's
        ``view_results.py`` does), and ``info.runs`` lists them all.

        Args:
            specimen_id: the specimen: an id or a commit digest prefix (:meth:`lookup`).
            run: show this run of it instead of the newest.
            unique_bytes: compute ``unique_bytes``, which reads every commit sealed before it
                (time grows with the vault); False leaves it None (the catalog's
                ``unique_bytes`` column holds the same figure).
            retired: describe a retired specimen too (by default it is refused, as it has left
                ``log``), as long as its commit was not reclaimed.

        Raises:
            NotFoundError: if it is not committed, or has no such run (the message lists its
                runs), or it is retired (unless ``retired``), or retired and its commit purged.
            IntegrityError: if its ref is corrupt or was deleted, or its commit cannot be read
                (the message says what is wrong and what to do).
        """
        specimen_id = self.lookup(specimen_id)
        self._resolve_logged(specimen_id)
        runs = tuple(self.runs(specimen_id))
        if run is not None and run not in runs:
            have = ", ".join(runs[:10]) + (" ..." if len(runs) > 10 else "") if runs else "none"
            raise NotFoundError(f"specimen {specimen_id} has no sealed run {run!r} (its runs, "
                                f"newest first: {have})")
        shown = run if run is not None else (runs[0] if runs else None)
        info = self._show(run_specimen_id(specimen_id, shown) if shown else specimen_id,
                          unique_bytes, retired)
        shown_id = info.specimen_id
        return replace(info, runs=runs, run=shown,
                       labels=tuple(n for n, lb in labels(self).items()
                                    if lb.specimen_id in (specimen_id, shown_id)),
                       annotations=tuple(annotations(self, shown_id)))

    def _show(self, specimen_id: str, unique_bytes: bool = True,
              retired: bool = False) -> ShowInfo:
        gone = retirements(self).get(specimen_id)
        if gone is not None and not retired:
            raise NotFoundError(
                f"specimen {specimen_id} was retired on {gone.time} by {gone.author}: "
                f"{gone.reason!r}{' (purged)' if gone.purge else ''}; `vault log --all` lists "
                "retired specimens")
        digest = self._resolve_logged(specimen_id)
        commit = self._read_logged(digest, specimen_id)
        if not isinstance(commit, Commit):
            if gone is not None and commit.kind == "missing_commit":
                raise NotFoundError(
                    f"specimen {specimen_id} was retired on {gone.time} by {gone.author}: "
                    f"{gone.reason!r}, and its commit was reclaimed: nothing of it is left to "
                    "show")
            raise IntegrityError(commit.message)
        unique: int | None = None
        if unique_bytes:
            earlier: set[str] = set()
            for e in self._journal_entries():
                if e.specimen_id == specimen_id:
                    break
                try:
                    earlier.update(x.digest for x in self.read_commit(e.commit).tree.values())
                except (NotFoundError, InvalidInputError, ChecksumMismatch):
                    continue
            own = {e.digest: e.size for e in commit.tree.values()}
            unique = sum(size for d, size in own.items() if d not in earlier)
        return ShowInfo(
            specimen_id, digest, commit, tuple(self.id_of(p) for p in commit.parents),
            commit.logical_bytes, unique,
            tensors=tuple(summarize_tree_tensors(self.objects, commit.tree)),
        )

    def id_of(self, commit: Digest | str) -> str | None:
        """The specimen id whose ref holds ``commit``, or None if no ref holds it.

        The commit names its specimen, so this is one commit and one ref read, whatever the
        vault's size; only a commit that cannot be read (purged, damaged) costs a scan of
        every ref.
        """
        try:
            sid = self.read_commit(commit).specimen_id
            if self.refs.get(sid) == commit:
                return sid
        except (NotFoundError, InvalidInputError, ChecksumMismatch):
            pass
        return next((s for s, d in self.refs.all().items() if d == commit), None)

    def _journal_entries(self) -> list[JournalEntry]:
        """The journal's decodable ref lines (not events): a damaged line (verify reports
        it) hides no other."""
        try:
            data = self.refs.journal.read_bytes()
        except FileNotFoundError:
            return []
        return [e for e in decodable(data) if e.is_ref]

    def _resolve_logged(self, specimen_id: str) -> Digest:
        """:meth:`resolve` for log and show: a deleted or corrupt ref is damage, with its repair.

        A specimen whose ref was deleted still has its working directory, so :meth:`resolve`
        would advise ``vault commit``: that would seal a second commit over the journaled one
        and make the damage permanent.

        Raises:
            InvalidIdError: for a malformed id.
            IntegrityError: if the ref is corrupt, or missing while the journal records it.
            NotFoundError: if the specimen was never committed.
        """
        validate_id(specimen_id)
        try:
            d = self.refs.get(specimen_id)
        except InvalidInputError:
            raise IntegrityError(self._bad_ref_finding(specimen_id).message) from None
        if d is not None:
            return d
        for e in self._journal_entries():
            if e.specimen_id == specimen_id:
                raise IntegrityError(self._missing_ref_finding(e).message)
        return self.resolve(specimen_id)

    def _read_logged(
        self, digest: Digest, specimen_id: str | None, child: str | None = None,
    ) -> Commit | Finding:
        """Read a commit, or say as a verify finding why it cannot be read.

        Args:
            digest: the commit.
            specimen_id: the specimen it seals, when a ref names it.
            child: the specimen it was reached from as a parent (lineage walks).
        """
        what = f"commit {digest} of {specimen_id}" if specimen_id else \
            f"parent commit {digest} of {child}"
        sid = specimen_id or child
        rel = f"objects/{digest[:2]}/{digest}"
        advice = f"run `vault verify {sid}` to see everything affected and how to repair it"
        try:
            return self.read_commit(digest)
        except NotFoundError:
            return Finding("missing_parent" if specimen_id is None else "missing_commit",
                           f"{what} is missing from objects/; {advice}", specimen=sid,
                           digest=digest, file=rel)
        except ChecksumMismatch as exc:
            return Finding("corrupt_object", f"{what} was altered (its bytes hash to {exc.got}); "
                           f"{advice}", specimen=sid, digest=digest, file=rel)
        except InvalidInputError as exc:
            return Finding("bad_commit", f"{what} cannot be decoded ({exc}); {advice}",
                           specimen=sid, digest=digest, file=rel)

    def _bad_ref_finding(self, name: str) -> Finding:
        return Finding("bad_ref", f"ref {name} does not hold a commit digest (was it edited?); "
                       "run `vault verify`: the journal records what it held", specimen=name,
                       file=f"refs/{name}")

    def _missing_ref_finding(self, entry: JournalEntry) -> Finding:
        """The deleted ref of a journaled specimen, with the repair docs/integrity.md gives."""
        sid, d = entry.specimen_id, entry.commit
        ref = shlex.quote(str(self.refs.refs_dir / sid))
        return Finding(
            "missing_ref", f"refs/{sid} is missing, but journal line {entry.seq + 1} records "
            f"{sid} as sealed with commit {d}: the ref was deleted. Do not commit {sid} again "
            f"(that would replace the sealed commit). Restore the ref: printf '%s\\n' {d} > "
            f"{ref} && chmod 0444 {ref}; then run `vault verify {sid}`",
            specimen=sid, digest=d, file=f"refs/{sid}")

    def specimen(self, specimen_id: str) -> CommittedSpecimen:
        """Return a read-only view of a committed specimen's files."""
        return CommittedSpecimen(self, specimen_id, self.get(specimen_id))

    def checkout(
        self, specimen_id: str, dest: str | os.PathLike[str], *, progress: Progress | None = None,
    ) -> Path:
        """Materialise a committed specimen's files into ``dest``, verifying every byte.

        Annotations added after sealing, if any, are written beside the files as
        ``annotations.md`` (``annotations.cas.md`` if the specimen has a file of that name).

        Args:
            specimen_id: the specimen: an id or a commit digest prefix (:meth:`lookup`).
            dest: a directory that does not exist yet, or is empty.
            progress: called with ``(advance_bytes, total_bytes)`` as each block is copied
                and hashed; the total is the size of every file in the commit.

        Returns:
            The destination directory.

        Raises:
            NotFoundError: if the specimen or an object is missing.
            AlreadyExistsError: if ``dest`` exists and is not empty.
            ChecksumMismatch: if an object was altered (nothing is left at ``dest`` then).
        """
        sid = self.lookup(specimen_id)
        commit = self.get(sid)
        notes = annotations(self, sid)
        dest = Path(dest).resolve()
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise AlreadyExistsError(f"{dest} exists and is not an empty directory; choose a new path")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
        tmp.mkdir()
        total = sum(entry.size for entry in commit.tree.values())
        try:
            for rel, entry in commit.tree.items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self._copy_verified(entry.digest, target, progress, total)
            if notes:
                name = ANNOTATIONS_NAME if ANNOTATIONS_NAME not in commit.tree else \
                    ANNOTATIONS_NAME.replace(".md", ".cas.md")
                write_durable(tmp / name, render_annotations(notes).encode("utf-8"), sync=True)
            # Every name in the copied tree is durable before the tree gets its final name.
            fsync_many(Path(d) for d, _, _ in os.walk(tmp))
            if dest.exists():
                dest.rmdir()
            os.rename(tmp, dest)
            fsync_dir(dest.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def _copy_verified(self, digest: Digest, target: Path, progress: Progress | None = None,
                       total: int = 0) -> None:
        h = Hasher()
        with self.objects.open(digest) as src, open(target, "wb") as out:
            while block := src.read(1 << 20):
                h.update(block)
                out.write(block)
                if progress is not None:
                    progress(len(block), total)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != digest:
            raise ChecksumMismatch(digest, h.hexdigest(), f"object for {target.name}")

    # -- tensors (content-addressed Zarr) ---------------------------------------------------

    def tensor(self, specimen_id: str, name: str, *, verify: bool = True) -> Any:
        """Open tensor ``name`` of a committed specimen as a lazy, read-only ``zarr.Array``.

        Slicing reads only the chunk objects the slice touches, each verified against its
        digest (unless ``verify=False``).

        Raises:
            NotFoundError: if the specimen is not committed or has no such tensor.
            IntegrityError: on reading a chunk whose object is missing or altered.
        """
        return self.specimen(specimen_id).tensor(name, verify=verify)
