"""Annotations: notes added to a sealed specimen without changing it (as git notes are).

Each is a ``note`` event in the journal (docs/format.md 5.4) naming the specimen's commit, with
its text, author and time. They are append-only; ``vault show`` lists them, the catalog's
``notes`` table holds them, and ``vault checkout`` writes them beside the files
(:data:`ANNOTATIONS_NAME`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InvalidInputError
from .events import read_events, record

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["ANNOTATIONS_NAME", "Annotation", "annotate", "annotations", "check_note_text",
           "render_annotations"]

#: The file ``vault checkout`` writes a specimen's annotations to (when its tree has no file of
#: that name; else ``annotations.cas.md``).
ANNOTATIONS_NAME = "annotations.md"
_MAX_NOTE = 1 << 20


@dataclass(frozen=True)
class Annotation:
    """A note added to a sealed specimen.

    Attributes:
        specimen_id: the specimen.
        commit: its commit when the note was added.
        text: the note (Markdown).
        time: when (UTC, ISO 8601).
        author: who.
        seq: its journal line.
    """

    specimen_id: str
    commit: str
    text: str
    time: str
    author: str
    seq: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"specimen_id": self.specimen_id, "commit": self.commit, "text": self.text,
                "time": self.time, "author": self.author, "seq": self.seq}


def check_note_text(text: object) -> str:
    """A note's text, stripped.

    Raises:
        InvalidInputError: if it is empty or over 1 MiB.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("the note is empty; write what you observed, e.g. vault note ID \"loss plateaus at 0.3\"")
    if len(text.encode()) > _MAX_NOTE:
        raise InvalidInputError("the note is over 1 MiB; store large text as a file in strata/")
    return text.strip()


def annotate(repo: Repository, specimen_id: str, text: str) -> Annotation:
    """Add an annotation to a sealed specimen (journaled; the specimen does not change).

    Raises:
        InvalidInputError: empty or oversized text.
        NotFoundError: the specimen is not committed (write to its field notes instead).
    """
    text = check_note_text(text)
    digest = repo.resolve(specimen_id)
    e = record(repo, "note", specimen_id, {"commit": digest, "text": text})
    return Annotation(specimen_id, digest, text, e.time, e.author, e.seq)


def annotations(repo: Repository, specimen_id: str | None = None) -> list[Annotation]:
    """The annotations (of one specimen), oldest first."""
    out = []
    for e in read_events(repo, "note"):
        text, commit = e.fields.get("text"), e.fields.get("commit")
        if not isinstance(text, str) or not isinstance(commit, str):
            continue
        if specimen_id is None or e.subject == specimen_id:
            out.append(Annotation(e.subject, commit, text, e.time, e.author, e.seq))
    return out


def render_annotations(notes: list[Annotation]) -> str:
    """The Markdown ``vault checkout`` writes: one timestamped, authored entry per note."""
    parts = [f"# Annotations: {notes[0].specimen_id}\n"] if notes else []
    for n in notes:
        parts.append(f"\n### {n.time} by {n.author}\n\n{n.text}\n")
    return "".join(parts)
