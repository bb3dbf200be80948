"""Engine commands: spectroscopy (SAE feature spectra as derived specimens) and spectrum."""

from __future__ import annotations

from pathlib import Path

import click

from .completion import SPECIMEN_ID
from .main import cli, open_vault, vault_option


@cli.command()
@click.argument("activations_id", type=SPECIMEN_ID)
@click.option("--sae", "sae_id", default=None, type=SPECIMEN_ID, metavar="SAE_ID", help="Committed SAE specimen (tensors W_enc, b_enc, W_dec, b_dec[, threshold]).")
@click.option("--sae-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SAE weights in a .npz or .safetensors file instead of a specimen.")
@click.option("--tensor", default="activations", show_default=True, help="Activations tensor in ACTIVATIONS_ID.")
@click.option("--id", "new_id", default=None,
              help="Id of the derived specimen (default: ACTIVATIONS_ID__spectro_<hash of inputs, options, "
                   "chunk rows and numeric environment>).")
@click.option("--pairs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Input pairs for drift/absorption: CSV with header a,b or JSON [[a, b], ...].")
@click.option("--random-pairs", type=click.IntRange(min=0), default=0,
              help="Score this many seeded random pairs instead (at most 1,000,000, and N*(N-1) "
                   "for N inputs).")
@click.option("--keep-bos", is_flag=True, help="Analyse position 0 too (default: excluded).")
@click.option("--min-activation", type=float, default=1e-6, show_default=True, help="Absolute activity threshold.")
@click.option("--min-activation-rel", type=float, default=0.0, show_default=True,
              help="Relative activity threshold (fraction of the token's strongest feature).")
@click.option("--absorption-threshold", type=float, default=0.0, show_default=True,
              help="Absolute per-token intensity a line needs to count in absorption.")
@click.option("--absorption-rel", type=float, default=0.1, show_default=True,
              help="Relative absorption threshold (fraction of the input's strongest line).")
@click.option("--absorption-ratio", type=float, default=0.5, show_default=True,
              help="A line is absorbed if it falls below this fraction of its intensity.")
@click.option("--top-k", type=click.IntRange(min=1), default=100, show_default=True, help="Top set size for drift.")
@click.option("--layer", type=click.IntRange(min=0), default=None, help="Model layer (default: from the activations' metadata).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of random choices.")
@click.option("--chunk-tokens", type=click.IntRange(min=1), default=None,
              help="Token rows per block (memory bound; part of the default id, since BLAS may round "
                   "another blocking differently).")
@click.option("--dask", "use_dask", is_flag=True, help="Compute blocks as dask tasks (needs cas-vault[dask]).")
@click.option("--dask-scheduler", default=None, metavar="ADDRESS",
              help="Run the dask tasks on this dask.distributed scheduler, e.g. tcp://host:8786 (implies --dask).")
@click.option("-m", "--message", default=None, help="Commit message (default: a summary).")
@vault_option
def spectroscopy(activations_id: str, sae_id: str | None, sae_file: Path | None, tensor: str,
                 new_id: str | None, pairs: Path | None, random_pairs: int, keep_bos: bool,
                 min_activation: float, min_activation_rel: float, absorption_threshold: float,
                 absorption_rel: float, absorption_ratio: float, top_k: int, layer: int | None,
                 seed: int, chunk_tokens: int | None, use_dask: bool, dask_scheduler: str | None,
                 message: str | None,
                 vault_path: str | None) -> None:
    """SAE spectroscopy of ACTIVATIONS_ID, committed as a derived specimen; prints its id.

    The new specimen's parents are ACTIVATIONS_ID and the SAE specimen. It holds
    strata/metrics.parquet (one row per input), spectra.parquet (input, feature, intensity),
    tokens.parquet (per token) and, with --pairs, drift.parquet and absorption.parquet.
    See docs/spectroscopy.md.

    \b
    Example:
      vault spectroscopy 2024_12_19_gemma_acts --sae gemma_scope_l12 --pairs pairs.csv
    """
    from ..engines.spectroscopy.analysis import SpectroscopyOptions
    from ..engines.spectroscopy.engine import run_spectroscopy

    given = [s for s in (sae_id, sae_file) if s is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --sae SAE_ID or --sae-file PATH")
    v = open_vault(vault_path)
    activations_id = v.lookup(activations_id)
    sae = v.lookup(sae_id) if sae_id is not None else sae_file
    options = SpectroscopyOptions(
        keep_bos=keep_bos, min_activation=min_activation, min_activation_rel=min_activation_rel,
        top_k=top_k, absorption_threshold=absorption_threshold, absorption_rel=absorption_rel,
        absorption_ratio=absorption_ratio, random_pairs=random_pairs, seed=seed, layer=layer,
        chunk_tokens=chunk_tokens,
    )
    result = run_spectroscopy(
        v, activations_id, sae=sae, tensor=tensor, new_id=new_id,
        pairs=pairs, options=options, scheduler=dask_scheduler or ("dask" if use_dask else None),
        message=message,
    )
    click.echo(result.specimen_id)


@cli.command()
@click.argument("specimen_id", type=SPECIMEN_ID)
@click.option("--input", "input_index", type=click.IntRange(min=0), default=0, show_default=True,
              help="Input (row of the activations).")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Lines to show.")
@vault_option
def spectrum(specimen_id: str, input_index: int, top: int, vault_path: str | None) -> None:
    """Print one input's spectrum from a spectroscopy specimen, strongest lines first.

    \b
    Example:
      vault spectrum example_sae_spectroscopy --input 3 --top 10
    """
    from ..engines.spectroscopy.engine import read_spectrum

    v = open_vault(vault_path)
    spectrum = read_spectrum(v.specimen(v.lookup(specimen_id)), input_index)
    click.echo(spectrum.format(top=top))
