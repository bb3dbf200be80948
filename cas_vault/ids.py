"""Specimen ids: validated before they are ever joined into a path or a SQL identifier."""

from __future__ import annotations

import re

from .errors import InvalidIdError

__all__ = ["MAX_ID_LENGTH", "RUN_INFIX", "is_valid_id", "run_specimen_id", "validate_id"]

MAX_ID_LENGTH = 128
_ID_RE = re.compile(r"\A[A-Za-z0-9_.-]+\Z")
#: A sealed run ``R`` of specimen ``X`` is the specimen ``X.run_R`` (docs/format.md, "Runs").
RUN_INFIX = ".run_"


def validate_id(specimen_id: object) -> str:
    """Check that ``specimen_id`` is a safe specimen id.

    Ids are 1-128 ASCII letters, digits, ``_``, ``-`` and ``.``; they may not start with ``.`` or
    ``-`` (hidden files, option look-alikes) and may not contain ``..``. The seed's convention is
    ``YYYY_MM_DD_descriptor``.

    Args:
        specimen_id: the candidate.

    Returns:
        The id.

    Raises:
        InvalidIdError: saying what is wrong with it.
    """
    if not isinstance(specimen_id, str):
        raise InvalidIdError(f"specimen id must be a string, not {type(specimen_id).__name__}")
    shown = specimen_id if len(specimen_id) <= 60 else specimen_id[:57] + "..."
    hint = "use letters, digits, '_', '-' and '.', e.g. 2024_12_19_my_experiment"
    if not specimen_id:
        raise InvalidIdError(f"specimen id is empty; {hint}")
    if len(specimen_id) > MAX_ID_LENGTH:
        raise InvalidIdError(
            f"specimen id {shown!r} is {len(specimen_id)} characters, over the limit of "
            f"{MAX_ID_LENGTH}; choose a shorter id"
        )
    if not _ID_RE.match(specimen_id):
        bad = sorted({c for c in specimen_id if not re.match(r"[A-Za-z0-9_.-]", c)})
        shown_bad = ", ".join(repr(c) for c in bad[:5])
        raise InvalidIdError(f"specimen id {shown!r} contains {shown_bad}; {hint}")
    if ".." in specimen_id or specimen_id[0] in ".-":
        raise InvalidIdError(
            f"specimen id {shown!r} may not contain '..' or start with '.' or '-'; {hint}"
        )
    return specimen_id


def is_valid_id(name: str) -> bool:
    """True if ``name`` is an allowed specimen id (:func:`validate_id` would accept it)."""
    try:
        validate_id(name)
    except InvalidIdError:
        return False
    return True


def run_specimen_id(specimen_id: str, run_id: str) -> str:
    """The id under which run ``run_id`` of ``specimen_id`` is sealed: ``<id>.run_<run_id>``.

    Commits of runs made in the vault and runs brought in by ``vault import-legacy`` use this
    one mapping.

    Raises:
        InvalidIdError: if the result is not a valid id (e.g. longer than the limit).
    """
    return validate_id(f"{specimen_id}{RUN_INFIX}{run_id}")
