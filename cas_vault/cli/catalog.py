"""Catalog commands: ``vault index`` and ``vault query``."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InvalidInputError
from .main import cli, open_vault, vault_option


@cli.command()
@click.option("--rebuild", is_flag=True, help="Drop the catalog and rebuild it from the journal and objects.")
@vault_option
def index(rebuild: bool, vault_path: str | None) -> None:
    """Bring vault.duckdb up to date; only commits not yet indexed are read.

    The catalog is derived data: deleting vault.duckdb loses nothing, the next
    `vault index` (or query) rebuilds it.

    \b
    Examples:
      vault index
      vault index --rebuild
    """
    v = open_vault(vault_path)
    r = v.index(rebuild=rebuild)
    what = "Rebuilt the catalog" if r.rebuilt else "Indexed"
    click.echo(f"{what}: {r.indexed:,} new commits, {r.total:,} specimens in {v.catalog_path} "
               f"({r.seconds:.2f} s)")


@cli.command()
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True, help="Output format (parquet needs --output).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the result to this file instead of standard output.")
@vault_option
def query(sql: str, fmt: str, output: str | None, vault_path: str | None) -> None:
    """Run one read-only SQL SELECT over the catalog and print the result.

    Tables: catalog, lineage, objects, metrics; views exp_<specimen_id> (quote ids
    with '-' or '.': "exp_my-id"); table macros ancestors(id), descendants(id).
    See docs/catalog.md.

    \b
    Examples:
      vault query "SELECT specimen_id, domain, tags FROM catalog ORDER BY created DESC"
      vault query "SELECT specimen_id, arg_max(loss, step) AS final_loss FROM metrics GROUP BY 1"
      vault query "SELECT * FROM ancestors('2024_12_19_derived')" --format json
      vault query "SELECT * FROM metrics" --format parquet -o all_metrics.parquet
    """
    from ..query import render

    if fmt == "parquet" and output is None:
        raise InvalidInputError("--format parquet writes a binary file: add --output FILE.parquet")
    v = open_vault(vault_path)
    df = v.query(sql)
    if fmt == "parquet":
        df.write_parquet(Path(output))  # type: ignore[arg-type]
        click.echo(f"Wrote {df.height:,} rows to {output}", err=True)
        return
    text = render(df, fmt)
    if output is None:
        click.echo(text)
    else:
        Path(output).write_text(text + "\n", encoding="utf-8")
        click.echo(f"Wrote {df.height:,} rows to {output}", err=True)
