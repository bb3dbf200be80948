"""The object-store contract: what every backend (local directory, later remotes) provides.

A backend holds blobs named by the BLAKE3 digest of their exact bytes. It is put-if-absent and
read-only: an object, once stored, is never changed; only gc deletes one. Names are path-free:
:func:`object_key` gives the same ``<2 hex>/<64 hex>`` key on every backend, so a remote can
mirror the local ``objects/`` layout of docs/format.md section 3 key for key. Local extras (a
filesystem path, batched commits, rehoming a shared inode) stay on the local class.

``tests/test_object_store_contract.py`` is the suite every backend must pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from .digest import Digest, parse_digest

__all__ = ["ObjectBackend", "object_key"]


def object_key(digest: Digest | str) -> str:
    """Return the backend-independent name of an object: ``<d[0:2]>/<d>``.

    Args:
        digest: the object's digest.

    Returns:
        The key, the object's path relative to ``objects/`` in the local layout.

    Raises:
        InvalidInputError: if ``digest`` is malformed (it never becomes a name then).
    """
    d = parse_digest(digest, "object digest")
    return f"{d[:2]}/{d}"


@runtime_checkable
class ObjectBackend(Protocol):
    """The operations every object store backend provides.

    Every method that takes a digest raises ``InvalidInputError`` for a malformed one, before
    it is used as a name. Puts are put-if-absent: storing bytes that are present already keeps
    the one object (and, on a backend with mtimes, refreshes its mtime so gc's grace period
    protects it again). A put given a claimed digest that the bytes do not hash to raises
    ``ChecksumMismatch`` and stores nothing. An object is complete and durable once its put
    returns, and is never visible partially written.
    """

    def key(self, digest: Digest | str) -> str:
        """Return the object's path-free name (:func:`object_key`).

        Raises:
            InvalidInputError: if ``digest`` is malformed.
        """
        ...

    def has(self, digest: Digest | str) -> bool:
        """Return True if the object is stored.

        Raises:
            InvalidInputError: if ``digest`` is malformed.
        """
        ...

    def size(self, digest: Digest | str) -> int:
        """Return the object's size in bytes.

        Raises:
            NotFoundError: if it is not stored.
        """
        ...

    def get(self, digest: Digest | str, verify: bool = True) -> bytes:
        """Return all the object's bytes, checked against its digest when ``verify``.

        Raises:
            NotFoundError: if it is not stored.
            ChecksumMismatch: if ``verify`` and the stored bytes were altered.
        """
        ...

    def open(self, digest: Digest | str) -> BinaryIO:
        """Open the object for reading (unverified, for lazy reads); the caller closes it.

        Raises:
            NotFoundError: if it is not stored.
        """
        ...

    def read_range(self, digest: Digest | str, offset: int, length: int | None = None) -> bytes:
        """Return up to ``length`` bytes from ``offset`` (to the end when ``length`` is None).

        Unverified: a range cannot be checked against a whole-object digest. A range reaching
        past the end is cut short there; one starting at or past the end is empty.

        Raises:
            NotFoundError: if it is not stored.
            InvalidInputError: if ``offset`` or ``length`` is negative.
        """
        ...

    def put_bytes(
        self, data: bytes | bytearray | memoryview, expected: Digest | str | None = None
    ) -> Digest:
        """Store ``data`` unless present; return its digest.

        Raises:
            ChecksumMismatch: if ``expected`` is given and differs (nothing stored).
            InvalidInputError: if ``expected`` is malformed.
        """
        ...

    def put_file(self, src: Path, expected: Digest | str | None = None) -> tuple[Digest, int]:
        """Store a copy of the regular file ``src`` unless present; return ``(digest, size)``.

        Raises:
            ChecksumMismatch: if ``expected`` is given and differs (nothing stored).
            FileChangedError: if the file changed while it was read.
            InvalidInputError: if ``src`` is a symlink or not a regular file, or ``expected``
                is malformed.
        """
        ...

    def put_stream(
        self, blocks: Iterable[bytes | bytearray | memoryview], expected: Digest | str | None = None
    ) -> tuple[Digest, int]:
        """Store the concatenation of ``blocks`` unless present; return ``(digest, size)``.

        Raises:
            ChecksumMismatch: if ``expected`` is given and differs (nothing stored).
            InvalidInputError: if ``expected`` is malformed.
        """
        ...

    def iter_digests(self) -> Iterator[Digest]:
        """Yield the digest of every stored object once, in no particular order."""
        ...

    def delete(self, digest: Digest | str) -> bool:
        """Remove the object (gc only: callers decide it is unreachable); idempotent.

        Returns:
            True if it was removed, False if it was not stored.

        Raises:
            InvalidInputError: if ``digest`` is malformed.
        """
        ...
