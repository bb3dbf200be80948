"""Crash-safe file primitives: the only module that renames, links, locks and fsyncs.

Every durable write in cas-vault goes through here so the ordering rules in docs/format.md
hold everywhere: data is written to a temporary file on the same filesystem, fsynced, then
moved into place with ``os.link`` (put-if-absent) or ``os.replace`` (replace), and the directory
is fsynced so the new name itself survives a power loss.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from .errors import LockTimeoutError

__all__ = [
    "TMP_SUFFIX",
    "FileLock",
    "append_durable",
    "fsync_dir",
    "fsync_many",
    "file_identity",
    "fsync_path",
    "link_if_absent",
    "lock_state",
    "makedirs_durable",
    "put_if_absent",
    "remove_tree",
    "rename_aside",
    "replace_with",
    "temp_path",
    "write_all",
    "write_durable",
    "write_replace",
    "write_temp",
]

#: Every temp file ends with this suffix, so gc and verify can recognise crash leftovers.
TMP_SUFFIX = ".tmp"


def temp_path(directory: Path, stem: str = "w") -> Path:
    """Return a fresh, unique temp-file path inside ``directory``."""
    return directory / f".{stem}.{os.getpid()}.{uuid.uuid4().hex}{TMP_SUFFIX}"


def fsync_dir(directory: Path) -> None:
    """fsync a directory so that names created or removed in it are durable."""
    _fsync(directory, os.O_RDONLY | os.O_DIRECTORY)


def fsync_path(path: Path) -> None:
    """fsync one file or directory by path."""
    _fsync(path, os.O_RDONLY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_POOL: ThreadPoolExecutor | None = None
_POOL_PID = 0
_POOL_LOCK = threading.Lock()
#: Concurrent fsyncs in flight at most; more gain nothing once they share a journal commit.
FSYNC_THREADS = 8


def _fsync_pool() -> ThreadPoolExecutor:
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        # A forked child inherits the pool object but not its threads: make a new one.
        if _POOL is None or _POOL_PID != os.getpid():
            _POOL = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="cas-vault-fsync")
            _POOL_PID = os.getpid()
        return _POOL


def fsync_many(paths: Iterable[Path]) -> None:
    """fsync files and directories concurrently; return once every one is durable.

    Journaling filesystems (ext4, xfs) fold concurrent fsyncs into one journal commit, so a
    round of N costs little more than one, where N in a row would each wait for their own
    commit. The order among ``paths`` is unspecified: callers put in one round only what may
    become durable in any order, and start the next round after this returns.

    Args:
        paths: files and directories (duplicates are fsynced once).

    Raises:
        OSError: the first failure, after every fsync has finished.
    """
    todo = list(dict.fromkeys(paths))
    if len(todo) <= 1:
        for p in todo:
            fsync_path(p)
        return
    futures = [_fsync_pool().submit(fsync_path, p) for p in todo[1:]]
    error: BaseException | None = None
    try:
        fsync_path(todo[0])  # this thread does one itself instead of only waiting
    except OSError as exc:
        error = exc
    for f in futures:
        exc = f.exception()
        if exc is not None and error is None:
            error = exc
    if error is not None:
        raise error


def file_identity(st: os.stat_result) -> list[int]:
    """What changes when a file is written, truncated, replaced or renamed over."""
    return [st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _write_temp(
    directory: Path, data: bytes | bytearray | memoryview, mode: int, sync: bool = True
) -> Path:
    tmp = temp_path(directory)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileNotFoundError:
        # Layout directories (tmp/, refs/, locks/) are not tracked by git, so a vault that
        # lives in a fresh clone may lack them: create on first write.
        makedirs_durable(directory)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def write_temp(directory: Path, data: bytes | bytearray | memoryview, mode: int = 0o644) -> Path:
    """Write ``data`` to a new temp file in ``directory`` without fsyncing it; return its path.

    For callers that fsync many files in one :func:`fsync_many` round before linking them.
    """
    return _write_temp(directory, data, mode, sync=False)


def write_replace(
    path: Path, data: bytes | bytearray | memoryview, mode: int = 0o644, sync_dir: bool = True,
    sync: bool = True,
) -> None:
    """Atomically create or replace ``path`` with ``data``.

    Readers see either the old file or the complete new one, never a partial write, even
    after a crash: the bytes are fsynced before the rename.

    Args:
        path: the destination; its directory must exist.
        data: the complete new contents.
        mode: permission bits of the new file.
        sync_dir: fsync the directory too, so the new name survives a power loss. Files that
            nothing durable depends on yet (a specimen's working files, which a commit makes
            durable as objects) skip it: a crash then leaves the old file or the new one.
        sync: fsync the new file's bytes before the rename. Only a record whose loss in a
            power cut is harmless (a hint that may lag, never lead) skips it.

    Raises:
        OSError: on any I/O failure (the destination is left untouched).
    """
    tmp = _write_temp(path.parent, data, mode, sync=sync)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def replace_with(tmp: Path, path: Path) -> None:
    """Durably put the finished file ``tmp`` in place of ``path`` (same filesystem).

    ``tmp`` is fsynced, renamed over ``path`` and the directory fsynced; readers that opened
    ``path`` before keep the old inode, later ones see the new one.

    Raises:
        OSError: on any I/O failure (``tmp`` is removed, ``path`` left as it was).
    """
    try:
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_durable(
    path: Path, data: bytes | bytearray | memoryview, mode: int = 0o644, sync: bool = True
) -> None:
    """Create the new file ``path`` (which must not exist) with ``data`` and fsync it.

    For files inside a temp directory that is itself renamed into place afterwards: the rename
    provides atomicity, so no per-file rename is needed; the caller fsyncs the directory.

    Args:
        path: the new file.
        data: its contents.
        mode: permission bits.
        sync: fsync now; False when the caller fsyncs many files at once with
            :func:`fsync_many` before renaming their directory into place.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def put_if_absent(
    path: Path,
    data: bytes | bytearray | memoryview,
    tmp_dir: Path,
    mode: int = 0o444,
    sync_dir: bool = True,
) -> bool:
    """Create ``path`` with ``data`` unless it exists already.

    The temp file lives in ``tmp_dir`` (same filesystem) and is hard-linked into place, so the
    final name appears complete or not at all, and an existing file is never overwritten.

    Args:
        path: the destination.
        data: the complete contents.
        tmp_dir: a directory on the same filesystem for the temp file.
        mode: permission bits (objects are read-only).
        sync_dir: fsync the destination directory after linking.

    Returns:
        True if this call created the file, False if it existed already.

    Raises:
        OSError: on any I/O failure other than the file existing.
    """
    if path.exists():
        return False
    tmp = _write_temp(tmp_dir, data, mode)
    try:
        return link_if_absent(tmp, path, sync_dir=sync_dir)
    finally:
        tmp.unlink(missing_ok=True)


