"""The Vault: one directory of objects, refs, journal, working directories and catalog.

Layout (docs/format.md)::

    <vault>/vault.msgpack     marker and format version
    <vault>/objects/ab/<digest>
    <vault>/refs/<specimen_id>
    <vault>/journal
    <vault>/specimens/<specimen_id>/
    <vault>/tmp/              temp files (crash leftovers are garbage)
    <vault>/locks/
    <vault>/vault.duckdb      derived catalog

Every CLI command is a thin layer over the method of the same name here.
"""

from __future__ import annotations

import getpass
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import canonical, hooks, taxonomy
from .atomic import FileLock, fsync_dir, fsync_many, write_durable, write_replace
from .commit import FORMAT_VERSION, Commit, Manifest, TreeEntry, kind_of, utc_now
from .digest import Digest, Hasher, is_digest
from .errors import (
    AlreadyExistsError,
    ChecksumMismatch,
    ImmutableError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
)
from .ids import validate_id
from .objects import ObjectStore
from .refs import RefStore
from .storage import VAULT_MARKER, SpecimenStorage, check_name
from .workdir import (
    COMMIT_LOCK_TIMEOUT,
    MANIFEST_NAME,
    WorkingCopies,
    WorkingIndex,
    file_identity,
    iter_files,
    read_manifest,
    sealing,
)

if TYPE_CHECKING:
    from .journal import JournalEntry
    from .verify import Finding

__all__ = ["LogEntry", "ShowInfo", "Vault", "VAULT_ENV"]

VAULT_ENV = "CAS_VAULT_DIR"
AUTHOR_ENV = "CAS_VAULT_AUTHOR"
MARKER_FORMAT = "cas-vault"

PROTOCOL_TEMPLATE = '''"""Protocol for specimen {specimen_id}: {domain} / {method}.

Run it with `python protocol.py` (or `vault run {specimen_id}`), then seal the results with
`vault commit {specimen_id} -m "what this run shows"`.
"""

from pathlib import Path

import numpy as np

from cas_vault import SpecimenStorage


def run_experiment() -> None:
    storage = SpecimenStorage(Path(__file__).parent)
    rng = np.random.default_rng(0)

    # Metrics: a dict of equally long columns (or a polars DataFrame) -> strata/metrics.parquet
    steps = np.arange(100)
    storage.write_metrics({{"step": steps, "loss": np.exp(-steps / 30) + 0.01 * rng.random(100)}})

    # Config -> strata/config.msgpack
    storage.write_config({{"seed": 0, "steps": 100}})

    # Tensors -> strata/<name>.zarr (chunked, read back lazily)
    storage.write_tensors("activations", rng.standard_normal((100, 768), dtype=np.float32))


if __name__ == "__main__":
    run_experiment()
'''

FIELD_NOTES_TEMPLATE = """# Field notes: {specimen_id}

- domain: {domain}
- method: {method}
- created: {created}

## Hypothesis

## Methodology

## Observations
"""


@dataclass(frozen=True)
class LogEntry:
    """One committed specimen, as listed by :meth:`Vault.log`.

    Attributes:
        seq: position in the journal (commit order).
        specimen_id: the specimen.
        digest: its commit digest.
        commit: the decoded commit.
    """

    seq: int
    specimen_id: str
    digest: Digest
    commit: Commit

    def to_dict(self) -> dict[str, Any]:
        """The stable ``vault log --json`` form (documented in README)."""
        c = self.commit
        return {
            "specimen_id": self.specimen_id, "commit": self.digest, "created": c.created,
            "author": c.author, "message": c.message, "domain": c.manifest.domain,
            "method": c.manifest.method, "model": c.manifest.model, "tags": list(c.manifest.tags),
            "parents": list(c.parents), "files": len(c.tree), "logical_bytes": c.logical_bytes,
        }


@dataclass(frozen=True)
class ShowInfo:
    """Everything :meth:`Vault.show` reports about one committed specimen.

    Attributes:
        specimen_id: the specimen.
        digest: its commit digest.
        commit: the decoded commit.
        parent_ids: specimen ids of its parents (None for a parent commit with no ref).
        logical_bytes: total size of its files.
        unique_bytes: bytes of objects that no earlier commit referenced (what it added).
    """

    specimen_id: str
    digest: Digest
    commit: Commit
    parent_ids: tuple[str | None, ...]
    logical_bytes: int
    unique_bytes: int

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
        }


