"""Working directories: ``specimens/<id>/``, where experiments write before sealing.

A working directory holds ``manifest.msgpack`` (what ``vault new`` recorded), ``protocol.py``,
``field_notes.md`` and the results: ``strata/`` (the seed's first API), or one directory per
run of the protocol, ``runs/<run_id>/`` (the original's later API). A hidden ``.cas/`` folder
holds the working index: for files that were written straight into the object store (tensor
chunks), the digest they were stored under, so committing does not hash or copy them again.
Those files exist only in ``objects/``: no working path ever leads to an object's inode, so
nothing written through a working directory can change sealed bytes.

Every writer (``SpecimenStorage``, tensor writers, the step logger, ``vault note``) holds the
working directory's lock shared while it writes; a commit holds it exclusively, so it never
seals a half-written file of a writer that plays by these rules. Under that lock a writer asks
:func:`check_writable` whether its path may change: nothing may once the specimen is sealed,
except the files of a run that the sealed tree does not hold.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import canonical, taxonomy
from .atomic import FileLock, file_identity, write_replace
from .commit import Manifest
from .digest import Digest, is_digest
from .errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from .objects import ObjectStore

__all__ = [
    "COMMIT_LOCK_TIMEOUT",
    "COPIES_PATH",
    "WorkingCopies",
    "file_identity",
    "INDEX_PATH",
    "LOCK_PATH",
    "MANIFEST_NAME",
    "PRIVATE_DIR",
    "RUNS_DIR",
    "WorkingIndex",
    "check_tags",
    "check_uncommitted",
    "check_writable",
    "iter_files",
    "manifest_from_working",
    "read_manifest",
    "run_of",
    "sealed_paths",
    "sealing",
    "writing",
]

MANIFEST_NAME = "manifest.msgpack"
PRIVATE_DIR = ".cas"
INDEX_PATH = f"{PRIVATE_DIR}/index.msgpack"
#: Objects made at write time from working files, with the file's identity then.
COPIES_PATH = f"{PRIVATE_DIR}/copies.msgpack"
#: flock(2) file: writers hold it shared, a commit exclusively.
LOCK_PATH = f"{PRIVATE_DIR}/write.lock"
#: Seconds a commit waits for the writers of its working directory to finish.
COMMIT_LOCK_TIMEOUT = 60.0
#: The directory holding one directory per run, ``runs/<run_id>/`` (the runs layout).
RUNS_DIR = "runs"


class _WorkdirLock(FileLock):
    """The working-directory lock, with errors that say who holds it and what to do."""

    def __init__(self, specimen_dir: Path, shared: bool, timeout: float) -> None:
        super().__init__(specimen_dir / LOCK_PATH, timeout=timeout, shared=shared)
        self.specimen_dir = specimen_dir

    def acquire(self) -> None:
        from .errors import LockTimeoutError

        try:
            super().acquire()
        except LockTimeoutError:
            name = self.specimen_dir.name
            if self.shared:
                raise LockTimeoutError(
                    f"specimen {name} is being committed and its commit has held the working "
                    f"directory for over {self.timeout:.0f} s; wait for it and try again"
                ) from None
            raise LockTimeoutError(
                f"specimen {name} is still being written (a SpecimenStorage write, an open "
                f"tensor writer or a step logger holds {self.path} for over "
                f"{self.timeout:.0f} s); commit it when the writer has finished"
            ) from None


def check_uncommitted(specimen_dir: Path) -> None:
    """Refuse to write into a working directory whose specimen is sealed.

    Writers call it while they hold :func:`writing`, so no commit can start in between.

    Args:
        specimen_dir: ``<vault>/specimens/<id>``.

    Raises:
        ImmutableError: if ``<vault>/refs/<id>`` exists.
    """
    from .errors import ImmutableError

    name = specimen_dir.name
    if (specimen_dir.parent.parent / "refs" / name).exists():
        raise ImmutableError(
            f"specimen {name} is committed and can no longer change; create a new specimen "
            f"for new results (vault new NEW_ID --parent {name} ...)"
        )


def sealed_paths(specimen_dir: Path) -> frozenset[str] | None:
    """The relative paths of a working directory's sealed commit tree.

    Args:
        specimen_dir: ``<vault>/specimens/<id>``.

    Returns:
        Every path of the tree of the commit ``<vault>/refs/<id>`` names, or None if the
        specimen has no ref.

    Raises:
        InvalidInputError: if the ref does not hold a commit digest.
        IntegrityError: if the commit object it names is missing, altered or not a commit.
    """
    from .commit import Commit
    from .errors import IntegrityError
    from .objects import ObjectStore
    from .refs import RefStore

    root = specimen_dir.parent.parent
    digest = RefStore.of_vault(root).get(specimen_dir.name)
    if digest is None:
        return None
    try:
        commit = Commit.from_bytes(ObjectStore.of_vault(root).get(digest))
    except (NotFoundError, InvalidInputError) as exc:
        # A writer that cannot tell what is sealed must not guess: refuse, and say why.
        raise IntegrityError(
            f"the commit {digest} of specimen {specimen_dir.name} cannot be read ({exc}); "
            "run `vault verify`"
        ) from None
    return frozenset(commit.tree)


def run_of(rel_path: str) -> str | None:
    """The run a working path belongs to: ``<run_id>`` for ``runs/<run_id>/...``, else None."""
    parts = rel_path.split("/")
    if len(parts) >= 2 and parts[0] == RUNS_DIR and parts[1]:
        return parts[1]
    return None


def check_writable(specimen_dir: Path, rel_path: str) -> None:
    """Refuse a write of ``rel_path`` that would change what a commit sealed.

    The one rule for everything a writer puts in a working directory of a vault (results,
    tensors), checked while it holds :func:`writing`, so no commit can start in between:

    - a path of a run, ``runs/<run_id>/...``, may be written unless the run is sealed: the
      run has a ref of its own (``<id>.run_<run_id>``, :func:`~cas_vault.ids.run_specimen_id`),
      or the specimen's sealed tree (:func:`sealed_paths`) holds a path of the run. A sealed
      specimen takes new runs (a later commit seals them), but a sealed run never changes,
      not even by a file it lacked;
    - any other path (``strata/...``) only while the specimen has no ref.

    Args:
        specimen_dir: ``<vault>/specimens/<id>``.
        rel_path: the path written, relative to ``specimen_dir`` (a tensor's array directory
            for a tensor).

    Raises:
        ImmutableError: if the write is refused.
        InvalidInputError, IntegrityError: if the sealed tree cannot be read
            (:func:`sealed_paths`).
    """
    from .errors import ImmutableError
    from .ids import run_specimen_id

    run = run_of(rel_path)
    if run is None:
        check_uncommitted(specimen_dir)
        return
    name = specimen_dir.name
    try:
        own_ref = (specimen_dir.parent.parent / "refs" / run_specimen_id(name, run)).exists()
    except InvalidInputError:
        own_ref = False  # no valid id to be sealed under, so it never was
    sealed = sealed_paths(specimen_dir)
    run_dir = f"{RUNS_DIR}/{run}"
    if own_ref or (sealed is not None and any(
            p == run_dir or p.startswith(run_dir + "/") for p in sealed)):
        raise ImmutableError(
            f"run {run} of specimen {name} is sealed (committed), so {rel_path} can no longer "
            "be written; start a new run for new results with SpecimenStorage(path)"
        )


def writing(specimen_dir: Path, timeout: float = 600.0) -> FileLock:
    """The lock a writer holds (shared) while it writes into a working directory.

    Args:
        specimen_dir: the working directory (must exist).
        timeout: seconds to wait for a commit in progress.

    Returns:
        A context manager; writers check "not committed yet" once they hold it.
    """
    return _WorkdirLock(specimen_dir, shared=True, timeout=timeout)


def sealing(specimen_dir: Path, timeout: float = COMMIT_LOCK_TIMEOUT) -> FileLock:
    """The lock a commit holds (exclusive) from reading the working directory to its ref.

    Args:
        specimen_dir: the working directory.
        timeout: seconds to wait for writers to finish.

    Returns:
        A context manager.
    """
    return _WorkdirLock(specimen_dir, shared=False, timeout=timeout)


#: Directory levels below a working directory that a commit accepts. No experiment needs more,
#: and a deeper tree (a runaway recursion in a protocol) is refused before anything is written
#: rather than sealed into a tree nobody can check out on a system with a 4096-byte path limit.
MAX_TREE_DEPTH = 256


def iter_files(root: Path) -> Iterator[str]:
    """Yield the relative POSIX paths of every regular file under ``root`` that a commit seals.

    Skipped: the private ``.cas/`` folder, temp files (``.*.tmp``), ``__pycache__`` folders.
    Symlinks are refused rather than followed, because a link could pull bytes from outside.
    The walk keeps its own stack, so a deep tree is refused with a message, not a
    RecursionError (``os.walk`` recurses once per directory level).

    Args:
        root: the working directory.

    Yields:
        Paths relative to ``root``, ``/``-separated: each directory's files in name order,
        then its subdirectories, depth first.

    Raises:
        InvalidInputError: if a symlink or special file is found, a name is not valid UTF-8
            (tree paths are text), a directory cannot be read, or the tree is more than
            :data:`MAX_TREE_DEPTH` directories deep.
    """

    def shown(path: str) -> str:
        # Undecodable bytes come back from the OS as lone surrogates: show them as \xNN.
        return os.fsencode(path).decode("utf-8", "backslashreplace")

    def utf8(path: str, full: str) -> None:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError(
                f"{shown(full)} has a name that is not valid UTF-8; rename it (a sealed tree "
                "names its files by UTF-8 text)"
            ) from None

    top = os.fspath(root)
    stack: list[tuple[str, int]] = [("", 0)]  # (directory relative to root, its depth)
    while stack:
        rel_dir, depth = stack.pop()
        dirpath = os.path.join(top, rel_dir) if rel_dir else top
        try:
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            continue  # removed while we walked; its files are not there to seal
        except OSError as exc:
            raise InvalidInputError(
                f"{shown(dirpath)} cannot be read ({exc.strerror or exc}); a commit must see "
                "every file of the specimen"
            ) from None
        subdirs: list[str] = []
        for entry in entries:
            name = entry.name
            if name.startswith(".") and name.endswith(".tmp"):
                continue
            if ((not rel_dir and name == PRIVATE_DIR) or name == "__pycache__") and entry.is_dir():
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if entry.is_symlink():
                raise InvalidInputError(
                    f"{shown(entry.path)} is a symlink; copy the data into the specimen"
                )
            if entry.is_dir(follow_symlinks=False):
                utf8(name, entry.path)
                subdirs.append(rel)
                continue
            if not entry.is_file(follow_symlinks=False):
                raise InvalidInputError(
                    f"{shown(entry.path)} is a symlink or special file; copy the data into the "
                    "specimen"
                )
            utf8(name, entry.path)
            yield rel
        if subdirs and depth + 1 > MAX_TREE_DEPTH:
            parts = subdirs[0].split("/")
            deep = "/".join([*parts[:2], "...", parts[-1]])
            raise InvalidInputError(
                f"{shown(os.path.join(top, deep))} is more than {MAX_TREE_DEPTH} directory "
                f"levels below {shown(top)}; a specimen's files may be at most {MAX_TREE_DEPTH} "
                "directories deep: flatten the tree, then commit"
            )
        stack.extend((d, depth + 1) for d in reversed(subdirs))


def read_manifest(specimen_dir: Path) -> dict[str, Any]:
    """Read and validate a working directory's ``manifest.msgpack``.

    Raises:
        NotFoundError: if the manifest is missing.
        InvalidInputError: if it is corrupt or lacks required fields.
    """
    path = specimen_dir / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(
            f"{path} is missing; scaffold specimens with `vault new ID --domain D --method M`"
        ) from None
    value = canonical.unpackb(data, f"manifest {path}")
    if not isinstance(value, dict):
        raise InvalidInputError(f"manifest {path} is not a map; recreate it with `vault new`")
    return value


def check_tags(tags: Iterable[str]) -> list[str]:
    """Validate free tags: a list of 1-128 printable characters each (a string is split on commas).

    Returns:
        The stripped tags, duplicates removed, in order.

    Raises:
        InvalidInputError: for a non-list, a non-string or an unprintable tag.
    """
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


def manifest_from_working(raw: dict[str, Any], wd: Path, *, table: taxonomy.Table) -> Manifest:
    """The commit manifest of a working directory's decoded ``manifest.msgpack``.

    Args:
        raw: the decoded manifest (:func:`read_manifest`).
        wd: the working directory (for messages).
        table: the taxonomy its domain/method pair must be in (the vault's:
            :func:`cas_vault.taxonomies.commit_table`).

    Raises:
        InvalidInputError: for a missing or mistyped field.
        TaxonomyError: for a domain/method pair outside ``table``.
    """
    for key in ("domain", "method"):
        if not isinstance(raw.get(key), str):
            raise InvalidInputError(
                f"{wd / MANIFEST_NAME} has no valid {key!r}; recreate the specimen with `vault new`"
            )
    taxonomy.check(raw["domain"], raw["method"], table)
    parents = raw.get("parents", [])
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise InvalidInputError(f"{wd / MANIFEST_NAME}: 'parents' must be a list of specimen ids")
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, dict):
        raise InvalidInputError(f"{wd / MANIFEST_NAME}: 'metadata' must be a map")
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidInputError(f"{wd / MANIFEST_NAME}: 'model' must be a string")
    return Manifest(raw["domain"], raw["method"], model, tuple(check_tags(raw.get("tags", []))), metadata)


class WorkingIndex:
    """Digests of working files that are already objects (``.cas/index.msgpack``).

    Args:
        specimen_dir: the working directory.
    """

    def __init__(self, specimen_dir: Path) -> None:
        self.specimen_dir = specimen_dir
        self.path = specimen_dir / INDEX_PATH

    def load(self, strict: bool = False) -> dict[str, Digest]:
        """Return relative path -> digest (empty when there is no index).

        The index is the only record of the tensors written into ``objects/``, so a commit
        reads it strictly: sealing without a damaged index's tensors would lose them silently.

        Args:
            strict: raise on a damaged index instead of returning what can be read of it.

        Raises:
            IntegrityError: with ``strict``, if the index cannot be decoded or holds an entry
                that is not a relative path -> digest.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            value = canonical.unpackb(data, "working index")
        except InvalidInputError:
            value = None
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) and is_digest(v) for k, v in value.items())
        if not ok and strict:
            from .errors import IntegrityError

            raise IntegrityError(
                f"the working index {self.path} is damaged, so the tensors written into "
                f"objects/ for {self.specimen_dir.name} cannot be listed; write them again "
                "(SpecimenStorage.write_tensors) after removing the file, then commit"
            )
        if not isinstance(value, dict):
            return {}
        return {k: Digest(v) for k, v in value.items() if isinstance(k, str) and is_digest(v)}

    def update(self, entries: dict[str, Digest], remove_prefix: str | None = None) -> None:
        """Merge ``entries`` into the index, first dropping paths under ``remove_prefix``."""
        current = self.load()
        if remove_prefix is not None:
            current = {k: v for k, v in current.items()
                       if not (k == remove_prefix or k.startswith(remove_prefix + "/"))}
        current.update(entries)
        self.path.parent.mkdir(exist_ok=True)
        write_replace(self.path, canonical.packb(current))


