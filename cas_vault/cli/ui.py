"""``vault ui``: serve the read-only web page."""

from __future__ import annotations

import click

from .main import cli, open_vault, vault_option
from .text import escape


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="TCP port to listen on (default 8600; 0 picks a free one).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on. Anything but 127.0.0.1/localhost lets other "
                   "machines read the vault: only with care.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the web browser.")
@vault_option
def ui(port: int | None, host: str, open_browser: bool, vault_path: str | None) -> None:
    """Browse the vault in a web browser: specimens, compare curves, SQL. Read-only.

    Serves on http://127.0.0.1:8600/ until Ctrl-C. Pages: the specimens table (sort, filter,
    a SQL WHERE over `catalog`), each specimen (manifest, provenance, notes, files, lineage,
    runs, tensors, spectroscopy), compare (curves overlaid at full resolution, config and
    provenance diff) and SQL (the same sandbox as `vault query`, CSV/Parquet download).
    Specimens being logged update live.

    \b
    Examples:
      vault ui --open
      vault ui --port 0
    """
    from ..ui.server import DEFAULT_PORT, is_loopback, serve

    repo = open_vault(vault_path)
    if not is_loopback(host):
        click.echo(f"warning: listening on {escape(host)}: anyone who can reach this machine "
                   "can read every specimen in the vault (there is no login)", err=True)

    def ready(url: str) -> None:
        click.echo(f"Serving {escape(str(repo.root))} read-only at {url}  (Ctrl-C to stop)")

    try:
        serve(repo, host=host, port=DEFAULT_PORT if port is None else port,
              open_browser=open_browser, on_ready=ready)
    except KeyboardInterrupt:
        # Ctrl-C is how a server is stopped, not a failure: the server has shut down cleanly.
        click.echo("Stopped.")
