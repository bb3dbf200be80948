"""Append-only refs and the hash-chained journal of their creation.

``refs/<specimen_id>`` holds the commit digest of a sealed specimen; it is created once and
never moved or removed through the API. Every creation is recorded in ``journal``: one JSON line
per entry, each carrying the BLAKE3 of the line before it, so deleting, reordering or editing an
entry breaks the chain and is detected by ``vault verify``.

Ref creation and the journal append happen under one lock, bracketed by an intent file
``locks/pending/<specimen_id>``. A crash between the two leaves a ref whose journal line is
missing but whose intent file exists; the next writer (or ``verify``) appends the line, since the
ref already points to a complete commit (commits are written before refs). A ref that lacks both a
journal line and an intent file was not made by cas-vault (or its journal line was deleted), and
``verify`` reports it.

The journal's format (parsing, its tail, the partial last line, the tip record) is read by
:mod:`cas_vault.journal`; this module writes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from . import journal as _journal
from .atomic import FileLock, append_durable, fsync_dir, link_if_absent, write_replace, write_temp
from .digest import Digest, hash_bytes, is_digest
from .errors import ImmutableError, InvalidInputError
from .ids import validate_id
from .journal import GENESIS, TIP_NAME, TIP_SIZE, JournalEntry, JournalTip, rollback  # re-exported

__all__ = ["GENESIS", "JournalEntry", "JournalTip", "RefStore", "rollback"]

#: Permission bits of a ref file (and of its intent file, which becomes the ref by a link).
_REF_MODE = 0o444


def _ref_bytes(commit: str) -> bytes:
    """The bytes of a ref file (and of its intent file): the digest and a newline."""
    return (commit + "\n").encode("ascii")


class RefStore:
    """Refs and journal of one vault.

    Args:
        refs_dir: ``<vault>/refs``.
        journal: ``<vault>/journal``.
        lock: the lock file serialising ref creation (``<vault>/locks/refs.lock``).
        tmp_dir: temp directory on the same filesystem.
    """

    def __init__(self, refs_dir: Path, journal: Path, lock: Path, tmp_dir: Path) -> None:
        self.refs_dir = refs_dir
        self.journal = journal
        self.lock_path = lock
        self.tmp_dir = tmp_dir
        self.pending_dir = lock.parent / "pending"
        self.tip_path = journal.with_name(TIP_NAME)

    @classmethod
    def of_vault(cls, vault_root: Path) -> RefStore:
        """The refs and journal of the vault at ``vault_root`` (the layout of docs/format.md).

        For code below the repository (working-directory writers), which needs to read a ref,
        not a whole :class:`~cas_vault.repository.Repository`.
        """
        return cls(vault_root / "refs", vault_root / "journal",
                   vault_root / "locks" / "refs.lock", vault_root / "tmp")

    # -- reading -----------------------------------------------------------------------------
    def get(self, specimen_id: str) -> Digest | None:
        """Return the commit digest of ``specimen_id``, or None if it has no ref."""
        validate_id(specimen_id)
        try:
            text = (self.refs_dir / specimen_id).read_text("ascii").strip()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            text = ""
        if not is_digest(text):
            raise InvalidInputError(
                f"ref {specimen_id} is corrupt (does not hold a commit digest); run `vault verify`"
            )
        return Digest(text)

    def read_raw(self, specimen_id: str) -> bytes | None:
        """Return a ref file's raw bytes (for verify), or None if missing."""
        try:
            return (self.refs_dir / specimen_id).read_bytes()
        except FileNotFoundError:
            return None

    def names(self, prefix: str = "") -> list[str]:
        """Return the ids of every ref file, sorted (including malformed names, for verify).

        Args:
            prefix: only names that start with it.
        """
        if not self.refs_dir.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.refs_dir)
                      if e.name.startswith(prefix) and e.is_file() and not e.name.startswith("."))

    def all(self, prefix: str = "") -> dict[str, Digest]:
        """Return every well-formed ref: specimen id -> commit digest.

        Args:
            prefix: only ids that start with it.
        """
        out: dict[str, Digest] = {}
        for name in self.names(prefix):
            try:
                d = self.get(name)
            except InvalidInputError:
                continue
            if d is not None:
                out[name] = d
        return out

    def entries(self) -> Iterator[JournalEntry]:
        """Yield the journal's complete entries in order.

        A final line without its newline (an append cut short by a crash) is not yielded.

        Raises:
            InvalidInputError: for a line that cannot be parsed.
        """
        try:
            data = self.journal.read_bytes()
        except FileNotFoundError:
            return
        yield from _journal.entries(data)

    # -- writing -----------------------------------------------------------------------------
    def intent_temp(self, specimen_id: str, commit: Digest) -> tuple[Path, Path]:
        """Write the intent file of a coming :meth:`create` to a temp file, without fsync.

        A commit puts it in place (fsync, link unless an intent for the id exists, fsync
        ``locks/pending/``) together with its objects, saving :meth:`create` two waits for the
        disk. That happens outside the refs lock, so another writer's recovery may remove it, or
        a crashed commit's intent may hold the name: :meth:`create` recovers the latter under
        the lock and writes the intent again if it is not there with these bytes.

        Returns:
            ``(temp file, intent path)``.
        """
        validate_id(specimen_id)
        tmp = write_temp(self.pending_dir, _ref_bytes(commit), _REF_MODE)
        return tmp, self.pending_dir / specimen_id

    def create(self, specimen_id: str, commit: Digest, time: str) -> None:
        """Create the ref ``specimen_id`` -> ``commit`` and journal it.

        Args:
            specimen_id: a validated id.
            commit: the digest of a commit object that is already durable.
            time: UTC timestamp for the journal entry.

        Raises:
            ImmutableError: if the ref exists (refs are never moved).
        """
        validate_id(specimen_id)
        with FileLock(self.lock_path):
            data = _ref_bytes(commit)
            intent = self.pending_dir / specimen_id
            try:
                # Ours, put in place durably by the commit (intent_temp): recovery leaves it.
                ready = intent.read_bytes() == data
            except FileNotFoundError:
                ready = False
            self._recover_locked(keep=specimen_id if ready else None)
            existing = self.get(specimen_id)
            if existing is not None:
                if ready:  # never to be used
                    intent.unlink(missing_ok=True)
                raise ImmutableError(
                    f"specimen {specimen_id} is already committed as {existing}; committed "
                    "specimens never change: create a new specimen (vault new NEW_ID --parent "
                    f"{specimen_id}) for a variation"
                )
            if not ready:
                # The intent file has exactly the ref's bytes and mode, so once it is durable
                # the ref is made by hard-linking it: no second file to write and fsync.
                write_replace(intent, data, mode=_REF_MODE)
            if not link_if_absent(intent, self.refs_dir / specimen_id):
                intent.unlink(missing_ok=True)
                raise ImmutableError(f"specimen {specimen_id} was committed concurrently")
            self._append_locked(specimen_id, commit, time)
            intent.unlink()

    def recover(self) -> list[str]:
        """Finish journal entries that a crash cut off; see :meth:`_recover_locked`."""
        with FileLock(self.lock_path):
            return self._recover_locked()

    def _journaled_ids(self) -> set[str]:
        return {e.specimen_id for e in self.entries() if e.is_ref}

    def _tail(self) -> tuple[int, Digest]:
        """Return ``(next seq, digest of the last line)`` reading only the journal's end."""
        return _journal.read_tail(self.journal)

    def _drop_partial_line(self) -> None:
        """Truncate a last line that lacks its newline (an append cut short by a crash)."""
        try:
            f = open(self.journal, "r+b")
        except FileNotFoundError:
            return
        with f:
            keep = _journal.complete_end(f)
            if keep == f.seek(0, os.SEEK_END):
                return
            f.truncate(keep)
            os.fsync(f.fileno())

    def read_tip(self) -> JournalTip | None:
        """The tip record beside the journal, or None if there is none (or it is unreadable)."""
        try:
            return JournalTip.decode(self.tip_path.read_bytes())
        except FileNotFoundError:
            return None

    def append_event(self, kind: str, subject: str, event: Digest, time: str) -> int:
        """Journal an event whose object ``event`` is durable already; return its ``seq``.

        Events change no ref: they are lines of the hash-chained journal (docs/format.md 5.4),
        appended under the refs lock like a ref's line, after finishing interrupted creations.

        Args:
            kind: one of :data:`cas_vault.journal.EVENT_KINDS`.
            subject: the specimen the event is about ("" for the vault).
            event: the digest of the event object.
            time: UTC timestamp for the line.

        Raises:
            InvalidInputError: for an unknown kind or a malformed subject.
        """
        if kind not in _journal.EVENT_KINDS:
            raise InvalidInputError(f"unknown journal event kind {kind!r}")
        if subject:
            validate_id(subject)
        with FileLock(self.lock_path):
            self._recover_locked()
            seq, _ = self._tail()
            self._append_locked(subject, event, time, kind)
            return seq

    def _append_locked(self, specimen_id: str, commit: str, time: str,
                       kind: str = _journal.REF_KIND) -> None:
        seq, prev = self._tail()
        line = JournalEntry.encode(seq, specimen_id, commit, time, prev, kind)
        new_file = not self.journal.exists()
        append_durable(self.journal, line + b"\n")
        if new_file:
            fsync_dir(self.journal.parent)
        self._write_tip(JournalTip(seq + 1, hash_bytes(line)))

    def _write_tip(self, tip: JournalTip) -> None:
        # A witness outside the journal: removing the last lines (and their refs) no longer
        # erases every trace. Not fsynced: after a power cut it may lag the journal (which is
        # fine) but never lead it, since the journal line is durable already. Overwritten in
        # place (fixed width): a commit creates no file for it.
        record = tip.encode()
        try:
            fd = os.open(self.tip_path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            write_replace(self.tip_path, record, sync_dir=False, sync=False)
            return
        try:
            if os.fstat(fd).st_size != TIP_SIZE:
                os.ftruncate(fd, TIP_SIZE)
            os.pwrite(fd, record, 0)
        finally:
            os.close(fd)

    def _recover_locked(self, keep: str | None = None) -> list[str]:
        """Repair what a crash between ref creation and journal append left.

        Drops a partial last journal line, then journals refs that have no entry but do have an
        intent file (their commit was interrupted after the ref was created), and removes intent
        files whose work is finished or never started. Only the rare intent whose ref exists
        (a crash) costs a read of the whole journal. Returns the ids it journaled.

        Args:
            keep: the id of the ref the caller is creating, whose intent file it has checked
                to be its own (put in place before the lock was taken, see :meth:`intent_temp`),
                not a leftover.
        """
        self._drop_partial_line()
        intents = (sorted(n for n in os.listdir(self.pending_dir) if not n.startswith("."))
                   if self.pending_dir.is_dir() else [])
        with_ref: list[tuple[str, Digest]] = []
        for name in intents:
            if name == keep:
                continue
            intent = self.pending_dir / name
            try:
                text = intent.read_bytes().strip().decode("ascii", "replace")
                d = self.get(name)
            except InvalidInputError:
                d = None
            except FileNotFoundError:
                continue
            if d is not None and text == d:
                with_ref.append((name, d))
            else:  # never started (no ref), or not this ref's: nothing to finish
                intent.unlink(missing_ok=True)
        if not with_ref:
            return []
        try:
            journaled = self._journaled_ids()
        except InvalidInputError:
            return []  # a damaged journal is verify's to report, not ours to rewrite
        missing = []
        for name, d in with_ref:
            if name in journaled:
                (self.pending_dir / name).unlink(missing_ok=True)
            else:
                missing.append(((self.refs_dir / name).stat().st_mtime_ns, name, d))
        from .commit import utc_now

        for _, name, d in sorted(missing):
            self._append_locked(name, d, utc_now())
            (self.pending_dir / name).unlink(missing_ok=True)
        return [name for _, name, _ in sorted(missing)]
