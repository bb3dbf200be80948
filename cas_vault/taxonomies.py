"""A vault's own taxonomy: the seed's table, plus the pairs the vault added, minus those it removed.

``vault taxonomy add DOMAIN METHOD`` and ``vault taxonomy remove DOMAIN METHOD`` each journal a
``taxonomy`` event (docs/format.md 5.4) about the vault (subject ``""``): ``op`` (``add`` or
``remove``), ``domain``, ``method`` and ``description``. The vault's taxonomy is the seed's
table (:data:`cas_vault.taxonomy.TAXONOMY`) with those events replayed in journal order by
:func:`replay`, the one place it is computed; every check of a pair (``vault new``, a commit's
manifest, ``import-legacy``) asks :func:`vault_taxonomy`, and the catalog's ``taxonomy`` table
is kept with :func:`replay` too.

Removing a pair is refused while something uses it: the manifest of a working directory (but
a retired specimen's) or a live committed specimen. It never touches what is sealed: commits
and ``vault verify`` never check a sealed manifest against the taxonomy again, so a specimen
sealed with a pair removed later still verifies, shows and is queried as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import taxonomy
from .commit import Commit
from .errors import AlreadyExistsError, InvalidInputError, NotFoundError, TaxonomyError, VaultError
from .events import Event, read_events, record
from .ids import validate_id
from .retirement import retirements
from .taxonomy import DOMAINS, METHODS, TAXONOMY, Table, check_name
from .workdir import read_manifest

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["KIND", "OPS", "Taxonomy", "TaxonomyChange", "TaxonomyPair", "add_pair",
           "change_from_event", "commit_table", "pair_users", "remove_pair", "replay",
           "seed_pairs", "taxonomy_history", "vault_taxonomy"]

#: The journal event kind.
KIND = "taxonomy"
#: What a taxonomy event does.
OPS = ("add", "remove")
_MAX_DESCRIPTION = 1024
#: How many users of a pair a refusal names.
_NAMED_USERS = 10


@dataclass(frozen=True)
class TaxonomyPair:
    """A valid domain/method pair.

    Attributes:
        domain: the domain.
        method: a method valid for it.
        description: what the method means in this domain.
        added_by: who added it; None for the seed's pairs.
        added_at: when (UTC, ISO 8601); None for the seed's pairs.
        seq: the journal line that added it; None for the seed's pairs.
    """

    domain: str
    method: str
    description: str
    added_by: str | None = None
    added_at: str | None = None
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"domain": self.domain, "method": self.method, "description": self.description,
                "added_by": self.added_by, "added_at": self.added_at, "seq": self.seq}


@dataclass(frozen=True)
class TaxonomyChange:
    """One journaled change of a vault's taxonomy.

    Attributes:
        op: ``add`` or ``remove``.
        domain: the domain.
        method: the method.
        description: the pair's description (``""`` for a removal).
        author: who made the change.
        time: when (UTC, ISO 8601).
        seq: its journal line.
    """

    op: str
    domain: str
    method: str
    description: str
    author: str
    time: str
    seq: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"op": self.op, "domain": self.domain, "method": self.method,
                "description": self.description, "author": self.author, "time": self.time,
                "seq": self.seq}


@dataclass(frozen=True)
class Taxonomy:
    """A vault's effective taxonomy and how it came to be.

    Attributes:
        pairs: the valid pairs: the seed's still valid, in the seed's order, then those added,
            in journal order.
        history: every change, oldest first.
    """

    pairs: tuple[TaxonomyPair, ...]
    history: tuple[TaxonomyChange, ...] = ()

    @property
    def table(self) -> dict[str, tuple[str, ...]]:
        """Domain -> its valid methods (the form :func:`cas_vault.taxonomy.check` takes)."""
        out: dict[str, tuple[str, ...]] = {}
        for p in self.pairs:
            out[p.domain] = (*out.get(p.domain, ()), p.method)
        return out

    def get(self, domain: str, method: str) -> TaxonomyPair | None:
        """The pair, if it is valid."""
        return next((p for p in self.pairs if (p.domain, p.method) == (domain, method)), None)

    def check(self, domain: str, method: str) -> None:
        """Check a pair.

        Raises:
            TaxonomyError: naming this vault's valid domains, methods and pairs (and who
                removed the pair, and when, if it was removed).
        """
        try:
            taxonomy.check(domain, method, self.table)
        except TaxonomyError as exc:
            last = next((c for c in reversed(self.history)
                         if (c.domain, c.method) == (domain, method)), None)
            if last is None or last.op != "remove":
                raise
            raise TaxonomyError(f"{domain}/{method} was removed from this vault's taxonomy on "
                                f"{last.time} by {last.author}; {exc}") from None

    def to_dict(self, history: bool = False) -> dict[str, Any]:
        """JSON form: ``domains`` (``{domain, description, methods}``), ``pairs`` and, with
        ``history``, ``history``."""
        out: dict[str, Any] = {
            "domains": [{"domain": d, "description": DOMAINS.get(d), "methods": list(methods)}
                        for d, methods in self.table.items()],
            "pairs": [p.to_dict() for p in self.pairs],
        }
        if history:
            out["history"] = [c.to_dict() for c in self.history]
        return out


def seed_pairs() -> list[TaxonomyPair]:
    """The seed's pairs (:data:`cas_vault.taxonomy.TAXONOMY`), described by their method."""
    return [TaxonomyPair(d, m, METHODS.get(m, "")) for d, methods in TAXONOMY.items()
            for m in methods]