class Vault:
    """A cas-vault directory.

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
        self._batch_depth = 0
        self._batch_commits = 0

    def __repr__(self) -> str:
        return f"Vault({str(self.root)!r})"

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
    def init(cls, path: str | os.PathLike[str]) -> Vault:
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
    def open(cls, path: str | os.PathLike[str] | None = None) -> Vault:
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
    def open_or_init(cls, path: str | os.PathLike[str]) -> Vault:
        """Open the vault at ``path``, creating it if the directory holds none."""
        if (Path(path) / VAULT_MARKER).is_file():
            return cls.open(path)
        return cls.init(path)

    # -- scaffolding -------------------------------------------------------------------------
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
    ) -> Path:
        """Scaffold ``specimens/<id>/`` with a manifest, protocol template, notes and ``strata/``.

        Args:
            specimen_id: the new id (``YYYY_MM_DD_descriptor`` by convention).
            domain: a domain of the taxonomy.
            method: a method valid for ``domain``.
            tags: free tags (e.g. model names, layers).
            model: the model studied, if any.
            parents: ids of committed specimens this one derives from.
            metadata: free-form metadata stored in the manifest.

        Returns:
            The new working directory.

        Raises:
            InvalidIdError: for a bad id. TaxonomyError: for a bad domain/method pair.
            AlreadyExistsError: if the specimen exists (working directory or commit).
            NotFoundError: if a parent is not committed.
        """
        validate_id(specimen_id)
        taxonomy.check(domain, method)
        tags = _check_tags(tags)
        if model is not None and (not isinstance(model, str) or not model):
            raise InvalidInputError("model must be a non-empty string")
        parent_ids = [validate_id(p) for p in parents]
        for p in parent_ids:
            self.resolve(p)
        metadata = dict(metadata or {})
        canonical.packb(metadata)  # fail before writing if it cannot be stored
        self.check_uncommitted(specimen_id, "choose a different id, e.g. with a _v2 suffix")
        target = self.specimen_dir(specimen_id)
        if target.exists():
            raise AlreadyExistsError(
                f"specimen {specimen_id} already exists at {target}; choose a different id, "
                "e.g. with a _v2 suffix"
            )
        created = utc_now()
        manifest = {
            "specimen_id": specimen_id, "domain": domain, "method": method, "model": model,
            "tags": tags, "parents": parent_ids, "created": created, "metadata": metadata,
        }
        fmt = {"specimen_id": specimen_id, "domain": domain, "method": method, "created": created}
        # Build in a temp dir and rename, so a failed scaffold leaves nothing behind.
        tmp = self.specimens_dir / f".{specimen_id}.{uuid.uuid4().hex}.tmp"
        tmp.mkdir(parents=True)
        try:
            (tmp / "strata").mkdir()
            scaffold = {
                MANIFEST_NAME: canonical.packb(manifest),
                "protocol.py": PROTOCOL_TEMPLATE.format(**fmt).encode(),
                "field_notes.md": FIELD_NOTES_TEMPLATE.format(**fmt).encode(),
            }
            for name, data in scaffold.items():
                write_durable(tmp / name, data, sync=False)
            # One concurrent round: the files and their directory are durable before the rename,
            # so the working directory never appears with half-written files. specimens/ itself
            # is not fsynced: like a working file's name, nothing durable depends on it until a
            # commit (docs/format.md section 6); a crash before then leaves no specimen or this one.
            fsync_many([*(tmp / name for name in scaffold), tmp])
            try:
                os.rename(tmp, target)
            except OSError:
                raise AlreadyExistsError(f"specimen {specimen_id} was created concurrently") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        # The manifest is rarely edited after `new`: storing it now saves its copy at commit.
        # protocol.py and field_notes.md are meant to be edited, so their template bytes would
        # mostly be stored for nothing.
        WorkingCopies(target).store(self.objects, {MANIFEST_NAME: scaffold[MANIFEST_NAME]})
        return target

    def storage(self, specimen_id: str) -> SpecimenStorage:
        """Return the :class:`SpecimenStorage` of a working directory (creates nothing)."""
        return SpecimenStorage(self.specimen_dir(specimen_id))

    # -- committing --------------------------------------------------------------------------
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
    ) -> Commit:
        """Seal ``specimens/<id>/`` as an immutable commit and create its ref.

        Working files are copied into ``objects/`` (hashed from the same open file as they are
        copied, so the sealed bytes are exactly the hashed ones, and later writes to a working
        file never reach them); tensor chunks listed in the working index are objects already.
        Objects are durable before the commit object, the commit before the ref, the ref
        before its journal line. The working directory's lock is held throughout, so writers
        using cas-vault's API are never sealed half-way.

        Args:
            specimen_id: the working directory to seal.
            message: the commit message.
            parents: extra parents (specimen ids or commit digests) beyond the manifest's.
            author: defaults to ``$CAS_VAULT_AUTHOR`` or the login name.
            extra_metadata: merged into the manifest's metadata (e.g. provenance).
            partial: seal a specimen whose run crashed: assemble its unfinished step-wise
                logs into ``strata/`` and set ``metadata.partial = true``. Without it, a
                specimen with an unfinished log is refused (docs/runs.md).
            lock_timeout: seconds to wait for writers of the working directory to finish.

        Returns:
            The commit (``commit.digest`` is its id).

        Raises:
            ImmutableError: if the specimen is committed already (names the commit).
            NotFoundError: if the working directory, manifest or a parent is missing.
            InvalidInputError: for a corrupt manifest, bad taxonomy, symlinks, bad message.
            FileChangedError: a working file changed while it was copied (nothing sealed).
            LockTimeoutError: a writer kept the working directory for too long.
        """
        validate_id(specimen_id)
        advice = (f"committed specimens never change: create a new one with "
                  f"`vault new NEW_ID --parent {specimen_id}`")
        self.check_uncommitted(specimen_id, advice)
        if not isinstance(message, str):
            raise InvalidInputError("commit message must be a string")
        wd = self.specimen_dir(specimen_id)
        if not wd.is_dir():
            raise NotFoundError(
                f"specimen {specimen_id} has no working directory at {wd}; "
                f"create it with `vault new {specimen_id} --domain D --method M`"
            )
        # Writers that play by the rules (SpecimenStorage, tensor writers, the step logger,
        # notes) hold this lock shared while they write: none is half-way through a file now,
        # and none starts before the ref exists (they check for it under the lock).
        with sealing(wd, timeout=lock_timeout):
            self.check_uncommitted(specimen_id, advice)
            digest, commit, shared = self._seal(
                specimen_id, wd, message=message, parents=parents, author=author,
                extra_metadata=extra_metadata, partial=partial)
        _unshare(wd, shared)
        self._after_commit(specimen_id, digest, commit)
        return commit

    def _seal(
        self, specimen_id: str, wd: Path, *, message: str, parents: Sequence[str],
        author: str | None, extra_metadata: dict[str, Any] | None, partial: bool,
    ) -> tuple[Digest, Commit, list[str]]:
        """Copy the working directory into objects, write the commit object and its ref.

        The caller holds the working directory's lock exclusively.

        Returns:
            ``(commit digest, commit, working paths that were hard links to objects)``.
        """
        raw = read_manifest(wd)
        manifest = _manifest_from_working(raw, wd)
        canonical.packb(manifest.to_map())  # unstorable metadata fails before any object is written
        if not isinstance(partial, bool):
            raise InvalidInputError(f"partial must be True or False, not {partial!r}")
        for prepare in hooks.hooks("prepare"):  # features that act before the seal
            extra_metadata = prepare(wd, specimen_id, partial, extra_metadata)
        if extra_metadata:
            merged = dict(manifest.metadata)
            merged.update(extra_metadata)
            canonical.packb(merged)
            manifest = Manifest(manifest.domain, manifest.method, manifest.model, manifest.tags, merged)
        parent_digests = self._resolve_parents([*raw.get("parents", []), *parents])
        files = list(iter_files(wd))
        indexed = WorkingIndex(wd).load(strict=True)
        files, shared = _split_working_files(wd, files, indexed, self.objects)
        # Writers hold the gc lock shared, so `vault gc --grace 0` never prunes objects that a
        # commit has written but not yet referenced.
        with FileLock(self.gc_lock_path, shared=True):
            # One batch for the files and the commit object: every working file is copied to a
            # temp file while it is hashed, then all are made durable in two concurrent fsync
            # rounds (bytes, then names), before the ref can point at them. Files the working
            # index lists (tensor chunks) are objects already, made durable when written.
            batch = self.objects.batch()
            try:
                tree: dict[str, TreeEntry] = {}
                copies = WorkingCopies(wd).load()
                for rel in files:
                    stored = self._stored_copy(wd, rel, copies)
                    if stored is not None:
                        batch.add_stored(stored[0])
                        tree[rel] = TreeEntry(stored[0], stored[1], kind_of(rel))
                        continue
                    digest, size = batch.add_file(wd / rel)
                    tree[rel] = TreeEntry(digest, size, kind_of(rel))
                for rel, digest in indexed.items():
                    tree[rel] = TreeEntry(digest, self._indexed_size(specimen_id, rel, digest),
                                          kind_of(rel))
                tree = dict(sorted(tree.items()))
                commit = Commit(
                    specimen_id=specimen_id, created=utc_now(),
                    author=author or os.environ.get(AUTHOR_ENV) or _login_name(),
                    message=message, manifest=manifest, parents=tuple(parent_digests), tree=tree,
                )
                digest = batch.add_bytes(commit.to_bytes())
                batch.add_move(*self.refs.intent_temp(specimen_id, digest))
            except BaseException:
                batch.abort()
                raise
            batch.publish()
            self.refs.create(specimen_id, digest, commit.created)
        return digest, commit, shared

    def _stored_copy(
        self, wd: Path, rel: str, copies: dict[str, tuple[Digest, list[int]]],
    ) -> tuple[Digest, int] | None:
        """``(digest, size)`` of the object made when ``rel`` was written, if the file is
        still exactly that file (same inode, size, mtime, ctime) and the object exists."""
        got = copies.get(rel)
        if got is None:
            return None
        try:
            st = os.stat(wd / rel, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if file_identity(st) != got[1] or not self.objects.has(got[0]):
            return None
        return got[0], st.st_size

    def _indexed_size(self, specimen_id: str, rel: str, digest: Digest) -> int:
        try:
            return self.objects.size(digest)
        except NotFoundError:
            raise IntegrityError(
                f"{rel} of specimen {specimen_id} was written into objects/ as {digest}, which "
                "is missing now; write that tensor again (SpecimenStorage.write_tensors), then "
                "commit"
            ) from None

    def _after_commit(self, specimen_id: str, digest: Digest, commit: Commit) -> None:
        """Run the ``sealed`` hooks (the catalog) after a ref exists; never raises."""
        if self._batch_depth:
            self._batch_commits += 1  # indexed once when the batch ends
            return
        for sealed in hooks.hooks("sealed"):
            try:
                sealed(self, specimen_id, digest, commit)
            except Exception:  # the commit stands: derived data never undoes or fails it
                pass

    @contextmanager
    def batch(self) -> Iterator[Vault]:
        """Commit many specimens with one catalog update at the end instead of one per commit.

        For bulk loads (imports, sweeps): each commit is sealed exactly as usual (objects, commit,
        ref, journal) and only the derived catalog waits; when the outermost block exits, normally
        or not, the catalog indexes every commit made in it in one incremental update. If that
        update fails, the catalog is marked stale, as after a commit.

        Example::

            with vault.batch():
                for run in runs:
                    vault.commit(run.id)
        """
        self._batch_depth += 1
        try:
            yield self
        finally:
            self._batch_depth -= 1
            if self._batch_depth == 0 and self._batch_commits:
                self._batch_commits = 0
                for done in hooks.hooks("batch_done"):
                    try:
                        done(self)
                    except Exception:  # derived data never fails the commits it describes
                        pass

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

    def _resolve_parents(self, parents: Sequence[str]) -> list[Digest]:
        out: list[Digest] = []
        for p in parents:
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

    def get(self, specimen_id: str) -> Commit:
        """Return the commit of a committed specimen."""
        return self.read_commit(self.resolve(specimen_id))

    def log(
        self, specimen_id: str | None = None, *,
        on_damage: Callable[[Finding], None] | None = None,
    ) -> list[LogEntry]:
        """List commits, newest first.

        One damaged commit must not hide the others. With ``on_damage``, every commit that
        cannot be read (missing, altered or undecodable) is passed to it as a
        :class:`~cas_vault.verify.Finding` (the kind ``vault verify`` reports, the specimen, the
        commit digest and a message saying what is wrong) and left out of the list; so are, for
        the whole-vault log, refs that do not hold a digest and journal lines whose ref is gone.

        Args:
            specimen_id: if given, that specimen and all its ancestors (its lineage).
            on_damage: called with each damaged entry; without it the first damaged commit
                raises.

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
            if on_damage is not None:
                names = set(self.refs.names())
                for name in sorted(names - set(refs)):
                    on_damage(self._bad_ref_finding(name))
                for e in journal:
                    if e.specimen_id not in names:
                        names.add(e.specimen_id)  # one finding for an id journaled twice
                        on_damage(self._missing_ref_finding(e))
            for sid, d in refs.items():
                c = self._read_logged(d, sid)
                if isinstance(c, Commit):
                    wanted.append((sid, d, c))
                else:
                    damaged(c)
        else:
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
        entries = [LogEntry(seqs.get(sid, len(seqs)), sid, d, c) for sid, d, c in wanted]
        entries.sort(key=lambda e: (e.commit.created, e.seq), reverse=True)
        return entries

    def show(self, specimen_id: str) -> ShowInfo:
        """Describe a committed specimen: manifest, files, parents and byte accounting.

        Raises:
            NotFoundError: if it is not committed.
            IntegrityError: if its ref is corrupt or was deleted, or its commit cannot be read
                (the message says what is wrong and what to do).
        """
        digest = self._resolve_logged(specimen_id)
        commit = self._read_logged(digest, specimen_id)
        if not isinstance(commit, Commit):
            raise IntegrityError(commit.message)
        by_digest = {d: sid for sid, d in self.refs.all().items()}
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
            specimen_id, digest, commit, tuple(by_digest.get(p) for p in commit.parents),
            commit.logical_bytes, unique,
        )

    def _journal_entries(self) -> list[JournalEntry]:
        """The journal's decodable lines: a damaged line (verify reports it) hides no other."""
        from .journal import decodable

        try:
            data = self.refs.journal.read_bytes()
        except FileNotFoundError:
            return []
        return decodable(data)

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
        from .verify import Finding

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
        from .verify import Finding

        return Finding("bad_ref", f"ref {name} does not hold a commit digest (was it edited?); "
                       "run `vault verify`: the journal records what it held", specimen=name,
                       file=f"refs/{name}")

    def _missing_ref_finding(self, entry: JournalEntry) -> Finding:
        """The deleted ref of a journaled specimen, with the repair docs/integrity.md gives."""
        import shlex

        from .verify import Finding

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

    def checkout(self, specimen_id: str, dest: str | os.PathLike[str]) -> Path:
        """Materialise a committed specimen's files into ``dest``, verifying every byte.

        Args:
            specimen_id: the specimen.
            dest: a directory that does not exist yet, or is empty.

        Returns:
            The destination directory.

        Raises:
            NotFoundError: if the specimen or an object is missing.
            AlreadyExistsError: if ``dest`` exists and is not empty.
            ChecksumMismatch: if an object was altered (nothing is left at ``dest`` then).
        """
        commit = self.get(specimen_id)
        dest = Path(dest).resolve()
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise AlreadyExistsError(f"{dest} exists and is not an empty directory; choose a new path")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
        tmp.mkdir()
        try:
            for rel, entry in commit.tree.items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self._copy_verified(entry.digest, target)
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

    def _copy_verified(self, digest: Digest, target: Path) -> None:
        h = Hasher()
        with self.objects.open(digest) as src, open(target, "wb") as out:
            while block := src.read(1 << 20):
                h.update(block)
                out.write(block)
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


    # -- catalog and queries -------------------------------------------------------------
    def index(self, rebuild: bool = False, accept_rollback: bool = False) -> Any:
        """Bring ``vault.duckdb`` up to date; see :func:`cas_vault.catalog.index`.

        Args:
            rebuild: drop the catalog and rebuild it from the journal and objects.
            accept_rollback: rebuild even if the journal lost lines the catalog or the tip
                record witnessed (a backup restored on purpose).

        Returns:
            An :class:`~cas_vault.catalog.IndexResult`.

        Raises:
            LockTimeoutError: if other processes kept the catalog busy too long.
            IntegrityError: if the journal is damaged.
            JournalRolledBackError: if the journal lost witnessed lines.
        """
        from .catalog import index

        return index(self, rebuild=rebuild, accept_rollback=accept_rollback)

    def query(self, sql: str, params: Any = None) -> Any:
        """Run one read-only SQL SELECT over the catalog; see :class:`cas_vault.query.VaultQuery`.

        Returns:
            A polars DataFrame (typed even when empty).

        Raises:
            InvalidInputError: for SQL that fails or is not a single SELECT.
        """
        from .query import VaultQuery

        return VaultQuery(self).search(sql, params)

    # -- integrity: verify and gc --------------------------------------------------------
    def verify(
        self, specimen_ids: Sequence[str] = (), *, quick: bool = False,
        progress: Any = None, witness: Any = None,
    ) -> Any:
        """Check that every committed byte is intact; see :func:`cas_vault.verify.verify`.

        Args:
            specimen_ids: only these specimens (default: the whole vault, garbage included).
            quick: check existence and sizes only, without re-hashing.
            progress: ``progress(advance_bytes, total_bytes)`` callback while hashing.
            witness: a :class:`~cas_vault.refs.JournalTip` (or ``"LINES:DIGEST"``) kept
                outside the vault; the journal must still hold that line.

        Returns:
            A :class:`cas_vault.verify.VerifyReport` (``report.ok`` is False on any problem).

        Raises:
            InvalidIdError: for a malformed id. NotFoundError: for an unknown specimen.
        """
        from .refs import JournalTip
        from .verify import verify

        if isinstance(witness, str):
            witness = JournalTip.parse(witness)
        return verify(self, specimen_ids, quick=quick, progress=progress, witness=witness)

    def gc(
        self, *, grace: float | str = 14 * 24 * 3600.0, dry_run: bool = False,
        temp_age: float | str = 3600.0,
    ) -> Any:
        """Remove unreachable objects older than ``grace`` and crash leftovers.

        Args:
            grace: seconds, or a duration such as ``"14d"``, ``"12h"``, ``"0"``.
            dry_run: only report what would be removed.
            temp_age: temp files older than this are removed even if their writer may be alive.

        Returns:
            A :class:`cas_vault.gc.GcReport`.

        Raises:
            InvalidInputError: for a malformed duration.
            IntegrityError: if a ref's commits are damaged (nothing is deleted then).
            LockTimeoutError: if running commits hold the gc lock too long.
        """
        from .gc import gc, parse_duration

        grace_s = parse_duration(grace) if isinstance(grace, str) else float(grace)
        age_s = parse_duration(temp_age) if isinstance(temp_age, str) else float(temp_age)
        return gc(self, grace=grace_s, dry_run=dry_run, temp_age=age_s)


    # -- engines -------------------------------------------------------------------------
    def spectroscopy(self, activations_id: str, sae: Any, **kwargs: Any) -> Any:
        """SAE spectroscopy of a committed activations tensor, committed as a derived specimen.

        Args:
            activations_id: committed specimen holding the activations ([N, T, d] or [T, d]).
            sae: SAE specimen id, Path to a .npz/.safetensors file, or an ``SAE``.
            **kwargs: ``tensor``, ``new_id``, ``pairs``, ``options``, ``scheduler``, ``message``
                (see :func:`cas_vault.engines.spectroscopy.engine.run_spectroscopy`).

        Returns:
            A ``SpectroscopyResult`` (``.specimen_id``, ``.commit``, ``.metrics``).

        Raises:
            NotFoundError, InvalidInputError, AlreadyExistsError: nothing is written then.
        """
        from .engines.spectroscopy.engine import run_spectroscopy

        return run_spectroscopy(self, activations_id, sae, **kwargs)

    def spectrum(self, specimen_id: str, input_index: int = 0) -> Any:
        """One input's stored spectrum from a spectroscopy specimen (``.format()`` prints it).

        Raises:
            NotFoundError: no such specimen or input. InvalidInputError: not a spectroscopy result.
        """
        from .engines.spectroscopy.engine import read_spectrum

        return read_spectrum(self.specimen(specimen_id), input_index)


    # -- runs, logging, import, diff, plot, notes ----------------------------------------
    def run(
        self, specimen_id: str, args: Sequence[str] = (), *, message: str = "",
        output: Any = None, timeout: float | None = None,
        code_dir: str | os.PathLike[str] | None = None,
    ) -> Any:
        """Run ``specimens/<id>/protocol.py`` and commit it with provenance if it exits 0.

        See :func:`cas_vault.run.run_protocol` (``output`` receives the output as it comes).

        Returns:
            A :class:`cas_vault.run.RunResult`.

        Raises:
            RunFailedError: non-zero exit or timeout; nothing committed, the log is kept.
            ImmutableError: already committed. NotFoundError: no specimen or protocol.py.
        """
        from .run import run_protocol

        return run_protocol(self, specimen_id, args, message=message, output=output,
                            timeout=timeout, code_dir=code_dir)

    def start_specimen(self, specimen_id: str, **kwargs: Any) -> Any:
        """Log a training loop step by step into a specimen, committed when the block exits.

        ``with vault.start_specimen(ID, domain=D, method=M) as s: s.log({"loss": x}, step=i)``;
        keyword arguments are those of :class:`cas_vault.logger.SpecimenLogger`.

        Returns:
            A :class:`cas_vault.logger.SpecimenLogger` (a context manager).
        """
        from .logger import SpecimenLogger

        return SpecimenLogger(self, specimen_id, **kwargs)

    def import_legacy(self, path: str | os.PathLike[str]) -> Any:
        """Import a directory in the seed's layouts; see :func:`cas_vault.legacy.import_legacy`.

        Returns:
            A :class:`cas_vault.legacy.ImportReport` (problems are reported, not raised).

        Raises:
            NotFoundError: if ``path`` is not a directory.
        """
        from .legacy import import_legacy

        return import_legacy(self, path)

    def diff(self, a: str, b: str) -> Any:
        """Compare two committed specimens; see :func:`cas_vault.diff.diff_specimens`.

        Returns:
            A :class:`cas_vault.diff.SpecimenDiff`.

        Raises:
            NotFoundError: if either is not committed.
        """
        from .diff import diff_specimens

        return diff_specimens(self, a, b)

    def plot(
        self, metric: str, specimen_ids: Sequence[str] = (), *, where: str | None = None,
        output: str | os.PathLike[str] | None = None, log_y: bool = False,
    ) -> Any:
        """Draw one metric across specimens as a PNG; see :func:`cas_vault.plot.plot_metric`.

        Returns:
            A :class:`cas_vault.plot.PlotResult`.

        Raises:
            InvalidInputError: nothing to draw, bad output path or condition.
            NotFoundError: an explicit specimen is missing or lacks the metric.
        """
        from .plot import plot_metric

        return plot_metric(self, metric, specimen_ids, where=where, output=output, log_y=log_y)

    def note(self, specimen_id: str, text: str) -> Path:
        """Append a timestamped entry to an uncommitted specimen's ``field_notes.md``.

        Returns:
            The notes file.

        Raises:
            ImmutableError: the specimen is committed (notes go into a new specimen).
            NotFoundError: no such specimen. InvalidInputError: empty text.
        """
        from .notes import append_note

        return append_note(self, specimen_id, text)


