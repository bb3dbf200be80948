"""Events: what happens to sealed specimens after they are sealed, without changing them.

A label moved, a note added to a sealed specimen, a specimen retired, a pair added to or removed
from the vault's taxonomy: each is an **event object** (a canonical msgpack map in ``objects/``,
named by its digest like every object) and a line of its kind in the hash-chained journal that
names it (docs/format.md 5.4). Nothing sealed changes, the journal only grows, and ``vault
verify`` checks every event object as it checks commits; the catalog and the commands read the
current state (where each label points, the notes of a specimen, the vault's taxonomy) by
replaying the events in journal order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import canonical, journal
from .atomic import FileLock
from .commit import default_author, utc_now
from .digest import Digest
from .errors import InvalidInputError, VaultError

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["Event", "decode_event", "read_events", "record"]

#: Keys every event object has; the rest depend on its kind (docs/format.md 5.4).
_COMMON = ("author", "kind", "subject", "time")


@dataclass(frozen=True)
class Event:
    """One journaled event.

    Attributes:
        seq: its journal line (events are ordered by it).
        kind: ``label``, ``note``, ...
        subject: the specimen it is about ("" for the vault).
        time: when it was recorded (UTC, ISO 8601).
        author: who recorded it.
        digest: the event object's digest.
        fields: the kind's own fields (e.g. a label's ``name``, a note's ``text``).
    """

    seq: int
    kind: str
    subject: str
    time: str
    author: str
    digest: Digest
    fields: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"seq": self.seq, "kind": self.kind, "subject": self.subject, "time": self.time,
                "author": self.author, "event": self.digest, **dict(self.fields)}


def decode_event(data: bytes, line: journal.JournalEntry) -> Event:
    """Decode the event object a journal event line names, checking that they agree.

    Raises:
        InvalidInputError: if it is not an event map, or its kind or subject differ from the
            line's.
    """
    value = canonical.unpackb(data, f"event object {line.commit}")
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in _COMMON):
        raise InvalidInputError(f"event object {line.commit} is not an event map")
    if value["kind"] != line.kind or value["subject"] != line.specimen_id:
        raise InvalidInputError(
            f"event object {line.commit} is a {value['kind']!r} event about "
            f"{value['subject']!r}, but journal line {line.seq + 1} says {line.kind!r} about "
            f"{line.specimen_id!r}")
    fields = {k: v for k, v in value.items() if k not in _COMMON}
    return Event(line.seq, line.kind, line.specimen_id, value["time"], value["author"],
                 line.commit, fields)


def record(repo: Repository, kind: str, subject: str, fields: Mapping[str, Any],
           author: str | None = None) -> Event:
    """Store an event object and journal it.

    The object is durable before its journal line, which the refs lock orders among commits;
    the gc lock is held shared throughout, so gc never prunes the object in between.

    Args:
        repo: the repository.
        kind: one of :data:`cas_vault.journal.EVENT_KINDS`.
        subject: the specimen it is about ("" for the vault).
        fields: the kind's own fields (msgpack-storable).
        author: defaults to ``$CAS_VAULT_AUTHOR`` or the login name.

    Returns:
        The event.

    Raises:
        InvalidInputError: for an unknown kind, a malformed subject or unstorable fields.
    """
    if kind not in journal.EVENT_KINDS:
        raise InvalidInputError(f"unknown event kind {kind!r}")
    clash = sorted(set(fields) & set(_COMMON))
    if clash:
        raise InvalidInputError(f"event fields may not be named {', '.join(clash)}")
    body = {**fields, "author": author or default_author(), "kind": kind, "subject": subject,
            "time": utc_now()}
    data = canonical.packb(body)
    with FileLock(repo.gc_lock_path, shared=True):
        batch = repo.objects.batch()
        try:
            digest = batch.add_bytes(data)
        except BaseException:
            batch.abort()
            raise
        batch.publish()
        seq = repo.refs.append_event(kind, subject, digest, body["time"])
    return Event(seq, kind, subject, body["time"], body["author"], digest,
                 {k: v for k, v in body.items() if k not in _COMMON})


def read_events(repo: Repository, kind: str | None = None) -> list[Event]:
    """The journal's events (of one kind), in journal order.

    An event whose object is missing, altered or malformed is left out: ``vault verify``
    reports it; one damaged event hides no other.

    Args:
        repo: the repository.
        kind: only events of this kind.
    """
    try:
        data = repo.refs.journal.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in journal.events(data, kind):
        try:
            out.append(decode_event(repo.objects.get(line.commit), line))
        except VaultError:
            continue
    return out
