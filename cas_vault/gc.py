"""`vault gc`: remove unreachable objects and crash leftovers, never anything live.

Live objects are every commit reachable from a ref, a journal line or an intent file (through
parents), every object their trees name, and every object listed in a working index
(``specimens/*/.cas/index.msgpack``: tensor chunks written before their commit); the rule lives
in :mod:`cas_vault.reachability`. gc holds ``locks/gc.lock`` exclusively while it decides and
deletes; writers hold it shared while they create objects, so an object a concurrent commit has
just written is either already reachable or its writer is still waiting for the lock.
Unreachable objects are removed only once older than the grace period (mtime; re-putting an
object refreshes it), by default two weeks as in git.

gc refuses to delete anything when a ref's commit (or an ancestor) is missing or does not decode,
because then the set of live objects is unknown: run ``vault verify`` and repair first.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import FileLock, fsync_dir, remove_tree
from .digest import Digest
from .errors import ChecksumMismatch, IntegrityError, InvalidInputError, NotFoundError, VaultError
from .progress import Progress, counted
from .retirement import retirements
from .reachability import reachable
from .scan import TempItem, find_temp, scan_objects

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["DEFAULT_GRACE", "DEFAULT_TEMP_AGE", "GcReport", "gc", "parse_duration"]

#: Unreachable objects younger than this are kept (two weeks, as ``git gc``).
DEFAULT_GRACE = 14 * 24 * 3600.0
#: Temp files whose writer cannot be identified are removed once older than this.
DEFAULT_TEMP_AGE = 3600.0
#: gc waits this long for running commits to release ``locks/gc.lock``.
LOCK_TIMEOUT = 600.0

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"\A\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*\Z")


def parse_duration(text: str) -> float:
    """Parse a duration such as ``0``, ``90s``, ``30m``, ``12h``, ``14d`` or ``2w``.

    Args:
        text: a number with an optional unit (seconds if none).

    Returns:
        Seconds.

    Raises:
        InvalidInputError: if it is not such a duration.
    """
    m = _DURATION_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise InvalidInputError(
            f"duration {text!r} is not understood; use a number with s, m, h, d or w, e.g. 14d or 0"
        )
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass(frozen=True)
class GcReport:
    """What :func:`gc` removed (or, with ``dry_run``, would remove).

    Attributes:
        dry_run: nothing was deleted.
        grace_seconds: the grace period applied.
        live_objects: objects kept because something reaches them.
        removed_objects: unreachable objects older than the grace period.
        removed_bytes: bytes those objects freed (objects still hard-linked elsewhere free none).
        recent_objects: unreachable objects kept because they are younger than the grace period.
        recent_bytes: their size.
        removed_temp: temp files and directories removed.
        removed_temp_bytes: their size.
        kept_temp: temp files kept because their writer may still be running.
        removed: the removed paths, relative to the vault root (objects as ``objects/aa/<d>``).
        unshared_objects: live objects that had a second name (a hard link from a working
            file or elsewhere) and were given an inode of their own (would be, on a dry run).
    """

    dry_run: bool
    grace_seconds: float
    live_objects: int
    removed_objects: int
    removed_bytes: int
    recent_objects: int
    recent_bytes: int
    removed_temp: int
    removed_temp_bytes: int
    kept_temp: int
    removed: tuple[str, ...]
    unshared_objects: int = 0

    @property
    def freed_bytes(self) -> int:
        """Bytes freed by objects and temp files together."""
        return self.removed_bytes + self.removed_temp_bytes

    def to_dict(self) -> dict[str, Any]:
        """The stable ``vault gc --json`` form (documented in docs/integrity.md)."""
        return {
            "dry_run": self.dry_run, "grace_seconds": self.grace_seconds,
            "live_objects": self.live_objects, "removed_objects": self.removed_objects,
            "removed_bytes": self.removed_bytes, "recent_objects": self.recent_objects,
            "recent_bytes": self.recent_bytes, "removed_temp": self.removed_temp,
            "removed_temp_bytes": self.removed_temp_bytes, "kept_temp": self.kept_temp,
            "freed_bytes": self.freed_bytes, "removed": list(self.removed),
            "unshared_objects": self.unshared_objects,
        }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _purged_objects(vault: Repository, live: set[Digest]) -> set[Digest]:
    """Objects of specimens retired with ``purge`` that nothing live needs: their commits and
    what their trees name (those already gone name nothing)."""
    out: set[Digest] = set()
    for r in retirements(vault).values():
        if not r.purge:
            continue
        out.add(r.commit)
        try:
            out.update(e.digest for e in vault.read_commit(r.commit).tree.values())
        except VaultError:
            continue
    return out - live


def _temp_removable(item: TempItem, now: float, temp_age: float) -> bool:
    if now - item.mtime >= temp_age:
        return True
    # A temp file whose writer is dead can never be finished by it.
    return item.pid is not None and item.pid != os.getpid() and not _pid_alive(item.pid)


def gc(
    vault: Repository, *, grace: float | str = DEFAULT_GRACE, dry_run: bool = False,
    temp_age: float | str = DEFAULT_TEMP_AGE, lock_timeout: float = LOCK_TIMEOUT,
    progress: Progress | None = None,
) -> GcReport:
    """Remove unreachable objects older than ``grace`` and temp files left by crashes.

    Args:
        vault: the vault.
        grace: how long an unreachable object is kept after its last write (0: remove
            all): seconds, or a duration such as ``"14d"`` (:func:`parse_duration`).
        dry_run: only report what would be removed.
        temp_age: age (seconds or a duration) after which a temp file is garbage even if
            its writer may be alive
            (a temp file whose writing process is dead is garbage at once).
        lock_timeout: seconds to wait for running commits to release the gc lock.
        progress: called with ``(advance_objects, total_objects)``, one object at a time, as
            gc is done with each object in ``objects/`` (kept, or removed); the total is every
            object found there, live or not, once the live ones are known.

    Returns:
        What was (or would be) removed.

    Raises:
        InvalidInputError: for a malformed or negative ``grace`` or ``temp_age``.
        IntegrityError: if a ref, commit or parent commit is missing or corrupt (nothing is
            deleted then; run ``vault verify``).
        LockTimeoutError: if commits kept the gc lock for longer than ``lock_timeout``.
    """
    grace = parse_duration(grace) if isinstance(grace, str) else float(grace)
    temp_age = parse_duration(temp_age) if isinstance(temp_age, str) else float(temp_age)
    if grace < 0 or temp_age < 0:
        raise InvalidInputError("grace and temp age must be zero or positive durations")
    vault.refs.recover()
    removed: list[str] = []
    with FileLock(vault.gc_lock_path, timeout=lock_timeout):
        reach = reachable(vault)
        damage = [p for p in reach.problems if p.kind != "ref_mismatch"]
        if damage:
            shown = "; ".join(p.message for p in damage[:3])
            raise IntegrityError(
                f"gc found damage and deleted nothing, because it cannot tell which objects are "
                f"live: {shown}. Run `vault verify` for the full list"
            )
        live = reach.live
        purge = _purged_objects(vault, live)

        now = time.time()
        scan = scan_objects(vault.objects)
        removed_objects = removed_bytes = recent_objects = recent_bytes = 0
        touched: set[Path] = set()
        for d, (size, mtime, _) in counted(sorted(scan.digests.items()), progress):
            if d in live:
                continue
            # grace 0 means all, whatever the clocks say; a purged specimen's go at once
            if grace > 0 and now - mtime < grace and d not in purge:
                recent_objects += 1
                recent_bytes += size
                continue
            path = vault.objects.path(d)
            freed = size
            if not dry_run:
                try:
                    st = path.stat()
                    # A hard-linked object frees no bytes until its last name goes.
                    freed = size if st.st_nlink <= 1 else 0
                    path.unlink()
                except FileNotFoundError:
                    continue
                touched.add(path.parent)
            removed_objects += 1
            removed_bytes += freed
            removed.append(f"objects/{d[:2]}/{d}")

        removed_temp = removed_temp_bytes = kept_temp = 0
        for item in scan.temps + find_temp(vault.root):
            if not _temp_removable(item, now, temp_age):
                kept_temp += 1
                continue
            if not dry_run:
                try:
                    if item.is_dir:
                        remove_tree(item.path)
                    else:
                        item.path.unlink()
                except FileNotFoundError:
                    continue
                touched.add(item.path.parent)
            removed_temp += 1
            removed_temp_bytes += item.bytes
            removed.append(item.path.relative_to(vault.root).as_posix())
        # A live object that another path also names can be changed by an ordinary write
        # there (vaults written before objects had inodes of their own linked working files
        # to them): give each one an inode of its own. Corrupt ones are left for verify.
        unshared = 0
        for d, (_, _, links) in sorted(scan.digests.items()):
            if links <= 1 or d not in live:
                continue
            if dry_run:
                unshared += 1
                continue
            try:
                unshared += vault.objects.rehome(d)
            except (ChecksumMismatch, NotFoundError):
                continue
        # Make the removals durable before the lock lets writers in again.
        for directory in sorted(touched):
            try:
                fsync_dir(directory)
            except FileNotFoundError:
                pass
    return GcReport(
        dry_run=dry_run, grace_seconds=grace, live_objects=len(live & set(scan.digests)),
        removed_objects=removed_objects, removed_bytes=removed_bytes,
        recent_objects=recent_objects, recent_bytes=recent_bytes, removed_temp=removed_temp,
        removed_temp_bytes=removed_temp_bytes, kept_temp=kept_temp, removed=tuple(removed),
        unshared_objects=unshared,
    )
