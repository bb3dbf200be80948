"""Catalog commands: ``vault index`` and ``vault query``."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InvalidInputError, QueryInterruptedError
from .main import cli, open_vault, vault_option
from .text import escape


@cli.command()
@click.option("--rebuild", is_flag=True, help="Drop the catalog and rebuild it from the journal and objects.")
@click.option("--accept-rollback", is_flag=True,
              help="With --rebuild: rebuild even though the journal lost lines the catalog "
                   "witnessed (only after restoring a backup on purpose).")
@vault_option
def index(rebuild: bool, accept_rollback: bool, vault_path: str | None) -> None:
    """Bring vault.duckdb up to date; only commits not yet indexed are read.

    The catalog is derived data: deleting vault.duckdb loses nothing, the next
    `vault index` (or query) rebuilds it.

    If the journal no longer holds lines the catalog indexed (or the tip record beside it
    saw), nothing is rebuilt over them and the command exits 1: run `vault verify`.

    \b
    Examples:
      vault index
      vault index --rebuild
    """
    if accept_rollback and not rebuild:
        raise InvalidInputError("--accept-rollback only goes with --rebuild")
    from ..catalog import index

    v = open_vault(vault_path)
    r = index(v, rebuild=rebuild, accept_rollback=accept_rollback)
    what = "Rebuilt the catalog" if r.rebuilt else "Indexed"
    click.echo(f"{what}: {r.indexed:,} new commits, {r.total:,} specimens in {v.catalog_path} "
               f"({r.seconds:.2f} s)")
    if r.problems:  # information: the catalog is consistent, these values are just not in it
        shown = r.problems[:10]
        click.echo(f"{len(r.problems):,} catalog problem(s): metric values left NULL in `metrics` "
                   "because their type does not fit the column (SELECT * FROM catalog_problems):")
        for p in shown:
            click.echo(f"  {p.specimen_id}: {p.file}.{p.column} is {p.written_type}, "
                       f"the column is {p.catalog_type}")
        if len(r.problems) > len(shown):
            click.echo(f"  ... and {len(r.problems) - len(shown):,} more")


@cli.command()
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True, help="Output format (parquet needs --output).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the result to this file instead of standard output.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Cancel the query if it runs longer than this (exit 124).")
@vault_option
def query(sql: str, fmt: str, output: str | None, timeout: float | None, vault_path: str | None) -> None:
    """Run one read-only SQL SELECT over the catalog and print the result.

    Tables: catalog, lineage, objects, metrics, catalog_problems; views
    exp_<specimen_id> (quote ids with '-' or '.': "exp_my-id"); table macros
    ancestors(id), descendants(id). Queries read the catalog and the vault's own
    objects only: no other file, no network, no extensions. Ctrl-C cancels a
    running query (exit 130). See docs/catalog.md.

    \b
    Examples:
      vault query "SELECT specimen_id, domain, tags FROM catalog ORDER BY created DESC"
      vault query "SELECT specimen_id, arg_max(loss, step) AS final_loss FROM metrics GROUP BY 1"
      vault query "SELECT * FROM ancestors('2024_12_19_derived')" --format json
      vault query "SELECT * FROM metrics" --format parquet -o all_metrics.parquet
      vault query "SELECT count(*) FROM metrics" --timeout 30
    """
    from ..query import VaultQuery, render

    if fmt == "parquet" and output is None:
        raise InvalidInputError("--format parquet writes a binary file: add --output FILE.parquet")
    v = open_vault(vault_path)
    try:
        df = VaultQuery(v).search(sql, timeout=timeout)
    except KeyboardInterrupt:
        raise QueryInterruptedError(
            "the query was interrupted (Ctrl-C) and cancelled; nothing was written"
        ) from None
    if fmt == "parquet":
        df.write_parquet(Path(output))  # type: ignore[arg-type]
        click.echo(f"Wrote {df.height:,} rows to {output}", err=True)
        return
    text = render(df, fmt)
    if output is None:
        # A table is for people: control characters in cells are shown, not obeyed (csv and
        # json stay exact, for programs).
        click.echo(escape(text, keep_newlines=True) if fmt == "table" else text)
    else:
        Path(output).write_text(text + "\n", encoding="utf-8")
        click.echo(f"Wrote {df.height:,} rows to {output}", err=True)
