"""The content-addressed object store: ``objects/<2 hex>/<64 hex>``.

An object's name is the BLAKE3 digest of its exact bytes, with no header, so DuckDB, zarr
and any other reader can use the file in place. Objects are created once (put-if-absent),
made read-only, and never modified; only ``vault gc`` removes unreachable ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .atomic import fsync_dir, fsync_many, link_if_absent, put_if_absent, write_temp
from .digest import Digest, hash_bytes, hash_file, is_digest, parse_digest
from .errors import ChecksumMismatch, IntegrityError, NotFoundError

__all__ = ["ObjectBatch", "ObjectStore"]

_OBJECT_MODE = 0o444


class ObjectStore:
    """Blobs named by their BLAKE3 digest.

    Args:
        root: the ``objects/`` directory.
        tmp_dir: a directory on the same filesystem for temp files (``<vault>/tmp``).
    """

    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root = root
        self.tmp_dir = tmp_dir

    # -- naming -------------------------------------------------------------------------------
    def path(self, digest: Digest | str) -> Path:
        """Return the path an object with this digest has (whether or not it exists).

        Raises:
            InvalidInputError: if ``digest`` is malformed (it is never joined into a path then).
        """
        d = parse_digest(digest, "object digest")
        return self.root / d[:2] / d

    def has(self, digest: Digest | str) -> bool:
        """Return True if the object exists."""
        return self.path(digest).is_file()

    def size(self, digest: Digest | str) -> int:
        """Return the object's size in bytes.

        Raises:
            NotFoundError: if it does not exist.
        """
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"object {digest} is missing from {self.root}") from None

    # -- writing ------------------------------------------------------------------------------
    def put_bytes(
        self, data: bytes | bytearray | memoryview, expected: Digest | str | None = None,
        sync_dir: bool = True,
    ) -> Digest:
        """Store ``data`` and return its digest; existing objects are not rewritten.

        Args:
            data: the object's bytes.
            expected: if given, the digest the caller claims the bytes have.
            sync_dir: fsync the fan-out directory (callers batching many puts may do it once).

        Returns:
            The digest.

        Raises:
            ChecksumMismatch: if ``expected`` is given and the bytes hash to something else
                (nothing is written then).
            InvalidInputError: if ``expected`` is not a well-formed digest.
        """
        if expected is not None:
            parse_digest(expected, "expected digest")  # a malformed claim is bad input
        digest = hash_bytes(data)
        if expected is not None and digest != expected:
            raise ChecksumMismatch(str(expected), digest, "incoming object", incoming=True)
        path = self.path(digest)
        if not put_if_absent(path, data, self.tmp_dir, mode=_OBJECT_MODE, sync_dir=sync_dir):
            self._touch(path)
        return digest

    def put_file(self, src: Path, known: Digest | None = None) -> tuple[Digest, int]:
        """Store the file at ``src`` without copying its bytes: it is hard-linked into place.

        The file is hashed (unless it is already the object named ``known``), fsynced and
        linked to its object name, whose directory is then fsynced. Afterwards the working file
        and the object are one inode, made read-only: the sealed bytes are written once. To
        store many files, use :meth:`batch`, which waits for the disk twice in all.

        Args:
            src: a regular file on the vault's filesystem.
            known: a digest recorded for this file when it was written; trusted only if
                ``src`` already is that object (same inode).

        Returns:
            ``(digest, size)``.

        Raises:
            IntegrityError: if the file changed while it was being stored.
            OSError: if it cannot be read or linked.
        """
        batch = self.batch()
        out = batch.add_file(src, known)
        batch.publish()
        return out

    @staticmethod
    def _touch(path: Path) -> None:
        # A re-put refreshes the mtime so a concurrent gc's grace period protects it.
        try:
            os.utime(path)
        except OSError:
            pass

    def batch(self) -> ObjectBatch:
        """Return an :class:`ObjectBatch` that stores many files and blobs with two fsync rounds."""
        return ObjectBatch(self)

    # -- reading ------------------------------------------------------------------------------
    def get(self, digest: Digest | str, verify: bool = True) -> bytes:
        """Return an object's bytes.

        Args:
            digest: the object.
            verify: re-hash the bytes and refuse them if they do not match.

        Raises:
            NotFoundError: if the object is missing.
            ChecksumMismatch: if ``verify`` and the bytes were altered.
        """
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                f"object {digest} is missing from {self.root}; run `vault verify`"
            ) from None
        if verify:
            got = hash_bytes(data)
            if got != digest:
                raise ChecksumMismatch(str(digest), got)
        return data

    def open(self, digest: Digest | str) -> BinaryIO:
        """Open an object for reading (no verification: for ranged, lazy reads).

        Raises:
            NotFoundError: if the object is missing.
        """
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFoundError(f"object {digest} is missing from {self.root}") from None

    def iter_digests(self) -> Iterator[Digest]:
        """Yield the digest of every object present, in no particular order.

        Files in ``objects/`` whose names are not digests (strays) are skipped; verify reports them.
        """
        if not self.root.is_dir():
            return
        for fan in os.scandir(self.root):
            if not fan.is_dir() or len(fan.name) != 2:
                continue
            for entry in os.scandir(fan.path):
                if is_digest(entry.name) and entry.name[:2] == fan.name:
                    yield Digest(entry.name)


class ObjectBatch:
    """Stores many files and blobs at once, as a commit does, with few fsync rounds.

    Storing files one by one would fsync each file, link it, and fsync its fan-out directory:
    three waits for the disk per file. A batch hashes everything first, then makes every new
    object's bytes durable in one concurrent round, links them, and makes every name durable in
    a second round. The rule stays the one of docs/format.md: an object's bytes are durable
    before it has its name, and its name before :meth:`publish` returns (so before any commit
    or ref can point at it). Nothing is visible under an object name before :meth:`publish`.

    Args:
        store: the object store.

    Example::

        batch = store.batch()
        digest, size = batch.add_file(path)
        commit_digest = batch.add_bytes(commit_bytes)
        batch.publish()
    """

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._link: dict[Digest, tuple[Path, bool]] = {}  # digest -> (source, source is a temp)
        self._names: set[Digest] = set()  # objects whose fan-out directory must be fsynced
        self._existing: set[Digest] = set()  # stored before: refreshed for gc's grace period
        self._moves: list[tuple[Path, Path]] = []  # (temp file, destination) outside objects/
        self._published = False

    def add_file(self, src: Path, known: Digest | None = None) -> tuple[Digest, int]:
        """Hash the file at ``src`` for storing by hard link (no copy) when published.

        Args:
            src: a regular file on the vault's filesystem.
            known: a digest recorded when the file was written; trusted only if ``src``
                already is that object (same inode), in which case nothing is done at all:
                whoever linked it made it durable then.

        Returns:
            ``(digest, size)``.

        Raises:
            IntegrityError: if the file changed while it was being hashed.
            OSError: if it cannot be read.
        """
        st = src.stat()
        if known is not None and is_digest(known):
            try:
                ost = self.store.path(known).stat()
                if (ost.st_ino, ost.st_dev) == (st.st_ino, st.st_dev):
                    return known, st.st_size
            except FileNotFoundError:
                pass
        digest, size = hash_file(src)
        st2 = src.stat()
        if (st2.st_size, st2.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or size != st.st_size:
            raise IntegrityError(
                f"{src} changed while it was being committed; wait for whatever writes it "
                "to finish and commit again"
            )
        if self._stage(digest):
            self._link[digest] = (src, False)
        return digest, size

    def _stage(self, digest: Digest) -> bool:
        """Record ``digest``; return True if it needs a source linked to its name."""
        self._names.add(digest)
        if digest in self._link or digest in self._existing:
            return False
        if self.store.path(digest).exists():
            self._existing.add(digest)
            return False
        return True

    def add_bytes(self, data: bytes | bytearray | memoryview) -> Digest:
        """Stage ``data`` as an object (written to a temp file now, named when published).

        Returns:
            Its digest.
        """
        digest = hash_bytes(data)
        if self._stage(digest):
            self._link[digest] = (write_temp(self.store.tmp_dir, data, _OBJECT_MODE), True)
        return digest

    def add_move(self, tmp: Path, dest: Path) -> None:
        """Also put a file outside ``objects/`` into place, durably, in the same two rounds.

        ``tmp`` (written without fsync) is fsynced with the objects' bytes, linked to ``dest``
        unless ``dest`` exists (an existing file is never replaced: the caller checks it later
        under its own lock), and ``dest``'s directory is fsynced with the objects' directories.
        A commit uses it for its ref's intent file (docs/format.md section 5).

        Args:
            tmp: a temp file on the same filesystem as ``dest``; removed by :meth:`publish`.
            dest: its final name.
        """
        self._moves.append((tmp, dest))

    def publish(self) -> None:
        """Make every staged object durable under its name. Call once.

        Raises:
            OSError: on an I/O failure (temp files are removed; objects already linked are
                complete and durable-or-garbage, never partial).
        """
        if self._published:
            raise RuntimeError("ObjectBatch.publish() was called twice")
        self._published = True
        try:
            fsync_many([*(src for src, _ in self._link.values()), *(tmp for tmp, _ in self._moves)])
            for tmp, dest in self._moves:
                link_if_absent(tmp, dest, sync_dir=False)
            for digest, (src, is_temp) in self._link.items():
                dest = self.store.path(digest)
                try:
                    created = link_if_absent(src, dest, sync_dir=False)
                except OSError:
                    if is_temp:
                        raise
                    # A cross-device working directory: one copy (no link possible).
                    self.store.put_bytes(src.read_bytes(), expected=digest, sync_dir=False)
                    continue
                if not created:
                    ObjectStore._touch(dest)
                elif not is_temp:
                    os.chmod(dest, _OBJECT_MODE)
            for digest in self._existing:
                ObjectStore._touch(self.store.path(digest))
            # Existing objects are named here too: the process that linked them may have
            # crashed before fsyncing their directory.
            # In this thread, one after another: the first fsync commits the filesystem journal
            # transaction that holds every link above, so the others find nothing left to do
            # (handing each to a thread would cost more than it saves).
            for directory in dict.fromkeys([*(self.store.root / d[:2] for d in sorted(self._names)),
                                            *(dest.parent for _, dest in self._moves)]):
                fsync_dir(directory)
        finally:
            for src, is_temp in self._link.values():
                if is_temp:
                    src.unlink(missing_ok=True)
            for tmp, _ in self._moves:
                tmp.unlink(missing_ok=True)
