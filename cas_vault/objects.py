"""The content-addressed object store: ``objects/<2 hex>/<64 hex>``.

An object's name is the BLAKE3 digest of its exact bytes, with no header, so DuckDB, zarr
and any other reader can use the file in place. Objects are created once (put-if-absent),
made read-only, and never modified; only ``vault gc`` removes unreachable ones.
:class:`ObjectStore` is the local backend of the :class:`~cas_vault.store.ObjectBackend` contract;
its filesystem paths, batches and rehoming are local extras.

An object's inode is the store's alone: files are copied in (hashed while they are copied, from
one open file), never hard-linked, so no working path, and no process that opened a working
file earlier, can write to sealed bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .atomic import (
    FileLock,
    file_identity,
    fsync_dir,
    fsync_many,
    fsync_path,
    link_if_absent,
    makedirs_durable,
    put_if_absent,
    replace_with,
    temp_path,
    write_all,
    write_temp,
)
from .digest import Digest, Hasher, hash_bytes, is_digest, parse_digest
from .errors import ChecksumMismatch, FileChangedError, InvalidInputError, NotFoundError
from .store import object_key

__all__ = ["ObjectBatch", "ObjectStore"]

_OBJECT_MODE = 0o444
#: Bytes read and written per call when a file is copied into the store.
COPY_BLOCK = 4 << 20
#: Files up to this size are read whole and hashed before any temp file is made for them.
SMALL_FILE = 1 << 20


class ObjectStore:
    """Blobs named by their BLAKE3 digest, in a local directory.

    Implements :class:`~cas_vault.store.ObjectBackend` with the layout and the write protocol
    of docs/format.md (sections 3 and 8).

    Args:
        root: the ``objects/`` directory.
        tmp_dir: a directory on the same filesystem for temp files (``<vault>/tmp``).
    """

    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root = root
        self.tmp_dir = tmp_dir

    @classmethod
    def of_vault(cls, vault_root: Path) -> ObjectStore:
        """The object store of the vault at ``vault_root`` (``objects/``, temp files in ``tmp/``).

        For code below the repository (tensor writers, ``SpecimenStorage``), which needs the
        store and its writer lock, not a whole :class:`~cas_vault.repository.Repository`.
        """
        return cls(vault_root / "objects", vault_root / "tmp")

    @property
    def writer_lock_path(self) -> Path:
        """The lock writers hold shared while they create objects, and gc exclusively."""
        return self.root.parent / "locks" / "gc.lock"

    def writing(self, timeout: float = 60.0) -> FileLock:
        """Hold the store's writer lock shared: gc never prunes an object made meanwhile.

        Args:
            timeout: seconds to wait for a running gc.

        Returns:
            The lock, as a context manager.
        """
        return FileLock(self.writer_lock_path, timeout=timeout, shared=True)

    # -- naming -------------------------------------------------------------------------------
    def path(self, digest: Digest | str) -> Path:
        """Return the path an object with this digest has (whether or not it exists).

        Raises:
            InvalidInputError: if ``digest`` is malformed (it is never joined into a path then).
        """
        return self.root / object_key(digest)

    def key(self, digest: Digest | str) -> str:
        """Return the object's path-free name, ``<2 hex>/<64 hex>`` (its path below ``root``).

        Raises:
            InvalidInputError: if ``digest`` is malformed.
        """
        return object_key(digest)

    def has(self, digest: Digest | str) -> bool:
        """Return True if the object exists.

        Raises:
            InvalidInputError: if ``digest`` is malformed.
        """
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

    def shares_inode(self, digest: Digest | str, st: os.stat_result) -> bool:
        """Return True if ``st`` describes the object's own inode (a hard link to it).

        A working file that is the object's inode is not a copy of the sealed bytes but the
        sealed bytes themselves: comparing it with the object proves nothing, and a write to it
        changes the object.

        Args:
            digest: the object.
            st: the ``os.stat`` result of another name (a working file).

        Returns:
            True if the object exists and has the same inode and device as ``st``; False if it
            is missing or another file.

        Raises:
            InvalidInputError: if ``digest`` is malformed.
        """
        try:
            ost = self.path(digest).stat()
        except FileNotFoundError:
            return False
        return (ost.st_ino, ost.st_dev) == (st.st_ino, st.st_dev)

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

    def put_file(self, src: Path, expected: Digest | str | None = None) -> tuple[Digest, int]:
        """Store a copy of the file at ``src``; it stays the caller's, untouched.

        The bytes are hashed as they are copied from one open file, so the object holds exactly
        the bytes its name was computed from. To store many files, use :meth:`batch`, which
        waits for the disk twice in all.

        Args:
            src: a regular file (symlinks are refused, not followed).
            expected: if given, the digest the caller claims the file has.

        Returns:
            ``(digest, size)``.

        Raises:
            ChecksumMismatch: if ``expected`` is given and the bytes hash to something else
                (nothing is stored then).
            FileChangedError: if the file changed or was replaced while it was being copied.
            InvalidInputError: if ``src`` is a symlink or not a regular file, or ``expected``
                is not a well-formed digest.
            OSError: if it cannot be read.
        """
        if expected is not None:
            parse_digest(expected, "expected digest")
        batch = self.batch()
        digest, size = batch.add_file(src)
        if expected is not None and digest != expected:
            batch.abort()  # the copy is still a temp file: dropping it names nothing
            raise ChecksumMismatch(str(expected), digest, f"incoming file {src}", incoming=True)
        batch.publish()
        return digest, size

    def put_stream(
        self, blocks: Iterable[bytes | bytearray | memoryview],
        expected: Digest | str | None = None, sync_dir: bool = True,
    ) -> tuple[Digest, int]:
        """Store the concatenation of ``blocks`` (e.g. a download) without holding it whole.

        The blocks go to a temp file in ``tmp/`` as they are hashed; once the digest is known
        the temp file is dropped if the object exists (its mtime is refreshed), else fsynced
        and linked to its name (docs/format.md section 8, put-if-absent).

        Args:
            blocks: the object's bytes, in order; consumed once.
            expected: if given, the digest the caller claims the bytes have.
            sync_dir: fsync the fan-out directory (callers batching many puts may do it once).

        Returns:
            ``(digest, size)``.

        Raises:
            ChecksumMismatch: if ``expected`` is given and the bytes hash to something else
                (nothing is stored then).
            InvalidInputError: if ``expected`` is not a well-formed digest.
            OSError: on an I/O failure (the temp file is removed).
        """
        if expected is not None:
            parse_digest(expected, "expected digest")
        hasher = Hasher()
        tmp, fd = _open_temp(self.tmp_dir, "s")
        try:
            try:
                for block in blocks:
                    hasher.update(block)
                    write_all(fd, block)
            finally:
                os.close(fd)
            digest = hasher.hexdigest()
            if expected is not None and digest != expected:
                raise ChecksumMismatch(str(expected), digest, "incoming object", incoming=True)
            path = self.path(digest)
            if path.exists():
                self._touch(path)
            else:
                fsync_path(tmp)  # the bytes are durable before they have a name
                if not link_if_absent(tmp, path, sync_dir=sync_dir):
                    self._touch(path)  # another writer linked the same bytes meanwhile
        finally:
            tmp.unlink(missing_ok=True)
        return digest, hasher.size

    def delete(self, digest: Digest | str) -> bool:
        """Remove an object; for gc, which has decided that nothing can reach it.

        The fan-out directory is fsynced, so a removal that returned survives a power loss
        (the object does not reappear to a later verify or gc).

        Args:
            digest: the object.

        Returns:
            True if it was removed, False if it was not there (deleting twice is harmless).

        Raises:
            InvalidInputError: if ``digest`` is malformed.
            OSError: if it cannot be removed.
        """
        path = self.path(digest)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        fsync_dir(path.parent)
        return True

    def rehome(self, digest: Digest | str) -> bool:
        """Give an object whose inode has other names a fresh inode of its own.

        The bytes are copied (and checked against the digest as they are), then the copy
        replaces the object's name: every other name keeps the old inode, which is no longer
        the object, so writing through them cannot change sealed bytes any more.

        Args:
            digest: the object.

        Returns:
            True if it was rehomed; False if it has one name only (nothing to do).

        Raises:
            ChecksumMismatch: if the object's bytes no longer hash to its name (it is left
                alone: `vault verify` reports it).
            NotFoundError: if it does not exist.
        """
        path = self.path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"object {digest} is missing from {self.root}") from None
        try:
            st = os.fstat(fd)
            if st.st_nlink <= 1:
                return False
            tmp, out = _open_temp(self.tmp_dir, "r")
            try:
                got, _ = _copy_hashing(fd, out, st.st_size)
            finally:
                os.close(out)
        finally:
            os.close(fd)
        if got != digest:
            tmp.unlink(missing_ok=True)
            raise ChecksumMismatch(str(digest), got, f"object {digest}")
        replace_with(tmp, path)
        return True

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

    def read_range(self, digest: Digest | str, offset: int, length: int | None = None) -> bytes:
        """Return up to ``length`` bytes of an object from ``offset`` (no verification).

        For partial reads of large objects (a Parquet footer, a slice of a chunk): a range
        cannot be checked against a digest of the whole object.

        Args:
            digest: the object.
            offset: the first byte, from 0; at or past the end gives ``b""``.
            length: how many bytes at most; None reads to the end.

        Returns:
            The bytes, shorter than ``length`` where the object ends first.

        Raises:
            InvalidInputError: if ``offset`` or ``length`` is negative.
            NotFoundError: if the object is missing.
        """
        if offset < 0 or (length is not None and length < 0):
            raise InvalidInputError(
                f"byte range offset={offset}, length={length} of object {digest} is negative")
        with self.open(digest) as f:
            f.seek(offset)
            # A buffered read returns short only at the end of the file.
            return f.read(-1 if length is None else length)

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
        self._link: dict[Digest, Path] = {}  # digest -> temp file holding its bytes
        self._names: set[Digest] = set()  # objects whose fan-out directory must be fsynced
        self._existing: set[Digest] = set()  # stored before: refreshed for gc's grace period
        self._moves: list[tuple[Path, Path]] = []  # (temp file, destination) outside objects/
        self._published = False

    def add_file(self, src: Path) -> tuple[Digest, int]:
        """Copy the file at ``src`` to a temp file of the store, hashing the bytes as they go.

        The object is made from that copy when the batch is published, so what is sealed is
        exactly what was hashed, and the working file keeps its own inode: writing to it later,
        through any path or any file descriptor opened before, never changes the object. The
        file is opened once, without following a symlink; its size, mtime, ctime and inode are
        compared before and after the copy, and with what its path names afterwards, so a file
        that a writer extended, rewrote or replaced meanwhile is refused rather than sealed as
        a mix. (A same-size rewrite within the filesystem's timestamp granularity cannot be
        seen; writers that take the working-directory lock never race a commit.)

        Args:
            src: a regular file.

        Returns:
            ``(digest, size)``.

        Raises:
            FileChangedError: if the file changed while it was being copied.
            InvalidInputError: if ``src`` is a symlink or not a regular file.
            OSError: if it cannot be read or the copy cannot be written.
        """
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer (fstat refuses it next).
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            if os.path.islink(src):
                raise InvalidInputError(
                    f"{src} is a symlink; copy the data into the specimen") from None
            raise exc
        data: bytes | None = None
        tmp: Path | None = None
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise InvalidInputError(
                    f"{src} is not a regular file; only regular files are sealed")
            if before.st_size <= SMALL_FILE:
                # Read whole, hashed once: an object that exists already (a protocol, notes or
                # config repeated across specimens) then costs no new file at all, and creating
                # a file is the dearest step of a small commit.
                data = _read_all(fd, before.st_size)
                after = os.fstat(fd)
                digest, size = hash_bytes(data), len(data)
            else:
                tmp, digest, size, after = self._copy_to_temp(fd, before.st_size)
        finally:
            os.close(fd)
        try:
            now = os.stat(src, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if (size != before.st_size or file_identity(after) != file_identity(before)
                or now is None or (now.st_ino, now.st_dev) != (before.st_ino, before.st_dev)):
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise FileChangedError(
                f"{src} changed while it was being committed; nothing was sealed. Wait for "
                "whatever writes it to finish (or stop it), then commit again"
            )
        if self._stage(digest):
            self._link[digest] = tmp if tmp is not None else write_temp(
                self.store.tmp_dir, data if data is not None else b"", _OBJECT_MODE)
        elif tmp is not None:
            tmp.unlink()
        return digest, size

    def _copy_to_temp(self, fd: int, expected: int) -> tuple[Path, Digest, int, os.stat_result]:
        """Copy an open file to a new temp file of the store; return it, its digest and size,
        and the source's ``fstat`` once copied."""
        tmp, out = _open_temp(self.store.tmp_dir, "c")
        try:
            digest, size = _copy_hashing(fd, out, expected)
        except BaseException:
            os.close(out)
            tmp.unlink(missing_ok=True)
            raise
        os.close(out)
        return tmp, digest, size, os.fstat(fd)

    def add_stored(self, digest: Digest) -> None:
        """Include an object that is stored already (made when its file was written).

        Its fan-out directory is fsynced with the others (the writer left that to the
        commit) and its mtime refreshed for gc's grace period.
        """
        self._names.add(digest)
        self._existing.add(digest)

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
            self._link[digest] = write_temp(self.store.tmp_dir, data, _OBJECT_MODE)
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
            fsync_many([*self._link.values(), *(tmp for tmp, _ in self._moves)])
            for tmp, dest in self._moves:
                link_if_absent(tmp, dest, sync_dir=False)
            for digest, src in self._link.items():
                dest = self.store.path(digest)
                if not link_if_absent(src, dest, sync_dir=False):
                    ObjectStore._touch(dest)
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
            self._discard()

    def abort(self) -> None:
        """Drop a batch that will not be published: its temp files are removed, nothing named."""
        self._published = True
        self._discard()

    def _discard(self) -> None:
        # After publish the temp names go (each object keeps its one name in objects/).
        for src in self._link.values():
            src.unlink(missing_ok=True)
        for tmp, _ in self._moves:
            tmp.unlink(missing_ok=True)


