"""``vault taxonomy``: the vault's domain/method pairs, and ``add`` / ``remove`` to change them."""

from __future__ import annotations

import click

from .main import cli, echo_json, open_vault, vault_option
from .text import escape


@cli.group(invoke_without_command=True)
@click.option("--history", is_flag=True,
              help="Also list every pair added or removed, by whom and when.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (stable format).")
@vault_option
@click.pass_context
def taxonomy(ctx: click.Context, history: bool, as_json: bool, vault_path: str | None) -> None:
    """Show the vault's taxonomy: its domains and the methods valid for each.

    Every vault starts with the seed's pairs; `vault taxonomy add` and `vault taxonomy remove`
    change them (journaled, with who and when). `vault new` and `vault commit` accept exactly
    these pairs; specimens sealed with a pair removed later stay valid.

    \b
    Examples:
      vault taxonomy
      vault taxonomy --history
      vault taxonomy add vision segmentation --description "Per-pixel labelling"
      vault taxonomy remove benchmarking ablation_study
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj["vault_path"] = vault_path  # `vault taxonomy --vault V add ...` reaches `add`
        if history or as_json:
            raise click.UsageError("--history and --json go with `vault taxonomy` alone; "
                                   "`add` and `remove` take --json after their arguments")
        return
    from ..taxonomies import vault_taxonomy
    from ..taxonomy import DOMAINS

    t = vault_taxonomy(open_vault(vault_path))
    if as_json:
        echo_json(t.to_dict(history=history))
        return
    if not t.pairs:
        click.echo("No pairs: `vault taxonomy add DOMAIN METHOD` adds one.")
    by_domain: dict[str, list[str]] = {}
    for p in t.pairs:
        where = "" if p.added_by is None else f"  (added by {p.added_by} {p.added_at})"
        by_domain.setdefault(p.domain, []).append(
            f"  {p.method:<22} {p.description}{where}".rstrip())
    for domain, lines in by_domain.items():
        click.echo(escape(f"{domain:<24} {DOMAINS.get(domain, '')}".rstrip()))
        for line in lines:
            click.echo(escape(line))
    if history:
        click.echo("\nHistory:" if t.history else
                   "\nHistory: no changes; these are the seed's pairs.")
        for c in t.history:
            sign = "+" if c.op == "add" else "-"
            click.echo(escape(f"{c.time}  {sign} {c.domain}/{c.method}  by {c.author}"
                              + (f"  {c.description!r}" if c.description else "")))


@taxonomy.command("add")
@click.argument("domain")
@click.argument("method")
@click.option("--description", metavar="TEXT", default=None,
              help="What the method means in this domain (default: the seed's, for its methods).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (stable format).")
@vault_option
def add(domain: str, method: str, description: str | None, as_json: bool,
        vault_path: str | None) -> None:
    """Allow the pair DOMAIN/METHOD in this vault (a new domain, or a method new to it).

    Names are 1-64 lowercase letters, digits and underscores, starting with a letter. The
    change is journaled with who and when; adding a pair the vault has is refused.

    \b
    Examples:
      vault taxonomy add vision segmentation --description "Per-pixel labelling"
      vault taxonomy add benchmarking fine_tuning
    """
    from ..taxonomies import add_pair

    change = add_pair(open_vault(vault_path), domain, method, description)
    if as_json:
        echo_json(change.to_dict())
        return
    click.echo(escape(f"Added {change.domain}/{change.method}; `vault new ID --domain "
                      f"{change.domain} --method {change.method}` accepts it now"))


@taxonomy.command("remove")
@click.argument("domain")
@click.argument("method")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (stable format).")
@vault_option
def remove(domain: str, method: str, as_json: bool, vault_path: str | None) -> None:
    """Stop allowing the pair DOMAIN/METHOD in this vault.

    Refused while a working directory or a live (not retired) committed specimen uses it.
    Specimens sealed with it stay valid: sealed manifests are never checked again.

    \b
    Examples:
      vault taxonomy remove benchmarking ablation_study
    """
    from ..taxonomies import remove_pair

    change = remove_pair(open_vault(vault_path), domain, method)
    if as_json:
        echo_json(change.to_dict())
        return
    click.echo(escape(f"Removed {change.domain}/{change.method}; `vault new` and `vault commit` "
                      "refuse it now"))
