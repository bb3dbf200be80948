"""`vault verify`: prove that what is committed is still exactly what was sealed.

A verify run checks, in this order:

1. refs and journal, read together under the refs lock (after finishing any journal line a
   crash cut off, which is reported as information): the hash chain, ``seq`` numbering and
   canonical form of every journal line; every ref has exactly one journal line naming the same
   commit, and every journal line has its ref;
2. every commit reachable from the refs (and their parents): present, hashing to its name,
   decodable, naming the specimen its ref is called after;
3. every object a reachable tree names: present with the recorded size (``quick``) and, in full
   mode, re-hashed to its name, in background threads while the other checks run (BLAKE3 and
   file reads release the GIL, so both cores work);
4. the working directories of committed specimens: every sealed file still there with the sealed
   bytes (a file sharing the object's inode is covered by the object's check), nothing added;
5. the object directory itself: files whose names are not digests of their bytes are strays;
6. the catalog (``vault.duckdb``), when it exists, lists no commit the refs do not name
   (one that merely lags behind the refs is information: ``vault index`` catches up).

Garbage and work in progress are information, not problems: unreferenced objects (and what
``vault gc`` would free), temp files, uncommitted working directories. Only problems make
:attr:`VerifyReport.ok` false (``vault verify`` exits 1). The JSON form is documented in
docs/integrity.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import journal as _journal
from .atomic import TMP_SUFFIX, FileLock
from .commit import Commit
from .digest import Digest, hash_file, is_digest
from .errors import InvalidInputError, LockTimeoutError, NotFoundError
from .ids import validate_id
from .journal import JournalEntry, JournalTip, rollback
from .reachability import reachable, walk_commits, working_index_digests
from .workdir import WorkingIndex, iter_files

if TYPE_CHECKING:
    from .objects import ObjectStore
    from .vault import Vault

__all__ = [
    "INFO_KINDS",
    "PROBLEM_KINDS",
    "Finding",
    "Progress",
    "TempItem",
    "VerifyReport",
    "find_temp",
    "read_journal",
    "scan_objects",
    "verify",
    "walk_commits",
    "walk_tree",
    "working_index_digests",
]

#: Every kind of problem verify can report (each makes ``ok`` false); see docs/integrity.md.
PROBLEM_KINDS = (
    "corrupt_object",    # an object's bytes do not hash to its name
    "missing_object",    # a tree entry's object is gone
    "size_mismatch",     # an object's size differs from the size recorded in the tree
    "missing_commit",    # a ref names a commit object that is gone
    "bad_commit",        # a commit object that does not decode as a commit
    "missing_parent",    # a commit names a parent commit that is gone
    "bad_ref",           # a ref file that is not a valid id holding one digest
    "ref_mismatch",      # a ref and its journal line (or its commit) disagree
    "unjournaled_ref",   # a ref with no journal line and no intent file
    "missing_ref",       # a journal line whose ref file is gone
    "journal_broken",    # a journal line that is malformed, out of sequence or off the chain
    "journal_rolled_back",  # the journal lost a line a witness saw (tip record, catalog, you)
    "shared_inode",      # an object whose inode has a second name: a write there changes it
    "stray_object",      # a file in objects/ whose name is not the digest of its bytes
    "catalog_stale",     # vault.duckdb lists specimens with another commit or without a ref
)

#: Every kind of information item: garbage and work in progress, never damage.
INFO_KINDS = (
    "recovered_journal_entry",  # an interrupted commit's journal line, finished by this run
    "unreferenced_objects",     # objects no ref reaches (count and bytes; gc frees them)
    "temp_file",                # a crash leftover (file or directory); gc removes it
    "uncommitted_workdir",      # a working directory that is not sealed yet
    "workdir_absent",           # a committed specimen whose working directory was removed
    "workdir_modified",         # a committed working file differs from what was sealed
    "workdir_missing",          # a committed working file was deleted
    "workdir_extra",            # a file was added to a committed working directory
    "catalog_behind",           # committed specimens not indexed yet (`vault index` adds them)
    "catalog_unchecked",        # vault.duckdb was busy, so it was not compared with the refs
    "catalog_problem",          # a metric column whose type does not fit: NULL in `metrics`
)

#: ``progress(advance_bytes, total_bytes)``: called (from hashing threads, one call at a time) as
#: hashing advances; ``total_bytes`` grows when verify queues more files.
Progress = Callable[[int, int], None]

#: Files at least this large are hashed by BLAKE3's own threads (digest.hash_file), one at a time.
_LARGE_FILE = 4 * 1024 * 1024

_TEMP_PID_RE = re.compile(r"\A\..+\.(\d+)\.[0-9a-f]{32}\.tmp\Z")


@dataclass(frozen=True)
class Finding:
    """One problem or information item of a verify run.

    Attributes:
        kind: one of :data:`PROBLEM_KINDS` or :data:`INFO_KINDS`.
        message: what is wrong (or worth knowing) and what to do about it.
        specimen: the specimen it touches, if any.
        digest: the object or commit digest it touches, if any.
        path: the file's path inside the specimen, if any.
        file: the on-disk file it concerns, relative to the vault root, if any.
        bytes: a byte count (information items: what gc would free).
        count: an item count (information items that aggregate, e.g. unreferenced objects).
    """

    kind: str
    message: str
    specimen: str | None = None
    digest: str | None = None
    path: str | None = None
    file: str | None = None
    bytes: int | None = None
    count: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form (every key present, None as null)."""
        return {
            "kind": self.kind, "message": self.message, "specimen": self.specimen,
            "digest": self.digest, "path": self.path, "file": self.file,
            "bytes": self.bytes, "count": self.count,
        }


