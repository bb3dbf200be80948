"""Zarr v3 stores over the object store: every chunk and metadata document is one object.

Two stores, one per direction:

- :class:`ObjectTreeStore` (read-only) serves a zarr array from a mapping of store keys
  (``zarr.json``, ``c/0/0``, ...) to object digests, taken from a commit's tree or from a working
  index. Reading one chunk reads one object, verified against its digest by default. A key that
  the mapping lists but whose object is gone raises :class:`~cas_vault.errors.IntegrityError`,
  so lost data is never mistaken for fill values; keys the mapping does not list are absent
  (zarr returns the fill value for them, as for any never-written chunk).
- :class:`ObjectWriteStore` (write) is what zarr writes an array into: each chunk is hashed as
  soon as zarr has encoded it, on a small thread pool, and written once into a private, flat
  staging directory of the vault's ``tmp/`` (nothing at all is written when an object has its bytes
  already); new chunks are fsynced in rounds and then hard-linked to their object names, and
  the staging names are removed at the end, so every chunk is written once and its only name
  is in ``objects/``.
  Metadata documents stay in memory until :meth:`ObjectWriteStore.finish`, because an appending
  writer rewrites ``zarr.json`` at every resize and only the last version matters. Callers that
  already hold a chunk's encoded bytes (raw, uncompressed chunks: see ``cas_vault.tensors``)
  hand them to :meth:`ObjectWriteStore.put_chunk` directly, without zarr's event loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.buffer.core import default_buffer_prototype

from .atomic import fsync_dir, fsync_many, link_if_absent, put_if_absent, write_durable
from .commit import check_tree_path
from .digest import Digest, Hasher, hash_bytes
from .errors import IntegrityError, NotFoundError

if TYPE_CHECKING:
    from .objects import ObjectStore

__all__ = ["ObjectTreeStore", "ObjectWriteStore", "is_metadata_key"]

#: Worker threads putting chunks: they hash on every core and keep several writes in flight.
DEFAULT_THREADS = 8
#: Bytes of new chunks made durable per round of side-by-side fsyncs. One fsync per chunk, as
#: each is written, keeps only a few chunks in the disk's queue and waits for a journal commit
#: (and a cache flush) per chunk. Writing 1 GiB in 4 MiB chunks and committing it, on the
#: 2-core reference machine (medians of 6-8 interleaved runs): 1.1-1.4 s with one fsync per
#: chunk; 1.2 s in rounds of 16 MiB, 0.95 s of 32, 0.84 s of 64, 0.94 s of 128, 1.0 s of 512
#: (small rounds commit the journal too often, big ones leave the disk idle at the start).
SYNC_BATCH_BYTES = 64 << 20
#: Longest staging file name spelled from a key; a longer key is named by its hash instead.
_MAX_STAGED_NAME = 200


def is_metadata_key(key: str) -> bool:
    """Return True for zarr metadata documents (``zarr.json``), False for chunk keys."""
    return key == "zarr.json" or key.endswith("/zarr.json")


def _staged_name(key: str) -> str:
    """Return the flat file name that holds ``key``'s new bytes in a staging directory.

    One flat file per key, not a tree mirroring the keys: a tree would make ``a`` and ``a/b``
    collide (a file cannot also be a directory) and would leave directories behind deleted
    keys. ``quote`` is injective and escapes ``#``, so hashed names never meet quoted ones.
    """
    name = urllib.parse.quote(key, safe="")
    if len(name) > _MAX_STAGED_NAME:
        name = "#" + hash_bytes(key.encode())
    return name


def _sorted_children(keys: Iterable[str], prefix: str) -> list[str]:
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    out = {k[len(prefix):].split("/", 1)[0] for k in keys if k.startswith(prefix)}
    return sorted(out)


def _check_byte_range(byte_range: object) -> None:
    """Refuse anything but zarr's byte requests, before any I/O.

    Raises:
        TypeError: for any other object (zarr's store tests expect this wording).
    """
    if byte_range is not None and not isinstance(
            byte_range, (RangeByteRequest, OffsetByteRequest, SuffixByteRequest)):
        raise TypeError(f"Unexpected byte_range, got {byte_range!r}")


def _slice(data: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start:byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset:]
    if isinstance(byte_range, SuffixByteRequest):
        return data[max(0, len(data) - byte_range.suffix):]
    raise TypeError(f"Unexpected byte_range, got {byte_range!r}")


class ObjectTreeStore(Store):
    """A read-only zarr store whose keys are objects named in a tree.

    Args:
        objects: the vault's object store.
        entries: store key (relative to the array, e.g. ``c/0/0``) -> object digest.
        verify: re-hash every whole object read and refuse altered bytes (ranged reads, which
            zarr uses only for sharded arrays, cannot be verified).
        where: how to name the array in error messages (e.g. ``strata/acts.zarr of spec_1``).
        read_only: must be True; accepted because ``Store.open`` passes it.

    Raises:
        ValueError: if ``read_only`` is False.
    """

    supports_writes = False
    supports_deletes = False
    supports_listing = True

    def __init__(
        self, objects: ObjectStore, entries: Mapping[str, Digest], *, verify: bool = True,
        where: str = "tensor", read_only: bool = True,
    ) -> None:
        if not read_only:
            raise ValueError(f"{where} is committed content and cannot be opened for writing")
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

        Args:
            read_only: must be True.

        Returns:
            A new, not yet opened, store over the same objects and mapping.

        Raises:
            NotImplementedError: if a writable store is asked for (zarr's wording for a store
                type without a writable mode, which zarr's callers recognise).
        """
        if not read_only:
            raise NotImplementedError(
                f"with_read_only is not implemented for the {type(self)} store type. "
                f"{self.where} is committed content and cannot be opened for writing")
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
        _check_byte_range(byte_range)
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

    ``set`` (or :meth:`put_chunk`, for callers that hold a chunk's encoded bytes already)
    hands each chunk to a worker thread and returns: the worker hashes it and, if no object
    has those bytes yet, writes them once, as a staging file named after the key (flat:
    ``c/0/1`` is ``staging/c%2F0%2F1``); if one has,
    it writes nothing (it only refreshes the object's mtime). New staging files are made
    durable in rounds (:data:`SYNC_BATCH_BYTES` at a time, fsynced side by side) and only then
    hard-linked to their object names, so an object name never points at bytes that a crash
    could lose. The staging directory is private to the vault (in ``tmp/``) and removed by
    :meth:`finish`, after which an object's only name is its name in ``objects/``. At most
    ``max_pending`` chunks wait for a worker, so memory stays bounded by a few chunks whatever
    the array's size. Call :meth:`finish` to wait for every put, store the metadata documents
    and make it all durable; :meth:`abort` to stop and remove the staging directory.

    The caller holds ``locks/gc.lock`` shared for the store's lifetime, so gc never prunes a
    chunk that is stored but not yet listed in a working index.

    Args:
        objects: the vault's object store.
        staging: a new directory (created here, in the vault's ``tmp/``) that receives the
            bytes of each new chunk under its key until it is named.
        threads: worker threads putting chunks (default :data:`DEFAULT_THREADS`).
        max_pending: chunks queued or in flight at most.
        sync_batch_bytes: bytes of new chunks made durable per round (default
            :data:`SYNC_BATCH_BYTES`); 0 fsyncs and names every new chunk on its own.
        read_only: open the store refusing writes (``Store.open`` passes it); a write store
            becomes read-only by itself at :meth:`finish` and :meth:`abort`.

    Raises:
        ValueError: for a negative ``sync_batch_bytes``.
        FileExistsError: if ``staging`` exists already.
    """

    supports_writes = True
    supports_deletes = True
    supports_listing = True

    def __init__(
        self, objects: ObjectStore, staging: Path, *, threads: int | None = None,
        max_pending: int | None = None, sync_batch_bytes: int | None = None,
        read_only: bool = False,
    ) -> None:
        super().__init__(read_only=read_only)
        self.objects = objects
        self.staging = staging
        staging.mkdir(parents=True, exist_ok=False)
        threads = threads or DEFAULT_THREADS
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cas-vault-put")
        self._slots = threading.BoundedSemaphore(max_pending or threads + 2)
        if sync_batch_bytes is not None and sync_batch_bytes < 0:
            raise ValueError(f"sync_batch_bytes must be >= 0, not {sync_batch_bytes}")
        self._sync_batch_bytes = SYNC_BATCH_BYTES if sync_batch_bytes is None else sync_batch_bytes
        self._lock = threading.Lock()
        self._entries: dict[str, Digest] = {}
        self._pending: dict[str, Future[Digest]] = {}
        self._metadata: dict[str, bytes] = {}
        self._error: BaseException | None = None
        self._dirty: set[Path] = set()
        # New chunks written but not yet durable and named: the round being filled (key ->
        # digest) and its size, the keys of rounds being synced (-> their completion event),
        # and for each such digest a key whose staging file holds its bytes, so that the same
        # chunk again (all-zero blocks, say) is linked to that file instead of written again.
        self._round: dict[str, Digest] = {}
        self._round_bytes = 0
        self._syncing: dict[str, threading.Event] = {}
        self._unnamed: dict[Digest, str] = {}

    def __eq__(self, other: object) -> bool:
        # The same destination, as zarr compares its file stores by root: a staging directory
        # belongs to one store at a time (the constructor refuses an existing one).
        return (isinstance(other, ObjectWriteStore) and self.objects.root == other.objects.root
                and self.staging == other.staging)

    def __hash__(self) -> int:
        return hash((ObjectWriteStore, self.objects.root, self.staging))

    def __repr__(self) -> str:
        return f"ObjectWriteStore({str(self.staging)!r})"

    def __getstate__(self) -> object:
        """Refuse to be pickled.

        Raises:
            TypeError: always. The store's state is its process's: chunks queued on its thread
                pool, staging files not yet fsynced and named, metadata kept in memory. A copy
                would share the staging directory with the original (whose names each store
                assumes it alone creates and removes) and lose what is in flight.
        """
        raise TypeError(
            "an ObjectWriteStore cannot be pickled: its queued chunks, thread pool and private "
            "staging directory belong to the process writing the array")

    def _staged(self, key: str) -> Path:
        return self.staging / _staged_name(key)

    # -- the chunk pipeline -------------------------------------------------------------------
    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self._error = self._error or exc

    def _find(self, data: bytes | memoryview) -> tuple[Digest, Path, bool]:
        """Hash ``data``; return its digest, object path and whether that object exists."""
        # One thread per chunk: the workers already hash chunks side by side, and BLAKE3's own
        # threads on top of them would only compete for the same cores.
        hasher = Hasher()
        hasher.update(data)
        digest = hasher.hexdigest()
        path = self.objects.path(digest)
        # An object that exists already (an identical tensor stored before) is the common
        # case worth one syscall, not two: utime both finds it and refreshes its mtime, so a
        # concurrent gc's grace period protects it. Its bytes are never rewritten.
        try:
            os.utime(path)
            return digest, path, True
        except FileNotFoundError:
            return digest, path, False
        except OSError:  # e.g. another user's object: not ours to touch; does it exist?
            return digest, path, path.exists()

    def _put(self, data: bytes | memoryview) -> Digest:
        """Store ``data`` as an object unless it exists (temp file, fsync, link); return its digest.

        For metadata documents: tiny, written once at :meth:`finish`.
        """
        # ObjectStore.put_bytes, plus knowing whether the object is new: only fan-out
        # directories that gained a name need an fsync at the end.
        digest, path, exists = self._find(data)
        if not exists and put_if_absent(path, data, self.objects.tmp_dir, mode=0o444,
                                        sync_dir=False):
            with self._lock:
                self._dirty.add(path.parent)
        return digest

    def _store(self, key: str, data: memoryview) -> tuple[Digest, dict[str, Digest] | None]:
        """Store one chunk as its key's staging file; return its digest and any full round.

        A chunk whose object exists is only recorded. A new chunk is written once, as the
        staging file itself (read-only, not yet fsynced), or hard-linked to the staging file of
        the same bytes written a moment ago; :meth:`_sync_round` later makes it durable and
        gives it its object name. Compared with a temp file per object, that saves one fsync
        (with its journal commit) per chunk.
        """
        digest, _path, exists = self._find(data)
        if exists:
            return digest, None
        dest = self._staged(key)
        if not self._link_unnamed(digest, dest):
            write_durable(dest, data, mode=0o444, sync=False)
        with self._lock:
            self._round[key] = digest
            self._unnamed.setdefault(digest, key)
            self._round_bytes += data.nbytes
            if self._round_bytes < self._sync_batch_bytes:
                return digest, None
            return digest, self._take_round()

    def _link_unnamed(self, digest: Digest, dest: Path) -> bool:
        """Hard-link ``dest`` to a staging file written earlier with the same bytes, if any."""
        with self._lock:
            first = self._unnamed.get(digest)
        if first is None:
            return False
        try:
            return link_if_absent(self._staged(first), dest, sync_dir=False)
        except OSError:  # that key was deleted meanwhile, or too many links: write the bytes
            return False

    def _take_round(self) -> dict[str, Digest]:
        # Called with self._lock held: the keys move from the round being filled to syncing.
        batch, self._round, self._round_bytes = self._round, {}, 0
        done = threading.Event()
        for key in batch:
            self._syncing[key] = done
        return batch

    def _sync_round(self, batch: dict[str, Digest]) -> None:
        """Make a round of new staging files durable, then give each its object name.

        The fsyncs run side by side: a journaling filesystem folds them into a few journal
        commits, where one fsync per chunk, each waiting for its own, keeps the disk's queue
        shallow. Errors are recorded (raised by :meth:`finish` and the next put), not raised.
        """
        try:
            fsync_many([self._staged(key) for key in batch])
            for key, digest in batch.items():
                self._name(key, digest)
        except BaseException as exc:  # any failure must reach finish(), or it would succeed
            self._fail(exc)
        finally:
            with self._lock:
                done = None
                for key, digest in batch.items():
                    done = self._syncing.pop(key, done)
                    if self._unnamed.get(digest) == key:
                        del self._unnamed[digest]
            if done is not None:
                done.set()

    def _name(self, key: str, digest: Digest) -> None:
        """Hard-link the durable staging file of ``key`` to its object name (put-if-absent)."""
        src, obj = self._staged(key), self.objects.path(digest)
        if link_if_absent(src, obj, sync_dir=False):
            with self._lock:
                self._dirty.add(obj.parent)
        # Otherwise the object exists: the same chunk again (linked to the first one's staging
        # file), or another writer stored the same bytes meanwhile. Either way it is named, and
        # the staging name goes at once, so the object's inode has no second name for longer
        # than these two calls (a crash in between leaves a temp entry that gc removes).
        src.unlink(missing_ok=True)

    def _put_chunk(self, key: str, data: memoryview) -> Digest:
        try:
            digest, batch = self._store(key, data)
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self._slots.release()  # the bytes are written: the next chunk may come
        if batch is not None:
            self._sync_round(batch)
        return digest

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
        await self._wait(key)
        await asyncio.to_thread(self._forget, key)
        # A uint8 view of zarr's encoded chunk: no copy on the way to the hash and the disk.
        data = memoryview(value.as_numpy_array()).cast("B")
        if not self._slots.acquire(blocking=False):
            await asyncio.to_thread(self._slots.acquire)
        self._submit(key, data)

    def put_chunk(self, key: str, data: memoryview) -> None:
        """Queue a chunk whose encoded bytes the caller already holds (blocking, no zarr).

        The same pipeline as :meth:`set`, minus zarr's event loop, for a caller that produces
        the exact bytes zarr's codecs would: an uncompressed, little-endian, C-order chunk is
        its own encoding. Blocks while ``max_pending`` chunks wait for a worker. ``data`` must
        stay unchanged until the worker has stored it (:meth:`drain` or :meth:`finish`).

        Args:
            key: the chunk key, as the array's chunk key encoding names it (``c/0/3``).
            data: the encoded chunk, as bytes (format ``B``).

        Raises:
            ValueError: for a metadata key (those go through zarr) or a finished store.
            VaultError: the first error a worker met (I/O, a bad key).
        """
        self._check_writable()
        self._raise_if_failed()
        check_tree_path(key)
        if is_metadata_key(key):
            raise ValueError(f"{key} is a metadata document; zarr writes those through set()")
        previous = self._pending.get(key)
        if previous is not None:
            try:
                previous.result()
            except Exception:
                pass  # its error is recorded and raised by _submit
        self._forget(key)
        self._slots.acquire()
        self._submit(key, data)

    def _submit(self, key: str, data: memoryview) -> None:
        # The caller holds one of the slots; the worker releases it.
        try:
            self._raise_if_failed()
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

    def _forget(self, key: str) -> None:
        """Drop a stored chunk (before it is written again, or deleted), blocking.

        A chunk still waiting for its round is taken out of it; one whose round is being
        synced is waited for, so a round never names a file that has changed since.
        """
        with self._lock:
            had = self._entries.pop(key, None)
            digest = self._round.pop(key, None)
            if digest is not None and self._unnamed.get(digest) == key:
                del self._unnamed[digest]
            syncing = self._syncing.get(key)
        if syncing is not None:
            syncing.wait()
        if had is not None:
            self._staged(key).unlink(missing_ok=True)

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
        """Return what was set under ``key`` (waiting for a queued put), or None.

        Raises:
            TypeError: for a byte range that is not one of zarr's byte requests.
        """
        _check_byte_range(byte_range)
        prototype = prototype or default_buffer_prototype()
        if key in self._metadata:
            return prototype.buffer.from_bytes(_slice(self._metadata[key], byte_range))
        await self._wait(key)
        self._raise_if_failed()
        digest = self._entries.get(key)
        if digest is None:
            return None
        data = await asyncio.to_thread(self._read, key, digest)
        return prototype.buffer.from_bytes(_slice(data, byte_range))

    def _read(self, key: str, digest: Digest) -> bytes:
        # A new chunk's staging file holds its bytes until finish(); a chunk that existed, or
        # one named since, is read from its object (named before any staging file goes).
        try:
            return self._staged(key).read_bytes()
        except FileNotFoundError:
            return self.objects.path(digest).read_bytes()

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
        await asyncio.to_thread(self._forget, key)

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
        """Wait until every queued chunk is stored (written; durable only after :meth:`finish`).

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

        After this, every chunk's bytes are fsynced and named as their object, every object's
        fan-out directory is fsynced, and the staging directory is gone (an object's only name
        is its name in ``objects/``). The store is read-only from then on.

        Returns:
            Every key (chunks and metadata documents) -> its object digest, sorted by key.

        Raises:
            VaultError: or OSError, if any put failed (call :meth:`abort` then).
        """
        self.drain()
        with self._lock:
            batch = self._take_round() if self._round else None
            rounds = set(self._syncing.values())
        if batch is not None:
            self._sync_round(batch)
        for done in rounds:  # rounds that workers are syncing (none once drained, but be sure)
            done.wait()
        self._raise_if_failed()
        for key, data in sorted(self._metadata.items()):
            self._entries[key] = self._put(data)
        # Directory fsyncs wait for a journal commit each: run them side by side.
        try:
            list(self._pool.map(fsync_dir, sorted(self._dirty)))
        finally:
            self._pool.shutdown(wait=True)
        self._read_only = True
        # Every chunk is named in objects/ now: the staging names would only be second paths
        # to sealed inodes.
        shutil.rmtree(self.staging, ignore_errors=True)
        return dict(sorted(self._entries.items()))

    def abort(self) -> None:
        """Stop the workers (after the puts already running) and delete the staging tree.

        Objects already stored stay in ``objects/`` unreferenced; ``vault gc`` removes them.
        Chunks not yet synced never got an object name: they go with the staging tree.
        """
        self._read_only = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.staging, ignore_errors=True)