def makedirs_durable(path: Path) -> None:
    """Create ``path`` and its missing parents, each new name made durable in its parent.

    A file later made durable in a new directory is reachable after a power cut only if the
    directory's own entry is durable too, so every created level's parent is fsynced.
    """
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue  # another writer made it; it made it durable (or will) as we do
        fsync_dir(d.parent)


def link_if_absent(src: Path, dest: Path, sync_dir: bool = True) -> bool:
    """Hard-link ``src`` to ``dest`` unless ``dest`` exists.

    Args:
        src: an existing, fsynced file.
        dest: the new name.
        sync_dir: fsync ``dest``'s directory after linking.

    Returns:
        True if the link was created, False if ``dest`` existed already.

    Raises:
        OSError: on failures other than ``dest`` existing (e.g. a cross-device link).
    """
    try:
        os.link(src, dest)
    except FileExistsError:
        return False
    except FileNotFoundError:
        makedirs_durable(dest.parent)
        try:
            os.link(src, dest)
        except FileExistsError:
            return False
    if sync_dir:
        fsync_dir(dest.parent)
    return True


def remove_tree(top: Path) -> None:
    """Remove a directory and everything below it, without following symlinks.

    ``shutil.rmtree`` recurses once per directory level before Python 3.13, so a deep temp
    directory would end gc with RecursionError; this lists the tree breadth first, unlinking
    files as it goes, then removes the directories deepest first.

    Raises:
        FileNotFoundError: if ``top`` does not exist.
        OSError: if an entry cannot be removed.
    """
    dirs = [os.fspath(top)]
    i = 0
    while i < len(dirs):
        with os.scandir(dirs[i]) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    dirs.append(entry.path)
                else:
                    os.unlink(entry.path)
        i += 1
    for d in reversed(dirs):  # every directory comes after its parent in the list
        os.rmdir(d)


