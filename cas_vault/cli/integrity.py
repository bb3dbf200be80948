"""Integrity commands: verify, gc."""

from __future__ import annotations

import click

from .completion import SPECIMEN_ID
from .main import cli, echo_json, human_bytes, open_vault, vault_option
from .progress import progress_bar
from .text import escape


@cli.command()
@click.argument("specimen_ids", nargs=-1, type=SPECIMEN_ID)
@click.option("--quick", is_flag=True, help="Check existence and sizes only (no re-hashing).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (stable format).")
@click.option("--witness", metavar="LINES:DIGEST", default=None,
              help="A journal tip an earlier verify printed, kept outside the vault: exit 1 "
                   "unless the journal still holds that line.")
@vault_option
def verify(
    specimen_ids: tuple[str, ...], quick: bool, as_json: bool, witness: str | None,
    vault_path: str | None,
) -> None:
    """Check that every committed byte is what was sealed; exit 1 on any problem.

    Re-hashes every object reachable from the refs (BLAKE3 must equal its name), checks sizes,
    parents, refs against the hash-chained journal, committed working directories and the
    catalog. Unreferenced objects, temp files and uncommitted work are reported as information
    (exit 0). With SPECIMEN_IDS, checks only those specimens.

    \b
    Examples:
      vault verify
      vault verify --quick
      vault verify 2024_12_19_my_experiment --json
      vault verify --witness 12:9a31ba84...   # the "journal tip" of an earlier run
    """
    from ..verify import verify as verify_vault

    v = open_vault(vault_path)
    ids = [v.lookup(s) for s in specimen_ids]
    with progress_bar("verify") as progress:
        report = verify_vault(v, ids, quick=quick, progress=progress, witness=witness)
    if as_json:
        echo_json(report.to_dict())
    else:
        for p in report.problems:
            where = " ".join(x for x in (p.specimen, p.path) if x) or p.file or ""
            click.echo(click.style(f"problem  {p.kind:<17}", fg="red") + f" {escape(where)}")
            click.echo(f"         {escape(p.message)}")
        for i in report.info:
            click.echo(f"info     {i.kind:<17} {escape(i.message)}")
        verdict = (click.style("OK", fg="green") if report.ok
                   else click.style(f"{len(report.problems)} problem(s)", fg="red"))
        click.echo(
            f"{report.mode} verify of {len(report.specimens)} specimen(s), "
            f"{report.objects_checked} object(s), {human_bytes(report.bytes_hashed)} hashed in "
            f"{report.seconds:.1f} s: {verdict}"
        )
        if report.journal_tip is not None:
            # Someone who removes the last journal lines can rewrite every record in the vault;
            # a copy of this line kept elsewhere cannot be.
            click.echo(f"journal tip: {report.journal_tip} (keep it elsewhere: "
                       "`vault verify --witness` with it later proves no line was removed)")
    if not report.ok:
        click.get_current_context().exit(1)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
@click.option("--grace", default="14d", show_default=True, metavar="DURATION",
              help="Keep unreachable objects younger than this (e.g. 0, 12h, 14d, 2w).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (stable format).")
@vault_option
def gc(dry_run: bool, grace: str, as_json: bool, vault_path: str | None) -> None:
    """Remove objects no specimen reaches, and temp files left by crashes.

    Only objects unreachable from every ref, journal line and working index, and older than
    the grace period, are removed, under a lock that commits respect: a running commit never
    loses an object. Refuses to delete anything if `vault verify` would find damaged commits.

    \b
    Examples:
      vault gc --dry-run
      vault gc --grace 0
    """
    from ..gc import gc as collect

    v = open_vault(vault_path)
    with progress_bar("gc", unit="object") as progress:
        report = collect(v, grace=grace, dry_run=dry_run, progress=progress)
    if as_json:
        echo_json(report.to_dict())
        return
    verb = "Would remove" if dry_run else "Removed"
    click.echo(
        f"{verb} {report.removed_objects} unreachable object(s) ({human_bytes(report.removed_bytes)}) "
        f"and {report.removed_temp} temp file(s) ({human_bytes(report.removed_temp_bytes)}); "
        f"{report.live_objects} live object(s) kept"
    )
    if report.recent_objects:
        click.echo(
            f"Kept {report.recent_objects} unreachable object(s) ({human_bytes(report.recent_bytes)}) "
            f"younger than --grace {grace}"
        )
    if report.kept_temp:
        click.echo(f"Kept {report.kept_temp} temp file(s) that a running process may still write")
    if report.unshared_objects:
        click.echo(
            f"{'Would give' if dry_run else 'Gave'} {report.unshared_objects} sealed object(s) an "
            "inode of their own: another path named them, so a write there would have changed them"
        )
