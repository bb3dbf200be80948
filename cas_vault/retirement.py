"""Retiring a sealed specimen: a journaled removal from view, never a silent deletion.

``vault retire ID --reason TEXT`` records a ``retire`` event (docs/format.md 5.4) naming the
specimen's commit, the reason, who and when. From then on the specimen is no longer **live**:
``vault log`` and the catalog leave it out (``vault log --all`` lists it with its reason), and
its objects that no live specimen needs are reclaimed by ``vault gc`` after the grace period.
Its ref stays, so its id is never reused, and ``vault verify`` reports it as retired, not lost.

``--purge`` is for what must not stay on disk (a secret committed by accident): the next
``vault gc`` removes the specimen's commit object and every object of its tree that no live
specimen needs at once, without waiting for the grace period. Objects a live specimen also
holds (the same bytes, deduplicated) stay, since removing them would damage that specimen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .digest import Digest
from .errors import ImmutableError, InvalidInputError
from .events import Event, read_events, record

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["Retirement", "retire", "retirements"]

_MAX_REASON = 4096


@dataclass(frozen=True)
class Retirement:
    """A retired specimen.

    Attributes:
        specimen_id: the specimen.
        commit: its commit.
        reason: why it was retired.
        purge: whether its objects go at the next gc, without the grace period.
        time: when (UTC, ISO 8601).
        author: who.
        seq: the journal line.
    """

    specimen_id: str
    commit: Digest
    reason: str
    purge: bool
    time: str
    author: str
    seq: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"specimen_id": self.specimen_id, "commit": self.commit, "reason": self.reason,
                "purge": self.purge, "time": self.time, "author": self.author, "seq": self.seq}


def _from_event(e: Event) -> Retirement | None:
    commit, reason, purge = e.fields.get("commit"), e.fields.get("reason"), e.fields.get("purge")
    if not isinstance(commit, str) or not isinstance(reason, str) or not isinstance(purge, bool):
        return None
    return Retirement(e.subject, Digest(commit), reason, purge, e.time, e.author, e.seq)


def retirements(repo: Repository) -> dict[str, Retirement]:
    """Every retired specimen: id -> its retirement (the first, if journaled twice by hand).

    A retirement whose event object cannot be read does not count: its specimen stays live,
    so nothing is reclaimed on the strength of a record nobody can check (verify reports it).
    """
    out: dict[str, Retirement] = {}
    for e in read_events(repo, "retire"):
        r = _from_event(e)
        if r is not None:
            out.setdefault(r.specimen_id, r)
    return out


def retire(repo: Repository, specimen_id: str, reason: str, *, purge: bool = False) -> Retirement:
    """Retire a committed specimen (journaled; see the module docstring).

    Args:
        repo: the repository.
        specimen_id: a committed specimen (an id, ``@label`` or a commit digest prefix).
        reason: why, for whoever finds it later (required, at most 4096 characters).
        purge: remove its objects at the next gc, without the grace period.

    Returns:
        The retirement.

    Raises:
        InvalidInputError: for an empty or oversized reason.
        NotFoundError: if the specimen is not committed (an uncommitted one: ``vault rm``).
        ImmutableError: if it is retired already (saying when, by whom and why).
    """
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInputError("give a reason (--reason TEXT): it is kept with the retirement, "
                                "for whoever finds the specimen gone")
    if len(reason) > _MAX_REASON:
        raise InvalidInputError(f"the reason is over {_MAX_REASON} characters; keep it short")
    if not isinstance(purge, bool):
        raise InvalidInputError(f"purge must be True or False, not {purge!r}")
    sid = repo.lookup(specimen_id)
    digest = repo.resolve(sid)
    done = retirements(repo).get(sid)
    if done is not None:
        raise ImmutableError(
            f"specimen {sid} was retired already on {done.time} by {done.author}: "
            f"{done.reason!r}" + (" (purged)" if done.purge else ""))
    e = record(repo, "retire", sid, {"commit": digest, "reason": reason.strip(), "purge": purge})
    r = _from_event(e)
    assert r is not None
    return r
