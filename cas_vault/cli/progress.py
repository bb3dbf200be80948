"""The one progress renderer of the CLI: a bar on standard error, only on a terminal.

Long commands (commit, checkout, verify, gc, import-legacy) hand the library a
:data:`cas_vault.progress.Progress` from :func:`progress_bar`. On a terminal it draws a tqdm bar
on stderr, created at the first report (an operation that reports nothing draws nothing) and
erased when the command's work ends, normally, on an error or on Ctrl-C, so the line is clean
for what the command prints next. When stderr is a pipe or a file, :func:`progress_bar` gives
None and the library does no progress work at all: logs and ``--json`` output never hold a bar.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..progress import Progress

__all__ = ["Bar", "progress_bar", "stderr_is_terminal"]

#: The size assumed for a terminal that reports none (a pseudo-terminal nobody sized): tqdm
#: would draw nothing in zero columns.
FALLBACK_SIZE = (80, 24)


def stderr_is_terminal() -> bool:
    """Whether standard error is a terminal (the only place a bar is drawn)."""
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False


class Bar:
    """A tqdm bar on stderr that follows ``progress(advance, total)`` calls.

    Args:
        desc: what the bar is counting, shown before it (the command's name).
        unit: ``"B"`` for bytes (scaled to KiB, MiB, ...), else the name of one item.
    """

    def __init__(self, desc: str, unit: str = "B") -> None:
        self.desc = desc
        self.unit = unit
        self.bar: Any = None

    def __call__(self, advance: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            cols, rows = _terminal_size()
            in_bytes = self.unit == "B"
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, unit_scale=in_bytes,
                            unit_divisor=1024, file=sys.stderr, leave=False, ncols=cols,
                            nrows=rows)
        elif total != self.bar.total:  # the total grows as an operation finds more work
            self.bar.total = total
            self.bar.refresh()
        self.bar.update(advance)

    def close(self) -> None:
        """Erase the bar (if one was drawn), leaving the cursor at the start of a clean line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _terminal_size() -> tuple[int, int]:
    """Columns and lines for a bar on stderr's terminal (:data:`FALLBACK_SIZE` if unknown).

    One column is left free, as tqdm does, so a full-width bar never wraps.
    """
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        size = os.terminal_size((0, 0))
    return ((size.columns or FALLBACK_SIZE[0]) - 1, size.lines or FALLBACK_SIZE[1])


@contextmanager
def progress_bar(desc: str, unit: str = "B") -> Iterator[Progress | None]:
    """A progress callback for the block: a :class:`Bar` on a terminal, else None.

    The bar is erased when the block exits, however it exits; print results after it.

    Args:
        desc: the bar's label.
        unit: ``"B"`` for bytes, else the name of one item (``"object"``, ``"specimen"``).

    Example::

        with progress_bar("gc", unit="object") as progress:
            report = collect(vault, progress=progress)
        click.echo(...)
    """
    if not stderr_is_terminal():
        yield None
        return
    bar = Bar(desc, unit)
    try:
        yield bar
    finally:
        bar.close()