def replay(changes: Iterable[TaxonomyChange],
           start: Iterable[TaxonomyPair] | None = None) -> list[TaxonomyPair]:
    """Apply taxonomy changes, in order, to a list of pairs: the effective taxonomy.

    An ``add`` of a pair that is valid already, and a ``remove`` of one that is not, change
    nothing (two people adding the same pair at once both succeed; the first one counts).

    Args:
        changes: the changes, in journal order.
        start: the pairs before them (default: the seed's).

    Returns:
        The valid pairs: those of ``start`` still valid, in order, then the added ones.
    """
    pairs = {(p.domain, p.method): p for p in (seed_pairs() if start is None else start)}
    for c in changes:
        key = (c.domain, c.method)
        if c.op == "add" and key not in pairs:
            pairs[key] = TaxonomyPair(c.domain, c.method, c.description, c.author, c.time, c.seq)
        elif c.op == "remove":
            pairs.pop(key, None)
    return list(pairs.values())


def change_from_event(e: Event) -> TaxonomyChange:
    """The change a ``taxonomy`` event records.

    Raises:
        InvalidInputError: if its fields are not those of docs/format.md 5.4 (``vault verify``
            reports it as ``bad_event``; readers leave it out).
    """
    op, domain, method = e.fields.get("op"), e.fields.get("domain"), e.fields.get("method")
    description = e.fields.get("description")
    if e.kind != KIND or e.subject != "":
        raise InvalidInputError(f"a {e.kind!r} event about {e.subject!r} is no taxonomy change")
    if op not in OPS:
        raise InvalidInputError(f"taxonomy event op must be one of {', '.join(OPS)}, not {op!r}")
    if not isinstance(domain, str) or not isinstance(method, str):
        raise InvalidInputError("taxonomy event domain and method must be strings")
    if not isinstance(description, str):
        raise InvalidInputError("taxonomy event description must be a string")
    return TaxonomyChange(op, domain, method, description, e.author, e.time, e.seq)


def taxonomy_history(repo: Repository) -> list[TaxonomyChange]:
    """Every change of the vault's taxonomy, oldest first (unreadable events left out)."""
    out = []
    for e in read_events(repo, KIND):
        try:
            out.append(change_from_event(e))
        except InvalidInputError:
            continue
    return out


def vault_taxonomy(repo: Repository) -> Taxonomy:
    """The vault's effective taxonomy: the seed's table with its changes replayed.

    A vault whose journal holds no taxonomy event has the seed's; finding that out scans the
    journal's bytes without parsing them.
    """
    history = taxonomy_history(repo)
    return Taxonomy(tuple(replay(history)), tuple(history))


def commit_table(repo: Repository, run_of: str | None = None) -> Table:
    """The pairs a commit may carry: the vault's taxonomy; for a run of a sealed specimen, also
    the pair that specimen was sealed with (a sealed manifest is never checked again).

    Args:
        repo: the repository.
        run_of: the sealed specimen whose run is being sealed, if it is a run.
    """
    table = vault_taxonomy(repo).table
    if run_of is None:
        return table
    try:
        sealed = repo.get(run_of).manifest
    except VaultError:
        return table  # the run's own check decides; verify reports the damage
    if sealed.method not in table.get(sealed.domain, ()):
        table[sealed.domain] = (*table.get(sealed.domain, ()), sealed.method)
    return table


