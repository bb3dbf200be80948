"""Orchestration: run the analysis on a committed tensor and write the derived specimen.

:func:`run_spectroscopy` resolves the inputs in a vault, runs :func:`~.analysis.analyse` (or its
dask twin, :func:`~.distributed.analyse_dask`) and commits the results as a new specimen whose
parents are the activations and the SAE specimens. Nothing is written unless the whole analysis
succeeded. :func:`read_spectrum` reads one input's spectrum back.

The id of an analysis names everything that decides its bits: the inputs, the options, the
token rows per block actually used and the numeric environment (:mod:`.numerics`), so the same
id always holds the same numbers and a run that could round differently gets a new id.
"""

from __future__ import annotations

import platform
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import canonical
from ...digest import hash_bytes, hash_file
from ...errors import AlreadyExistsError, ImmutableError, InvalidInputError, NotFoundError
from ...ids import MAX_ID_LENGTH, validate_id
from . import ENGINE_NAME, ENGINE_VERSION, numerics
from .analysis import Analysis, SpectroscopyOptions, _shape3, analyse, chunk_rows, resolve_pairs
from .distributed import analyse_dask, connect, environments
from .sae import SAE, load_sae
from .spectrum import format_spectrum
from .tensor import open_tensor

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from ...repository import Repository
    from ...specimen import CommittedSpecimen

__all__ = [
    # Re-exported: the protocol.py of every stored spectroscopy specimen imports it from here.
    "SpectroscopyOptions",
    "SpectroscopyResult",
    "default_specimen_id",
    "load_pairs",
    "run_spectroscopy",
]


@dataclass(frozen=True)
class SpectroscopyResult:
    """What :meth:`Vault.spectroscopy` produced.

    Attributes:
        specimen_id: the new derived specimen.
        commit: its commit digest.
        analysis: the computed tables.
        metadata: the manifest metadata recorded.
    """

    specimen_id: str
    commit: str
    analysis: Analysis
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> pl.DataFrame:
        """The per-input metrics table."""
        return self.analysis.metrics


# -- pairs -------------------------------------------------------------------------------------
def load_pairs(path: str | Path) -> np.ndarray:
    """Read a pairs file: CSV with header columns ``a,b`` or JSON ``[[a, b], ...]``.

    Each pair names two inputs (row indices of the activations, from 0): drift compares their
    spectra, absorption asks which strong lines of ``a`` are weak or absent in ``b``.

    Raises:
        NotFoundError: the file is missing. InvalidInputError: it is not in either format.
    """
    import json

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"pairs file {path} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    hint = "write CSV with a header line 'a,b' and one pair of input indices per line, or JSON [[0, 1], [0, 2]]"
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"pairs file {path} is not valid JSON ({exc}); {hint}") from None
        if isinstance(data, dict):
            data = data.get("pairs")
        if not isinstance(data, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in p)
            for p in data
        ):
            raise InvalidInputError(f"pairs file {path} must hold a list of [a, b] integer pairs; {hint}")
        return np.array(data, dtype=np.int64).reshape(-1, 2)
    import polars as pl

    try:
        df = pl.read_csv(path, infer_schema_length=None)
    except Exception as exc:  # polars raises several ComputeError/NoDataError kinds
        raise InvalidInputError(f"pairs file {path} is not readable CSV ({exc}); {hint}") from None
    if not {"a", "b"} <= set(df.columns):
        raise InvalidInputError(f"pairs file {path} has columns {df.columns}, not 'a' and 'b'; {hint}")
    if df.height == 0:
        return np.zeros((0, 2), np.int64)
    if not all(df.schema[c].is_integer() for c in ("a", "b")) or df.select(pl.col("a", "b").null_count()).sum_horizontal().item():
        raise InvalidInputError(f"pairs file {path}: columns a and b must be whole numbers on every line; {hint}")
    return df.select("a", "b").to_numpy().astype(np.int64)


# -- the vault side ----------------------------------------------------------------------------
def default_specimen_id(activations_id: str, key: dict[str, Any]) -> str:
    """``<activations_id>__spectro_<10 hex of BLAKE3(key)>``, the activations id shortened to fit 128.

    Args:
        activations_id: the activations specimen.
        key: everything that decides the analysis' bits (see :func:`run_spectroscopy`).

    Returns:
        The id.

    Raises:
        InvalidInputError: if ``activations_id`` holds characters an id may not.
    """
    suffix = f"__spectro_{hash_bytes(canonical.packb(key))[:10]}"
    return validate_id(activations_id[: MAX_ID_LENGTH - len(suffix)] + suffix)


