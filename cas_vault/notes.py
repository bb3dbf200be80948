"""Notes: the lab notebook before a specimen is sealed, annotations after.

``vault note ID "text"`` on an uncommitted specimen appends a timestamped entry to its
``field_notes.md``::

    ### 2024-12-19T10:00:00.000000Z

    text

Once the specimen is sealed its notebook is sealed with it, so a later note becomes an
**annotation** instead, as git notes attach to a commit without changing it: a ``note`` event
in the journal (docs/format.md 5.4) naming the specimen's commit, with its text, author and
time (:mod:`cas_vault.annotations`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import FileLock, write_replace
from .workdir import check_uncommitted, writing
from .commit import utc_now
from .errors import InvalidInputError, NotFoundError
from .annotations import check_note_text

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["NOTES_NAME", "append_note"]

NOTES_NAME = "field_notes.md"


def append_note(vault: Repository, specimen_id: str, text: str) -> Path:
    """Append a timestamped entry to an uncommitted specimen's ``field_notes.md``.

    Args:
        vault: the vault.
        specimen_id: an uncommitted specimen.
        text: the note (Markdown), not empty.

    Returns:
        The notes file.

    Raises:
        InvalidInputError: empty or oversized text.
        ImmutableError: the specimen is committed (its notes are sealed).
        NotFoundError: no such specimen.
    """
    check_note_text(text)
    wd = vault.specimen_dir(specimen_id)
    vault.check_uncommitted(
        specimen_id,
        "its field notes are sealed: annotate it instead (`vault note "
        f"{specimen_id} TEXT` does, or vault.annotate({specimen_id!r}, text))",
    )
    if not wd.is_dir():
        raise NotFoundError(
            f"no specimen {specimen_id} in {vault.root}; create it with `vault new {specimen_id} "
            "--domain D --method M`"
        )
    path = wd / NOTES_NAME
    entry = f"### {utc_now()}\n\n{text.strip()}\n"
    # Concurrent notes must not lose each other: read-append-replace under a lock. The working
    # directory's writer lock keeps a commit from sealing the notes half-way, and the check for
    # a ref under it from appending to a specimen sealed meanwhile.
    with writing(wd), FileLock(vault.root / "locks" / f"notes.{specimen_id}.lock"):
        check_uncommitted(wd)
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = f"# Field notes: {specimen_id}\n"
        sep = "" if not current or current.endswith("\n\n") else ("\n" if current.endswith("\n") else "\n\n")
        write_replace(path, (current + sep + entry).encode("utf-8"))
    return path
