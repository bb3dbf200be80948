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
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .atomic import FileLock, append_durable, fsync_dir, link_if_absent, write_replace, write_temp
from .digest import Digest, hash_bytes, is_digest
from .errors import ImmutableError, InvalidInputError
from .ids import validate_id

__all__ = ["GENESIS", "JournalEntry", "JournalTip", "RefStore", "rollback"]

#: Permission bits of a ref file (and of its intent file, which becomes the ref by a link).
_REF_MODE = 0o444
#: The ``prev`` of the first journal entry.
GENESIS = Digest("0" * 64)
#: The tip record kept beside the journal (docs/format.md 5.3), and its fixed size.
TIP_NAME = "journal.tip"
TIP_SIZE = 86


@dataclass(frozen=True)
class JournalTip:
    """A witness of the journal's end: how many lines it had and the BLAKE3 of the last one.

    Attributes:
        lines: the number of complete lines.
        digest: BLAKE3 of the last line's bytes (without its newline).
    """

    lines: int
    digest: Digest

    def encode(self) -> bytes:
        """The record's bytes: the line count as 20 decimal digits, a space, the digest, ``\\n``.

        Fixed width (86 bytes), so it is rewritten in place with one small write: no new file
        per commit, and a write cut short leaves a record that does not parse (no witness),
        never one that names another line.
        """
        return f"{self.lines:020d} {self.digest}\n".encode("ascii")

    @classmethod
    def decode(cls, data: bytes) -> JournalTip | None:
        """Parse a record; None if it is not one (a cut-short write is no witness)."""
        if len(data) != TIP_SIZE or data[20:21] != b" " or data[-1:] != b"\n":
            return None
        n, d = data[:20], data[21:-1].decode("ascii", "replace")
        if not n.isdigit() or int(n) < 1 or not is_digest(d):
            return None
        return cls(int(n), Digest(d))

    @classmethod
    def parse(cls, text: str) -> JournalTip:
        """Parse ``N:DIGEST`` (as ``vault verify`` prints it, to be kept elsewhere).

        Raises:
            InvalidInputError: if it is not a line count and a digest.
        """
        n, _, d = text.strip().partition(":")
        if not n.isdigit() or int(n) < 1 or not is_digest(d):
            raise InvalidInputError(
                f"witness {text!r} is not LINES:DIGEST (as `vault verify` prints after "
                "'journal tip:', e.g. 12:9a31...)")
        return cls(int(n), Digest(d))

    def __str__(self) -> str:
        return f"{self.lines}:{self.digest}"


def rollback(journal: bytes, tip: JournalTip) -> str | None:
    """Say how ``journal`` fails to contain the line ``tip`` witnessed, or None if it does.

    A journal only grows, so every witness of an earlier end must still hold: line ``lines``
    must exist and hash to ``digest``. Anything else means lines were removed or rewritten.

    Args:
        journal: the journal's bytes.
        tip: the witness.

    Returns:
        What is wrong, in words, or None.
    """
    lines = journal.split(b"\n")[:-1]
    if len(lines) < tip.lines:
        return (f"the journal has {len(lines)} line(s) where {tip.lines} were witnessed "
                f"(line {tip.lines} hashed to {tip.digest[:16]}...)")
    got = hash_bytes(lines[tip.lines - 1])
    if got != tip.digest:
        return (f"journal line {tip.lines} hashes to {got[:16]}... where "
                f"{tip.digest[:16]}... was witnessed")
    return None


def _ref_bytes(commit: str) -> bytes:
    """The bytes of a ref file (and of its intent file): the digest and a newline."""
    return (commit + "\n").encode("ascii")


