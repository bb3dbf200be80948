"""The journal's format, read in one place (docs/format.md section 5).

``journal`` is a text file of canonical JSON lines, each carrying the BLAKE3 of the line before
it. A final line without its ``\\n`` is an append cut short by a crash: it is not an entry (the
next writer truncates it). ``journal.tip`` beside it is a fixed-width witness of the journal's
end (section 5.3). Every reader of the journal uses this module: ``refs`` (appending and
recovery), ``verify`` (strict, with every problem), ``reachability`` (tolerant: a damaged line
hides no other) and ``catalog`` (incremental, from a byte offset).

This module only reads, encodes and decodes; writing (appends, truncation, the tip record) is
``refs``'s, under its lock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .digest import Digest, hash_bytes, is_digest
from .errors import IntegrityError, InvalidInputError

__all__ = [
    "EVENT_KINDS",
    "GENESIS",
    "REF_KIND",
    "TIP_NAME",
    "TIP_SIZE",
    "JournalEntry",
    "JournalProblem",
    "JournalTip",
    "check",
    "complete_end",
    "complete_lines",
    "decodable",
    "entries",
    "events",
    "read_after",
    "read_tail",
    "rollback",
    "tip_of",
]

#: The ``prev`` of the first journal entry.
GENESIS = Digest("0" * 64)
#: The kind of a line that records a ref's creation (the line has no ``kind`` key).
REF_KIND = "ref"
#: Kinds of event lines: each names an event object (docs/format.md 5.4) by its digest.
EVENT_KINDS = ("label", "note", "retire", "taxonomy")
#: The tip record kept beside the journal (docs/format.md 5.3), and its fixed size.
TIP_NAME = "journal.tip"
TIP_SIZE = 86


@dataclass(frozen=True)
class JournalEntry:
    """One line of the journal.

    A line records either a ref's creation (``kind`` is :data:`REF_KIND`) or an event
    (:data:`EVENT_KINDS`: a label moved, a note added, a specimen retired, a taxonomy pair
    added), whose details are in the event object ``commit`` names.

    Attributes:
        seq: 0-based position in the journal.
        specimen_id: the ref created; for an event, the specimen it is about ("" for one about
            the vault, such as a taxonomy pair).
        commit: the commit digest the ref was created with; for an event, its event object.
        time: UTC timestamp of the creation.
        prev: digest of the previous line (``GENESIS`` for the first).
        line: the exact line bytes (without the newline).
        kind: :data:`REF_KIND` or one of :data:`EVENT_KINDS`.
    """

    seq: int
    specimen_id: str
    commit: Digest
    time: str
    prev: Digest
    line: bytes
    kind: str = REF_KIND

    @property
    def is_ref(self) -> bool:
        """Whether the line records a ref's creation (not an event)."""
        return self.kind == REF_KIND

    @property
    def digest(self) -> Digest:
        """BLAKE3 of the line's bytes: the next entry's ``prev``."""
        return hash_bytes(self.line)

    @staticmethod
    def encode(seq: int, specimen_id: str, commit: str, time: str, prev: str,
               kind: str = REF_KIND) -> bytes:
        """Return the canonical line for an entry (sorted keys, no spaces, ASCII).

        A ref line has no ``kind`` key (the format before events); an event line has one.
        """
        value: dict[str, object] = {"commit": commit, "prev": prev, "seq": seq,
                                     "specimen_id": specimen_id, "time": time}
        if kind != REF_KIND:
            value["kind"] = kind
        return json.dumps(value, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True).encode("ascii")

    @classmethod
    def decode(cls, line: bytes, lineno: int) -> JournalEntry:
        """Parse one journal line.

        Args:
            line: the line's bytes, without its newline.
            lineno: its 1-based line number, for messages.

        Returns:
            The entry.

        Raises:
            InvalidInputError: if the line is not a well-formed canonical entry.
        """
        try:
            v = json.loads(line)
            kind = v.get("kind", REF_KIND)
            entry = cls(int(v["seq"]), str(v["specimen_id"]), Digest(v["commit"]), str(v["time"]),
                        Digest(v["prev"]), line, str(kind))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InvalidInputError(f"journal line {lineno} is not a valid entry") from None
        if entry.kind not in EVENT_KINDS and "kind" in v:
            raise InvalidInputError(f"journal line {lineno} has an unknown kind {entry.kind!r}")
        if cls.encode(entry.seq, entry.specimen_id, entry.commit, entry.time, entry.prev,
                      entry.kind) != line:
            raise InvalidInputError(f"journal line {lineno} is not in canonical form")
        if not (is_digest(entry.commit) and is_digest(entry.prev)):
            raise InvalidInputError(f"journal line {lineno} has a malformed digest")
        return entry


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