@dataclass(frozen=True)
class VerifyReport:
    """The result of :func:`verify`.

    Attributes:
        mode: ``"full"`` (every byte re-hashed) or ``"quick"`` (existence and sizes).
        specimens: the committed specimens checked.
        problems: damage; empty when the vault is intact.
        info: garbage and work in progress.
        objects_checked: distinct objects checked (commits included).
        bytes_hashed: bytes read and hashed.
        seconds: wall time of the run.
        journal_tip: the journal's end as checked (None for an empty journal): keep it
            somewhere else, and ``vault verify --witness`` later proves no line was removed.
    """

    mode: str
    specimens: tuple[str, ...]
    problems: tuple[Finding, ...]
    info: tuple[Finding, ...]
    objects_checked: int
    bytes_hashed: int
    seconds: float
    journal_tip: JournalTip | None = None

    @property
    def ok(self) -> bool:
        """True if no problem was found (information items do not count)."""
        return not self.problems

    def kinds(self) -> set[str]:
        """The set of problem kinds found."""
        return {p.kind for p in self.problems}

    def to_dict(self) -> dict[str, Any]:
        """The stable ``vault verify --json`` form (schema in docs/integrity.md)."""
        return {
            "ok": self.ok, "mode": self.mode, "specimens": list(self.specimens),
            "objects_checked": self.objects_checked, "bytes_hashed": self.bytes_hashed,
            "seconds": round(self.seconds, 3),
            "problems": [p.to_dict() for p in self.problems],
            "info": [i.to_dict() for i in self.info],
            "journal_tip": str(self.journal_tip) if self.journal_tip else None,
        }


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


# -- journal -----------------------------------------------------------------------------------
def read_journal(data: bytes) -> tuple[dict[str, JournalEntry], list[Finding]]:
    """Parse and check a journal's bytes (:func:`cas_vault.journal.check`) as findings.

    Args:
        data: the whole journal file.

    Returns:
        ``(entries, problems)``: specimen id -> its (first) valid entry, and every
        ``journal_broken`` problem (malformed line, wrong ``seq``, broken ``prev`` chain,
        duplicate specimen, incomplete last line).
    """
    entries, problems = _journal.check(data)
    return entries, [
        Finding("journal_broken", p.message, specimen=p.specimen_id, digest=p.commit,
                file="journal") for p in problems]


# -- object directory and temp files -----------------------------------------------------------
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
    size = st.st_size if not is_dir else 0
    if is_dir:
        for dirpath, _, names in walk_tree(path):
            for n in names:
                try:
                    size += os.lstat(os.path.join(dirpath, n)).st_size
                except FileNotFoundError:
                    pass
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


# -- hashing ----------------------------------------------------------------------------------
class _Hashed:
    """The pending results of one :meth:`_HashPool.submit`."""

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


class _HashPool:
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

    def __enter__(self) -> _HashPool:
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

    def submit(self, jobs: Sequence[tuple[Path, int]]) -> _Hashed:
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
        return _Hashed(len(jobs), futures)


# -- the run -----------------------------------------------------------------------------------
@dataclass
class _Ref:
    """Where an object is used: specimen, tree path and the size its tree records."""

    specimen: str
    path: str
    size: int


