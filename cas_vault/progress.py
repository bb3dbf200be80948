"""How long operations report progress: the :data:`Progress` callback.

Commit, checkout, verify, gc and import-legacy each take ``progress: Progress | None = None``
and call it as their work advances; the library never draws anything (the CLI turns the calls
into a bar on a terminal, :mod:`cas_vault.cli.progress`). Each operation says in its docstring
what it counts:

=================  ===============================================================
operation          unit
=================  ===============================================================
commit             bytes of working files sealed (copied, or reused when unchanged)
checkout           bytes copied out and verified
verify             bytes hashed
gc                 objects in ``objects/`` decided on (kept or removed)
import-legacy      specimen directories done (imported or not), each with its runs
=================  ===============================================================

The contract, for every operation: ``progress(advance, total)`` with ``advance >= 0``; the
advances add up to ``total`` once the operation succeeds; ``total`` never shrinks, and grows
only when the operation finds more work as it goes (verify queues objects, then working files;
a commit lists each run's files when it reaches that run). An operation that raises stops
calling it wherever it was. Calls come from one thread at a time, though not necessarily the
caller's (verify hashes in worker threads). Passing None costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

__all__ = ["Progress", "Tally", "counted"]

T = TypeVar("T")

#: ``progress(advance, total)``: ``advance`` units of work just finished out of ``total``.
Progress = Callable[[int, int], None]


class Tally:
    """Reports to a :data:`Progress` for an operation that learns its total part by part.

    Args:
        progress: the callback to report to.
    """

    __slots__ = ("progress", "total")

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.total = 0

    def grow(self, n: int) -> None:
        """Add ``n`` units to the total: a part's size became known."""
        self.total += n

    def advance(self, n: int) -> None:
        """Report ``n`` more units done."""
        self.progress(n, self.total)


def counted(items: Sequence[T], progress: Progress | None) -> Iterable[T]:
    """Loop over ``items``, reporting one unit done each time the loop body finishes one.

    The report for an item comes when the loop asks for the next one (or ends), so an item
    whose body raises or breaks out is not counted. With ``progress`` None, ``items`` itself
    is returned: the loop pays nothing.

    Args:
        items: what the loop goes over; ``len(items)`` is the total.
        progress: the callback, or None.
    """
    if progress is None:
        return items
    return _counting(items, progress)


def _counting(items: Sequence[T], progress: Progress) -> Iterator[T]:
    total = len(items)
    for item in items:
        yield item
        progress(1, total)
