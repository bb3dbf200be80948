"""Shell completion of specimen ids: ``vault show 2024_<TAB>``.

Click completes commands and options itself; an argument typed :data:`SPECIMEN_ID` also
completes the ids of the vault the command would open (``--vault``, else ``$CAS_VAULT_DIR``,
else the nearest vault above the current directory): committed specimens and working
directories, each with a word saying which (zsh and fish show it). README, "Shell completion",
says how to turn it on.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem

__all__ = ["SPECIMEN_ID", "SpecimenIdType"]


class SpecimenIdType(click.ParamType):
    """A specimen id (or anything :meth:`~cas_vault.repository.Repository.lookup` takes).

    The value is passed on as typed: the command looks it up, so that errors come from the
    library with its advice. Only completion is added.
    """

    name = "id"

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str,
    ) -> list[CompletionItem]:
        """Ids starting with ``incomplete`` in the vault the command line names.

        Completion runs on every Tab press, so it never fails loudly: a missing or unreadable
        vault (or anything else) gives no suggestions rather than a traceback in the prompt.
        """
        try:
            from ..names import known_ids
            from .main import open_vault

            repo = open_vault(_vault_path(ctx))
            return [CompletionItem(sid, help="committed" if committed else "not committed")
                    for sid, committed in known_ids(repo, incomplete).items()]
        except Exception:  # noqa: BLE001 - see the docstring
            return []


def _vault_path(ctx: click.Context) -> Any:
    """The ``--vault`` typed so far: the command's own, else the group's, else None.

    While completing, click parses the words already typed but runs no callback, so the
    value is in the contexts' ``params``, not in ``obj`` where the commands find it.
    """
    for c in (ctx, ctx.find_root()):
        if c.params.get("vault_path"):
            return c.params["vault_path"]
    return None


#: The type of every argument and option that names a specimen.
SPECIMEN_ID = SpecimenIdType()
