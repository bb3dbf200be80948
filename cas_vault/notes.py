"""Field notes: ``field_notes.md`` is the specimen's lab notebook until it is committed.

``vault note ID "text"`` appends a timestamped entry::

    ### 2024-12-19T10:00:00.000000Z

    text

After commit the notebook is sealed like every other file: notes are refused with an error
that says to record them in a new specimen (``vault new NEW_ID --parent ID``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import FileLock, write_replace
from .workdir import check_uncommitted, writing
from .commit import utc_now
from .errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["NOTES_NAME", "append_note"]

NOTES_NAME = "field_notes.md"
_MAX_NOTE = 1 << 20


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
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("the note is empty; write what you observed, e.g. vault note ID \"loss plateaus at 0.3\"")
    if len(text.encode()) > _MAX_NOTE:
        raise InvalidInputError("the note is over 1 MiB; store large text as a file in strata/")
    wd = vault.specimen_dir(specimen_id)
    vault.check_uncommitted(
        specimen_id,
        f"its field notes are sealed: record the note in a new specimen: `vault new "
        f"{specimen_id}_notes --parent {specimen_id} --domain D --method M`, then "
        f"`vault note {specimen_id}_notes TEXT`",
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
