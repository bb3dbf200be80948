"""What an interrupted command tells the user: whether the specimen it was sealing is sealed.

A commit is sealed the moment its ref exists; what follows (finishing the journal line, the
catalog update) is finished by the next writer or by ``vault index``. So Ctrl-C during a commit
leaves one of two true stories: nothing was sealed (temp files only, which ``vault gc``
removes), or the specimen is sealed and only derived data may lag. A command that seals calls
:func:`watch_seal` first; the interrupt handler of the ``vault`` group asks
:func:`interrupt_message` which story is true by reading the ref.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..repository import Repository

__all__ = ["NOTHING_KEPT", "interrupt_message", "watch_seal"]

#: The message when nothing was sealed.
NOTHING_KEPT = "interrupted; nothing half-written was kept (temp files are cleaned by `vault gc`)"

# ``Context.meta`` is shared by a command's context and the group's, so the group's handler
# sees what the command registered.
_META_KEY = "cas_vault.sealing"


def watch_seal(vault: Repository, specimen_id: str) -> None:
    """Have an interrupt of the running command say whether ``specimen_id`` got sealed.

    Call it before sealing starts; a specimen that has a ref already is not watched (the
    command refuses to seal it again).

    Args:
        vault: the vault the command seals into.
        specimen_id: the specimen it seals.
    """
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    try:
        sealed_before = vault.refs.get(specimen_id) is not None
    except Exception:  # a malformed id or a corrupt ref: the command itself reports it
        return
    if not sealed_before:
        ctx.meta[_META_KEY] = (vault, specimen_id)


def interrupt_message(ctx: click.Context) -> str:
    """The truth about an interrupted command, for the ``vault`` group's Ctrl-C handler.

    Args:
        ctx: the group's context (its ``meta`` is shared with the command's).

    Returns:
        "interrupted after ID was sealed as DIGEST ..." if the watched specimen's ref exists
        now, else :data:`NOTHING_KEPT`.
    """
    watched = ctx.meta.get(_META_KEY)
    if watched is None:
        return NOTHING_KEPT
    vault, specimen_id = watched
    try:
        digest = vault.refs.get(specimen_id)
    except Exception:  # reading a ref cannot make an interrupted command fail differently
        digest = None
    if digest is None:
        return NOTHING_KEPT
    return (
        f"interrupted after {specimen_id} was sealed as {digest}; the commit stands. The "
        "catalog may lag (`vault index` catches up)"
    )
