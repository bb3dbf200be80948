"""Labels: named, movable pointers to sealed specimens (``best``, ``paper-fig-3``, ``prod``).

Like git tags that may move: ``vault label best ID`` points ``best`` at the specimen's commit;
pointing it elsewhere later is a new ``label`` event in the journal (who, when, from what to
what), so every move is kept and nothing sealed changes. ``@best`` stands for the specimen
wherever an id is read (:meth:`cas_vault.repository.Repository.lookup`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .digest import Digest
from .errors import InvalidIdError, InvalidInputError, NotFoundError
from .events import Event, read_events, record
from .ids import validate_id
from .retirement import retirements

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["LABEL_SIGIL", "Label", "check_label_name", "label_history", "labels", "resolve_label",
           "set_label"]

#: ``@name`` names a label wherever an id is read.
LABEL_SIGIL = "@"


@dataclass(frozen=True)
class Label:
    """Where a label points, as one move left it.

    Attributes:
        name: the label.
        specimen_id: the specimen it points to.
        commit: that specimen's commit when the label was set.
        time: when it was set (UTC, ISO 8601).
        author: who set it.
        seq: the journal line of the move.
    """

    name: str
    specimen_id: str
    commit: Digest
    time: str
    author: str
    seq: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "specimen_id": self.specimen_id, "commit": self.commit,
                "time": self.time, "author": self.author, "seq": self.seq}


def check_label_name(name: object) -> str:
    """Validate a label name: the rule of specimen ids (letters, digits, ``_``, ``-``, ``.``).

    Raises:
        InvalidInputError: saying what is wrong.
    """
    if isinstance(name, str) and name.startswith(LABEL_SIGIL):
        name = name[len(LABEL_SIGIL):]
    try:
        return validate_id(name)
    except InvalidIdError as exc:
        raise InvalidInputError(str(exc).replace("specimen id", "label name")) from None


def _from_event(e: Event) -> Label | None:
    name, commit = e.fields.get("name"), e.fields.get("commit")
    if not isinstance(name, str) or not isinstance(commit, str):
        return None
    return Label(name, e.subject, Digest(commit), e.time, e.author, e.seq)


def label_history(repo: Repository, name: str | None = None) -> list[Label]:
    """Every move of every label (or of ``name``), oldest first."""
    moves = [m for m in map(_from_event, read_events(repo, "label")) if m is not None]
    return [m for m in moves if name is None or m.name == name]


def labels(repo: Repository) -> dict[str, Label]:
    """Where each label points now: name -> its latest move, sorted by name."""
    current: dict[str, Label] = {}
    for move in label_history(repo):
        current[move.name] = move
    return dict(sorted(current.items()))


def set_label(repo: Repository, name: str, specimen_id: str) -> Label:
    """Point label ``name`` at a committed specimen, creating or moving it (journaled).

    Setting a label to where it points already records nothing.

    Args:
        repo: the repository.
        name: the label (``@`` in front is allowed and dropped).
        specimen_id: a committed specimen (an id, ``@label`` or a unique digest prefix).

    Returns:
        The label as it points now.

    Raises:
        InvalidInputError: for a malformed name, or a retired specimen.
        NotFoundError: if the specimen is not committed (labels point to sealed specimens).
    """
    name = check_label_name(name)
    sid = repo.lookup(specimen_id)
    digest = repo.resolve(sid)
    if sid in retirements(repo):
        raise InvalidInputError(f"specimen {sid} is retired; label a live specimen")
    now = labels(repo).get(name)
    if now is not None and (now.specimen_id, now.commit) == (sid, digest):
        return now
    event = record(repo, "label", sid, {"name": name, "commit": digest})
    label = _from_event(event)
    assert label is not None
    return label


def resolve_label(repo: Repository, name: str) -> str:
    """The specimen a label points to.

    Raises:
        NotFoundError: for an unknown label (with the closest names, and how to create one).
    """
    name = check_label_name(name)
    current = labels(repo)
    if name in current:
        return current[name].specimen_id
    close = difflib.get_close_matches(name, list(current), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(LABEL_SIGIL + c for c in close)}? " if close else ""
    raise NotFoundError(f"no label {LABEL_SIGIL}{name}; {hint}set one with "
                        f"`vault label {name} SPECIMEN_ID` (`vault label --list` shows them)")
