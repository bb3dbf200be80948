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

Where things live: :func:`verify` (here) runs the steps in order; :mod:`.checker` holds the
checks, :mod:`.hashing` the background hash pool, :mod:`.report` the report and the order of its
problems, :mod:`.catalog_reads` what is read from the catalog. The finding record is
:mod:`cas_vault.findings`; the commit walk and the live-object rule are
:mod:`cas_vault.reachability`; the scans of ``objects/`` and of temp files are
:mod:`cas_vault.scan` (shared with gc).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from .. import journal as _journal
from ..digest import Digest
from ..errors import NotFoundError
from ..findings import INFO_KINDS, PROBLEM_KINDS, Finding
from ..ids import validate_id
from ..journal import JournalTip
from ..reachability import reachable, walk_commits, working_index_digests
from ..retirement import retirements
from ..scan import TempItem, find_temp, scan_objects, walk_tree
from .catalog_reads import catalog_commits, catalog_tip
from .checker import Checker, ObjectUse, read_journal
from .hashing import HashPool, Progress
from .report import VerifyReport, ordered_problems

if TYPE_CHECKING:
    from ..repository import Repository

# The scanning and walking names are re-exported: they were this module's before it became a
# package. New code imports them from cas_vault.scan and cas_vault.reachability.
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


def verify(
    vault: Repository, specimen_ids: Sequence[str] = (), *, quick: bool = False,
    progress: Progress | None = None, witness: JournalTip | str | None = None,
) -> VerifyReport:
    """Check a vault (or some of its specimens); see the module docstring for what is checked.

    Args:
        vault: the vault.
        specimen_ids: check only these committed specimens (their commits, ancestors' commits,
            objects and working directories); empty: everything, including strays and garbage.
        quick: check existence and sizes only, without re-hashing bytes.
        progress: called with ``(advance_bytes, total_bytes)`` while hashing.
        witness: a journal tip kept outside the vault, or its text ``LINES:DIGEST`` as an
            earlier report gave it: the journal must still hold that line.

    Returns:
        The report; ``report.ok`` is False if any problem was found.

    Raises:
        InvalidIdError: for a malformed id.
        NotFoundError: for an id that has neither a ref nor a journal line.
        InvalidInputError: for a malformed witness.
    """
    if isinstance(witness, str):
        witness = JournalTip.parse(witness)
    started = time.perf_counter()
    chk = Checker(vault, quick)
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
    events = chk.check_events(journal) if scope is None else set()
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
    # A retired specimen is not live: what of it nothing live needs may be gone (gc), so it is
    # named, not walked; a live commit that reaches it (a child) still checks it as a parent.
    retired = retirements(vault)
    chk.report_retired([r for sid, r in sorted(retired.items()) if scope is None or sid in scope])
    refs = {sid: d for sid, d in refs.items() if sid not in retired}
    # Commits whose ref is gone are still checked (and kept by gc) through their journal line.
    starts: dict[Digest, str] = {d: sid for sid, d in refs.items()}
    for sid, e in entries.items():
        if (scope is None or sid in scope) and sid not in raw and sid not in retired:
            starts.setdefault(e.commit, sid)

    def count(n: int) -> None:
        chk.bytes_hashed += n

    # Working indexes are read later, after the object scan: a chunk a running writer adds
    # meanwhile is then named by its index rather than counted as garbage.
    reach = reachable(vault, starts, on_read=count, workdirs=False)
    commits, commit_problems = reach.commits, reach.problems
    chk.problems.extend(commit_problems)

    uses: dict[Digest, list[ObjectUse]] = {}
    for c in commits.values():
        for rel, entry in c.tree.items():
            uses.setdefault(entry.digest, []).append(ObjectUse(c.specimen_id, rel, entry.size))
    scan = scan_objects(vault.objects) if scope is None else None
    walked: set[Digest] = set(commits) | {Digest(p.digest) for p in commit_problems if p.digest}
    state, object_jobs = chk.stat_objects(uses, scan, walked)

    # Hashing runs in the background (BLAKE3 and reads release the GIL) while this thread does
    # the checks that are Python work: working directories, garbage, strays.
    with HashPool(progress) as pool:
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
            live = reach.live | working_index_digests(vault, retired) | events
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
        problems=ordered_problems(chk.problems), info=tuple(chk.info),
        objects_checked=checked, bytes_hashed=chk.bytes_hashed,
        seconds=time.perf_counter() - started, journal_tip=_journal.tip_of(journal),
    )
