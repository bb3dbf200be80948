"""BLAKE3 digests: the names of every object in a vault.

A digest is the lowercase hex BLAKE3-256 of an object's exact bytes (64 characters). It is
validated before it is ever joined into a path, because a digest read from a commit or typed by
a user is untrusted input.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NewType

import blake3

from .errors import InvalidInputError

__all__ = ["Digest", "EMPTY_DIGEST", "Hasher", "hash_bytes", "hash_file", "is_digest", "parse_digest"]

Digest = NewType("Digest", str)
"""Lowercase hex BLAKE3-256 digest (64 characters)."""

_DIGEST_RE = re.compile(r"\A[0-9a-f]{64}\Z")

#: Files at least this large are hashed with BLAKE3's multithreaded mode over an mmap.
_MMAP_THRESHOLD = 4 * 1024 * 1024
_READ_BLOCK = 1024 * 1024

EMPTY_DIGEST = Digest("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")


def is_digest(value: object) -> bool:
    """Return True if ``value`` is a well-formed digest string."""
    return isinstance(value, str) and _DIGEST_RE.match(value) is not None


def parse_digest(value: object, what: str = "digest") -> Digest:
    """Validate a digest coming from outside.

    Args:
        value: the candidate digest.
        what: how to name it in the error message.

    Returns:
        The digest, typed.

    Raises:
        InvalidInputError: if it is not 64 lowercase hex characters.
    """
    if not is_digest(value):
        raise InvalidInputError(
            f"{what} {value!r} is not a BLAKE3 digest (64 lowercase hex characters)"
        )
    return Digest(value)  # type: ignore[arg-type]


def hash_bytes(data: bytes | bytearray | memoryview) -> Digest:
    """Return the digest of ``data``."""
    # Large buffers (tensor chunks) benefit from BLAKE3's internal parallelism.
    threads = blake3.blake3.AUTO if len(data) >= _MMAP_THRESHOLD else 1
    return Digest(blake3.blake3(data, max_threads=threads).hexdigest())


def hash_file(path: str | os.PathLike[str]) -> tuple[Digest, int]:
    """Hash a file's bytes.

    Args:
        path: the file.

    Returns:
        ``(digest, size)``.

    Raises:
        OSError: if the file cannot be read.
    """
    path = Path(path)
    size = path.stat().st_size
    if size >= _MMAP_THRESHOLD:
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        hasher.update_mmap(path)
        return Digest(hasher.hexdigest()), size
    hasher = blake3.blake3()
    n = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            hasher.update(block)
            n += len(block)
    return Digest(hasher.hexdigest()), n


class Hasher:
    """Incremental hashing for streamed writes (``update`` then ``hexdigest``)."""

    def __init__(self, parallel: bool = False) -> None:
        # parallel: BLAKE3's own threads, for callers that feed blocks of MiBs one at a time
        # (a large file's copy): a thread per block would cost more than it saves on small ones.
        self._h = blake3.blake3(max_threads=blake3.blake3.AUTO) if parallel else blake3.blake3()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed more bytes."""
        self._h.update(data)
        self.size += len(data)

    def hexdigest(self) -> Digest:
        """Return the digest of everything fed so far."""
        return Digest(self._h.hexdigest())
