"""Names people type: what specimen a word on the command line means.

A committed specimen can be named by its id or by the first characters of its commit digest,
as git takes an abbreviated hash (``vault show 9a31ba84``). :func:`lookup` is the one place
that decides, in order, what a typed name refers to; every reader of a committed specimen
goes through it (via :meth:`cas_vault.repository.Repository.lookup`), while
:meth:`~cas_vault.repository.Repository.resolve` stays exact for the seal pipeline and the
features, which hold ids, not words people typed.

A name that means nothing is answered with the closest ids (``did you mean ...?``) and the
advice of :meth:`~cas_vault.repository.Repository.resolve`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from .errors import InvalidInputError, NotFoundError
from .ids import is_valid_id, validate_id
from .journal import decodable
from .labels import LABEL_SIGIL, resolve_label

if TYPE_CHECKING:
    from .digest import Digest
    from .repository import Repository

__all__ = ["MIN_PREFIX", "close_ids", "digest_prefix_match", "is_digest_prefix", "known_ids",
           "lookup"]

#: Fewest hex characters taken as a commit digest prefix: shorter ones match too much by chance
#: (as git's default minimum of 4).
MIN_PREFIX = 4
_PREFIX_RE = re.compile(r"\A[0-9a-f]{%d,64}\Z" % MIN_PREFIX)
#: Candidates an ambiguous prefix lists, and close ids a miss suggests.
_MAX_LISTED = 10
_MAX_SUGGESTED = 3
#: difflib's similarity ratio below which an id is not suggested.
_CLOSE_CUTOFF = 0.6
#: Digest characters shown beside a candidate (more if the candidates need them to differ).
_SHOWN_DIGEST = 12


def lookup(repo: Repository, text: str) -> str:
    """Return the id of the committed specimen that ``text`` names.

    The resolution order, in one place (a new kind of name is added here):

    0. ``@name`` is a label (:mod:`cas_vault.labels`): the specimen it points to now.
    1. ``text`` is a valid id whose ref exists (one read, nothing listed), or is damaged, or
       was deleted while the journal records the id: that id. A damaged specimen is still the
       one meant; its reader (show, log, verify) reports the damage and its repair.
    2. ``text`` is 4 to 64 lowercase hex characters that begin exactly one commit digest a ref
       holds: that ref's specimen.
    3. Otherwise nothing: the error says whether the id is merely uncommitted (``vault commit
       ID``) or unknown, with the closest ids.

    Args:
        repo: the vault.
        text: what the user typed.

    Returns:
        A specimen id that is committed (or whose ref is damaged: see 1.).

    Raises:
        InvalidIdError: ``text`` is not a valid specimen id (nor, then, a digest prefix).
        InvalidInputError: ``text`` begins several commit digests; the message lists them.
        NotFoundError: ``text`` names no committed specimen; the message says what to do.
    """
    if isinstance(text, str) and text.startswith(LABEL_SIGIL):
        return resolve_label(repo, text)  # 0. a label: where it points now
    validate_id(text)  # before ``text`` is ever joined into a path
    try:
        if repo.refs.get(text) is not None:
            return text
    except InvalidInputError:
        return text  # a corrupt ref: the id is right, the reader says what is wrong
    if _journaled(repo, text):
        return text  # a deleted ref: as above
    if is_digest_prefix(text):
        found = digest_prefix_match(text, repo.refs.all())
        if found is not None:
            return found
    if repo.specimen_dir(text).is_dir():
        raise NotFoundError(
            f"specimen {text} is not committed yet; seal it with `vault commit {text}`"
        )
    what = f"no specimen {text}"
    if is_digest_prefix(text):
        what += " and no commit digest starting with it"
    close = close_ids(text, known_ids(repo))
    hint = f"; did you mean {_or(close)}?" if close else ";"
    raise NotFoundError(f"{what} in {repo.root}{hint} `vault log` lists committed specimens")


def is_digest_prefix(text: str) -> bool:
    """Whether ``text`` can be a commit digest prefix: 4 to 64 lowercase hex characters."""
    return bool(_PREFIX_RE.match(text))


def digest_prefix_match(prefix: str, refs: Mapping[str, Digest]) -> str | None:
    """The one specimen whose commit digest begins with ``prefix``, or None if no ref's does.

    Args:
        prefix: lowercase hex characters.
        refs: specimen id -> commit digest (:meth:`cas_vault.refs.RefStore.all`).

    Raises:
        InvalidInputError: if several specimens' digests begin with it; the message lists them
            (at most 10) with enough of each digest to tell them apart.
    """
    matches = sorted((sid, d) for sid, d in refs.items() if d.startswith(prefix))
    if not matches:
        return None
    if len(matches) == 1:
        return matches[0][0]
    width = _SHOWN_DIGEST
    while width < 64 and len({d[:width] for _, d in matches}) < len(matches):
        width += 1
    listed = ", ".join(f"{sid} ({d[:width]})" for sid, d in matches[:_MAX_LISTED])
    more = f" and {len(matches) - _MAX_LISTED} more" if len(matches) > _MAX_LISTED else ""
    raise InvalidInputError(
        f"commit digest prefix {prefix} is ambiguous: it begins the commits of {len(matches)} "
        f"specimens: {listed}{more}; type more characters of the digest, or the specimen id"
    )


def close_ids(text: str, ids: Iterable[str]) -> list[str]:
    """The ids most like ``text`` (a typo's likely meaning), best first, at most 3.

    Args:
        text: what the user typed.
        ids: the ids to choose from (repeats are ignored).
    """
    return difflib.get_close_matches(text, sorted(set(ids)), n=_MAX_SUGGESTED,
                                     cutoff=_CLOSE_CUTOFF)


def _journaled(repo: Repository, specimen_id: str) -> bool:
    """Whether a journal line names ``specimen_id``: it was sealed, even if its ref is gone.

    Every line is about a sealed specimen (its ref's creation, or an event about it), so any
    line naming the id will do. Read only when the ref is missing, which is the slow path.
    """
    try:
        data = repo.refs.journal.read_bytes()
    except FileNotFoundError:
        return False
    return any(e.specimen_id == specimen_id for e in decodable(data))


def known_ids(repo: Repository, prefix: str = "") -> dict[str, bool]:
    """Every id a user may mean: committed specimens and working directories.

    Lists ``refs/`` and ``specimens/`` (for suggestions and shell completion, never for an
    exact lookup).

    Args:
        repo: the vault.
        prefix: only ids that start with it.

    Returns:
        id -> whether it is committed (has a ref), sorted by id.
    """
    found = dict.fromkeys((n for n in repo.refs.names(prefix) if is_valid_id(n)), True)
    try:
        entries = list(os.scandir(repo.specimens_dir))
    except FileNotFoundError:
        entries = []
    for e in entries:
        if e.name.startswith(prefix) and e.name not in found and is_valid_id(e.name) and e.is_dir():
            found[e.name] = False
    return dict(sorted(found.items()))


def _or(items: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"