class CommittedSpecimen:
    """Read access to a committed specimen, straight from the object store.

    Args:
        vault: the vault.
        specimen_id: the specimen.
        commit: its commit.
    """

    def __init__(self, vault: Vault, specimen_id: str, commit: Commit) -> None:
        self.vault = vault
        self.specimen_id = specimen_id
        self.commit = commit

    @property
    def files(self) -> dict[str, TreeEntry]:
        """Relative path -> tree entry."""
        return dict(self.commit.tree)

    def object_path(self, rel: str) -> Path:
        """Path of the object holding file ``rel`` (for zero-copy readers such as DuckDB).

        Raises:
            NotFoundError: if the specimen has no such file.
        """
        entry = self.commit.tree.get(rel)
        if entry is None:
            raise NotFoundError(f"specimen {self.specimen_id} has no file {rel!r}")
        return self.vault.objects.path(entry.digest)

    def read_bytes(self, rel: str) -> bytes:
        """Return file ``rel``'s bytes, verified against its digest."""
        self.object_path(rel)
        return self.vault.objects.get(self.commit.tree[rel].digest)

    def read_metrics(self, name: str = "metrics") -> Any:
        """Read ``strata/<name>.parquet`` as a polars DataFrame."""
        import polars as pl

        return pl.read_parquet(self.object_path(f"strata/{name}.parquet"))

    def read_config(self, name: str = "config") -> dict[str, Any]:
        """Read ``strata/<name>.msgpack``."""
        return canonical.unpackb(self.read_bytes(f"strata/{name}.msgpack"))

    def tensors(self) -> list[str]:
        """Names of the specimen's tensors (``strata/<name>.zarr``)."""
        from .tensors import list_tree_tensors

        return list_tree_tensors(self.commit.tree)

    def tensor(self, name: str, *, verify: bool = True) -> Any:
        """Open tensor ``name`` as a lazy, read-only ``zarr.Array`` over the object store.

        Reading one row of a large tensor reads the one chunk holding it; every chunk read is
        verified against its digest unless ``verify=False``.

        Raises:
            NotFoundError: if the specimen has no such tensor (the message lists those it has).
            IntegrityError: on reading a chunk whose object is missing or altered.
        """
        from .tensors import open_tree_tensor

        check_name(name, "tensor")
        tree = {p: e.digest for p, e in self.commit.tree.items()}
        return open_tree_tensor(self.vault.objects, tree, name,
                                where=f"specimen {self.specimen_id}", verify=verify)


