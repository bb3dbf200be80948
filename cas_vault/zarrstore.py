"""Zarr v3 stores over the object store: every chunk and metadata document is one object.

Two stores, one per direction:

- :class:`ObjectTreeStore` (read-only) serves a zarr array from a mapping of store keys
  (``zarr.json``, ``c/0/0``, ...) to object digests, taken from a commit's tree or from a working
  index. Reading one chunk reads one object, verified against its digest by default. A key that
  the mapping lists but whose object is gone raises :class:`~cas_vault.errors.IntegrityError`,
  so lost data is never mistaken for fill values; keys the mapping does not list are absent
  (zarr returns the fill value for them, as for any never-written chunk).
- :class:`ObjectWriteStore` (write) is what zarr writes an array into: each chunk is hashed and
  put into ``objects/`` as soon as zarr has encoded it, on a small thread pool, and hard-linked
  into a staging directory, so the working directory and the object store share the bytes.
  Metadata documents stay in memory until :meth:`ObjectWriteStore.finish`, because an appending
  writer rewrites ``zarr.json`` at every resize and only the last version matters.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.buffer.core import default_buffer_prototype

from .atomic import fsync_dir, link_if_absent, put_if_absent, write_replace
from .commit import check_tree_path
from .digest import Digest, Hasher
from .errors import IntegrityError, NotFoundError

if TYPE_CHECKING:
    from .objects import ObjectStore

__all__ = ["ObjectTreeStore", "ObjectWriteStore", "is_metadata_key"]

#: Worker threads putting chunks. Disks reach full speed only with several fsyncs in flight
#: (one stream is 3-4x slower than four); the threads mostly wait on fsync, not on the CPU.
DEFAULT_THREADS = 8


def is_metadata_key(key: str) -> bool:
    """Return True for zarr metadata documents (``zarr.json``), False for chunk keys."""
    return key == "zarr.json" or key.endswith("/zarr.json")


def _sorted_children(keys: Iterable[str], prefix: str) -> list[str]:
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    out = {k[len(prefix):].split("/", 1)[0] for k in keys if k.startswith(prefix)}
    return sorted(out)


def _slice(data: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start:byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset:]
    if isinstance(byte_range, SuffixByteRequest):
        return data[max(0, len(data) - byte_range.suffix):]
    raise TypeError(f"unexpected byte range {byte_range!r}")


class ObjectTreeStore(Store):
    """A read-only zarr store whose keys are objects named in a tree.

    Args:
        objects: the vault's object store.
        entries: store key (relative to the array, e.g. ``c/0/0``) -> object digest.
        verify: re-hash every whole object read and refuse altered bytes (ranged reads, which
            zarr uses only for sharded arrays, cannot be verified).
        where: how to name the array in error messages (e.g. ``strata/acts.zarr of spec_1``).
    """

    supports_writes = False
    supports_deletes = False
    supports_listing = True

    def __init__(
        self, objects: ObjectStore, entries: Mapping[str, Digest], *, verify: bool = True,
        where: str = "tensor",
    ) -> None:
        super().__init__(read_only=True)
        self.objects = objects
        self.entries = dict(entries)
        self.verify = verify
        self.where = where
        self._keys = sorted(self.entries)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ObjectTreeStore) and self.objects.root == other.objects.root
                and self.entries == other.entries)

    def __repr__(self) -> str:
        return f"ObjectTreeStore({self.where!r}, {len(self.entries)} keys)"

    def with_read_only(self, read_only: bool = False) -> ObjectTreeStore:
        """Return an equivalent store; only the read-only mode exists.

        Raises:
            ValueError: if a writable store is asked for.
        """
        if not read_only:
            raise ValueError(f"{self.where} is committed content and cannot be opened for writing")
        return ObjectTreeStore(self.objects, self.entries, verify=self.verify, where=self.where)

    def _read(self, key: str, digest: Digest, byte_range: ByteRequest | None) -> bytes:
        try:
            if byte_range is None:
                return self.objects.get(digest, verify=self.verify)
            with self.objects.open(digest) as f:
                return _slice(f.read(), byte_range)
        except NotFoundError:
            raise IntegrityError(
                f"{self.where}: {key} is recorded as object {digest}, but that object is missing "
                "from objects/; run `vault verify` to see everything affected"
            ) from None

    async def get(
        self, key: str, prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """Return the bytes stored under ``key``, or None if the tree does not list it.

        Raises:
            IntegrityError: if the tree lists the key but its object is missing or altered.
        """
        digest = self.entries.get(key)
        if digest is None:
            return None
        prototype = prototype or default_buffer_prototype()
        data = await asyncio.to_thread(self._read, key, digest, byte_range)
        return prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        """Return several (possibly ranged) values, in order."""
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        """Return True if the tree lists ``key``."""
        return key in self.entries

    async def set(self, key: str, value: Buffer) -> None:
        """Refuse: committed content never changes."""
        self._check_writable()

    async def delete(self, key: str) -> None:
        """Refuse: committed content never changes."""
        self._check_writable()

    async def list(self) -> AsyncIterator[str]:
        """Yield every key, sorted."""
        for k in self._keys:
            yield k

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """Yield the keys that start with ``prefix``, sorted."""
        for k in self._keys:
            if k.startswith(prefix):
                yield k

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        """Yield the names directly below ``prefix``."""
        for k in _sorted_children(self._keys, prefix):
            yield k


class ObjectWriteStore(Store):
    """A write store that turns every chunk zarr writes into an object, as it is produced.

    ``set`` hands each chunk to a worker thread and returns: the worker hashes it, puts it into
    ``objects/`` (temp file in ``<vault>/tmp``, fsync, hard link; an existing object is not
    rewritten) and hard-links the object into ``staging/<key>``. At most ``max_pending``
    chunks wait at a time, so memory stays bounded by a few chunks whatever the array's size.
    Call :meth:`finish` to wait for every put, store the metadata documents and make it all
    durable; :meth:`abort` to stop and remove the staging directory.

    The caller holds ``locks/gc.lock`` shared for the store's lifetime, so gc never prunes a
    chunk that is stored but not yet listed in a working index.

    Args:
        objects: the vault's object store.
        staging: a new directory (created here) that receives a hard link per key.
        threads: worker threads putting chunks (default :data:`DEFAULT_THREADS`).
        max_pending: chunks queued or in flight at most.
    """

    supports_writes = True
    supports_deletes = True
    supports_listing = True

    def __init__(
        self, objects: ObjectStore, staging: Path, *, threads: int | None = None,
        max_pending: int | None = None,
    ) -> None:
        super().__init__(read_only=False)
        self.objects = objects
        self.staging = staging
        staging.mkdir(parents=True, exist_ok=False)
        threads = threads or DEFAULT_THREADS
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cas-vault-put")
        self._slots = threading.BoundedSemaphore(max_pending or threads + 2)
        self._lock = threading.Lock()
        self._entries: dict[str, Digest] = {}
        self._pending: dict[str, Future[Digest]] = {}
        self._metadata: dict[str, bytes] = {}
        self._error: BaseException | None = None
        self._dirty: set[Path] = set()

    def __eq__(self, other: object) -> bool:
        return self is other

    def __repr__(self) -> str:
        return f"ObjectWriteStore({str(self.staging)!r})"

    # -- the chunk pipeline -------------------------------------------------------------------
    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _put(self, data: bytes | memoryview) -> Digest:
        # ObjectStore.put_bytes, plus knowing whether the object is new: only fan-out
        # directories that gained a name need an fsync at the end.
        # One thread per chunk: the workers already hash chunks side by side, and BLAKE3's own
        # threads on top of them would only compete for the same cores.
        hasher = Hasher()
        hasher.update(data)
        digest = hasher.hexdigest()
        path = self.objects.path(digest)
        if put_if_absent(path, data, self.objects.tmp_dir, mode=0o444, sync_dir=False):
            with self._lock:
                self._dirty.add(path.parent)
        else:
            try:  # a re-put refreshes the mtime so a concurrent gc's grace period protects it
                os.utime(path)
            except OSError:
                pass
        return digest

    def _put_chunk(self, key: str, data: memoryview) -> Digest:
        try:
            digest = self._put(data)
            self._link(key, digest, data)
            return digest
        except BaseException as exc:
            with self._lock:
                self._error = self._error or exc
            raise
        finally:
            self._slots.release()

    def _link(self, key: str, digest: Digest, data: bytes | memoryview) -> None:
        dest = self.staging / key
        try:
            link_if_absent(self.objects.path(digest), dest, sync_dir=False)
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise
            # One object (an all-zero chunk, say) may be shared by more chunks than the
            # filesystem allows links per inode: keep a plain copy; commit re-hashes it.
            write_replace(dest, data, mode=0o444)

    async def set(self, key: str, value: Buffer) -> None:
        """Queue ``value`` to be stored under ``key`` (metadata stays in memory until finish).

        Raises:
            VaultError: the first error a worker met (I/O, a bad key).
        """
        self._check_writable()
        self._raise_if_failed()
        check_tree_path(key)
        if is_metadata_key(key):
            self._metadata[key] = value.to_bytes()
            return
        previous = self._pending.get(key)
        if previous is not None:
            await asyncio.wrap_future(previous)
        await self._forget(key)
        # A uint8 view of zarr's encoded chunk: no copy on the way to the hash and the disk.
        data = memoryview(value.as_numpy_array()).cast("B")
        if not self._slots.acquire(blocking=False):
            await asyncio.to_thread(self._slots.acquire)
        try:
            future = self._pool.submit(self._put_chunk, key, data)
        except BaseException:
            self._slots.release()
            raise
        self._pending[key] = future
        future.add_done_callback(lambda f, k=key: self._done(k, f))

    def _done(self, key: str, future: Future[Digest]) -> None:
        with self._lock:
            if self._pending.get(key) is future:
                del self._pending[key]
                if not future.cancelled() and future.exception() is None:
                    self._entries[key] = future.result()

    async def _forget(self, key: str) -> None:
        with self._lock:
            had = self._entries.pop(key, None)
        if had is not None:
            await asyncio.to_thread((self.staging / key).unlink, True)

    async def _wait(self, key: str) -> None:
        future = self._pending.get(key)
        if future is not None:
            try:
                await asyncio.wrap_future(future)
            except Exception:
                pass

    # -- the rest of the Store interface ------------------------------------------------------
    async def get(
        self, key: str, prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """Return what was set under ``key`` (waiting for a queued put), or None."""
        prototype = prototype or default_buffer_prototype()
        if key in self._metadata:
            return prototype.buffer.from_bytes(_slice(self._metadata[key], byte_range))
        await self._wait(key)
        self._raise_if_failed()
        digest = self._entries.get(key)
        if digest is None:
            return None
        data = await asyncio.to_thread(self.objects.get, digest, False)
        return prototype.buffer.from_bytes(_slice(data, byte_range))

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        """Return several (possibly ranged) values, in order."""
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    async def exists(self, key: str) -> bool:
        """Return True if ``key`` was set (and not deleted)."""
        return key in self._metadata or key in self._pending or key in self._entries

    async def delete(self, key: str) -> None:
        """Remove ``key`` (zarr deletes chunks that a shrinking resize leaves outside)."""
        self._check_writable()
        if self._metadata.pop(key, None) is not None:
            return
        await self._wait(key)
        await self._forget(key)

    def _keys(self) -> list[str]:
        with self._lock:
            return sorted({*self._metadata, *self._pending, *self._entries})

    async def list(self) -> AsyncIterator[str]:
        """Yield every key, sorted."""
        for k in self._keys():
            yield k

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """Yield the keys that start with ``prefix``."""
        for k in self._keys():
            if k.startswith(prefix):
                yield k

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        """Yield the names directly below ``prefix``."""
        for k in _sorted_children(self._keys(), prefix):
            yield k

    # -- completion ---------------------------------------------------------------------------
    def drain(self) -> None:
        """Wait until every queued chunk is stored.

        Raises:
            VaultError: or OSError, the first error a worker met.
        """
        while True:
            with self._lock:
                futures = list(self._pending.values())
            if not futures:
                break
            for f in futures:
                try:
                    f.result()
                except BaseException:
                    pass
        self._raise_if_failed()

    def finish(self) -> dict[str, Digest]:
        """Store the metadata documents, make everything durable and return key -> digest.

        After this, every object is fsynced with its fan-out directory, and every directory of
        the staging tree is fsynced (so the links survive a crash once the tree is renamed).

        Raises:
            VaultError: or OSError, if any put failed (call :meth:`abort` then).
        """
        self.drain()
        for key, data in sorted(self._metadata.items()):
            digest = self._put(data)
            self._link(key, digest, data)
            self._entries[key] = digest
        # Directory fsyncs wait for a journal commit each: run them side by side.
        dirs = sorted(self._dirty) + [Path(d) for d, _, _ in os.walk(self.staging)]
        try:
            list(self._pool.map(fsync_dir, dirs))
        finally:
            self._pool.shutdown(wait=True)
        self._read_only = True
        return dict(sorted(self._entries.items()))

    def abort(self) -> None:
        """Stop the workers (after the puts already running) and delete the staging tree.

        Objects already stored stay in ``objects/`` unreferenced; ``vault gc`` removes them.
        """
        import shutil

        self._read_only = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.staging, ignore_errors=True)
