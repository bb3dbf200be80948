"""Core commands: init, new, commit, log, show, checkout, demo."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..digest import is_digest
from ..errors import IntegrityError
from .completion import SPECIMEN_ID
from .main import cli, echo_json, human_bytes, open_vault, vault_option
from .interrupt import watch_seal
from .progress import progress_bar
from .render import MORE, map_lines, summary_rows
from .text import escape

if TYPE_CHECKING:
    from ..commit import TreeEntry
    from ..repository import LogEntry
    from ..findings import Finding
    from ..tensors import TensorSummary


def _split_tags(value: str | None) -> list[str]:
    return [t for t in (value or "").split(",") if t.strip()]


@cli.command()
@click.argument("path", required=False, default=".", type=click.Path(file_okay=False))
def init(path: str) -> None:
    """Create an empty vault at PATH (default: the current directory).

    \b
    Example:
      vault init ~/experiments-vault
    """
    from ..repository import Repository

    v = Repository.init(path)
    click.echo(f"Initialized empty vault in {v.root}")


@cli.command()
@click.argument("specimen_id")
@click.option("--domain", required=True, help="Taxonomy domain, e.g. interpretability.")
@click.option("--method", required=True, help="Method valid for the domain, e.g. sae_analysis.")
@click.option("--tags", default=None, help="Comma-separated tags, e.g. gpt2,layer_12.")
@click.option("--model", default=None, help="Model studied, e.g. gpt2-small.")
@click.option("--parent", "parents", multiple=True, type=SPECIMEN_ID,
              help="Committed specimen this derives from: id or commit digest prefix (repeatable).")
@click.option("--layout", type=click.Choice(["strata", "runs"]), default="strata", show_default=True,
              help="strata: results in strata/; runs: one runs/RUN_ID/ per execution of the protocol.")
@vault_option
def new(specimen_id: str, domain: str, method: str, tags: str | None, model: str | None,
        parents: tuple[str, ...], layout: str, vault_path: str | None) -> None:
    """Scaffold specimens/SPECIMEN_ID/ with manifest, protocol.py, field_notes.md and strata/.

    With --layout runs, every execution of the protocol writes a run of its own (runs/RUN_ID/),
    and each `vault commit` seals the runs made since the last one.

    \b
    Examples:
      vault new 2024_12_19_my_experiment --domain interpretability \\
          --method sae_analysis --tags gpt2,layer_12
      vault new 2024_12_19_lr_sweep --domain training --method fine_tuning --layout runs
    """
    v = open_vault(vault_path)
    path = v.new(specimen_id, domain=domain, method=method, tags=_split_tags(tags), model=model,
                 parents=[v.lookup(p) for p in parents], layout=layout)
    click.echo(f"Created {path}")
    click.echo(f"Next: edit {path / 'protocol.py'}, run it, then `vault commit {specimen_id} -m MSG`")


@cli.command()
@click.argument("specimen_id", type=SPECIMEN_ID)
@click.option("-m", "--message", default="", help="Commit message.")
@click.option("--parent", "parents", multiple=True, type=SPECIMEN_ID,
              help="Extra parent specimen: id, commit digest or its prefix (repeatable).")
@click.option("--partial", is_flag=True,
              help="Seal a crashed run: assemble its unfinished step-wise logs, flag it partial.")
@vault_option
def commit(specimen_id: str, message: str, parents: tuple[str, ...], partial: bool,
           vault_path: str | None) -> None:
    """Seal specimens/SPECIMEN_ID/ as an immutable commit; prints the commit digest.

    A specimen in the runs layout is sealed once; each of its runs (runs/RUN_ID/) is sealed
    as the specimen SPECIMEN_ID.run_RUN_ID, whose parent is the run before it. Committing again
    after the protocol ran again seals the new runs; the digest printed is the newest one's.

    \b
    Examples:
      vault commit 2024_12_19_my_experiment -m "baseline, lr 3e-4"
      vault commit 2024_12_19_crashed_run --partial -m "died at step 41k (OOM)"
    """
    from ..seal import commit as seal

    v = open_vault(vault_path)
    watch_seal(v, specimen_id)
    # A whole digest goes through as it is: any commit of the vault may be a parent.
    parent_ids = [p if is_digest(p) else v.lookup(p) for p in parents]
    with progress_bar("commit") as progress:
        made = seal(v, specimen_id, message=message, partial=partial, parents=parent_ids,
                    progress=progress)
    for c in made:
        if c.manifest.run is not None:
            click.echo(f"sealed run {escape(c.manifest.run[1])} as {c.specimen_id}", err=True)
    click.echo(made[-1].digest)


@cli.command()
@click.argument("specimen_id", required=False, type=SPECIMEN_ID)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (stable format).")
@click.option("--graph", is_flag=True, help="Draw the lineage DAG (child above its parents).")
@click.option("--all", "show_all", is_flag=True,
              help="Include retired specimens, with who retired them, when and why.")
@vault_option
def log(specimen_id: str | None, as_json: bool, graph: bool, show_all: bool,
        vault_path: str | None) -> None:
    """List committed specimens, newest first; with SPECIMEN_ID, its lineage.

    Retired specimens are left out; --all lists them too, with who retired them, when and why.
    A commit that cannot be read is listed as damaged after the others (with --json: an entry
    whose "error" says what is wrong) and the exit status is 1; `vault verify` tells the rest.

    \b
    Examples:
      vault log
      vault log 2024_12_19_derived --json
      vault log --graph
      vault log --all
    """
    if as_json and graph:
        raise click.UsageError("choose one of --json and --graph")
    from ..retirement import retirements

    v = open_vault(vault_path)
    damage: list[Finding] = []
    entries = v.log(specimen_id, on_damage=damage.append, include_retired=show_all)
    retired = retirements(v) if show_all else {}
    if retired and as_json:
        echo_json([{**e.to_dict(), "error": None, "error_kind": None,
                    "retired": retired[e.specimen_id].to_dict() if e.specimen_id in retired
                    else None} for e in entries]
                  + [{"specimen_id": r.specimen_id, "commit": r.commit, "error": None,
                      "error_kind": None, "retired": r.to_dict()}
                     for sid, r in sorted(retired.items())
                     if sid not in {e.specimen_id for e in entries}]
                  + [_damaged_json(f) for f in damage])
        return
    if retired and not graph:
        for sid, r in sorted(retired.items(), key=lambda kv: kv[1].seq, reverse=True):
            click.echo(click.style(f"retired {sid}", fg="magenta")
                       + f"  {escape(r.time)} by {escape(r.author)}"
                       + ("  (purged)" if r.purge else ""))
            click.echo(f"    {escape(r.reason)}\n")
    if graph:
        from ..graph import render_graph

        for line in render_graph([_shown_entry(e) for e in entries], color=True):
            click.echo(line)
    elif as_json:
        echo_json([{**e.to_dict(), "error": None, "error_kind": None} for e in entries]
                  + [_damaged_json(f) for f in damage])
    else:
        if not entries and not damage:
            click.echo("No committed specimens yet. Try `vault demo`.")
        for e in entries:
            _echo_entry(e)
        for f in damage:
            click.echo(click.style(f"commit {f.digest or '?'}  DAMAGED ({f.kind})", fg="red"))
            click.echo(f"Specimen: {escape(f.specimen or '?')}")
            click.echo(f"\n    {escape(f.message)}\n")
    if damage:
        shown = ", ".join(escape(f.specimen or f.file or "?") for f in damage[:5])
        more = f" and {len(damage) - 5} more" if len(damage) > 5 else ""
        where = "not drawn" if graph else "listed with an error" if as_json else "listed above"
        raise IntegrityError(
            f"{len(damage)} entr{'y' if len(damage) == 1 else 'ies'} of the log could not be read "
            f"({shown}{more}; {where}); the "
            "others are intact. Run `vault verify` to see everything affected and how to repair it"
        )


def _echo_entry(e: LogEntry) -> None:
    c = e.commit
    m = c.manifest
    click.echo(click.style(f"commit {e.digest}", fg="yellow"))
    click.echo(f"Specimen: {e.specimen_id}")
    if e.labels:
        click.echo(f"Labels:   {' '.join('@' + n for n in e.labels)}")
    click.echo(f"Date:     {escape(c.created)}")
    click.echo(f"Author:   {escape(c.author)}")
    tags = ",".join(m.tags)
    click.echo(f"Kind:     {escape(m.domain)}/{escape(m.method)}"
               + (f"  model={escape(m.model)}" if m.model else "")
               + (f"  tags={escape(tags)}" if tags else ""))
    if c.parents:
        click.echo(f"Parents:  {' '.join(p[:12] for p in c.parents)}")
    if c.message:
        # A multi-line message keeps its lines, each indented as git log does.
        click.echo("\n    " + escape(c.message, keep_newlines=True).replace("\n", "\n    "))
    click.echo("")


def _shown_entry(e: LogEntry) -> LogEntry:
    """``e`` with a message that is safe to draw in the graph (its first line is the label)."""
    safe = escape(e.commit.message, keep_newlines=True)
    if safe == e.commit.message:
        return e
    return replace(e, commit=replace(e.commit, message=safe))


def _damaged_json(f: Finding) -> dict[str, Any]:
    """A log entry whose commit cannot be read: every key of an entry, unknown values null."""
    keys = ("created", "author", "message", "domain", "method", "model", "tags", "parents",
            "files", "logical_bytes")
    return {"specimen_id": f.specimen, "commit": f.digest, **dict.fromkeys(keys),
            "error": f.message, "error_kind": f.kind}


@cli.command()
@click.argument("specimen_id", type=SPECIMEN_ID)
@click.option("--run", "run_id", default=None, metavar="RUN_ID",
              help="Show this run of the specimen (default: its newest run, if it has runs).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (stable format).")
@click.option("--files", "all_files", is_flag=True,
              help="List every file (default: a summary by directory when there are many).")
@vault_option
def show(specimen_id: str, run_id: str | None, as_json: bool, all_files: bool,
         vault_path: str | None) -> None:
    """Show a committed specimen: manifest, metadata, tensors, files, parents, bytes.

    Metadata (provenance included) is shown field by field, long values cut with
    "… (N more)". Each tensor gets one line: dtype, shape, chunks, codecs, logical size
    (shape x item size), stored bytes and chunk objects. More than 20 file lines are
    summarized by directory; --files lists every file, --json prints everything.

    A specimen whose protocol ran several times is shown by its newest sealed run, with the
    number of runs and their ids; --run shows another.

    \b
    Examples:
      vault show example_synthetic_demo
      vault show example_synthetic_demo --files
      vault show 2024_12_19_sweep --run 20241219_143000
    """
    v = open_vault(vault_path)
    info = v.show(specimen_id, run=run_id)
    if as_json:
        echo_json(info.to_dict())
        return
    c = info.commit
    m = c.manifest
    if info.runs:
        shown = ", ".join(info.runs[:10]) + (f" and {len(info.runs) - 10} more"
                                             if len(info.runs) > 10 else "")
        click.echo(f"runs      {len(info.runs)} (newest first): {escape(shown)}")
        click.echo(f"run       {escape(info.run or '')}"
                   + ("  (the newest)" if info.run == info.runs[0] else ""))
    click.echo(f"specimen  {info.specimen_id}")
    click.echo(f"commit    {info.digest}")
    click.echo(f"created   {escape(c.created)}  by {escape(c.author)}")
    if c.message:
        lines = escape(c.message, keep_newlines=True).replace("\n", "\n" + " " * 10)
        click.echo(f"message   {lines}")
    click.echo(f"domain    {escape(m.domain)}    method {escape(m.method)}"
               + (f"    model {escape(m.model)}" if m.model else ""))
    if m.tags:
        click.echo(f"tags      {escape(', '.join(m.tags))}")
    if info.labels:
        click.echo(f"labels    {' '.join('@' + n for n in info.labels)}")
    for d, sid in zip(c.parents, info.parent_ids):
        click.echo(f"parent    {sid or '?'}  {d}")
    for a in info.annotations:
        text = escape(a.text, keep_newlines=True).replace("\n", "\n" + " " * 12)
        click.echo(f"note      {escape(a.time)} by {escape(a.author)}\n            {text}")
    if m.metadata:
        click.echo("metadata")
        for line in map_lines(m.metadata):
            click.echo(f"  {line}")
    click.echo(f"bytes     {human_bytes(info.logical_bytes)} logical, {human_bytes(info.unique_bytes)} new unique")
    if info.tensors:
        click.echo(f"tensors   {len(info.tensors)}  (logical: shape x item size; stored: "
                   "distinct chunk objects)")
        for line in _tensor_lines(info.tensors):
            click.echo(f"  {line}")
    rows = _show_rows(c.tree, every=all_files)
    click.echo(f"files     {len(c.tree):,}" + ("" if all_files or len(rows) == len(c.tree) else
                                               f"  ({len(rows)} lines; --files lists every file)"))
    rows = [(escape(label), kind, size, note) for label, kind, size, note in rows]
    width = max((len(r[0]) for r in rows), default=0)
    for label, kind, size, note in rows:
        click.echo(f"  {label:<{width}}  {kind:<7}  {size:>12,}  {note}")


#: A Zarr array with more files than this is listed as one line (`--json` lists every file).
_ZARR_LISTED_FILES = 8
#: More file rows than this and `vault show` summarizes them by directory (`--files`: all).
_SHOWN_FILE_ROWS = 20
#: Tensors listed one per line; the rest are counted (`--json` has them all).
_SHOWN_TENSORS = 50


def _show_rows(tree: Mapping[str, TreeEntry], *, every: bool = False,
               ) -> list[tuple[str, str, int, str]]:
    """Rows of `vault show`: one per file, but one per large Zarr array (its chunks summed).

    Args:
        tree: the commit's tree.
        every: one row per file, however many (``--files``).

    Returns:
        ``(path, kind, bytes, note)`` rows, paths not escaped. When there would be more than
        :data:`_SHOWN_FILE_ROWS`, a summary instead: every Zarr store one row and crowded
        directories folded into one row each (:func:`~cas_vault.cli.render.summary_rows`).
    """
    if every:
        return [(path, e.kind, e.size, e.digest[:16]) for path, e in tree.items()]
    arrays: dict[str, list[TreeEntry]] = {}
    for path, e in tree.items():
        if e.kind == "zarr" and ".zarr/" in path:
            arrays.setdefault(path[:path.index(".zarr/") + 6], []).append(e)
    rows, done = [], set()
    for path, e in tree.items():
        prefix = path[:path.index(".zarr/") + 6] if e.kind == "zarr" and ".zarr/" in path else None
        if prefix is None or len(arrays[prefix]) <= _ZARR_LISTED_FILES:
            rows.append((path, e.kind, e.size, e.digest[:16]))
        elif prefix not in done:
            done.add(prefix)
            files = arrays[prefix]
            rows.append((prefix, "zarr", sum(f.size for f in files),
                         f"{len(files)} files, {len({f.digest for f in files})} distinct"))
    return rows if len(rows) <= _SHOWN_FILE_ROWS else summary_rows(tree, _SHOWN_FILE_ROWS)


def _tensor_lines(tensors: Sequence[TensorSummary]) -> list[str]:
    """One aligned line per tensor: dtype, shape, chunks, codecs, logical and stored bytes."""
    def size(n: int | None) -> str:
        if n is None:
            return "?"
        return f"{n:,} B" if n < 1024 else f"{human_bytes(n)} ({n:,} B)"

    table = []
    for t in tensors[:_SHOWN_TENSORS]:
        if t.error is not None:
            table.append([escape(t.path), f"metadata unreadable: {escape(t.error)}"])
            continue
        shape = "?" if t.shape is None else str(t.shape)
        chunks = "?" if t.chunks is None else str(t.chunks)
        held = (f"{t.chunk_files:,} chunk{'s' * (t.chunk_files != 1)}"
                if t.grid_chunks is None or t.grid_chunks == t.chunk_files
                else f"{t.chunk_files:,} of {t.grid_chunks:,} chunks")
        table.append([
            escape(t.path), escape(t.dtype or "?"), shape, f"chunks {chunks}",
            escape(",".join(t.codecs)) or "raw", f"logical {size(t.logical_bytes)}",
            f"stored {size(t.stored_bytes)}",
            f"{held} in {t.chunk_objects:,} object{'s' * (t.chunk_objects != 1)}",
        ])
    widths = [max((len(r[i]) for r in table if len(r) > i + 1), default=0) for i in range(8)]
    lines = ["  ".join(cell.ljust(widths[i]) if i + 1 < len(row) else cell
                       for i, cell in enumerate(row)) for row in table]
    if len(tensors) > _SHOWN_TENSORS:
        lines.append(f"{MORE} ({len(tensors) - _SHOWN_TENSORS:,} more; --json lists all)")
    return lines


@cli.command()
@click.argument("specimen_id", type=SPECIMEN_ID)
@click.argument("dest", type=click.Path(file_okay=False))
@vault_option
def checkout(specimen_id: str, dest: str, vault_path: str | None) -> None:
    """Copy a committed specimen's files to DEST (a new or empty directory), verifying each byte.

    \b
    Example:
      vault checkout example_synthetic_demo /tmp/demo-copy
    """
    v = open_vault(vault_path)
    specimen_id = v.lookup(specimen_id)
    with progress_bar("checkout") as progress:
        out = v.checkout(specimen_id, dest, progress=progress)
    click.echo(f"Checked out {specimen_id} to {out}")


@cli.command()
@click.option("--vault", "vault_path", type=click.Path(file_okay=False), default=None,
              help="Where to create the demo vault (default ./demo-vault).")
def demo(vault_path: str | None) -> None:
    """Create a demo vault, run the shipped example specimen, commit it, and say what to try.

    The target must be missing, an empty directory, or a vault an earlier `vault demo` made
    (it holds demo.txt); anything else is refused (exit 2) and left untouched.

    \b
    Example:
      vault demo && vault --vault demo-vault log
    """
    from ..demo import run_demo

    root = click.get_current_context().find_root().obj.get("vault_path")
    result = run_demo(Path(vault_path or root or "demo-vault"))
    for line in result.report():
        click.echo(line)