def rename_aside(path: Path) -> Path:
    """Durably move ``path`` (a file or directory) to a fresh temp name beside it.

    The first step of removing something that must never be seen half-removed under its own
    name: once this returns, the old name is gone for good (the directory is fsynced), and
    the temp name (:func:`temp_path`, with this process's id) is a crash leftover that
    ``gc`` deletes as soon as this process is gone, whatever a crash left of it.

    Args:
        path: the entry to move; its temp name is in the same directory, so the rename
            never crosses a filesystem.

    Returns:
        The entry's temp path.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        OSError: on any other failure (``path`` is then left as it was).
    """
    tmp = temp_path(path.parent, path.name)
    os.rename(path, tmp)
    fsync_dir(path.parent)
    return tmp


def append_durable(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` with one write and fsync it.

    Callers hold a :class:`FileLock` so appends from several processes never interleave.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class FileLock:
    """An advisory, process-wide exclusive lock on a file (``flock``).

    The lock is released by the kernel when the process dies, so a crashed committer never
    leaves the vault locked.

    Args:
        path: the lock file (created if missing).
        timeout: seconds to wait before giving up.
        shared: take a shared lock instead of an exclusive one.
    """

    def __init__(self, path: Path, timeout: float = 60.0, shared: bool = False) -> None:
        self.path = path
        self.timeout = timeout
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout`` seconds.

        Raises:
            LockTimeoutError: if another process kept it for longer.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        op = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = time.monotonic() + self.timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, op)
                self._fd = fd
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LockTimeoutError(
                    f"another process has held {self.path} for over {self.timeout:.0f} s; "
                    "wait for it to finish and try again"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def release(self) -> None:
        """Release the lock."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_state(path: Path) -> str | None:
    """How the ``flock`` of ``path`` is held right now (by any process), asked without waiting.

    A read-only probe: the file is opened read-only and never created, and the lock taken to
    ask (non-blocking) is released before this returns, so no holder or waiter is kept waiting
    for more than that instant.

    Args:
        path: a lock file.

    Returns:
        None if no process holds it (or there is no such file), ``"shared"`` if it is held
        shared only, ``"exclusive"`` if a process holds it exclusively.

    Raises:
        OSError: if the file exists but cannot be opened (permissions).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        if _try_flock(fd, fcntl.LOCK_EX):
            return None  # closing the descriptor below drops the lock just taken
        return "shared" if _try_flock(fd, fcntl.LOCK_SH) else "exclusive"
    finally:
        os.close(fd)


def _try_flock(fd: int, op: int) -> bool:
    """Take ``op`` on ``fd`` without waiting; False if another holder's lock conflicts."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


@contextmanager
def locked(path: Path, timeout: float = 60.0, shared: bool = False) -> Iterator[None]:
    """Context manager form of :class:`FileLock`."""
    with FileLock(path, timeout=timeout, shared=shared):
        yield
