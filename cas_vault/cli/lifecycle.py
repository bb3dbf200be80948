"""Commands for what happens after sealing: ``label`` (movable names for sealed specimens) and
``retire`` (a journaled removal from view)."""

from __future__ import annotations

import click

from ..errors import InvalidInputError
from .main import cli, echo_json, open_vault, vault_option
from .text import escape


@cli.command()
@click.argument("name", required=False)
@click.argument("specimen_id", required=False)
@click.option("--list", "list_", is_flag=True, help="List the labels and where they point.")
@click.option("--history", is_flag=True, help="List every move of NAME (or of every label).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (stable format).")
@vault_option
def label(name: str | None, specimen_id: str | None, list_: bool, history: bool, as_json: bool,
          vault_path: str | None) -> None:
    """Point label NAME at a committed specimen (like a git tag that may move).

    Every move is recorded in the journal with who and when; `@NAME` then stands for the
    specimen wherever an id is read (`vault show @best`).

    \b
    Examples:
      vault label best 2024_12_19_lr_3e4
      vault show @best
      vault label --list
      vault label best --history
    """
    from ..labels import label_history, labels, set_label

    v = open_vault(vault_path)
    if list_ or history:
        if specimen_id is not None or (list_ and name is not None):
            raise InvalidInputError("--list takes no arguments, and --history at most NAME")
        rows = label_history(v, name) if history else list(labels(v).values())
        if as_json:
            echo_json([r.to_dict() for r in rows])
            return
        if not rows:
            click.echo("No labels yet. Set one with `vault label NAME SPECIMEN_ID`.")
        for r in rows:
            click.echo(f"@{r.name:<20} {escape(r.specimen_id):<40} {r.commit[:12]}  "
                       f"{escape(r.time)}  {escape(r.author)}")
        return
    if name is None or specimen_id is None:
        raise click.UsageError("give NAME and SPECIMEN_ID (or --list / --history)")
    moved = set_label(v, name, specimen_id)
    if as_json:
        echo_json(moved.to_dict())
        return
    click.echo(f"@{moved.name} -> {escape(moved.specimen_id)} ({moved.commit[:12]})")


@cli.command()
@click.argument("specimen_id")
@click.option("--reason", required=True, metavar="TEXT", help="Why (kept with the retirement).")
@click.option("--purge", is_flag=True,
              help="Remove its objects at the next gc, without the grace period (secrets).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (stable format).")
@vault_option
def retire(specimen_id: str, reason: str, purge: bool, as_json: bool,
           vault_path: str | None) -> None:
    """Retire a committed specimen: journaled, never a silent deletion.

    It leaves `vault log` and the catalog (`vault log --all` lists it with the reason); `vault
    gc` reclaims its objects that no live specimen needs after the grace period (with --purge:
    at the next gc). Its id is never reused. An uncommitted specimen is discarded with `vault
    rm` instead.

    \b
    Examples:
      vault retire 2024_12_19_bad_lr --reason "lr schedule bug; see 2024_12_20_fixed"
      vault retire 2024_12_19_leak --reason "API key in config.msgpack" --purge && vault gc
    """
    from ..retirement import retire as retire_specimen

    r = retire_specimen(open_vault(vault_path), specimen_id, reason, purge=purge)
    if as_json:
        echo_json(r.to_dict())
        return
    click.echo(f"Retired {escape(r.specimen_id)} ({r.commit[:12]})"
               + ("; purged: `vault gc` removes its objects now" if r.purge else
                  "; `vault gc` reclaims what nothing live needs after the grace period"))