class _Checker:
    """One verify run; collects findings as it goes."""

    tip_record: JournalTip | None = None

    def __init__(self, vault: Vault, quick: bool) -> None:
        self.vault = vault
        self.quick = quick
        self.problems: list[Finding] = []
        self.info: list[Finding] = []
        self.bytes_hashed = 0
        #: (specimen, path, digest) of working files that are their object's inode.

    def rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.vault.root).as_posix()
        except ValueError:
            return str(path)

    # refs and journal -------------------------------------------------------------------------
    def snapshot(self) -> tuple[dict[str, bytes], bytes, set[str]]:
        """Finish interrupted journal lines, then read refs, journal and intents atomically."""
        refs = self.vault.refs
        lock: FileLock | None = FileLock(refs.lock_path)
        try:
            for sid in refs.recover():
                self.info.append(Finding(
                    "recovered_journal_entry", f"finished the journal line of {sid}, whose "
                    "commit was interrupted after its ref was created", specimen=sid,
                    file="journal"))
        except OSError:
            # A read-only vault (a backup, a mount): check it as it is, nothing can commit.
            lock = None
        with lock or contextlib.nullcontext():
            # Under the refs lock no commit is between creating a ref and journaling it.
            raw = {name: refs.read_raw(name) or b"" for name in refs.names()}
            try:
                journal = refs.journal.read_bytes()
            except FileNotFoundError:
                journal = b""
            intents = (set(os.listdir(refs.pending_dir)) if refs.pending_dir.is_dir() else set())
            # Read with the journal: a commit after the lock would make it lead the snapshot.
            self.tip_record = refs.read_tip()
        return raw, journal, intents

    def check_witnesses(
        self, journal: bytes, witnesses: Sequence[tuple[str, JournalTip | None]],
    ) -> None:
        """Report every witness of an earlier journal end that the journal no longer holds.

        Args:
            journal: the journal's bytes (from the snapshot).
            witnesses: ``(who saw it, what they saw)``; None entries are skipped.
        """
        for who, tip in witnesses:
            if tip is None:
                continue
            why = rollback(journal, tip)
            if why is not None:
                # The catalog is read beside the snapshot, not under its lock: a commit in
                # between makes it lead the snapshot. A real rollback shows in the file now too.
                try:
                    now = self.vault.refs.journal.read_bytes()
                except FileNotFoundError:
                    now = b""
                why = rollback(now, tip)
            if why is not None:
                self.problems.append(Finding(
                    "journal_rolled_back", f"{who} saw journal line {tip.lines} ({tip}), but "
                    f"{why}: journal lines were removed or rewritten (rolled back), with the refs they "
                    "created. Restore the journal and refs from a backup or a remote; do not "
                    "rebuild the catalog over it (it may be the last witness)", file="journal",
                    digest=tip.digest, count=tip.lines))

    def check_refs(
        self, raw: dict[str, bytes], entries: dict[str, JournalEntry], intents: set[str],
        scope: set[str] | None, damaged_journal: bool,
    ) -> dict[str, Digest]:
        """Compare refs with the journal; return the well-formed refs in scope."""
        good: dict[str, Digest] = {}
        for name, data in raw.items():
            if scope is not None and name not in scope:
                continue
            try:
                validate_id(name)
            except InvalidInputError:
                self.problems.append(Finding(
                    "bad_ref", f"refs/{name} is not a valid specimen id; it was not made by "
                    "cas-vault: remove it", file=f"refs/{name}"))
                continue
            text = data.decode("ascii", "replace")
            if not (text.endswith("\n") and is_digest(text[:-1])):
                self.problems.append(Finding(
                    "bad_ref", f"ref {name} does not hold a commit digest (was it edited?); the "
                    "journal records what it held", specimen=name, file=f"refs/{name}"))
                continue
            d = Digest(text[:-1])
            good[name] = d
            e = entries.get(name)
            if e is None:
                if name in intents:
                    why = ("its intent file is still there, but the journal is damaged so it "
                           "could not be finished")
                elif damaged_journal:
                    why = "its line may be one of the damaged journal lines"
                else:
                    why = "the journal line was deleted, or the ref was added by hand"
                self.problems.append(Finding(
                    "unjournaled_ref", f"ref {name} -> {d} has no journal line: {why}",
                    specimen=name, digest=d, file=f"refs/{name}"))
            elif e.commit != d:
                self.problems.append(Finding(
                    "ref_mismatch", f"ref {name} points to {d} but the journal recorded "
                    f"{e.commit} (line {e.seq + 1}): the ref or the journal was edited",
                    specimen=name, digest=d, file=f"refs/{name}"))
        for name, e in entries.items():
            if (scope is None or name in scope) and name not in raw:
                self.problems.append(Finding(
                    "missing_ref", f"the journal records {name} -> {e.commit} (line {e.seq + 1}) "
                    f"but refs/{name} is missing: recreate it with that digest",
                    specimen=name, digest=e.commit, file=f"refs/{name}"))
        return good

    # objects ----------------------------------------------------------------------------------
    def stat_objects(
        self, uses: dict[Digest, list[_Ref]], scan: ObjectScan | None, walked: set[Digest],
    ) -> tuple[dict[Digest, tuple[int, int] | None], list[tuple[Digest, Path, int]]]:
        """Check that tree objects exist with their sizes; list what full mode must hash.

        Returns:
            ``(state, jobs)``: digest -> ``(inode, device)`` of each tree object that is present
            with the right size (None otherwise), and the objects to hash: those, plus in full
            mode every other object of ``scan`` not in ``walked`` (a wrong one is a stray).
        """
        store = self.vault.objects
        state: dict[Digest, tuple[int, int] | None] = {}
        jobs: list[tuple[Digest, Path, int]] = []
        for d, refs in uses.items():
            path = store.path(d)
            rel = f"objects/{d[:2]}/{d}"
            try:
                st = path.stat()
            except (FileNotFoundError, NotADirectoryError):
                state[d] = None
                for r in refs:
                    self.problems.append(Finding(
                        "missing_object", f"object {d} ({r.path} of {r.specimen}) is missing "
                        "from objects/; restore it from a backup", specimen=r.specimen, digest=d,
                        path=r.path, file=rel))
                continue
            wrong = [r for r in refs if r.size != st.st_size]
            for r in wrong:
                self.problems.append(Finding(
                    "size_mismatch", f"object {d} ({r.path} of {r.specimen}) is {st.st_size} "
                    f"bytes but was sealed with {r.size}: it was truncated or overwritten",
                    specimen=r.specimen, digest=d, path=r.path, file=rel))
            state[d] = None if wrong else (st.st_ino, st.st_dev)
            if not self.quick and not wrong:
                jobs.append((d, path, st.st_size))
        if scan is not None and not self.quick:
            jobs += [(d, store.path(d), v[0]) for d, v in scan.digests.items()
                     if d not in uses and d not in walked]
        return state, jobs

    def finish_objects(
        self, jobs: list[tuple[Digest, Path, int]], results: list[Digest | OSError | None],
        uses: dict[Digest, list[_Ref]], state: dict[Digest, tuple[int, int] | None],
    ) -> None:
        """Turn the hashes of :meth:`stat_objects` jobs into problems; mark damaged objects."""
        for (d, path, _), got in zip(jobs, results, strict=True):
            if isinstance(got, OSError):
                for r in uses.get(d, []):
                    state[d] = None
                    self.problems.append(Finding(
                        "corrupt_object", f"object {d} ({r.path} of {r.specimen}) cannot be "
                        f"read ({got.strerror or got}); restore it from a backup", digest=d,
                        specimen=r.specimen, path=r.path, file=self.rel(path)))
                if d not in uses:
                    self.problems.append(Finding(
                        "stray_object", f"objects/{d[:2]}/{d} cannot be read "
                        f"({got.strerror or got}); no commit uses it, so remove it", digest=d,
                        file=self.rel(path)))
                continue
            if got is None or got == d:
                if got is None and d in uses and not path.exists():
                    state[d] = None
                    for r in uses[d]:
                        self.problems.append(Finding(
                            "missing_object", f"object {d} ({r.path} of {r.specimen}) "
                            "disappeared during verify", specimen=r.specimen, digest=d,
                            path=r.path, file=self.rel(path)))
                continue
            if d in uses:
                state[d] = None
                for r in uses[d]:
                    self.problems.append(Finding(
                        "corrupt_object", f"object {d} ({r.path} of {r.specimen}) was altered: "
                        f"its bytes hash to {got}; restore it from a backup or from an intact "
                        "copy of the file", specimen=r.specimen, digest=d, path=r.path,
                        file=self.rel(path)))
            else:
                self.problems.append(Finding(
                    "stray_object", f"objects/{d[:2]}/{d} holds bytes that hash to {got}: it "
                    "was not written by cas-vault or was altered; no commit uses it, so remove it",
                    digest=d, file=self.rel(path)))

    # working directories ---------------------------------------------------------------------
    def check_workdir(
        self, sid: str, commit: Commit, state: dict[Digest, tuple[int, int] | None],
        hash_jobs: list[tuple[str, str, Digest, Path, int]],
    ) -> None:
        """Compare a committed working directory with its commit (information, not damage).

        Sealed bytes live in ``objects/`` alone, so a working copy that drifted after the
        commit changes nothing sealed; it is reported so nobody mistakes it for the sealed
        specimen. (A working file that is still the object's inode, from vaults written before
        objects had inodes of their own, is reported by :meth:`report_shared`.)
        """
        wd = self.vault.specimens_dir / sid
        if not wd.is_dir():
            self.info.append(Finding(
                "workdir_absent", f"committed specimen {sid} has no working directory; its "
                f"files are safe in objects/ (`vault checkout {sid} DEST` copies them out)",
                specimen=sid, file=f"specimens/{sid}"))
            return
        files: set[str] = set()
        complete = True
        restore = (f"the sealed copy in objects/ is intact (`vault checkout {sid} DEST` copies "
                   "it out)")
        try:
            for rel in iter_files(wd):
                files.add(rel)
        except InvalidInputError as exc:
            complete = False
            self.info.append(Finding(
                "workdir_extra", f"committed specimen {sid}: {exc}", specimen=sid,
                file=f"specimens/{sid}"))
        indexed = WorkingIndex(wd).load()
        for rel, entry in commit.tree.items():
            where = f"specimens/{sid}/{rel}"
            if rel not in files:
                # Files written straight into objects/ exist only in the working index.
                if complete and indexed.get(rel) != entry.digest:
                    self.info.append(Finding(
                        "workdir_missing", f"{where} was sealed in {sid} but was deleted from "
                        f"the working directory; {restore}", specimen=sid, digest=entry.digest,
                        path=rel, file=where))
                continue
            try:
                st = (wd / rel).stat()
            except FileNotFoundError:
                continue
            if self._inode_is_object(entry.digest, st):
                continue  # it IS the object, hashed with the objects; report_shared names it
            if st.st_size != entry.size:
                self.info.append(Finding(
                    "workdir_modified", f"{where} was changed after {sid} was sealed "
                    f"({st.st_size} bytes, sealed {entry.size}); {restore}", specimen=sid,
                    digest=entry.digest, path=rel, file=where))
            elif not self.quick:
                hash_jobs.append((sid, rel, entry.digest, wd / rel, st.st_size))
        for rel in sorted(files - set(commit.tree)):
            self.info.append(Finding(
                "workdir_extra", f"specimens/{sid}/{rel} was added after {sid} was sealed; it "
                "is not part of the specimen (move it to a new one to keep it)", specimen=sid,
                path=rel, file=f"specimens/{sid}/{rel}"))

    def _inode_is_object(self, digest: Digest, st: os.stat_result) -> bool:
        try:
            ost = self.vault.objects.path(digest).stat()
        except FileNotFoundError:
            return False
        return (ost.st_ino, ost.st_dev) == (st.st_ino, st.st_dev)

    def finish_workdirs(
        self, jobs: list[tuple[str, str, Digest, Path, int]],
        results: list[Digest | OSError | None],
    ) -> None:
        """Turn the hashes of committed working files into information about drift."""
        for (sid, rel, d, _, _), got in zip(jobs, results, strict=True):
            where = f"specimens/{sid}/{rel}"
            if isinstance(got, OSError):
                self.info.append(Finding(
                    "workdir_modified", f"{where} cannot be read ({got.strerror or got}); the "
                    f"sealed copy in objects/ is checked on its own", specimen=sid, digest=d,
                    path=rel, file=where))
            elif got is not None and got != d:
                self.info.append(Finding(
                    "workdir_modified", f"{where} was changed after {sid} was sealed (its bytes "
                    f"hash to {got}); the sealed copy in objects/ is intact (`vault checkout "
                    f"{sid} DEST` copies it out)", specimen=sid, digest=d, path=rel, file=where))

    def report_shared(self, scan: ObjectScan) -> None:
        """Name every object whose inode has another name than its own in ``objects/``.

        Such a name (a working file of a vault written before objects had inodes of their own,
        a ``cp -al`` copy, a link made by hand) is a way to change sealed bytes by an ordinary
        write; ``vault gc`` gives each such object a fresh inode of its own.
        """
        shared = {d: links for d, (_, _, links) in scan.digests.items() if links > 1}
        if not shared:
            return
        # A write killed between naming a chunk and removing its staging name leaves that name
        # in a temp entry of the vault's own: garbage that gc removes, not a way in.
        in_temps: dict[tuple[int, int], int] = {}
        for item in scan.temps + find_temp(self.vault.root):
            paths = [item.path] if not item.is_dir else [
                Path(dp) / n for dp, _, names in walk_tree(item.path) for n in names]
            for path in paths:
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                key = (st.st_ino, st.st_dev)
                in_temps[key] = in_temps.get(key, 0) + 1
        inodes = {}
        for d in list(shared):
            try:
                st = self.vault.objects.path(d).stat()
            except FileNotFoundError:
                del shared[d]
                continue
            # Stat again after the temp walk: a running writer names a chunk and drops its
            # staging name in two calls, which a scan may see between.
            shared[d] = min(shared[d], st.st_nlink) - in_temps.get((st.st_ino, st.st_dev), 0)
            if shared[d] <= 1:
                del shared[d]
                continue
            inodes[(st.st_ino, st.st_dev)] = d
        where: dict[Digest, list[str]] = {}
        if self.vault.specimens_dir.is_dir():
            for dirpath, _dirs, names in walk_tree(self.vault.specimens_dir):
                for n in names:
                    path = os.path.join(dirpath, n)
                    try:
                        st = os.lstat(path)
                    except FileNotFoundError:
                        continue
                    d = inodes.get((st.st_ino, st.st_dev)) if st.st_nlink > 1 else None
                    if d is not None:
                        where.setdefault(d, []).append(self.rel(Path(path)))
        for d, links in sorted(shared.items()):
            paths = where.get(d, [])
            named = f" ({', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''})" if paths else \
                " (outside the working directories: a `cp -al` copy or a hand-made link?)"
            self.problems.append(Finding(
                "shared_inode", f"object {d} has {links - 1} other name(s){named}: writing "
                "there would change sealed bytes; run `vault gc` to give the object an inode "
                "of its own", digest=d, file=f"objects/{d[:2]}/{d}",
                path=paths[0] if paths else None, count=links - 1))

    # garbage ---------------------------------------------------------------------------------
    def report_garbage(self, scan: ObjectScan, live: set[Digest], refs: set[str]) -> None:
        unref = [v for d, v in scan.digests.items() if d not in live]
        if unref:
            total = sum(size for size, _, _ in unref)
            # An object still hard-linked from a working file frees nothing when gc removes it.
            freeable = sum(size for size, _, links in unref if links <= 1)
            self.info.append(Finding(
                "unreferenced_objects", f"{len(unref)} objects ({total} bytes) are not used by "
                "any commit or working directory; `vault gc` removes those older than its grace "
                f"period, freeing up to {freeable} bytes (the rest are still hard-linked from "
                "uncommitted working files)", bytes=freeable, count=len(unref)))
        for p in scan.strays:
            self.problems.append(Finding(
                "stray_object", f"{self.rel(p)} is not named by a digest: it was not written "
                "by cas-vault; move it out of objects/", file=self.rel(p)))
        for t in sorted(scan.temps + find_temp(self.vault.root), key=lambda t: str(t.path)):
            self.info.append(Finding(
                "temp_file", f"{self.rel(t.path)} is a temp {'directory' if t.is_dir else 'file'}"
                " left by an interrupted write (`vault gc` removes it)", file=self.rel(t.path),
                bytes=t.bytes))
        if self.vault.specimens_dir.is_dir():
            for entry in sorted(os.scandir(self.vault.specimens_dir), key=lambda e: e.name):
                if (entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
                        and entry.name not in refs):
                    self.info.append(Finding(
                        "uncommitted_workdir", f"specimens/{entry.name} is not committed yet "
                        f"(seal it with `vault commit {entry.name}`)", specimen=entry.name,
                        file=f"specimens/{entry.name}"))

    def check_catalog(
        self, catalog_read: Future[dict[str, str] | None], refs: dict[str, Digest],
    ) -> None:
        """Compare the catalog (read before the refs) with the refs."""
        try:
            indexed = catalog_read.result()
        except LockTimeoutError:
            self.info.append(Finding(
                "catalog_unchecked", "the catalog was busy (another process is writing it); "
                "it was not compared with the refs", file="vault.duckdb"))
            return
        except Exception as exc:  # derived data that cannot be read never fails a verify
            self.info.append(Finding(
                "catalog_unchecked", f"the catalog could not be read ({exc}); `vault index "
                "--rebuild` recreates it", file="vault.duckdb"))
            return
        if indexed is None:
            return  # no catalog: derived data, nothing to compare
        # A commit indexes itself only after creating its ref, and refs never change, so a
        # listed specimen whose ref (read now, as the catalog may be newer than our snapshot)
        # is missing or names another commit is a real disagreement.
        wrong = sorted(sid for sid, d in indexed.items()
                       if refs.get(sid) != d and self._ref_now(sid) != d)
        if wrong:
            more = " ..." if len(wrong) > 5 else ""
            self.problems.append(Finding(
                "catalog_stale", f"catalog stale: run vault index ({len(wrong)} specimen(s) "
                f"listed in vault.duckdb with another commit or without a ref: "
                f"{', '.join(wrong[:5])}{more})", file="vault.duckdb", count=len(wrong)))
        # Commits not indexed yet (a commit killed before its catalog update, or one that lost
        # the race for the catalog's lock) only make the catalog lag; the next `vault query`
        # or `vault index` adds them.
        missing = sorted(sid for sid in refs if sid not in indexed)
        if missing:
            more = " ..." if len(missing) > 5 else ""
            self.info.append(Finding(
                "catalog_behind", f"{len(missing)} committed specimen(s) are not in the catalog "
                f"yet ({', '.join(missing[:5])}{more}); `vault index` (or the next `vault "
                "query`) adds them", file="vault.duckdb", count=len(missing)))
        # Derived data that is consistent, but could not hold some values: worth knowing only.
        from .catalog import catalog_problems

        try:
            problems = catalog_problems(self.vault, timeout=CATALOG_TIMEOUT)
        except LockTimeoutError:
            problems = []
        for p in problems:
            self.info.append(Finding(
                "catalog_problem", f"{p.specimen_id} wrote metric column {p.column} as "
                f"{p.written_type} where the catalog's column is {p.catalog_type}: it is NULL in "
                "`metrics`; the file is intact (SELECT * FROM catalog_problems)",
                specimen=p.specimen_id, path=f"strata/{p.file}.parquet", file="vault.duckdb"))

    def _ref_now(self, sid: str) -> str | None:
        try:
            validate_id(sid)  # a name read from the catalog is joined into a path
        except InvalidInputError:
            return None
        data = self.vault.refs.read_raw(sid)
        return data.decode("ascii", "replace").strip() if data else None