@dataclass(frozen=True)
class JournalEntry:
    """One line of the journal.

    Attributes:
        seq: 0-based position in the journal.
        specimen_id: the ref created.
        commit: the commit digest it was created with.
        time: UTC timestamp of the creation.
        prev: digest of the previous line (``GENESIS`` for the first).
        line: the exact line bytes (without the newline).
    """

    seq: int
    specimen_id: str
    commit: Digest
    time: str
    prev: Digest
    line: bytes

    @property
    def digest(self) -> Digest:
        """BLAKE3 of the line's bytes: the next entry's ``prev``."""
        return hash_bytes(self.line)

    @staticmethod
    def encode(seq: int, specimen_id: str, commit: str, time: str, prev: str) -> bytes:
        """Return the canonical line for an entry (sorted keys, no spaces, ASCII)."""
        return json.dumps(
            {"commit": commit, "prev": prev, "seq": seq, "specimen_id": specimen_id, "time": time},
            sort_keys=True, separators=(",", ":"), ensure_ascii=True,
        ).encode("ascii")

    @classmethod
    def decode(cls, line: bytes, lineno: int) -> JournalEntry:
        """Parse one journal line.

        Raises:
            InvalidInputError: if the line is not a well-formed canonical entry.
        """
        try:
            v = json.loads(line)
            entry = cls(int(v["seq"]), str(v["specimen_id"]), Digest(v["commit"]), str(v["time"]),
                        Digest(v["prev"]), line)
        except (ValueError, KeyError, TypeError):
            raise InvalidInputError(f"journal line {lineno} is not a valid entry") from None
        if cls.encode(entry.seq, entry.specimen_id, entry.commit, entry.time, entry.prev) != line:
            raise InvalidInputError(f"journal line {lineno} is not in canonical form")
        if not (is_digest(entry.commit) and is_digest(entry.prev)):
            raise InvalidInputError(f"journal line {lineno} has a malformed digest")
        return entry


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

    def names(self) -> list[str]:
        """Return the ids of every ref file, sorted (including malformed names, for verify)."""
        if not self.refs_dir.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.refs_dir)
                      if e.is_file() and not e.name.startswith("."))

    def all(self) -> dict[str, Digest]:
        """Return every well-formed ref: specimen id -> commit digest."""
        out: dict[str, Digest] = {}
        for name in self.names():
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
        lines = data.split(b"\n")
        for i, line in enumerate(lines[:-1], start=1):  # the last piece is "" or a partial line
            yield JournalEntry.decode(line, i)

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
        return {e.specimen_id for e in self.entries()}

    def _tail(self) -> tuple[int, Digest]:
        """Return ``(next seq, digest of the last line)`` reading only the journal's end.

        Commits must not slow down as the journal grows, so this never reads the whole file.
        """
        try:
            f = open(self.journal, "rb")
        except FileNotFoundError:
            return 0, GENESIS
        with f:
            size = f.seek(0, os.SEEK_END)
            block = 4096
            while True:
                start = max(0, size - block)
                f.seek(start)
                data = f.read(size - start)
                end = data.rfind(b"\n")
                if end == -1 and start == 0:
                    return 0, GENESIS
                begin = data.rfind(b"\n", 0, end) + 1 if end > 0 else 0
                if end == -1 or (begin == 0 and start > 0):
                    block *= 4  # the last line is longer than the block: read more
                    continue
                entry = JournalEntry.decode(data[begin:end], -1)
                return entry.seq + 1, entry.digest

    def _drop_partial_line(self) -> None:
        """Truncate a last line that lacks its newline (an append cut short by a crash)."""
        try:
            f = open(self.journal, "r+b")
        except FileNotFoundError:
            return
        with f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            pos, keep = size, 0
            while pos > 0:
                start = max(0, pos - 65536)
                f.seek(start)
                chunk = f.read(pos - start)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    keep = start + nl + 1
                    break
                pos = start
            f.truncate(keep)
            os.fsync(f.fileno())

    def read_tip(self) -> JournalTip | None:
        """The tip record beside the journal, or None if there is none (or it is unreadable)."""
        try:
            return JournalTip.decode(self.tip_path.read_bytes())
        except FileNotFoundError:
            return None

    def _append_locked(self, specimen_id: str, commit: str, time: str) -> None:
        seq, prev = self._tail()
        line = JournalEntry.encode(seq, specimen_id, commit, time, prev)
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
