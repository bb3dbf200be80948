"""What lies in a vault's directories: the objects in ``objects/`` and the temp files of writes.

``verify`` reports what these scans find (strays, garbage, crash leftovers); ``gc`` removes it.
A temp file is any hidden name ending in :data:`~cas_vault.atomic.TMP_SUFFIX` (``.*.tmp``);
:func:`walk_tree` is the walk both use below working directories.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import TMP_SUFFIX
from .digest import Digest, is_digest

if TYPE_CHECKING:
    from .objects import ObjectStore

__all__ = [
    "TEMP_DIRS", "ObjectScan", "TempItem", "find_temp", "scan_objects", "tree_size", "walk_tree",
]

#: ``.<stem>.<pid>.<uuid hex>.tmp`` as :func:`~cas_vault.atomic.temp_path` names them: gc spares
#: a temp file whose writer is still running.
_TEMP_PID_RE = re.compile(r"\A\..+\.(\d+)\.[0-9a-f]{32}\.tmp\Z")


@dataclass(frozen=True)
class TempItem:
    """A temp file or directory left by a write (``.*.tmp``).

    Attributes:
        path: absolute path.
        is_dir: a temp directory (scaffold or Zarr write in progress).
        bytes: its size (a directory's files summed).
        mtime: modification time (seconds since the epoch).
        pid: the writing process, when the name records it.
    """

    path: Path
    is_dir: bool
    bytes: int
    mtime: float
    pid: int | None


@dataclass
class ObjectScan:
    """What is in ``objects/``: ``digests`` -> ``(size, mtime, links)``, strays, temps."""

    digests: dict[Digest, tuple[int, float, int]] = field(default_factory=dict)
    strays: list[Path] = field(default_factory=list)
    temps: list[TempItem] = field(default_factory=list)


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def _temp_item(path: Path, is_dir: bool) -> TempItem | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None  # its writer finished (renamed or removed it) meanwhile
    size = tree_size(path)[1] if is_dir else st.st_size
    m = _TEMP_PID_RE.match(path.name)
    return TempItem(path, is_dir, size, st.st_mtime, int(m.group(1)) if m else None)


def scan_objects(store: ObjectStore) -> ObjectScan:
    """List ``objects/``: well-named objects with their stat, stray files, temp files.

    A stray is anything that is not ``<aa>/<digest>`` with ``aa`` the digest's first two
    characters (objects with a well-formed name are checked against their bytes elsewhere).
    Hidden entries directly in ``objects/`` (``.gitkeep``) are ignored.
    """
    scan = ObjectScan()
    if not store.root.is_dir():
        return scan
    for fan in os.scandir(store.root):
        if _is_temp_name(fan.name):
            item = _temp_item(Path(fan.path), fan.is_dir(follow_symlinks=False))
            if item:
                scan.temps.append(item)
            continue
        if fan.name.startswith("."):
            continue  # .gitkeep and the like: no digest can name a hidden file
        if not fan.is_dir(follow_symlinks=False) or not re.fullmatch(r"[0-9a-f]{2}", fan.name):
            scan.strays.append(Path(fan.path))
            continue
        for entry in os.scandir(fan.path):
            if _is_temp_name(entry.name):
                item = _temp_item(Path(entry.path), entry.is_dir(follow_symlinks=False))
                if item:
                    scan.temps.append(item)
            elif (is_digest(entry.name) and entry.name[:2] == fan.name
                  and entry.is_file(follow_symlinks=False)):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed by a concurrent gc
                scan.digests[Digest(entry.name)] = (st.st_size, st.st_mtime, st.st_nlink)
            else:
                scan.strays.append(Path(entry.path))
    return scan


#: The vault directories where writes leave temp files (``objects/`` is scanned on its own).
TEMP_DIRS = ("tmp", "refs", "locks", "specimens")


def tree_size(top: Path) -> tuple[int, int]:
    """``(files, bytes)`` below directory ``top`` (links counted as themselves; entries that
    vanish meanwhile are skipped)."""
    files = size = 0
    for dirpath, _, names in walk_tree(top):
        for n in names:
            try:
                size += os.lstat(os.path.join(dirpath, n)).st_size
            except FileNotFoundError:
                continue
            files += 1
    return files, size


def find_temp(root: Path) -> list[TempItem]:
    """Find temp files and directories (``.*.tmp``) a crash left in a vault.

    They are left where a write was interrupted: the vault root (marker, catalog), ``tmp/``,
    ``refs/``, ``locks/pending/``, ``specimens/`` (scaffolds) and inside working directories
    (results, Zarr writes). Only those places are searched: a vault may share its directory
    with other things (a git checkout), whose temp files are not ours.
    """
    items: list[TempItem] = []
    if root.is_dir():
        for entry in os.scandir(root):
            if _is_temp_name(entry.name):
                item = _temp_item(Path(entry.path), entry.is_dir(follow_symlinks=False))
                if item:
                    items.append(item)
    for sub in TEMP_DIRS:
        items.extend(_find_temp_below(root / sub))
    return items


def walk_tree(top: str | os.PathLike[str]) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(top)`` with an explicit stack instead of recursion.

    Before Python 3.12 ``os.walk`` recurses once per directory level, so one 1,000-deep folder
    in a working directory made every verify and gc fail with RecursionError. Same contract:
    top-down ``(dirpath, dirnames, filenames)``, pruned by editing ``dirnames`` in place,
    symlinked directories listed in ``dirnames`` but not entered, unreadable directories
    (removed meanwhile, no permission, a path too long for the OS) skipped.

    Args:
        top: the directory to walk.

    Yields:
        ``(dirpath, dirnames, filenames)`` for ``top`` and every directory below it.
    """
    stack = [os.fspath(top)]
    while stack:
        dirpath = stack.pop()
        dirnames: list[str] = []
        filenames: list[str] = []
        try:
            with os.scandir(dirpath) as it:
                for entry in it:
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    (dirnames if is_dir else filenames).append(entry.name)
        except OSError:
            continue
        yield dirpath, dirnames, filenames
        for name in reversed(dirnames):
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                stack.append(path)


def _find_temp_below(top: Path) -> list[TempItem]:
    items: list[TempItem] = []
    for dirpath, dirnames, filenames in walk_tree(top):
        keep = []
        for d in dirnames:
            if _is_temp_name(d):
                item = _temp_item(Path(dirpath, d), True)
                if item:
                    items.append(item)
            else:
                keep.append(d)
        dirnames[:] = keep
        for n in filenames:
            if _is_temp_name(n):
                item = _temp_item(Path(dirpath, n), False)
                if item:
                    items.append(item)
    return items
