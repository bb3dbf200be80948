"""Discarding an uncommitted specimen: ``vault rm ID``.

Only a working directory that was never sealed can go: a committed specimen is immutable
(it can be retired, never removed). Removal never leaves a half-deleted specimen under its
own name: under the working directory's exclusive lock (so no writer is half-way through a
file and no commit starts), the directory is renamed to a temp name beside it,
``specimens/.<id>.<pid>.<32 hex>.tmp/``, and that rename is made durable before anything is
deleted. A crash after it leaves a temp entry that ``vault gc`` deletes (docs/format.md,
"Temp entries"). Objects the specimen staged (its working index, its copies record) are then
named by nothing and become garbage for ``vault gc``. Nothing is written to the journal: the
specimen was never sealed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import lock_state, remove_tree, rename_aside
from .errors import ImmutableError, InvalidInputError, LockTimeoutError, NotFoundError
from .logger import busy_logs
from .run import RUN_LOCK_PATH
from .scan import tree_size
from .workdir import LOCK_PATH, sealing

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["Removal", "check_removable", "remove_specimen"]


@dataclass(frozen=True)
class Removal:
    """An uncommitted working directory, as removed (or as it would be).

    Attributes:
        specimen_id: the specimen.
        path: its working directory.
        files: how many files it holds (private ``.cas/`` files included).
        bytes: their total size.
    """

    specimen_id: str
    path: Path
    files: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"specimen_id": self.specimen_id, "path": str(self.path), "files": self.files,
                "bytes": self.bytes}


def check_removable(repo: Repository, specimen_id: str) -> Removal:
    """Say what removing ``specimen_id`` would remove, or why it cannot be removed.

    For a confirmation before :func:`remove_specimen`, which checks everything again under the
    working directory's lock. Writes nothing.

    Args:
        repo: the repository.
        specimen_id: the specimen.

    Returns:
        The working directory and its size.

    Raises:
        InvalidIdError: for a malformed id. InvalidInputError: if ``specimens/<id>`` is a
            symbolic link.
        ImmutableError: if the specimen is committed.
        NotFoundError: if it has no working directory.
        LockTimeoutError: if a ``vault run``, a writer, a commit or a step-wise log is busy
            with it now.
    """
    wd = _working_dir(repo, specimen_id)
    _check_idle(specimen_id, wd)
    held = lock_state(wd / LOCK_PATH)
    if held is not None:
        raise _busy(specimen_id, wd, held)
    return _measure(specimen_id, wd, wd)


def remove_specimen(repo: Repository, specimen_id: str) -> Removal:
    """Remove an uncommitted specimen's working directory, crash-safely.

    Takes the working directory's lock exclusively without waiting, checks again that the
    specimen has no ref and that nothing runs or logs into it, renames the directory to a
    temp name beside it (durably), then deletes it. After a crash past the rename, the temp
    entry is garbage that ``vault gc`` removes; before it, the specimen is intact.

    Args:
        repo: the repository.
        specimen_id: the specimen.

    Returns:
        What was removed.

    Raises:
        InvalidIdError: for a malformed id. InvalidInputError: if ``specimens/<id>`` is a
            symbolic link.
        ImmutableError: if the specimen is committed (retire it instead).
        NotFoundError: if it has no working directory.
        LockTimeoutError: if a ``vault run``, a writer, a commit or a step-wise log is busy
            with it; nothing is removed.
        OSError: if the directory cannot be renamed (nothing is removed) or deleted (what is
            left is a temp entry for ``vault gc``).
    """
    wd = _working_dir(repo, specimen_id)
    _check_idle(specimen_id, wd)  # first: a run or logger also holds the lock at times
    try:
        lock = sealing(wd, timeout=0.0)
        lock.acquire()
    except LockTimeoutError:
        raise _busy(specimen_id, wd, lock_state(wd / LOCK_PATH) or "shared") from None
    try:
        # A commit may have sealed it, or a run or logger started, since we looked.
        _working_dir(repo, specimen_id)
        _check_idle(specimen_id, wd)
        aside = rename_aside(wd)
    finally:
        lock.release()
    removed = _measure(specimen_id, wd, aside)
    _delete(aside)
    return removed


def _working_dir(repo: Repository, specimen_id: str) -> Path:
    """The working directory of an uncommitted specimen, or the reason there is none."""
    wd = repo.specimen_dir(specimen_id)
    try:
        digest = repo.refs.get(specimen_id)
    except InvalidInputError:
        digest = "a damaged ref"  # still a ref: the specimen was sealed
    if digest is not None:
        raise ImmutableError(
            f"specimen {specimen_id} is committed ({digest}) and sealed specimens are never "
            f"removed; retire it instead: `vault retire {specimen_id} --reason TEXT`"
        )
    if wd.is_symlink():
        # Deleting through the link would delete what it points to, outside the vault.
        raise InvalidInputError(
            f"{wd} is a symbolic link, not a working directory made by `vault new`; remove "
            "the link yourself if it is not wanted"
        )
    if not wd.is_dir():
        raise NotFoundError(
            f"no specimen {specimen_id} in {repo.root} (no working directory {wd}); "
            "`vault status` lists the uncommitted ones"
        )
    return wd


def _check_idle(specimen_id: str, wd: Path) -> None:
    """Refuse while ``vault run`` or a step-wise log works in ``wd`` (they hold locks of their
    own for their whole life, the working directory's only while they write)."""
    if lock_state(wd / RUN_LOCK_PATH) is not None:
        raise LockTimeoutError(
            f"specimen {specimen_id} is being run by `vault run` ({wd / RUN_LOCK_PATH} is "
            "held); wait for it to finish, or stop it, then remove it"
        )
    busy = busy_logs(wd)
    if busy:
        raise LockTimeoutError(
            f"specimen {specimen_id} is being logged into ({', '.join(busy)}) by a running "
            "process; stop it, then remove the specimen"
        )


def _busy(specimen_id: str, wd: Path, held: str) -> LockTimeoutError:
    who = "committed" if held == "exclusive" else "written (SpecimenStorage, a tensor writer)"
    return LockTimeoutError(
        f"specimen {specimen_id} is being {who} by another process ({wd / LOCK_PATH} is "
        "held); nothing was removed: try again when it has finished"
    )


def _measure(specimen_id: str, wd: Path, where: Path) -> Removal:
    files, size = tree_size(where)
    return Removal(specimen_id, wd, files, size)


def _delete(aside: Path) -> None:
    """Delete the renamed directory; a concurrent ``vault gc`` may be deleting it too (it is a
    temp entry now), so whatever vanishes under us is fine."""
    for _ in range(3):
        try:
            remove_tree(aside)
            return
        except FileNotFoundError:
            if not os.path.lexists(aside):
                return
    remove_tree(aside)