def _layer(spec: CommittedSpecimen, options: SpectroscopyOptions) -> int | None:
    # `is not None` throughout: layer 0 is a layer (the seed's `layer or -1` turned it into -1).
    if options.layer is not None:
        return options.layer
    value = spec.commit.manifest.metadata.get("layer")
    if value is None and "strata/config.msgpack" in spec.commit.tree:
        value = spec.read_config().get("layer")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("cas-vault", "numpy", "polars", "zarr", "dask"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def run_spectroscopy(
    vault: Repository,
    activations_id: str,
    sae: SAE | str | Path,
    *,
    tensor: str = "activations",
    new_id: str | None = None,
    pairs: str | Path | np.ndarray | None = None,
    options: SpectroscopyOptions | None = None,
    scheduler: Any = None,
    apply_b_dec_to_input: bool = True,
    message: str | None = None,
) -> SpectroscopyResult:
    """Analyse a committed activations tensor with an SAE and commit the derived specimen.

    Args:
        vault: the vault.
        activations_id: committed specimen holding the activations.
        sae: SAE specimen id, a Path to a .npz/.safetensors file, or an :class:`SAE`.
        tensor: the activations tensor's name in that specimen.
        new_id: id of the derived specimen (default: :func:`default_specimen_id`).
        pairs: a pairs file (see :func:`load_pairs`) or an int [P, 2] array.
        options: engine options.
        scheduler: None for one process; ``"dask"`` (or a dask.distributed Client) to run the
            blocks as dask tasks over ``dask.array.from_zarr`` of the vault's tensor.
        apply_b_dec_to_input: subtract b_dec before encoding (when loading weights here).
        message: commit message (default: a one-line summary).

    Returns:
        The result, with the new specimen id and its commit.

    Raises:
        NotFoundError: missing specimens, tensors or files.
        InvalidInputError: bad shapes, options, pairs or ids.
        AlreadyExistsError/ImmutableError: the target id exists (nothing is recomputed). A
            default id exists exactly when this analysis, with the same chunk rows and numeric
            environment, is stored already.
    """
    options = (options or SpectroscopyOptions()).validate()
    if new_id is not None:
        validate_id(new_id)
    spec = vault.specimen(activations_id)
    array = open_tensor(spec, tensor)
    sae_obj, sae_id = load_sae(vault, sae, apply_b_dec_to_input=apply_b_dec_to_input)
    pairs_info: dict[str, Any] | None = None
    if isinstance(pairs, (str, Path)):
        pairs_info = {"file": Path(pairs).name, "digest": hash_file(pairs)[0]} if Path(pairs).is_file() else None
        pairs = load_pairs(pairs)
    N, T, d = _shape3(array.shape)
    pairs_arr = resolve_pairs(pairs, N, options)  # validate before any work
    if pairs_arr is not None and pairs_info is None:
        pairs_info = {"digest": hash_bytes(pairs_arr.astype("<i8").tobytes())}
    # The effective rows, not the request: chunk_tokens=None and the default value compute the
    # same blocks, so they must share an id.
    rows = chunk_rows(options, sae_obj)
    with ExitStack() as stack:
        # The environment is where the matmuls run: this process, or the dask workers (asked
        # through the client that then runs the analysis).
        client = None
        if scheduler is None:
            numeric = {"executor": "local", "environments": [numerics.numeric_environment()]}
        else:
            client = stack.enter_context(connect(scheduler))
            numeric = {"executor": "dask", "environments": environments(client)}
        key = {
            "engine": ENGINE_VERSION, "activations": spec.commit.digest, "tensor": tensor,
            "sae": sae_obj.digest, "pairs": (pairs_info or {}).get("digest"),
            "options": {**options.to_dict(), "chunk_tokens": rows}, "numerics": numeric,
        }
        derived = new_id is None
        new_id = new_id or default_specimen_id(activations_id, key)
        existing = vault.refs.get(new_id)
        if existing is not None:
            same = ("it holds this analysis already (same inputs, options, chunk_tokens and numeric "
                    "environment, so the same numbers): read it with `vault show`, or pass --id NEW_ID "
                    "for a copy") if derived else "pass another --id NEW_ID"
            raise ImmutableError(f"specimen {new_id} is already committed ({existing}); {same}")
        if vault.specimen_dir(new_id).exists():
            raise AlreadyExistsError(
                f"specimen {new_id} already has a working directory at {vault.specimen_dir(new_id)}; "
                "remove it or pass --id NEW_ID"
            )
        # The pairs are drawn already: analyse() gets them as explicit pairs; the rows are the
        # ones in the key.
        run_options = replace(options, random_pairs=0, chunk_tokens=rows)
        if scheduler is None:
            analysis = analyse(array, sae_obj, run_options, pairs_arr)
        else:
            analysis = analyse_dask(array, sae_obj, run_options, pairs_arr,
                                    scheduler="dask" if client is None else client)
    layer = _layer(spec, options)
    metadata: dict[str, Any] = {
        "engine": {"name": ENGINE_NAME, "version": ENGINE_VERSION,
                   "executor": "local" if scheduler is None else "dask"},
        "activations": {"specimen_id": activations_id, "commit": spec.commit.digest, "tensor": tensor,
                        "shape": list(array.shape), "dtype": str(array.dtype)},
        "sae": sae_obj.describe(),
        "bos": "kept" if options.keep_bos else "excluded",
        "first_position": 0 if options.keep_bos else 1,
        "thresholds": {
            "min_activation": options.min_activation, "min_activation_rel": options.min_activation_rel,
            "absorption_threshold": options.absorption_threshold,
            "absorption_rel": options.absorption_rel, "absorption_ratio": options.absorption_ratio,
            "drift_top_k": options.top_k,
        },
        "dtypes": {"activations": str(array.dtype), "compute": "float32", "accumulate": "float64",
                   "spectra": "float32"},
        "seed": options.seed, "layer": layer, "chunk_tokens": analysis.chunk_rows, "numerics": numeric,
        "n_inputs": N, "seq_len": T, "d": d,
        "pairs": None if pairs_arr is None else {**(pairs_info or {}), "n": int(pairs_arr.shape[0]),
                                                 "random": bool(options.random_pairs)},
        "versions": _versions(),
    }
    parents = [activations_id] + ([sae_id] if sae_id and sae_id != activations_id else [])
    manifest = spec.commit.manifest
    tags = ["spectroscopy", f"sae_{sae_obj.activation}"] + ([f"layer_{layer}"] if layer is not None else [])
    wd = vault.new(new_id, domain="interpretability", method="sae_analysis", tags=tags,
                   model=manifest.model, parents=parents, metadata=metadata)
    try:
        _write(vault, new_id, wd, analysis, options, metadata)
        n_empty = int((analysis.metrics["n_features"] == 0).sum())
        summary = message or (
            f"SAE spectroscopy of {activations_id}:{tensor} ({N} inputs, BOS "
            f"{'kept' if options.keep_bos else 'excluded'}) with {sae_id or sae_obj.source}"
            + (f"; {n_empty} empty spectra" if n_empty else "")
        )
        commit = vault.commit(new_id, message=summary)
    except BaseException:
        if vault.refs.get(new_id) is None:
            shutil.rmtree(wd, ignore_errors=True)  # nothing half-written is left behind
        raise
    return SpectroscopyResult(new_id, commit.digest, analysis, metadata)


def _write(vault: Repository, new_id: str, wd: Path, analysis: Analysis, options: SpectroscopyOptions,
           metadata: dict[str, Any]) -> None:
    storage = vault.storage(new_id)
    storage.write_metrics(analysis.metrics, "metrics")
    storage.write_metrics(analysis.spectra, "spectra")
    if analysis.tokens is not None:
        storage.write_metrics(analysis.tokens, "tokens")
    if analysis.drift is not None and analysis.absorption is not None:
        storage.write_metrics(analysis.drift, "drift")
        storage.write_metrics(analysis.absorption, "absorption")
    # The rows used, not the request: protocol.py re-runs with the same blocking.
    used = replace(options, chunk_tokens=analysis.chunk_rows)
    storage.write_config(used.to_dict(), "config")
    acts, sae = metadata["activations"], metadata["sae"]
    if sae.get("specimen_id"):
        sae_arg = repr(sae["specimen_id"])
    else:  # weights from a file: the user points at it again (its digest is in the manifest)
        sae_arg = f"Path({sae.get('file', sae['source'])!r})"
    pairs_arg = "None"
    if analysis.drift is not None and not options.random_pairs:
        pairs_arg = f'vault.specimen("{new_id}").read_metrics("drift").select("a", "b").to_numpy()'
    (wd / "protocol.py").write_text(_PROTOCOL.format(
        new_id=new_id, acts=acts["specimen_id"], tensor=acts["tensor"], sae=sae_arg,
        options="".join(f"\n        {k}={v!r}," for k, v in used.to_dict().items()), pairs=pairs_arg,
    ))
    m = analysis.metrics
    lines = [f"# Field notes: {new_id}", "",
             f"SAE spectroscopy of `{acts['specimen_id']}` tensor `{acts['tensor']}` {tuple(acts['shape'])} "
             f"with SAE `{sae['source']}` ({sae['activation']}, d_sae={sae['d_sae']}, digest {sae['digest'][:16]}).",
             f"BOS {metadata['bos']}; activity > max({options.min_activation:g}, "
             f"{options.min_activation_rel:g} x token max); engine {ENGINE_VERSION}.", "",
             "## Observations", ""]
    if m.height:
        lines.append(
            f"- per input: n_features median {m['n_features'].median()}, "
            f"l0_mean median {_fmt(m['l0_mean'].median())}, purity median {_fmt(m['purity'].median())}, "
            f"fvu median {_fmt(m['fvu'].median())}"
        )
    (wd / "field_notes.md").write_text("\n".join(lines) + "\n")


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.4g}"