#: Seconds verify waits for a process writing the catalog before skipping the catalog check.
CATALOG_TIMEOUT = 10.0


def catalog_commits(vault: Vault) -> dict[str, str] | None:
    """specimen id -> commit digest as the catalog records them; None without a catalog.

    Raises:
        LockTimeoutError: if another process kept the catalog open for writing too long.
    """
    if not vault.catalog_path.exists():
        return None  # derived data: no catalog is not a problem
    from .catalog import indexed_commits

    return dict(indexed_commits(vault, timeout=CATALOG_TIMEOUT))


def catalog_tip(vault: Vault) -> JournalTip | None:
    """The journal tip the catalog recorded, or None (no catalog, busy, unreadable)."""
    from .catalog import indexed_tip

    try:
        return indexed_tip(vault, timeout=CATALOG_TIMEOUT)
    except Exception:  # derived data that cannot be read is no witness, never a failure
        return None


def verify(
    vault: Vault, specimen_ids: Sequence[str] = (), *, quick: bool = False,
    progress: Progress | None = None, witness: JournalTip | None = None,
) -> VerifyReport:
    """Check a vault (or some of its specimens); see the module docstring for what is checked.

    Args:
        vault: the vault.
        specimen_ids: check only these committed specimens (their commits, ancestors' commits,
            objects and working directories); empty: everything, including strays and garbage.
        quick: check existence and sizes only, without re-hashing bytes.
        progress: called with ``(advance_bytes, total_bytes)`` while hashing.
        witness: a journal tip kept outside the vault (``LINES:DIGEST`` as an earlier report
            gave it): the journal must still hold that line.

    Returns:
        The report; ``report.ok`` is False if any problem was found.

    Raises:
        InvalidIdError: for a malformed id.
        NotFoundError: for an id that has neither a ref nor a journal line.
    """
    started = time.perf_counter()
    chk = _Checker(vault, quick)
    scope = {validate_id(s) for s in specimen_ids} or None
    # The catalog is read first (a commit indexes itself only after its ref exists), in the
    # background: opening DuckDB is slow and needs no help from this thread.
    catalog_reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-catalog")
    catalog_read = catalog_reader.submit(catalog_commits, vault) if scope is None else None
    catalog_tip_read = catalog_reader.submit(catalog_tip, vault)
    catalog_reader.shutdown(wait=False)
    raw, journal, intents = chk.snapshot()
    entries, journal_problems = read_journal(journal)
    chk.problems.extend(journal_problems)
    chk.check_witnesses(journal, [
        ("the tip record (journal.tip, written by every commit)", chk.tip_record),
        ("the catalog (vault.duckdb)", catalog_tip_read.result()),
        ("the witness you gave", witness),
    ])
    if scope is not None:
        unknown = sorted(s for s in scope if s not in raw and s not in entries)
        if unknown:
            raise NotFoundError(
                f"no committed specimen {', '.join(unknown)} in {vault.root}; "
                "`vault log` lists them"
            )
    refs = chk.check_refs(raw, entries, intents, scope, bool(journal_problems))
    # Commits whose ref is gone are still checked (and kept by gc) through their journal line.
    starts: dict[Digest, str] = {d: sid for sid, d in refs.items()}
    for sid, e in entries.items():
        if (scope is None or sid in scope) and sid not in raw:
            starts.setdefault(e.commit, sid)

    def count(n: int) -> None:
        chk.bytes_hashed += n

    # Working indexes are read later, after the object scan: a chunk a running writer adds
    # meanwhile is then named by its index rather than counted as garbage.
    reach = reachable(vault, starts, on_read=count, workdirs=False)
    commits, commit_problems = reach.commits, reach.problems
    chk.problems.extend(commit_problems)

    uses: dict[Digest, list[_Ref]] = {}
    for c in commits.values():
        for rel, entry in c.tree.items():
            uses.setdefault(entry.digest, []).append(_Ref(c.specimen_id, rel, entry.size))
    scan = scan_objects(vault.objects) if scope is None else None
    walked: set[Digest] = set(commits) | {Digest(p.digest) for p in commit_problems if p.digest}
    state, object_jobs = chk.stat_objects(uses, scan, walked)

    # Hashing runs in the background (BLAKE3 and reads release the GIL) while this thread does
    # the checks that are Python work: working directories, garbage, strays.
    with _HashPool(progress) as pool:
        hashed_objects = pool.submit([(p, size) for _, p, size in object_jobs])
        workdir_jobs: list[tuple[str, str, Digest, Path, int]] = []
        for sid, d in sorted(refs.items()):
            sealed = commits.get(d)
            if sealed is None:
                continue
            if sealed.specimen_id != sid:
                chk.problems.append(Finding(
                    "ref_mismatch", f"ref {sid} points to commit {d}, which seals specimen "
                    f"{sealed.specimen_id}: the ref was edited or added by hand", specimen=sid,
                    digest=d, file=f"refs/{sid}"))
                continue
            chk.check_workdir(sid, sealed, state, workdir_jobs)
        hashed_workdirs = pool.submit([(p, size) for *_, p, size in workdir_jobs])
        if scan is not None:
            live = reach.live | working_index_digests(vault)
            chk.report_garbage(scan, live, set(raw))
            chk.report_shared(scan)
        if catalog_read is not None:
            chk.check_catalog(catalog_read, refs)
        chk.finish_objects(object_jobs, hashed_objects.results(), uses, state)
        chk.finish_workdirs(workdir_jobs, hashed_workdirs.results())
    chk.bytes_hashed += pool.done
    specimens = tuple(sorted(refs))
    checked = len(set(uses) | set(commits) | (set(scan.digests) if scan else set()))
    return VerifyReport(
        mode="quick" if quick else "full", specimens=specimens,
        problems=tuple(sorted(_dedupe(chk.problems), key=_problem_order)), info=tuple(chk.info),
        objects_checked=checked, bytes_hashed=chk.bytes_hashed,
        seconds=time.perf_counter() - started, journal_tip=_journal.tip_of(journal),
    )


def _problem_order(f: Finding) -> tuple[int, str, str, str]:
    # Stable output: by kind (in PROBLEM_KINDS order), then specimen, path and file.
    rank = PROBLEM_KINDS.index(f.kind) if f.kind in PROBLEM_KINDS else len(PROBLEM_KINDS)
    return rank, f.specimen or "", f.path or "", f.file or ""


def _dedupe(items: Iterable[Finding]) -> Iterator[Finding]:
    seen: set[Finding] = set()
    for f in items:
        if f not in seen:
            seen.add(f)
            yield f
