"""What is live: the one rule of docs/format.md "Verification and garbage collection".

An object is live if it is a commit named by a ref, by a decodable journal line or by an intent
file (the roots; a retired specimen's ref and journal line are no roots), a parent of a live commit (recursively), named by a live commit's tree, an
event object named by a decodable journal event line, or named by the working index or copies
record of any working directory. ``gc`` keeps exactly
these; ``verify`` walks the same way from the roots it checks and counts everything else as
garbage.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import journal
from .commit import Commit
from .digest import Digest, hash_bytes, is_digest
from .errors import IntegrityError, InvalidInputError
from .findings import Finding
from .retirement import retirements
from .ids import validate_id
from .workdir import COPIES_PATH, INDEX_PATH, WorkingCopies, WorkingIndex

if TYPE_CHECKING:
    from .objects import ObjectStore
    from .repository import Repository

__all__ = [
    "Reachable", "event_objects", "live_roots", "reachable", "walk_commits",
    "working_index_digests",
]


@dataclass(frozen=True)
class Reachable:
    """The result of :func:`reachable`.

    Attributes:
        commits: every reachable commit that decoded.
        live: the live digests: those commits, every object their trees name and (unless
            left out) every object a working index or copies record names.
        problems: what the walk found wrong (``missing_commit``, ``missing_parent``,
            ``corrupt_object``, ``bad_commit``).
    """

    commits: dict[Digest, Commit]
    live: set[Digest]
    problems: list[Finding]


def live_roots(
    vault: Repository, retired: Collection[str] | None = None,
) -> tuple[dict[Digest, str], set[Digest]]:
    """Collect the root commits: ``(starts, required)``.

    ``starts`` maps every commit named by a ref, a decodable journal line or an intent file to a
    specimen id; ``required`` holds those named by refs, whose absence means the live set is
    unknown.

    Args:
        vault: the vault.
        retired: the retired specimens' ids, if the caller has read them already
            (:func:`cas_vault.retirement.retirements`).

    Returns:
        ``(starts, required)``.

    Raises:
        IntegrityError: if a ref does not hold a commit digest.
    """
    refs = vault.refs
    starts: dict[Digest, str] = {}
    required: set[Digest] = set()
    if retired is None:
        retired = set(retirements(vault))
    for name in refs.names():
        if name in retired:
            continue  # no longer live; still needed only if a live commit reaches it
        try:
            validate_id(name)
            d = refs.get(name)
        except InvalidInputError:
            raise IntegrityError(
                f"ref {name} is corrupt, so gc cannot tell which objects it keeps alive; run "
                "`vault verify` and repair it first (nothing was deleted)"
            ) from None
        if d is not None:
            starts[d] = name
            required.add(d)
    try:
        data = refs.journal.read_bytes()
    except FileNotFoundError:
        data = b""
    for e in journal.decodable(data):
        if e.is_ref and e.specimen_id not in retired:
            starts.setdefault(e.commit, e.specimen_id)
    if refs.pending_dir.is_dir():
        for name in os.listdir(refs.pending_dir):
            if name.startswith("."):
                continue  # a temp file of an intent write, not an intent
            try:
                text = (refs.pending_dir / name).read_text("ascii").strip()
            except (OSError, UnicodeDecodeError):
                continue
            if is_digest(text):
                starts.setdefault(Digest(text), name)
    return starts, required


def walk_commits(
    store: ObjectStore, starts: dict[Digest, str], required: Iterable[Digest] | None = None,
    on_read: Callable[[int], None] | None = None,
) -> tuple[dict[Digest, Commit], list[Finding]]:
    """Load every commit reachable from ``starts`` through parents, checking each one.

    Args:
        store: the object store.
        starts: commit digest -> the specimen (ref) it was reached from.
        required: the starts whose absence is a problem (default: all); others are skipped
            silently when missing (e.g. commits named only by the journal).
        on_read: called with the size of every commit object read and hashed.

    Returns:
        ``(commits, problems)``: every commit that decoded (a commit whose bytes do not match
        its digest is included when it still decodes, so its tree is checked too), and the
        ``missing_commit``, ``missing_parent``, ``corrupt_object`` and ``bad_commit`` problems
        found.
    """
    must = set(starts if required is None else required)
    commits: dict[Digest, Commit] = {}
    problems: list[Finding] = []
    seen: set[Digest] = set()
    missing: set[Digest] = set()
    # (digest, specimen it is reached from, child specimen if reached as a parent); breadth
    # first, so every start is met as a start before it is met as someone's parent.
    queue: deque[tuple[Digest, str, str | None]] = deque((d, s, None) for d, s in starts.items())
    while queue:
        d, sid, child = queue.popleft()
        rel = f"objects/{d[:2]}/{d}"
        if d in missing and child is not None:
            problems.append(Finding(
                "missing_parent", f"parent commit {d} of {child} is missing from objects/; "
                "restore it from a backup", specimen=child, digest=d, file=rel))
        if d in seen:
            continue
        seen.add(d)
        try:
            data = store.path(d).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            missing.add(d)
            if child is not None:
                problems.append(Finding(
                    "missing_parent", f"parent commit {d} of {child} is missing from objects/; "
                    "restore it from a backup", specimen=child, digest=d, file=rel))
            elif d in must:
                problems.append(Finding(
                    "missing_commit", f"commit {d} of {sid} is missing from objects/; restore it "
                    "from a backup", specimen=sid, digest=d, file=rel))
            continue
        got = hash_bytes(data)
        if on_read is not None:
            on_read(len(data))
        if got != d:
            problems.append(Finding(
                "corrupt_object", f"commit object {d} of {sid} was altered (its bytes hash to "
                f"{got}); restore it from a backup", specimen=sid, digest=d, file=rel))
        try:
            c = Commit.from_bytes(data)
        except InvalidInputError as exc:
            problems.append(Finding(
                "bad_commit", f"commit {d} of {sid} cannot be decoded: {exc}",
                specimen=sid, digest=d, file=rel))
            continue
        commits[d] = c
        for p in c.parents:
            queue.append((p, c.specimen_id, c.specimen_id))
    return commits, problems


def event_objects(vault: Repository) -> set[Digest]:
    """Digests of the event objects the journal's decodable event lines name (labels, notes):
    live for as long as the journal names them, which is always.

    Args:
        vault: the vault.
    """
    try:
        data = vault.refs.journal.read_bytes()
    except FileNotFoundError:
        return set()
    return {e.commit for e in journal.events(data)}


def working_index_digests(
    vault: Repository, retired: Collection[str] | None = None,
) -> set[Digest]:
    """Digests recorded in the working indexes and copies records of every working directory.

    These objects belong to specimens still being written (tensor chunks go straight into
    ``objects/``), so they are live although no commit references them yet. Hidden and
    uncommitted working directories count too; an unreadable record names nothing; a retired
    specimen's working directory does not count.

    Args:
        vault: the vault.
        retired: the retired specimens' ids, if the caller has read them already.

    Returns:
        The digests.
    """
    out: set[Digest] = set()
    if not vault.specimens_dir.is_dir():
        return out
    if retired is None:
        retired = set(retirements(vault))
    for entry in os.scandir(vault.specimens_dir):
        if not entry.is_dir(follow_symlinks=False) or entry.name in retired:
            continue  # a retired specimen's leftover records keep nothing alive
        wd = Path(entry.path)
        if Path(entry.path, INDEX_PATH).is_file():
            out.update(WorkingIndex(wd).load().values())
        if Path(entry.path, COPIES_PATH).is_file():
            out.update(d for d, _ in WorkingCopies(wd).load().values())
    return out


def reachable(
    vault: Repository, starts: dict[Digest, str] | None = None,
    required: Iterable[Digest] | None = None, *, on_read: Callable[[int], None] | None = None,
    workdirs: bool = True,
) -> Reachable:
    """Walk from the roots to every live object.

    Args:
        vault: the vault.
        starts: the root commits -> the specimen each is reached from; None: the roots of the
            live-object rule (:func:`live_roots`), with ``required`` the commits refs name.
        required: the starts whose absence is a problem (default: all of ``starts``); ignored
            when ``starts`` is None.
        on_read: called with the size of every commit object read and hashed.
        workdirs: add what working indexes and copies records name (a caller that does not
            need the whole live set, such as a verify of some specimens, skips reading them).

    Returns:
        The reachable commits, the live digests and the problems found walking.

    Raises:
        IntegrityError: with ``starts`` None, if a ref does not hold a commit digest.
    """
    whole = starts is None
    # Read once: the roots and the working records both leave retired specimens out.
    retired = set(retirements(vault)) if whole or workdirs else set()
    if starts is None:
        starts, required = live_roots(vault, retired)
    commits, problems = walk_commits(vault.objects, starts, required, on_read)
    live: set[Digest] = set(commits)
    for c in commits.values():
        live.update(e.digest for e in c.tree.values())
    if whole:
        live |= event_objects(vault)
    if workdirs:
        live |= working_index_digests(vault, retired)
    return Reachable(commits, live, problems)