_PROTOCOL = '''"""Derived specimen {new_id}: written by the cas-vault spectroscopy engine, not by hand.

It was computed from committed specimens only (its parents, plus the SAE named below), so
running this file re-runs the same analysis into a new specimen id for comparison: bit for bit
in the same numeric environment (metadata.numerics in the manifest), otherwise equal within
cas_vault.engines.spectroscopy.numerics.RTOL.
"""

from pathlib import Path

from cas_vault import Vault
from cas_vault.engines.spectroscopy.engine import SpectroscopyOptions


def run_experiment(new_id: str = "{new_id}_rerun") -> None:
    vault = Vault.open(Path(__file__).resolve().parents[2])
    options = SpectroscopyOptions({options}
    )
    pairs = {pairs}
    vault.spectroscopy("{acts}", sae={sae}, tensor="{tensor}", new_id=new_id, pairs=pairs,
                       options=options)


if __name__ == "__main__":
    run_experiment()
'''


# -- reading results back ----------------------------------------------------------------------
@dataclass(frozen=True)
class StoredSpectrum:
    """One input's spectrum, read back from a derived specimen.

    Attributes:
        specimen_id: the derived specimen.
        input: the input index.
        features: feature ids, strongest first.
        intensity: total intensities, same order.
        metrics: the input's row of the metrics table.
    """

    specimen_id: str
    input: int
    features: np.ndarray
    intensity: np.ndarray
    metrics: dict[str, Any]

    def format(self, top: int = 20) -> str:
        """A text table of the ``top`` strongest lines (an empty spectrum says so)."""
        m = self.metrics
        title = (f"{self.specimen_id} input {self.input} ({m['n_tokens']} tokens, "
                 f"purity {float(m['purity']):.3f})")
        return format_spectrum(self.features, self.intensity, top=top, title=title,
                               n_tokens=m["n_tokens"] or None)


