"""Working-directory commands: status (what is not sealed yet), rm (discard an uncommitted one)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ..errors import InvalidInputError
from .completion import SPECIMEN_ID
from .main import cli, echo_json, human_bytes, open_vault, vault_option
from .text import escape

if TYPE_CHECKING:
    from ..status import InProgress, StatusReport, UncommittedSpecimen


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (stable format).")
@vault_option
def status(as_json: bool, vault_path: str | None) -> None:
    """Show what is not sealed yet, what is running, and whether the catalog is current.

    Lists uncommitted specimens with what was added or changed since `vault new`, committed
    specimens with runs not sealed yet, runs, writers, commits and step-wise logs in progress,
    and the catalog's freshness, each with the command to run next. Writes nothing.

    \b
    Examples:
      vault status
      vault status --json
    """
    from ..status import status as vault_status

    report = vault_status(open_vault(vault_path))
    if as_json:
        echo_json(report.to_dict())
        return
    for line in render_status(report):
        click.echo(line)


def render_status(report: StatusReport) -> list[str]:
    """The plain ``vault status`` text: short groups, each with the next command to run."""
    lines: list[str] = []
    if report.uncommitted:
        lines.append("Uncommitted specimens (seal: vault commit ID; discard: vault rm ID):")
        for u in report.uncommitted:
            lines.extend(_uncommitted(u))
        lines.append("")
    if report.unsealed_runs:
        lines.append("Runs not sealed yet (seal: vault commit ID):")
        for s in report.unsealed_runs:
            if s.problem is not None:
                lines.append(f"  {s.specimen_id}: cannot list its runs: {escape(s.problem)}")
                continue
            lines.append(f"  {s.specimen_id}: {_count(len(s.runs), 'run')}")
            for r in s.runs:
                lines.append(f"    {escape(r.run_id):<28} {_count(r.files, 'file'):>10}  "
                             f"{human_bytes(r.bytes):>10}   -> {r.sealed_as}")
        lines.append("")
    if report.in_progress:
        lines.append("In progress:")
        lines.extend(f"  {p.specimen_id}: {_activity(p)}" for p in report.in_progress)
        lines.append("")
    if not (report.uncommitted or report.unsealed_runs or report.in_progress):
        lines.append("Nothing to commit: every specimen is sealed.")
    c = report.catalog
    lines.append("Catalog: up to date." if c.up_to_date
                 else f"Catalog: not up to date ({escape(c.reason)}); run `vault index`.")
    return lines


def _uncommitted(u: UncommittedSpecimen) -> list[str]:
    changes = [f"{c.path} {c.change}" for c in u.scaffold]
    added = (f"{_count(u.added_files, 'file')} added ({human_bytes(u.added_bytes)})"
             if u.added_files else "nothing added yet")
    out = [f"  {u.specimen_id}: {'; '.join([added, *changes])}"]
    for a in u.added:
        out.append(f"    {escape(a.path):<40} {_count(a.files, 'file'):>10}  "
                   f"{human_bytes(a.bytes):>10}")
    if u.problem is not None:
        out.append(f"    ! a commit would refuse it: {escape(u.problem)}")
    return out


def _activity(p: InProgress) -> str:
    name = escape(p.name or "")
    return {
        "run": "`vault run` in progress (.cas/run.lock is held)",
        "writing": "being written (.cas/write.lock is held by a writer)",
        "committing": "being committed or removed (.cas/write.lock is held exclusively)",
        "logging": f"step-wise log {name!r} is being written by a running process",
        "unfinished_log": (f"step-wise log {name!r} was left unfinished by a process that is "
                           f"gone; seal what it flushed: vault commit {p.specimen_id} --partial"),
    }.get(p.kind, p.kind)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@cli.command()
@click.argument("specimen_id", type=SPECIMEN_ID)
@click.option("-y", "--yes", is_flag=True, help="Remove without asking (required when not on a terminal).")
@vault_option
def rm(specimen_id: str, yes: bool, vault_path: str | None) -> None:
    """Remove an uncommitted specimen's working directory (its staged objects go to `vault gc`).

    Committed specimens are never removed (retire them: `vault retire ID --reason TEXT`), nor
    one that a `vault run`, a writer, a commit or a step-wise log is busy with. Asks for
    confirmation on a terminal; elsewhere --yes is required.

    \b
    Examples:
      vault rm 2024_12_19_false_start
      vault rm 2024_12_19_false_start --yes && vault gc --grace 0
    """
    from ..remove import check_removable, remove_specimen

    v = open_vault(vault_path)
    plan = check_removable(v, specimen_id)
    if not yes:
        if not _interactive():
            raise InvalidInputError(
                f"not removing {specimen_id} without confirmation: standard input is not a "
                f"terminal; pass --yes (vault rm {specimen_id} --yes)"
            )
        if not click.confirm(
                f"Remove uncommitted specimen {specimen_id} ({escape(plan.path)}: "
                f"{_count(plan.files, 'file')}, {human_bytes(plan.bytes)} on disk)? It was never "
                "committed, so this cannot be undone", default=False):
            click.echo("Nothing removed.")
            return
    done = remove_specimen(v, specimen_id)
    click.echo(f"Removed {specimen_id} ({_count(done.files, 'file')}, {human_bytes(done.bytes)} "
               "on disk); `vault gc` frees the objects it staged.")


def _interactive() -> bool:
    """Whether a person can answer a question: standard input is a terminal."""
    return sys.stdin.isatty()
