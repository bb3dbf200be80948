"""Hashing files in the background for verify: :class:`HashPool`, reporting to a :data:`Progress`.

BLAKE3 and file reads release the GIL, so hashing in threads keeps both cores busy while the
verify thread does the checks that are Python work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..digest import Digest, hash_file
from ..progress import Progress

# Progress is re-exported: verify defined it before every long operation shared it.
__all__ = ["HashPool", "Hashed", "Progress"]

#: Files at least this large are hashed by BLAKE3's own threads (digest.hash_file), one at a time.
_LARGE_FILE = 4 * 1024 * 1024


class Hashed:
    """The pending results of one :meth:`HashPool.submit`."""

    def __init__(self, n: int, futures: list[Future[list[tuple[int, Digest | OSError | None]]]]):
        self.n = n
        self.futures = futures

    def results(self) -> list[Digest | OSError | None]:
        """Wait for every file: a digest, None (vanished) or the error that kept it unread."""
        out: list[Digest | OSError | None] = [None] * self.n
        for future in self.futures:
            for i, got in future.result():
                out[i] = got
        return out


class HashPool:
    """Hashes files in the background on both cores.

    Large files go one at a time to a worker whose BLAKE3 hashes each over an mmap with its own
    threads (two such files at once would only fight for the cores); small files go in batches
    to a pool of plain threads.

    Args:
        progress: called with ``(advance_bytes, total_bytes_submitted)``, from worker threads.
    """

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.total = 0
        self.done = 0
        self._lock = threading.Lock()
        self._large = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-large")
        self._small = ThreadPoolExecutor(
            max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="verify-small")

    def __enter__(self) -> HashPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._large.shutdown(cancel_futures=True)
        self._small.shutdown(cancel_futures=True)

    def _one(self, path: Path, size: int) -> Digest | OSError | None:
        try:
            got: Digest | OSError | None = hash_file(path)[0]
        except FileNotFoundError:
            got = None
        except OSError as exc:
            got = exc
        with self._lock:
            self.done += size
            if self.progress is not None:
                self.progress(size, self.total)
        return got

    def _batch(
        self, jobs: list[tuple[int, Path, int]],
    ) -> list[tuple[int, Digest | OSError | None]]:
        return [(i, self._one(path, size)) for i, path, size in jobs]

    def submit(self, jobs: Sequence[tuple[Path, int]]) -> Hashed:
        """Start hashing ``(path, size)`` jobs; returns a handle on their results."""
        with self._lock:
            self.total += sum(size for _, size in jobs)
        futures = []
        batch: list[tuple[int, Path, int]] = []
        batch_bytes = 0
        for i, (path, size) in enumerate(jobs):
            if size >= _LARGE_FILE:
                futures.append(self._large.submit(self._batch, [(i, path, size)]))
                continue
            batch.append((i, path, size))
            batch_bytes += size
            if len(batch) >= 64 or batch_bytes >= _LARGE_FILE:
                futures.append(self._small.submit(self._batch, batch))
                batch, batch_bytes = [], 0
        if batch:
            futures.append(self._small.submit(self._batch, batch))
        return Hashed(len(jobs), futures)
