"""The record every integrity check reports: :class:`Finding`, and the kinds it can have.

``verify`` reports findings, and so does the commit walk of :mod:`cas_vault.reachability` that
``verify`` and ``gc`` share; the record lives below both, so reachability does not import verify
for it. The kinds and the JSON form are documented in docs/integrity.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["INFO_KINDS", "PROBLEM_KINDS", "Finding"]

#: Every kind of problem verify can report (each makes ``ok`` false); see docs/integrity.md.
PROBLEM_KINDS = (
    "corrupt_object",    # an object's bytes do not hash to its name
    "missing_object",    # a tree entry's object is gone
    "size_mismatch",     # an object's size differs from the size recorded in the tree
    "missing_commit",    # a ref names a commit object that is gone
    "bad_commit",        # a commit object that does not decode as a commit
    "bad_event",         # a journal event's object does not decode, or disagrees with its line
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
    "unsealed_run",             # a run of a committed specimen that no commit seals yet
    "retired_specimen",         # a specimen retired on purpose (journaled), not lost
    "catalog_behind",           # committed specimens not indexed yet (`vault index` adds them)
    "catalog_unchecked",        # vault.duckdb was busy, so it was not compared with the refs
    "catalog_problem",          # a metric column whose type does not fit: NULL in `metrics`
)


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
