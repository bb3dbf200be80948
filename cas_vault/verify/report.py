"""The result of a verify run: :class:`VerifyReport`, and the stable order of its problems."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..findings import PROBLEM_KINDS, Finding
from ..journal import JournalTip

__all__ = ["VerifyReport", "ordered_problems"]


@dataclass(frozen=True)
class VerifyReport:
    """The result of :func:`~cas_vault.verify.verify`.

    Attributes:
        mode: ``"full"`` (every byte re-hashed) or ``"quick"`` (existence and sizes).
        specimens: the committed specimens checked.
        problems: damage; empty when the vault is intact.
        info: garbage and work in progress.
        objects_checked: distinct objects checked (commits included).
        bytes_hashed: bytes read and hashed.
        seconds: wall time of the run.
        journal_tip: the journal's end as checked (None for an empty journal): keep it
            somewhere else, and ``vault verify --witness`` later proves no line was removed.
    """

    mode: str
    specimens: tuple[str, ...]
    problems: tuple[Finding, ...]
    info: tuple[Finding, ...]
    objects_checked: int
    bytes_hashed: int
    seconds: float
    journal_tip: JournalTip | None = None

    @property
    def ok(self) -> bool:
        """True if no problem was found (information items do not count)."""
        return not self.problems

    def kinds(self) -> set[str]:
        """The set of problem kinds found."""
        return {p.kind for p in self.problems}

    def to_dict(self) -> dict[str, Any]:
        """The stable ``vault verify --json`` form (schema in docs/integrity.md)."""
        return {
            "ok": self.ok, "mode": self.mode, "specimens": list(self.specimens),
            "objects_checked": self.objects_checked, "bytes_hashed": self.bytes_hashed,
            "seconds": round(self.seconds, 3),
            "problems": [p.to_dict() for p in self.problems],
            "info": [i.to_dict() for i in self.info],
            "journal_tip": str(self.journal_tip) if self.journal_tip else None,
        }


def ordered_problems(items: Iterable[Finding]) -> tuple[Finding, ...]:
    """The problems of a run without repeats, in the stable order reports show them.

    Args:
        items: the problems as the checks found them (two checks may find the same one).

    Returns:
        Each distinct problem once, sorted by kind (in :data:`PROBLEM_KINDS` order), then
        specimen, path and file.
    """
    return tuple(sorted(_dedupe(items), key=_problem_order))


def _problem_order(f: Finding) -> tuple[int, str, str, str]:
    # Stable output: by kind (in PROBLEM_KINDS order), then specimen, path and file.
    rank = PROBLEM_KINDS.index(f.kind) if f.kind in PROBLEM_KINDS else len(PROBLEM_KINDS)
    return rank, f.specimen or "", f.path or "", f.file or ""


def _dedupe(items: Iterable[Finding]) -> Iterator[Finding]:
    seen: set[Finding] = set()
    for f in items:
        if f not in seen:
            seen.add(f)
            yield f
