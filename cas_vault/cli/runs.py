"""Run commands: run, import-legacy, diff, plot, note (``vault commit --partial`` is in core)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .completion import SPECIMEN_ID
from .interrupt import watch_seal
from .main import cli, echo_json, open_vault, vault_option
from .progress import progress_bar
from .render import MORE, value_text
from .text import escape

if TYPE_CHECKING:
    from ..diff import Change

_MAX_SHOWN = 40


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("specimen_id", type=SPECIMEN_ID)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("-m", "--message", default="", help="Commit message (default: the command line).")
@click.option("--timeout", type=float, default=None, help="Kill the protocol after this many seconds.")
@vault_option
def run(specimen_id: str, args: tuple[str, ...], message: str, timeout: float | None,
        vault_path: str | None) -> None:
    """Run specimens/SPECIMEN_ID/protocol.py; if it exits 0, commit it with provenance.

    ARGS after SPECIMEN_ID (use `--` before options meant for the protocol) are passed to the
    protocol. Its output is shown as it runs and kept in the specimen as run.log. Provenance
    (Python, platform, host, package versions, git commit/dirty/diff digest, command, wall
    time, exit status, seeds set with cas_vault.seed_everything) goes under
    metadata.provenance. A failing protocol commits nothing and exits with status 3.

    \b
    Examples:
      vault run 2024_12_19_my_experiment
      vault run -m "lr sweep, 3e-4" 2024_12_19_lr_3e4 -- --lr 3e-4 --epochs 5
    """
    from ..run import run_protocol

    v = open_vault(vault_path)

    def output(chunk: bytes) -> None:
        click.echo(chunk, nl=False)

    args_list = list(args)
    if args_list[:1] == ["--"]:  # parsing stopped at SPECIMEN_ID, so click kept the `--`
        args_list = args_list[1:]
    watch_seal(v, specimen_id)
    result = run_protocol(v, specimen_id, args_list, message=message, output=output, timeout=timeout)
    p = result.provenance
    seeds = ", ".join(str(s["seed"]) for s in p["seeds"]) or "none recorded"
    git = p.get("git")
    code = "no git repository" if not git else (
        f"git {str(git['commit'])[:12]}{' (dirty)' if git['dirty'] else ''}")
    click.echo(f"Committed {specimen_id} {result.commit.digest}", err=True)
    click.echo(f"  {p['wall_time_s']:.2f} s, Python {p['python']['version']}, {code}, seeds: {seeds}",
               err=True)


@cli.command("import-legacy")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (stable format).")
@vault_option
def import_legacy(path: str, as_json: bool, vault_path: str | None) -> None:
    """Import experiments in the seed's layout (specimens/<id>/ with strata/ and runs/).

    specimens/<id>/ becomes specimen <id>; each runs/<YYYYMMDD_HHMMSS>/ becomes
    <id>.run_<YYYYMMDD_HHMMSS> with parent <id>. Problems (missing or corrupt manifests,
    domains outside the taxonomy) are listed and the rest is still imported; the exit status
    is then 1. No link below PATH is followed: a specimen or run holding a symbolic link or a
    special file (FIFO, socket, device) is not imported, and each such path is listed as
    refused. Importing again adds nothing.

    \b
    Example:
      vault import-legacy ~/code/experiments
    """
    from ..legacy import import_legacy

    v = open_vault(vault_path)
    with progress_bar("import-legacy", unit="specimen") as progress:
        report = import_legacy(v, path, progress=progress)
    if as_json:
        echo_json(report.to_dict())
    else:
        for item in report.imported:
            click.echo(f"imported  {item.specimen_id}  {item.commit[:16]}  "
                       f"from {escape(item.source)}")
        if report.already:
            click.echo(f"already imported: {len(report.already)} specimen(s), left as they are")
        for prob in report.problems:
            click.echo(f"problem   {escape(prob.source)}: {escape(prob.message)}", err=True)
        for ref in report.refused:
            kept = f" (kept {ref.specimen_id} out)" if ref.specimen_id else ""
            click.echo(f"refused   {escape(ref.path)}: {escape(ref.reason)}{kept}", err=True)
        refused = f", {len(report.refused)} path(s) refused" if report.refused else ""
        click.echo(f"{len(report.imported)} imported, {len(report.already)} already there, "
                   f"{len(report.problems)} problem(s){refused}")
    if report.problems:
        click.get_current_context().exit(1)


#: A value of `vault diff` is shown in full up to this width, then cut with "… (N more)".
_VALUE_WIDTH = 200
#: A change longer than this takes three lines (key, A's value, B's value), so the two values
#: sit one above the other, where a differing character is easy to see.
_LINE_WIDTH = 100


def _echo_changes(title: str, changes: list[Change]) -> None:
    """One line per differing key path (the changes are leaf values: no map is printed)."""
    if not changes:
        return
    click.echo(f"{title}:")
    for c in changes[:_MAX_SHOWN]:
        key = escape(c.key)
        if c.only_in == "b":
            click.echo(click.style(f"  + {key}: {value_text(c.b, _VALUE_WIDTH)}", fg="green"))
        elif c.only_in == "a":
            click.echo(click.style(f"  - {key}: {value_text(c.a, _VALUE_WIDTH)}", fg="red"))
        else:
            was, now = value_text(c.a, _VALUE_WIDTH), value_text(c.b, _VALUE_WIDTH)
            line = f"  ~ {key}: {was} -> {now}"
            if len(line) <= _LINE_WIDTH:
                click.echo(line)
            else:
                click.echo(f"  ~ {key}:")
                click.echo(click.style(f"      - {was}", fg="red"))
                click.echo(click.style(f"      + {now}", fg="green"))
    if len(changes) > _MAX_SHOWN:
        click.echo(f"  {MORE} ({len(changes) - _MAX_SHOWN} more; --json lists all)")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


@cli.command()
@click.argument("a", type=SPECIMEN_ID)
@click.argument("b", type=SPECIMEN_ID)
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON (stable format).")
@vault_option
def diff(a: str, b: str, as_json: bool, vault_path: str | None) -> None:
    """Show what differs between committed specimens A and B.

    Manifest and metadata (provenance included: package versions, git commit, seeds) and
    config, field by field: one line per differing key path, e.g.
    metadata.provenance.git.commit: 3f2a... -> 9c1b...; then files added/removed/changed by
    digest, and final/min/max of every numeric metric both have.

    \b
    Example:
      vault diff 2024_12_19_baseline 2024_12_19_lr_3e4
    """
    from ..diff import diff_specimens

    v = open_vault(vault_path)
    a, b = v.lookup(a), v.lookup(b)
    d = diff_specimens(v, a, b)
    if as_json:
        echo_json(d.to_dict())
        return
    click.echo(f"--- {a}\n+++ {b}")
    if d.identical:
        click.echo("manifest, config and files are identical")
    _echo_changes("manifest", d.manifest_fields)
    _echo_changes("config", d.config_fields)
    click.echo(f"files: {len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} changed, "
               f"{d.unchanged} unchanged")
    for p in d.added:
        click.echo(click.style(f"  + {escape(p)}", fg="green"))
    for p in d.removed:
        click.echo(click.style(f"  - {escape(p)}", fg="red"))
    for p in d.changed:
        click.echo(f"  ~ {escape(p)}")
    if d.metrics:
        click.echo("metrics (A -> B):")
        width = max(len(escape(m.metric)) for m in d.metrics)
        for m in d.metrics:
            mark = "~" if m.changed else "="
            where = "" if m.file == "strata/metrics.parquet" else f"  [{escape(m.file)}]"
            click.echo(
                f"  {mark} {escape(m.metric):<{width}}  final {_num(m.a['final'])} -> {_num(m.b['final'])}"
                f"  min {_num(m.a['min'])} -> {_num(m.b['min'])}"
                f"  max {_num(m.a['max'])} -> {_num(m.b['max'])}{where}"
            )


@cli.command()
@click.argument("metric")
@click.argument("specimen_ids", nargs=-1, type=SPECIMEN_ID)
@click.option("--where", default=None, help="SQL condition over the catalog, e.g. \"domain = 'training'\".")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="PNG file to write (default: METRIC.png).")
@click.option("--log-y", is_flag=True, help="Logarithmic y axis.")
@vault_option
def plot(metric: str, specimen_ids: tuple[str, ...], where: str | None, output: str | None,
         log_y: bool, vault_path: str | None) -> None:
    """Plot METRIC's training curve for each specimen, one labelled line each, as a PNG.

    \b
    Examples:
      vault plot loss 2024_12_19_baseline 2024_12_19_lr_3e4 -o loss.png
      vault plot loss --where "domain = 'training' AND list_contains(tags, 'gpt2')"
    """
    from ..plot import plot_metric

    v = open_vault(vault_path)
    result = plot_metric(v, metric, [v.lookup(s) for s in specimen_ids], where=where,
                         output=output, log_y=log_y)
    for sid, why in result.skipped.items():
        click.echo(f"skipped {sid}: {escape(why)}", err=True)
    click.echo(f"Wrote {escape(result.path)} ({len(result.plotted)} specimen(s): {', '.join(result.plotted)})")


@cli.command()
@click.argument("specimen_id", type=SPECIMEN_ID)
@click.argument("text")
@vault_option
def note(specimen_id: str, text: str, vault_path: str | None) -> None:
    """Add a timestamped note: to field_notes.md before commit, as an annotation after.

    A sealed specimen never changes: a note on it is an annotation, recorded in the journal
    with who and when, shown by `vault show`, queryable (`notes`) and written by `vault
    checkout`.

    \b
    Example:
      vault note 2024_12_19_my_experiment "loss plateaus after step 40k; try warmup"
    """
    from ..annotations import annotate
    from ..notes import append_note

    v = open_vault(vault_path)
    if v.refs.get(specimen_id) is not None:
        a = annotate(v, specimen_id, text)
        click.echo(f"Annotated {escape(specimen_id)} ({a.commit[:12]}) at {escape(a.time)}")
        return
    path = append_note(v, specimen_id, text)
    click.echo(f"Added a note to {escape(path)}")