@dataclass(frozen=True)
class JournalProblem:
    """Something wrong with the journal, as :func:`check` finds it.

    Attributes:
        message: what is wrong, in words.
        specimen_id: the specimen of the line, when the line decoded.
        commit: the commit of the line, when the line decoded.
    """

    message: str
    specimen_id: str | None = None
    commit: Digest | None = None


# -- whole journals ----------------------------------------------------------------------------
def complete_lines(data: bytes) -> list[bytes]:
    """The journal's complete lines (without their newlines).

    The piece after the last newline is ``b""`` or a line an append did not finish: not a line.

    Args:
        data: the journal's bytes.

    Returns:
        Every complete line, in order.
    """
    return data.split(b"\n")[:-1]


def entries(data: bytes) -> Iterator[JournalEntry]:
    """Decode every complete line, strictly.

    Args:
        data: the journal's bytes.

    Yields:
        Each entry, in order.

    Raises:
        InvalidInputError: for a line that cannot be parsed.
    """
    for i, line in enumerate(complete_lines(data), start=1):
        yield JournalEntry.decode(line, i)


def decodable(data: bytes) -> list[JournalEntry]:
    """The complete lines that decode, skipping the others.

    Lines are read one by one so that a damaged line (``verify`` reports it) does not hide the
    commits of the others.

    Args:
        data: the journal's bytes.

    Returns:
        Every decodable entry, in order.
    """
    out = []
    for i, line in enumerate(complete_lines(data), start=1):
        try:
            out.append(JournalEntry.decode(line, i))
        except InvalidInputError:
            continue
    return out


def events(data: bytes, kind: str | None = None) -> list[JournalEntry]:
    """The journal's decodable event lines (not ref creations), in order.

    Args:
        data: the journal's bytes.
        kind: only lines of this kind. Lines are canonical, so a line of the kind holds
            ``"kind":"<kind>"``: only lines that do are decoded, and a journal without one is
            not parsed at all (what a commit asks for the vault's taxonomy costs a scan).
    """
    if kind is None:
        return [e for e in decodable(data) if not e.is_ref]
    marker = b'"kind":' + json.dumps(kind).encode("ascii")
    out = []
    pos = counted = 0
    lineno = 1
    while (hit := data.find(marker, pos)) != -1:
        start = data.rfind(b"\n", 0, hit) + 1
        end = data.find(b"\n", hit)
        if end == -1:
            break  # a final line without its newline is no entry
        lineno += data.count(b"\n", counted, start)
        counted = start
        try:
            e = JournalEntry.decode(data[start:end], lineno)
        except InvalidInputError:
            e = None
        if e is not None and e.kind == kind:
            out.append(e)
        pos = end + 1
    return out


def check(data: bytes) -> tuple[dict[str, JournalEntry], list[JournalProblem]]:
    """Parse a journal and check every rule of its format.

    Args:
        data: the whole journal file.

    Returns:
        ``(entries, problems)``: specimen id -> its (first) valid ref entry (event lines are
        checked for order and chain, and left out: see :func:`events`), and every problem
        (malformed line, wrong ``seq``, broken ``prev`` chain, duplicate specimen, incomplete
        last line).
    """
    found: dict[str, JournalEntry] = {}
    problems: list[JournalProblem] = []
    lines = data.split(b"\n")
    tail = lines.pop()
    prev = GENESIS
    for i, line in enumerate(lines):
        lineno = i + 1
        try:
            e = JournalEntry.decode(line, lineno)
        except InvalidInputError as exc:
            problems.append(JournalProblem(f"{exc}: the journal was edited by hand"))
            prev = hash_bytes(line)
            continue
        if e.seq != i:
            problems.append(JournalProblem(
                f"journal line {lineno} has seq {e.seq}, expected {i}: a line was deleted, "
                "inserted or moved", e.specimen_id, e.commit))
        if e.prev != prev:
            problems.append(JournalProblem(
                f"journal line {lineno} does not chain to the line before it: that line was "
                "edited, deleted or moved", e.specimen_id, e.commit))
        prev = e.digest
        if not e.is_ref:
            continue
        if e.specimen_id in found:
            problems.append(JournalProblem(
                f"journal line {lineno} records {e.specimen_id} a second time (refs are created "
                "once)", e.specimen_id, e.commit))
        else:
            found[e.specimen_id] = e
    if tail:
        problems.append(JournalProblem(f"journal line {len(lines) + 1} is incomplete (no newline)"))
    return found, problems