def read_spectrum(spec: CommittedSpecimen, input_index: int) -> StoredSpectrum:
    """Read input ``input_index``'s spectrum and metrics from a spectroscopy specimen.

    Raises:
        InvalidInputError: if the specimen is not a spectroscopy result.
        NotFoundError: if it has no such input.
    """
    import polars as pl

    if "strata/spectra.parquet" not in spec.commit.tree or "strata/metrics.parquet" not in spec.commit.tree:
        raise InvalidInputError(
            f"specimen {spec.specimen_id} is not a spectroscopy result (no strata/spectra.parquet); "
            "create one with `vault spectroscopy ACTIVATIONS_ID --sae SAE_ID`"
        )
    metrics = spec.read_metrics("metrics").filter(pl.col("input") == input_index)
    if metrics.height == 0:
        n = spec.read_metrics("metrics").height
        raise NotFoundError(f"specimen {spec.specimen_id} has no input {input_index}; inputs are 0..{n - 1}")
    lines = pl.read_parquet(spec.object_path("strata/spectra.parquet")).filter(
        pl.col("input") == input_index).sort("rank")
    return StoredSpectrum(spec.specimen_id, input_index, lines["feature"].to_numpy(),
                          lines["intensity"].to_numpy(), metrics.row(0, named=True))