def _split_working_files(
    wd: Path, files: list[str], indexed: dict[str, Digest], objects: ObjectStore,
) -> tuple[list[str], list[str]]:
    """Sort working files into those to copy and those the working index already stores.

    Vaults written before working files and objects stopped sharing inodes hold tensor files
    that are hard links to their objects; those are sealed from the index, and the caller
    removes the links once the ref exists, so no working path leads to a sealed inode.

    Returns:
        ``(files to copy, working files that are hard links to their indexed objects)``.

    Raises:
        InvalidInputError: if a file that the working index stores exists as a separate file
            in the working directory as well (written by other means: which one to seal?).
    """
    from .tensors import index_conflict

    prefixes = {p[: p.index(".zarr/") + 5] for p in indexed if ".zarr/" in p}
    copy, shared = [], []
    for rel in files:
        digest = indexed.get(rel)
        if digest is not None:
            try:
                st, ost = os.stat(wd / rel), objects.path(digest).stat()
            except FileNotFoundError:
                st = ost = None
            if st is not None and ost is not None and (st.st_ino, st.st_dev) == (ost.st_ino, ost.st_dev):
                shared.append(rel)
                continue
        under = next((p for p in prefixes if rel == p or rel.startswith(p + "/")), None)
        if digest is not None or under is not None:
            raise InvalidInputError(index_conflict(wd, under or rel))
        copy.append(rel)
    return copy, shared