def _open_temp(tmp_dir: Path, stem: str) -> tuple[Path, int]:
    """Create a new read-only temp file in ``tmp_dir`` for an object's bytes.

    Returns:
        ``(path, file descriptor open for writing)``.
    """
    tmp = temp_path(tmp_dir, stem)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        return tmp, os.open(tmp, flags, _OBJECT_MODE)
    except FileNotFoundError:
        # tmp/ is not tracked by git, so a vault in a fresh clone may lack it.
        makedirs_durable(tmp_dir)
        return tmp, os.open(tmp, flags, _OBJECT_MODE)


def _copy_hashing(src: int, dst: int, expected: int) -> tuple[Digest, int]:
    """Copy ``src`` to ``dst`` (file descriptors) from the start, hashing what is copied.

    Returns:
        ``(digest, bytes copied)``.
    """
    hasher = Hasher(parallel=expected >= COPY_BLOCK)
    buf = bytearray(min(COPY_BLOCK, max(expected, 1 << 16)))
    view = memoryview(buf)
    offset = 0
    while True:
        n = os.preadv(src, [view], offset)
        if not n:
            break
        hasher.update(view[:n])
        write_all(dst, view[:n])
        offset += n
    return hasher.hexdigest(), offset


def _read_all(fd: int, expected: int) -> bytes:
    """Read an open file from the start to its end (a little past ``expected`` if it grew)."""
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, max(expected - offset, 0) + 65536, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)
