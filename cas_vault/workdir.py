"""Working directories: ``specimens/<id>/``, where experiments write before sealing.

A working directory holds ``manifest.msgpack`` (what ``vault new`` recorded), ``protocol.py``,
``field_notes.md`` and ``strata/`` with the results. A hidden ``.cas/`` folder holds the
working index: for files that were written straight into the object store (tensor chunks),
the digest they were stored under, so committing does not hash or copy them again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import canonical
from .atomic import write_replace
from .digest import Digest, is_digest
from .errors import InvalidInputError, NotFoundError

__all__ = [
    "INDEX_PATH",
    "MANIFEST_NAME",
    "PRIVATE_DIR",
    "WorkingIndex",
    "iter_files",
    "read_manifest",
]

MANIFEST_NAME = "manifest.msgpack"
PRIVATE_DIR = ".cas"
INDEX_PATH = f"{PRIVATE_DIR}/index.msgpack"


def iter_files(root: Path) -> Iterator[str]:
    """Yield the relative POSIX paths of every regular file under ``root`` that a commit seals.

    Skipped: the private ``.cas/`` folder, temp files (``.*.tmp``), ``__pycache__`` folders.
    Symlinks are refused rather than followed, because a link could pull bytes from outside.

    Raises:
        InvalidInputError: if a symlink or special file is found.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(
            d for d in dirnames
            if not (rel_dir == "." and d == PRIVATE_DIR) and d != "__pycache__"
            and not (d.startswith(".") and d.endswith(".tmp"))
        )
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise InvalidInputError(
                    f"{os.path.join(dirpath, d)} is a symlink; copy the data into the specimen"
                )
        for name in sorted(filenames):
            if name.startswith(".") and name.endswith(".tmp"):
                continue
            full = os.path.join(dirpath, name)
            if os.path.islink(full) or not os.path.isfile(full):
                raise InvalidInputError(
                    f"{full} is a symlink or special file; copy the data into the specimen"
                )
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            yield rel.replace(os.sep, "/")


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


class WorkingIndex:
    """Digests of working files that are already objects (``.cas/index.msgpack``).

    Args:
        specimen_dir: the working directory.
    """

    def __init__(self, specimen_dir: Path) -> None:
        self.specimen_dir = specimen_dir
        self.path = specimen_dir / INDEX_PATH

    def load(self) -> dict[str, Digest]:
        """Return relative path -> digest; a missing or unreadable index is empty (it is a cache)."""
        try:
            value = canonical.unpackb(self.path.read_bytes(), "working index")
        except (FileNotFoundError, InvalidInputError):
            return {}
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