def _unshare(wd: Path, paths: list[str]) -> None:
    """Remove working hard links to sealed objects (their bytes are read through the index)."""
    for rel in paths:
        try:
            os.unlink(wd / rel)
        except FileNotFoundError:
            pass


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _check_tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):
        tags = [t for t in tags.split(",")]
    if not isinstance(tags, (list, tuple, set, frozenset)):
        raise InvalidInputError(f"tags must be a list of strings, not {type(tags).__name__}")
    out: list[str] = []
    for t in tags:
        if not isinstance(t, str):
            raise InvalidInputError(f"tag {t!r} must be a string")
        t = t.strip()
        if not t or any(ord(c) < 32 for c in t) or len(t) > 128:
            raise InvalidInputError(f"tag {t!r} must be 1-128 printable characters")
        if t not in out:
            out.append(t)
    return out


def _manifest_from_working(raw: dict[str, Any], wd: Path) -> Manifest:
    for key in ("domain", "method"):
        if not isinstance(raw.get(key), str):
            raise InvalidInputError(
                f"{wd / MANIFEST_NAME} has no valid {key!r}; recreate the specimen with `vault new`"
            )
    taxonomy.check(raw["domain"], raw["method"])
    parents = raw.get("parents", [])
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise InvalidInputError(f"{wd / MANIFEST_NAME}: 'parents' must be a list of specimen ids")
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, dict):
        raise InvalidInputError(f"{wd / MANIFEST_NAME}: 'metadata' must be a map")
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidInputError(f"{wd / MANIFEST_NAME}: 'model' must be a string")
    return Manifest(raw["domain"], raw["method"], model, tuple(_check_tags(raw.get("tags", []))), metadata)