class WorkingCopies:
    """Objects already made from working files (``.cas/copies.msgpack``), so commit need not.

    ``SpecimenStorage`` stores every file it writes as an object at once (its bytes are in
    memory then), and records here the working file's path, the object's digest and the
    file's identity (:func:`file_identity`) after the write. A commit seals such a file from
    its record only while the identity is unchanged; anything else is copied as usual. The
    objects are live while recorded (gc's working-index rule).

    Args:
        specimen_dir: the working directory.
    """

    def __init__(self, specimen_dir: Path) -> None:
        self.specimen_dir = specimen_dir
        self.path = specimen_dir / COPIES_PATH

    def load(self) -> dict[str, tuple[Digest, list[int]]]:
        """Return relative path -> (digest, identity); a damaged record is empty (a cache)."""
        try:
            value = canonical.unpackb(self.path.read_bytes(), "working copies")
        except (FileNotFoundError, InvalidInputError):
            return {}
        if not isinstance(value, dict):
            return {}
        out = {}
        for k, v in value.items():
            if (isinstance(k, str) and isinstance(v, list) and len(v) == 6
                    and isinstance(v[0], str) and is_digest(v[0])
                    and all(type(x) is int for x in v[1:])):
                out[k] = (Digest(v[0]), list(v[1:]))
        return out

    def record(self, entries: dict[str, tuple[Digest, list[int]]]) -> None:
        """Record (or replace) the copies of some paths; the caller holds the index lock.

        Args:
            entries: relative path -> (digest of its object, :func:`file_identity` after the
                write).
        """
        current = {k: [d, *ident] for k, (d, ident) in self.load().items()}
        current.update({k: [d, *ident] for k, (d, ident) in entries.items()})
        self.path.parent.mkdir(exist_ok=True)
        # Not fsynced: a record lost in a crash only means the commit copies the file again.
        write_replace(self.path, canonical.packb(current), sync_dir=False, sync=False)

    def store(self, objects: ObjectStore, files: dict[str, bytes | memoryview]) -> None:
        """Store working files just written as objects, and record them.

        Their bytes are in memory now; at commit they would have to be read and copied.
        No directory is fsynced: nothing durable depends on these names until a commit, which
        fsyncs the fan-out directory of every object it seals. A crash leaves at worst an
        unused object, and a lost record only means a copy at commit.

        Args:
            objects: the vault's object store.
            files: relative path -> the bytes the working file was just written with.
        """
        # The objects are live once the record names them; until then gc must wait.
        with objects.writing():
            stored = {}
            for rel, data in files.items():
                digest = objects.put_bytes(data, sync_dir=False)
                st = os.stat(self.specimen_dir / rel, follow_symlinks=False)
                stored[rel] = (digest, file_identity(st))
            with FileLock(self.specimen_dir / PRIVATE_DIR / "index.lock"):
                self.record(stored)