def tip_of(data: bytes) -> JournalTip | None:
    """The witness of a journal's end as it is now; None for a journal without lines."""
    lines = complete_lines(data)
    return JournalTip(len(lines), hash_bytes(lines[-1])) if lines else None


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
    lines = complete_lines(journal)
    if len(lines) < tip.lines:
        return (f"the journal has {len(lines)} line(s) where {tip.lines} were witnessed "
                f"(line {tip.lines} hashed to {tip.digest[:16]}...)")
    got = hash_bytes(lines[tip.lines - 1])
    if got != tip.digest:
        return (f"journal line {tip.lines} hashes to {got[:16]}... where "
                f"{tip.digest[:16]}... was witnessed")
    return None


# -- parts of a journal file -------------------------------------------------------------------
def read_tail(path: Path) -> tuple[int, Digest]:
    """Return ``(next seq, digest of the last complete line)`` reading only the journal's end.

    Commits must not slow down as the journal grows, so this never reads the whole file.

    Args:
        path: the journal file (missing: an empty journal).

    Returns:
        ``(0, GENESIS)`` for a journal without complete lines.

    Raises:
        InvalidInputError: if the last complete line cannot be parsed.
    """
    try:
        f = open(path, "rb")
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


def complete_end(f: BinaryIO) -> int:
    """The length of the complete lines of an open journal: where a partial last line starts.

    Reads backwards from the end, only as far as the last newline.

    Args:
        f: the journal, opened for binary reading.

    Returns:
        The size of the file when it ends with a newline (or is empty), else the offset just
        after its last newline (0 if it has none).
    """
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return 0
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return size
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        f.seek(start)
        chunk = f.read(pos - start)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos = start
    return 0


def read_after(
    path: Path, offset: int, seq: int, last: tuple[int, Digest] | None = None,
) -> list[tuple[int, JournalEntry]] | None:
    """The complete lines after byte ``offset``, where line ``seq`` (0-based) starts.

    Reads only from ``offset`` (or from ``last``'s offset) on, so a reader that remembers how
    far it got reads only what was appended since.

    Args:
        path: the journal file.
        offset: the byte offset just after the lines already read.
        seq: how many lines come before ``offset``.
        last: ``(offset, digest)`` of the line just before ``offset``, to check that the journal
            still holds it (None when ``seq`` is 0).

    Returns:
        ``(byte offset, entry)`` of every complete line after ``offset``, or None if the journal
        no longer continues what was read (it is shorter, or that last line changed).

    Raises:
        InvalidInputError: for a line that cannot be parsed.
        IntegrityError: for a line whose ``seq`` is not its position.
    """
    start = last[0] if last is not None else offset
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return [] if seq == 0 else None
    with f:
        f.seek(start)
        data = f.read()
    head = offset - start
    if last is not None and (len(data) < head or data[head - 1:head] != b"\n"
                             or hash_bytes(data[:head - 1]) != last[1]):
        return None
    out: list[tuple[int, JournalEntry]] = []
    pos = offset
    for line in complete_lines(data[head:]):  # a last piece still being written is left
        entry = JournalEntry.decode(line, seq + 1)
        if entry.seq != seq:
            raise IntegrityError(
                f"journal line {seq + 1} says seq {entry.seq}; the journal was edited: "
                "run `vault verify`"
            )
        out.append((pos, entry))
        pos += len(line) + 1
        seq += 1
    return out
