"""The seal pipeline: a working directory becomes an immutable commit.

Read top to bottom, a commit:

1. takes the working directory's lock exclusively (:func:`cas_vault.workdir.sealing`), so no
   writer that uses cas-vault's API is half-way through a file;
2. runs the ``prepare`` hooks (features that add to the manifest before sealing, such as the
   step logger assembling a crashed run's logs);
3. copies every working file into ``objects/`` while hashing it (or reuses the object made when
   the file was written, if the file is unchanged), and takes tensor chunks from the working
   index, where they are objects already;
4. makes the objects durable, then the commit object, then creates the ref (and its journal
   line) under the gc lock, so gc never prunes an object a commit is about to reference;
5. removes working hard links to sealed objects left by older versions;
6. runs the ``sealed`` hooks (the catalog), or counts the commit for the ``batch_done`` hooks
   when inside :func:`batch`. Derived data never fails or undoes a commit.

The core names no feature: features register hooks (:mod:`cas_vault.hooks`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import canonical, hooks
from .atomic import FileLock
from .commit import AUTHOR_ENV, Commit, Manifest, TreeEntry, default_author, kind_of, utc_now
from .digest import Digest
from .errors import IntegrityError, InvalidInputError, NotFoundError
from .ids import run_specimen_id, validate_id
from .objects import ObjectStore
from .progress import Progress, Tally
from .storage import STRATA_DIR, check_run_id, run_sort_key
from .taxonomies import commit_table
from .tensors import index_conflict
from .workdir import (
    COMMIT_LOCK_TIMEOUT,
    MANIFEST_NAME,
    RUNS_DIR,
    WorkingCopies,
    WorkingIndex,
    file_identity,
    iter_files,
    manifest_from_working,
    read_manifest,
    run_of,
    sealing,
)

#: Working files a run's commit holds besides the run's own (as ``import-legacy`` keeps them).
RUN_SHARED_FILES = ("protocol.py", "field_notes.md", MANIFEST_NAME)

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["AUTHOR_ENV", "BatchState", "default_author", "RUN_SHARED_FILES", "after_commit", "batch",
           "commit", "run_manifest", "unsealed_runs"]

R = TypeVar("R", bound="Repository")


@dataclass
class BatchState:
    """Commits made inside :func:`batch` blocks of one repository object.

    Attributes:
        depth: how many ``batch`` blocks are open (they nest).
        commits: commits sealed since the outermost block opened.
    """

    depth: int = 0
    commits: int = 0


def commit(
    repo: Repository,
    specimen_id: str,
    *,
    message: str = "",
    parents: Sequence[str] = (),
    author: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
    partial: bool = False,
    lock_timeout: float = COMMIT_LOCK_TIMEOUT,
    progress: Progress | None = None,
) -> list[Commit]:
    """Seal ``specimens/<id>/`` as immutable commits and create their refs.

    A specimen is sealed once, as ``<id>``: everything in its working directory except its
    runs. Each run, ``runs/<run_id>/``, is sealed once, as the specimen ``<id>.run_<run_id>``
    whose parent is the run sealed before it (or the specimen): so sealing a specimen whose
    protocol ran again since its last commit seals only the new runs, and what was sealed
    before never changes (docs/format.md, "Runs").

    Working files are copied into ``objects/`` (hashed from the same open file as they are
    copied, so the sealed bytes are exactly the hashed ones, and later writes to a working
    file never reach them); tensor chunks listed in the working index are objects already.
    Objects are durable before the commit object, the commit before the ref, the ref
    before its journal line. The working directory's lock is held throughout, so writers
    using cas-vault's API are never sealed half-way.

    Args:
        repo: the repository to seal into.
        specimen_id: the working directory to seal.
        message: the commit message (of each commit made).
        parents: extra parents (specimen ids or commit digests) beyond the manifest's, of the
            specimen's own commit.
        author: defaults to ``$CAS_VAULT_AUTHOR`` or the login name.
        extra_metadata: merged into the manifest's metadata of each commit made (e.g.
            provenance).
        partial: seal a specimen whose run crashed: assemble its unfinished step-wise
            logs into ``strata/`` and set ``metadata.partial = true``. Without it, a
            specimen with an unfinished log is refused (docs/runs.md).
        lock_timeout: seconds to wait for writers of the working directory to finish.
        progress: called with ``(advance_bytes, total_bytes)`` once per working file sealed
            (copied into ``objects/``, or reused unchanged), by its size; tensor chunks
            already in ``objects/`` count nothing. The total grows as each run's files are
            listed (:mod:`cas_vault.progress`).

    Returns:
        The commits made, in order: the specimen's own (unless it was sealed before), then one
        per new run, oldest first (``commit.digest`` is each one's id).

    Raises:
        ImmutableError: if the specimen is committed already and has no new run (names the
            commit).
        NotFoundError: if the working directory, manifest or a parent is missing.
        InvalidInputError: for a corrupt manifest, bad taxonomy, symlinks, bad message, or a
            run whose id cannot be part of a specimen id (nothing is sealed then).
        FileChangedError: a working file changed while it was copied (that commit is not
            made; those before it stand).
        LockTimeoutError: a writer kept the working directory for too long.
    """
    validate_id(specimen_id)
    advice = (f"committed specimens never change: create a new one with "
              f"`vault new NEW_ID --parent {specimen_id}`, or run its protocol again to add "
              "a run (docs/runs.md)")
    if not isinstance(message, str):
        raise InvalidInputError("commit message must be a string")
    if not isinstance(partial, bool):
        raise InvalidInputError(f"partial must be True or False, not {partial!r}")
    wd = repo.specimen_dir(specimen_id)
    if not wd.is_dir():
        repo.check_uncommitted(specimen_id, advice)
        raise NotFoundError(
            f"specimen {specimen_id} has no working directory at {wd}; "
            f"create it with `vault new {specimen_id} --domain D --method M`"
        )
    made: list[tuple[str, Digest, Commit]] = []
    shared: list[str] = []
    tally = Tally(progress) if progress is not None else None
    # Writers that play by the rules (SpecimenStorage, tensor writers, the step logger,
    # notes) hold this lock shared while they write: none is half-way through a file now,
    # and none starts before the ref exists (they check for it under the lock).
    try:
        with sealing(wd, timeout=lock_timeout):
            own = repo.refs.get(specimen_id)
            runs = unsealed_runs(repo, specimen_id, wd)
            if own is not None and not runs:
                repo.check_uncommitted(specimen_id, advice)
            if own is None:
                digest, c, links = _seal(
                    repo, specimen_id, wd, _outside_runs, message=message, parents=parents,
                    author=author, extra_metadata=extra_metadata, partial=partial, tally=tally)
                made.append((specimen_id, digest, c))
                shared += links
                previous = digest
            else:
                previous = repo.latest(specimen_id)
            for run_id, sealed_as in runs:
                digest, c, links = _seal(
                    repo, sealed_as, wd, _in_run(run_id), message=message, parents=[previous],
                    author=author, extra_metadata=extra_metadata, partial=False,
                    run=(specimen_id, run_id), tally=tally)
                made.append((sealed_as, digest, c))
                shared += links
                previous = digest
    finally:
        _unshare(wd, shared)
        for sealed_as, digest, c in made:
            after_commit(repo, sealed_as, digest, c)
    return [c for _, _, c in made]


def _outside_runs(rel: str) -> str | None:
    """The specimen's own commit holds every working file but those of its runs."""
    return None if run_of(rel) is not None else rel


def _in_run(run_id: str) -> Callable[[str], str | None]:
    """A run's commit holds the run's files under ``strata/``, with the specimen's protocol
    and notes (deduplicated, so they cost nothing): the layout ``import-legacy`` gives a run."""

    def tree_path(rel: str) -> str | None:
        if rel in RUN_SHARED_FILES:
            return rel
        if run_of(rel) == run_id:
            return f"{STRATA_DIR}/{rel.split('/', 2)[2]}"
        return None

    return tree_path


def unsealed_runs(repo: Repository, specimen_id: str, wd: Path) -> list[tuple[str, str]]:
    """``(run id, id it is sealed as)`` of each run in ``wd`` that has files and no ref yet,
    oldest first: the runs the next commit of ``specimen_id`` seals.

    A run has files when a file lies below ``runs/<run_id>/`` or the working index names a
    path there; a run directory made but never written to is not one.

    Args:
        repo: the repository (for its refs).
        specimen_id: the specimen.
        wd: its working directory.

    Raises:
        InvalidInputError: for a run whose id cannot be part of a specimen id, or a file
            ``iter_files`` refuses (a symlink, ...).
        IntegrityError: if the working index is damaged.
    """
    runs_dir = wd / RUNS_DIR
    if not runs_dir.is_dir():
        return []
    indexed = WorkingIndex(wd).load(strict=True)
    with_files = {r for r in map(run_of, indexed) if r is not None}
    names = sorted((e.name for e in os.scandir(runs_dir) if e.is_dir(follow_symlinks=False)),
                   key=run_sort_key)
    out: list[tuple[str, str]] = []
    for run_id in names:
        if run_id not in with_files and not any(iter_files(runs_dir / run_id)):
            continue  # made but never written to: nothing to seal
        try:
            sealed_as = run_specimen_id(specimen_id, check_run_id(run_id))
        except InvalidInputError as exc:
            raise InvalidInputError(
                f"run {runs_dir / run_id} cannot be sealed: {exc}; rename the run directory"
            ) from None
        if repo.refs.get(sealed_as) is None:
            out.append((run_id, sealed_as))
    return out


def _seal(
    repo: Repository, sealed_as: str, wd: Path, tree_path: Callable[[str], str | None], *,
    message: str, parents: Sequence[str], author: str | None,
    extra_metadata: dict[str, Any] | None, partial: bool, run: tuple[str, str] | None = None,
    tally: Tally | None = None,
) -> tuple[Digest, Commit, list[str]]:
    """Copy part of a working directory into objects, write the commit object and its ref.

    The caller holds the working directory's lock exclusively.

    Args:
        repo: the repository.
        sealed_as: the id the commit is sealed under.
        wd: the working directory.
        tree_path: the path in the commit of each working path it holds (None: not held).
        message, parents, author, extra_metadata, partial: as :func:`commit` takes them.
        run: ``(specimen id, run id)`` when sealing a run: its manifest is the specimen's,
            with ``metadata.run`` naming the run, and ``parents`` are its only parents.
        tally: grown by the bytes of the working files to seal, advanced as each is sealed.

    Returns:
        ``(commit digest, commit, working paths that were hard links to objects)``.
    """
    raw = read_manifest(wd)
    manifest = manifest_from_working(raw, wd, table=commit_table(repo, run[0] if run else None))
    canonical.packb(manifest.to_map())  # unstorable metadata fails before any object is written
    extra = dict(extra_metadata or {})
    if run is None:
        for prepare in hooks.hooks("prepare"):  # features that act before the seal
            extra = prepare(wd, sealed_as, partial, extra) or {}
        parent_digests = repo.resolve_parents([*raw.get("parents", []), *parents])
    else:
        extra["run"] = {"specimen_id": run[0], "run_id": run[1]}
        parent_digests = repo.resolve_parents(parents)
    if extra:
        merged = dict(manifest.metadata)
        merged.update(extra)
        canonical.packb(merged)
        manifest = Manifest(manifest.domain, manifest.method, manifest.model, manifest.tags, merged)
    files = [rel for rel in iter_files(wd) if tree_path(rel) is not None]
    indexed = {rel: d for rel, d in WorkingIndex(wd).load(strict=True).items()
               if tree_path(rel) is not None}
    files, shared = _split_working_files(wd, files, indexed, repo.objects)
    sizes: dict[str, int] = {}
    if tally is not None:
        for rel in files:
            if run is None or rel != MANIFEST_NAME:  # a run's manifest is made, not copied
                try:
                    sizes[rel] = os.stat(wd / rel, follow_symlinks=False).st_size
                except OSError:
                    sizes[rel] = 0  # sealing it raises
        tally.grow(sum(sizes.values()))
    created = utc_now()
    # Writers hold the gc lock shared, so `vault gc --grace 0` never prunes objects that a
    # commit has written but not yet referenced.
    with FileLock(repo.gc_lock_path, shared=True):
        # One batch for the files and the commit object: every working file is copied to a
        # temp file while it is hashed, then all are made durable in two concurrent fsync
        # rounds (bytes, then names), before the ref can point at them. Files the working
        # index lists (tensor chunks) are objects already, made durable when written.
        batch = repo.objects.batch()
        try:
            tree: dict[str, TreeEntry] = {}
            copies = WorkingCopies(wd).load()
            for rel in files:
                path = tree_path(rel)
                assert path is not None
                if run is not None and rel == MANIFEST_NAME:
                    continue  # a run gets a manifest of its own, below
                stored = _stored_copy(repo, wd, rel, copies)
                if stored is not None:
                    batch.add_stored(stored[0])
                    tree[path] = TreeEntry(stored[0], stored[1], kind_of(path))
                else:
                    digest, size = batch.add_file(wd / rel)
                    tree[path] = TreeEntry(digest, size, kind_of(path))
                if tally is not None:
                    tally.advance(sizes[rel])
            for rel, digest in indexed.items():
                path = tree_path(rel)
                assert path is not None
                tree[path] = TreeEntry(digest, _indexed_size(repo, sealed_as, rel, digest),
                                       kind_of(path))
            if run is not None:
                data = run_manifest(raw, sealed_as, run[0], created, manifest.metadata)
                tree[MANIFEST_NAME] = TreeEntry(batch.add_bytes(data), len(data),
                                                kind_of(MANIFEST_NAME))
            tree = dict(sorted(tree.items()))
            commit = Commit(
                specimen_id=sealed_as, created=created,
                author=author or default_author(),
                message=message, manifest=manifest, parents=tuple(parent_digests), tree=tree,
            )
            digest = batch.add_bytes(commit.to_bytes())
            batch.add_move(*repo.refs.intent_temp(sealed_as, digest))
        except BaseException:
            batch.abort()
            raise
        batch.publish()
        repo.refs.create(sealed_as, digest, commit.created)
    return digest, commit, shared


def run_manifest(raw: dict[str, Any], sealed_as: str, parent_id: str, created: str,
                 metadata: dict[str, Any]) -> bytes:
    """The ``manifest.msgpack`` a run's commit holds: its specimen's, for the run.

    The same fields ``vault new`` writes, so a sealed run reads like any specimen (and like a
    run ``import-legacy`` brought in): its id, its specimen as parent, and the run's metadata.

    Args:
        raw: the specimen's working manifest.
        sealed_as: the run's specimen id.
        parent_id: the specimen the run belongs to.
        created: the commit's time.
        metadata: the run commit's manifest metadata.
    """
    return canonical.packb({
        "specimen_id": sealed_as, "domain": raw.get("domain"), "method": raw.get("method"),
        "model": raw.get("model"), "tags": list(raw.get("tags", [])), "parents": [parent_id],
        "created": created, "metadata": metadata,
    })


def _stored_copy(
    repo: Repository, wd: Path, rel: str, copies: dict[str, tuple[Digest, list[int]]],
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
    if file_identity(st) != got[1] or not repo.objects.has(got[0]):
        return None
    return got[0], st.st_size


def _indexed_size(repo: Repository, specimen_id: str, rel: str, digest: Digest) -> int:
    try:
        return repo.objects.size(digest)
    except NotFoundError:
        raise IntegrityError(
            f"{rel} of specimen {specimen_id} was written into objects/ as {digest}, which "
            "is missing now; write that tensor again (SpecimenStorage.write_tensors), then "
            "commit"
        ) from None


def after_commit(repo: Repository, specimen_id: str, digest: Digest, commit: Commit) -> None:
    """Run the ``sealed`` hooks (the catalog) after a ref exists; never raises."""
    if repo.batching.depth:
        repo.batching.commits += 1  # indexed once when the batch ends
        return
    for sealed in hooks.hooks("sealed"):
        try:
            sealed(repo, specimen_id, digest, commit)
        except Exception:  # the commit stands: derived data never undoes or fails it
            pass


@contextmanager


def batch(repo: R) -> Iterator[R]:
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
    repo.batching.depth += 1
    try:
        yield repo
    finally:
        repo.batching.depth -= 1
        if repo.batching.depth == 0 and repo.batching.commits:
            repo.batching.commits = 0
            for done in hooks.hooks("batch_done"):
                try:
                    done(repo)
                except Exception:  # derived data never fails the commits it describes
                    pass


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
    prefixes = {p[: p.index(".zarr/") + 5] for p in indexed if ".zarr/" in p}
    copy, shared = [], []
    for rel in files:
        digest = indexed.get(rel)
        if digest is not None:
            try:
                st = os.stat(wd / rel)
            except FileNotFoundError:
                st = None
            if st is not None and objects.shares_inode(digest, st):
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
