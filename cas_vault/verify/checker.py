"""The checks of one verify run: :class:`Checker`, which turns what it reads into findings.

Refs and journal (:func:`read_journal`, :meth:`Checker.snapshot`, :meth:`Checker.check_refs`,
:meth:`Checker.check_witnesses`), objects (:meth:`Checker.stat_objects`,
:meth:`Checker.finish_objects`, :meth:`Checker.report_shared`), working directories
(:meth:`Checker.check_workdir`, :meth:`Checker.finish_workdirs`), garbage
(:meth:`Checker.report_garbage`) and the catalog (:meth:`Checker.check_catalog`). The order they
run in, and the hashing between them, is :func:`cas_vault.verify.verify`'s.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import journal as _journal
from ..atomic import FileLock
from ..commit import Commit
from ..digest import Digest, hash_bytes, is_digest
from ..events import decode_event
from ..retirement import Retirement
from ..seal import unsealed_runs
from ..errors import InvalidInputError, LockTimeoutError, VaultError
from ..findings import Finding
from ..ids import validate_id
from ..journal import JournalEntry, JournalTip, rollback
from ..scan import ObjectScan, find_temp, walk_tree
from ..taxonomies import KIND as TAXONOMY_KIND
from ..taxonomies import change_from_event
from ..workdir import RUNS_DIR, WorkingIndex, iter_files, run_of
from .catalog_reads import CATALOG_TIMEOUT

if TYPE_CHECKING:
    from ..repository import Repository

__all__ = ["Checker", "ObjectUse", "read_journal"]


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


@dataclass
class ObjectUse:
    """Where an object is used: specimen, tree path and the size its tree records."""

    specimen: str
    path: str
    size: int


class Checker:
    """One verify run; collects findings as it goes."""

    tip_record: JournalTip | None = None

    def __init__(self, vault: Repository, quick: bool) -> None:
        self.vault = vault
        self.quick = quick
        self.problems: list[Finding] = []
        self.info: list[Finding] = []
        self.bytes_hashed = 0

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
        self, uses: dict[Digest, list[ObjectUse]], scan: ObjectScan | None, walked: set[Digest],
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
        uses: dict[Digest, list[ObjectUse]], state: dict[Digest, tuple[int, int] | None],
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
        # A sealed run's working files are its specimen's runs/<run_id>/ (docs/format.md,
        # "Sealing runs"); the specimen's own commit holds everything else.
        run = commit.manifest.run
        owner = run[0] if run is not None else sid
        wd = self.vault.specimens_dir / owner
        if not wd.is_dir():
            self.info.append(Finding(
                "workdir_absent", f"committed specimen {sid} has no working directory; its "
                f"files are safe in objects/ (`vault checkout {sid} DEST` copies them out)",
                specimen=sid, file=f"specimens/{owner}"))
            return
        if run is not None:
            base = f"{RUNS_DIR}/{run[1]}/"
            tree = {base + p[len("strata/"):]: e for p, e in commit.tree.items()
                    if p.startswith("strata/")}
        else:
            base = ""
            tree = dict(commit.tree)
        files: set[str] = set()
        complete = True
        restore = (f"the sealed copy in objects/ is intact (`vault checkout {sid} DEST` copies "
                   "it out)")
        try:
            for rel in iter_files(wd / base if base else wd):
                rel = base + rel
                if run is not None or run_of(rel) is None:
                    files.add(rel)
        except InvalidInputError as exc:
            complete = False
            self.info.append(Finding(
                "workdir_extra", f"committed specimen {sid}: {exc}", specimen=sid,
                file=f"specimens/{owner}/{base}"))
        indexed = WorkingIndex(wd).load()
        if run is None:
            self.report_unsealed_runs(sid, wd)
        for rel, entry in tree.items():
            where = f"specimens/{owner}/{rel}"
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
            if self.vault.objects.shares_inode(entry.digest, st):
                continue  # it IS the object, hashed with the objects; report_shared names it
            if st.st_size != entry.size:
                self.info.append(Finding(
                    "workdir_modified", f"{where} was changed after {sid} was sealed "
                    f"({st.st_size} bytes, sealed {entry.size}); {restore}", specimen=sid,
                    digest=entry.digest, path=rel, file=where))
            elif not self.quick:
                hash_jobs.append((sid, rel, entry.digest, wd / rel, st.st_size))
        for rel in sorted(files - set(tree)):
            self.info.append(Finding(
                "workdir_extra", f"specimens/{owner}/{rel} was added after {sid} was sealed; "
                "it is not part of the specimen (move it to a new one to keep it)", specimen=sid,
                path=rel, file=f"specimens/{owner}/{rel}"))

    def check_events(self, journal_data: bytes) -> set[Digest]:
        """Check the object of every journal event line (labels, notes, taxonomy changes):
        present, intact, and saying what its line says (a taxonomy change also with the
        fields of docs/format.md 5.4). Returns their digests (live objects, not garbage).

        Sealed manifests are never checked against the vault's taxonomy: removing a pair
        leaves the specimens sealed with it valid."""
        found: set[Digest] = set()
        for line in _journal.events(journal_data):
            d = line.commit
            found.add(d)
            rel = f"objects/{d[:2]}/{d}"
            what = f"the {line.kind} event of journal line {line.seq + 1}"
            sid = line.specimen_id or None
            try:
                data = self.vault.objects.path(d).read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                self.problems.append(Finding(
                    "missing_object", f"{what} names object {d}, which is missing from "
                    "objects/; restore it from a backup", specimen=sid, digest=d, file=rel))
                continue
            self.bytes_hashed += len(data)
            got = hash_bytes(data)
            if got != d:
                self.problems.append(Finding(
                    "corrupt_object", f"{what}: its object {d} was altered (its bytes hash to "
                    f"{got}); restore it from a backup", specimen=sid, digest=d, file=rel))
                continue
            try:
                event = decode_event(data, line)
                if event.kind == TAXONOMY_KIND:  # its fields, as the taxonomy's readers need
                    change_from_event(event)
            except InvalidInputError as exc:
                self.problems.append(Finding("bad_event", f"{what}: {exc}", specimen=sid,
                                             digest=d, file=rel))
        return found

    def report_retired(self, retired: list[Retirement]) -> None:
        """Name each retired specimen (information: retired on purpose, not lost)."""
        for r in retired:
            how = ("purged: its objects are removed at the next `vault gc`" if r.purge else
                   "its objects that nothing live needs are removed by `vault gc` after the "
                   "grace period")
            self.info.append(Finding(
                "retired_specimen", f"{r.specimen_id} was retired on {r.time} by {r.author} "
                f"({r.reason!r}); {how}", specimen=r.specimen_id, digest=r.commit,
                file=f"refs/{r.specimen_id}"))

    def report_unsealed_runs(self, sid: str, wd: Path) -> None:
        """Name the runs of committed specimen ``sid`` that its next commit would seal (the
        rule of :func:`cas_vault.seal.unsealed_runs`); a working directory it cannot read is
        reported by the other workdir checks, not here."""
        try:
            pending = unsealed_runs(self.vault, sid, wd)
        except VaultError:
            return
        for run, _ in pending:
            self.info.append(Finding(
                "unsealed_run", f"specimens/{sid}/{RUNS_DIR}/{run} is a run that is not "
                f"sealed yet; `vault commit {sid}` seals it", specimen=sid,
                file=f"specimens/{sid}/{RUNS_DIR}/{run}"))

    def finish_workdirs(
        self, jobs: list[tuple[str, str, Digest, Path, int]],
        results: list[Digest | OSError | None],
    ) -> None:
        """Turn the hashes of committed working files into information about drift."""
        for (sid, rel, d, path, _), got in zip(jobs, results, strict=True):
            where = f"specimens/{path.relative_to(self.vault.specimens_dir).as_posix()}"
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
        from ..catalog import catalog_problems

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