def pair_users(repo: Repository, domain: str, method: str) -> dict[str, str]:
    """What uses a pair: live committed specimens and working directories whose manifest
    names it. A retired specimen's commit and working directory do not count; a manifest or
    commit that cannot be read does not either (``vault verify`` / ``vault status`` report it).

    Returns:
        specimen id -> ``"committed"`` or ``"working directory"``, sorted by id.
    """
    retired = retirements(repo)
    users: dict[str, str] = {}
    for sid, digest in repo.refs.all().items():
        if sid in retired:
            continue
        try:
            m = Commit.from_bytes(repo.objects.get(digest, verify=False)).manifest
        except (VaultError, OSError):
            continue
        if (m.domain, m.method) == (domain, method):
            users[sid] = "committed"
    try:
        entries = list(os.scandir(repo.specimens_dir))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if entry.name in users or entry.name in retired or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            validate_id(entry.name)  # not a temp dir of `vault new` or `vault rm`
            raw = read_manifest(repo.specimen_dir(entry.name))
        except (VaultError, OSError):
            continue
        if (raw.get("domain"), raw.get("method")) == (domain, method):
            users[entry.name] = "working directory"
    return dict(sorted(users.items()))


def _check_description(description: object) -> str:
    if not isinstance(description, str):
        raise InvalidInputError(f"description must be a string, not {type(description).__name__}")
    if len(description) > _MAX_DESCRIPTION or any(ord(c) < 32 or ord(c) == 127
                                                    for c in description):
        raise InvalidInputError(f"description must be one line of at most {_MAX_DESCRIPTION} "
                                "printable characters")
    return description.strip()


def add_pair(repo: Repository, domain: str, method: str,
             description: str | None = None) -> TaxonomyChange:
    """Allow a domain/method pair in this vault (journaled): a new domain, or a method that is
    new to the domain.

    Args:
        repo: the repository.
        domain: the domain (:data:`cas_vault.taxonomy.NAME_RULE`).
        method: the method (the same rule).
        description: what the method means in this domain (default: the seed's description
            of the method, if it is one of the seed's, else empty).

    Returns:
        The change.

    Raises:
        InvalidInputError: for a name outside the rule or a bad description.
        AlreadyExistsError: if the pair is valid already (nothing is journaled).
    """
    check_name("domain", domain)
    check_name("method", method)
    description = _check_description(METHODS.get(method, "") if description is None
                                     else description)
    existing = vault_taxonomy(repo).get(domain, method)
    if existing is not None:
        since = ("one of the seed's pairs" if existing.added_by is None else
                 f"added by {existing.added_by} on {existing.added_at}")
        raise AlreadyExistsError(f"{domain}/{method} is in this vault's taxonomy already "
                                 f"({since}); nothing changed")
    e = record(repo, KIND, "", {"op": "add", "domain": domain, "method": method,
                                "description": description})
    return change_from_event(e)


def remove_pair(repo: Repository, domain: str, method: str) -> TaxonomyChange:
    """Stop allowing a domain/method pair in this vault (journaled).

    Sealed specimens are never checked again, so those sealed with the pair stay valid.

    Args:
        repo: the repository.
        domain: the domain.
        method: the method.

    Returns:
        The change.

    Raises:
        InvalidInputError: for a name outside the rule, or a pair in use (:func:`pair_users`,
            naming them); nothing is journaled.
        NotFoundError: if the pair is not valid in this vault (listing those that are).
    """
    check_name("domain", domain)
    check_name("method", method)
    current = vault_taxonomy(repo)
    if current.get(domain, method) is None:
        raise NotFoundError(f"{domain}/{method} is not in this vault's taxonomy; its pairs: "
                            f"{taxonomy.describe_pairs(current.table)}")
    users = pair_users(repo, domain, method)
    if users:
        named = ", ".join(f"{sid} ({how})" for sid, how in list(users.items())[:_NAMED_USERS])
        more = f" and {len(users) - _NAMED_USERS} more" if len(users) > _NAMED_USERS else ""
        raise InvalidInputError(
            f"{domain}/{method} is in use by {len(users)} specimen(s): {named}{more}; retire "
            "committed ones (`vault retire`) and discard uncommitted ones (`vault rm`) first, "
            "or keep the pair; nothing changed")
    e = record(repo, KIND, "", {"op": "remove", "domain": domain, "method": method,
                                "description": ""})
    return change_from_event(e)
