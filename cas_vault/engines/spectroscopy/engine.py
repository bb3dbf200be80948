"""Orchestration: read activations block by block, score them, write the derived specimen.

:func:`analyse` is the whole computation over any sliceable array (numpy, a lazy zarr array
from the vault): it reads one block at a time, so memory is bounded by a few blocks plus the
(sparse) results, whatever the size of the tensor. :func:`run_spectroscopy` resolves the
inputs in a vault, runs :func:`analyse` (or its dask twin) and commits the results as a new
specimen whose parents are the activations and the SAE specimens. Nothing is written unless
the whole analysis succeeded.

The id of an analysis names everything that decides its bits: the inputs, the options, the
token rows per block actually used and the numeric environment (:mod:`.numerics`), so the same
id always holds the same numbers and a run that could round differently gets a new id.
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import canonical
from ...digest import hash_bytes
from ...errors import AlreadyExistsError, ImmutableError, InvalidInputError, NotFoundError
from ...ids import MAX_ID_LENGTH, validate_id
from . import ENGINE_NAME, ENGINE_VERSION, numerics
from .encode import Encoder, default_chunk_rows
from .sae import SAE, load_sae
from .scores import Spectra, pair_scores
from .spectrum import METRIC_COLUMNS, Accumulator, BlockPartial, InputResult, Thresholds, block_partial

if TYPE_CHECKING:
    import numpy as np
    import polars as pl
    import zarr

    from ...vault import CommittedSpecimen, Vault

__all__ = [
    "Analysis",
    "Block",
    "MAX_RANDOM_PAIRS",
    "SpectroscopyOptions",
    "SpectroscopyResult",
    "analyse",
    "chunk_rows",
    "default_specimen_id",
    "load_pairs",
    "open_tensor",
    "plan_blocks",
    "run_spectroscopy",
]

#: (first input, end input, first token, end token); tokens count from the first analysed position.
Block = tuple[int, int, int, int]
#: Most random pairs one analysis scores. Drift lies in [0, 1], so the mean over P pairs has a
#: standard error of at most 0.5 / sqrt(P): 0.0005 at a million pairs, finer than any figure
#: the engine reports. Each pair costs a drift row plus up to d_sae absorption rows, so more
#: pairs only add memory (a hundred million took 21.7 GB). Also never more than N * (N - 1),
#: the distinct ordered pairs of N inputs, past which draws can only repeat pairs.
MAX_RANDOM_PAIRS = 1_000_000
#: Produces the partials of ``blocks`` in order: ``(blocks, reader-or-array, encoder, thresholds)``.
PartialsFn = Callable[..., Iterable[BlockPartial]]


@dataclass(frozen=True)
class SpectroscopyOptions:
    """Everything that changes what the engine computes (recorded in the manifest).

    Attributes:
        keep_bos: analyse position 0 too (default: exclude it; its huge norm lights up
            thousands of features and makes every sum track prompt length).
        min_activation: an SAE entry is active above this absolute value (the seed's 1e-6).
        min_activation_rel: ... and above this fraction of its token's strongest entry (0: off).
        top_k: size of the top feature sets compared by drift (the seed's 100).
        absorption_threshold: absolute per-token intensity a line needs to count in absorption.
        absorption_rel: relative threshold, fraction of the input's strongest line.
        absorption_ratio: a strong line is absorbed if it falls below this fraction.
        random_pairs: if > 0 (and no pairs are given), score this many pairs drawn with ``seed``;
            at most :data:`MAX_RANDOM_PAIRS` and N * (N - 1) for N inputs.
        seed: seed of every random choice the engine makes (only ``random_pairs`` today).
        layer: the model layer the activations come from (0 is a layer, not "unset"); by
            default taken from the activations specimen's metadata or config key ``layer``.
        chunk_tokens: token rows per block (default: ~16 MiB of features per block). BLAS may
            round a differently blocked matmul differently, so the rows used enter the id.
        token_metrics: also write per-token statistics (``strata/tokens.parquet``).
    """

    keep_bos: bool = False
    min_activation: float = 1e-6
    min_activation_rel: float = 0.0
    top_k: int = 100
    absorption_threshold: float = 0.0
    absorption_rel: float = 0.1
    absorption_ratio: float = 0.5
    random_pairs: int = 0
    seed: int = 0
    layer: int | None = None
    chunk_tokens: int | None = None
    token_metrics: bool = True

    def validate(self) -> SpectroscopyOptions:
        """Check every value; returns self.

        Raises:
            InvalidInputError: naming the bad option and its valid range.
        """
        import math

        def number(name: str, lo: float, hi: float = math.inf) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise InvalidInputError(f"{name} must be a finite number in [{lo}, {hi}], got {v!r}")

        number("min_activation", 0.0)
        number("min_activation_rel", 0.0, 1.0)
        number("absorption_threshold", 0.0)
        number("absorption_rel", 0.0, 1.0)
        number("absorption_ratio", 0.0, 1.0)
        for name, lo in (("top_k", 1), ("random_pairs", 0), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InvalidInputError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.random_pairs > MAX_RANDOM_PAIRS:
            raise InvalidInputError(
                f"random_pairs is {self.random_pairs:,}, above the limit of {MAX_RANDOM_PAIRS:,}: "
                "a million random pairs already give the mean drift to within 0.0005, and every "
                "pair costs memory; pass fewer, or list the pairs you need with --pairs FILE"
            )
        if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0):
            raise InvalidInputError(f"layer must be an integer >= 0 (0 is the first layer), got {self.layer!r}")
        if self.chunk_tokens is not None and (not isinstance(self.chunk_tokens, int) or self.chunk_tokens < 1):
            raise InvalidInputError(f"chunk_tokens must be a positive integer, got {self.chunk_tokens!r}")
        return self

    @property
    def thresholds(self) -> Thresholds:
        """The activity thresholds."""
        return Thresholds(float(self.min_activation), float(self.min_activation_rel))

    def to_dict(self) -> dict[str, Any]:
        """Msgpack-able form."""
        return asdict(self)


@dataclass
class Analysis:
    """The results of :func:`analyse`, before anything is written.

    Attributes:
        metrics: one row per input (``METRIC_COLUMNS``).
        spectra: long format, one row per (input, line): ``input, rank, feature, intensity,
            intensity_per_token, n_active``.
        tokens: per-token statistics (None if ``token_metrics`` is off).
        drift: one row per pair (None without pairs).
        absorption: one row per absorbed line (None without pairs).
        shape: the activations' shape as [N, T, d].
        chunk_rows: token rows per block used.
        n_blocks: blocks processed.
    """

    metrics: pl.DataFrame
    spectra: pl.DataFrame
    tokens: pl.DataFrame | None
    drift: pl.DataFrame | None
    absorption: pl.DataFrame | None
    shape: tuple[int, int, int]
    chunk_rows: int
    n_blocks: int


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


# -- blocks ------------------------------------------------------------------------------------
def chunk_rows(options: SpectroscopyOptions, sae: SAE) -> int:
    """Token rows per block: ``options.chunk_tokens``, or the default for the SAE's widths."""
    return options.chunk_tokens or default_chunk_rows(sae.d_sae, sae.d)


def plan_blocks(n_inputs: int, n_tokens: int, chunk_rows: int) -> list[Block]:
    """Split [n_inputs, n_tokens] into blocks of at most ``chunk_rows`` token rows.

    Short inputs are grouped whole (``chunk_rows // n_tokens`` per block); an input longer than
    ``chunk_rows`` is split into token ranges. Every input's blocks are consecutive.
    """
    if n_inputs == 0 or n_tokens == 0:
        return []
    if n_tokens <= chunk_rows:
        per = max(1, chunk_rows // n_tokens)
        return [(n, min(n + per, n_inputs), 0, n_tokens) for n in range(0, n_inputs, per)]
    return [(n, n + 1, t, min(t + chunk_rows, n_tokens))
            for n in range(n_inputs) for t in range(0, n_tokens, chunk_rows)]


def _shape3(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) == 3:
        return int(shape[0]), int(shape[1]), int(shape[2])
    if len(shape) == 2:
        return 1, int(shape[0]), int(shape[1])
    raise InvalidInputError(
        f"activations must have shape [N, T, d] or [T, d], got {tuple(shape)}"
    )


def read_block(array: Any, block: Block, first: int) -> np.ndarray:
    """Read one block of ``array`` ([N, T, d] or [T, d]) as [n_b, t_b, d]."""
    n0, n1, t0, t1 = block
    if len(array.shape) == 2:
        return array[first + t0:first + t1][None]
    return array[n0:n1, first + t0:first + t1]


def local_partials(
    blocks: Sequence[Block], array: Any, encoder: Encoder, thresholds: Thresholds, first: int,
) -> Iterator[BlockPartial]:
    """Partials of ``blocks`` computed one after another in this process."""
    for block in blocks:
        x = read_block(array, block, first)
        yield block_partial(x, encoder, thresholds, block[0], block[2])


# -- analysis ----------------------------------------------------------------------------------
def analyse(
    activations: Any,
    sae: SAE,
    options: SpectroscopyOptions | None = None,
    pairs: np.ndarray | None = None,
    partials: PartialsFn | None = None,
) -> Analysis:
    """Compute spectra, metrics and pair scores of ``activations`` under ``sae``.

    Args:
        activations: [N, T, d] or [T, d] float array; anything sliceable with that shape
            (numpy, zarr, dask). Read one block at a time.
        sae: the SAE (its ``d`` must equal the activations' last dimension).
        options: engine options (defaults if None).
        pairs: int [P, 2] input index pairs for drift/absorption (validated here).
        partials: how block partials are produced (default: in this process, in order;
            :mod:`.distributed` passes a dask one). Must yield them in ``blocks`` order.

    Returns:
        The :class:`Analysis`.

    Raises:
        InvalidInputError: bad shapes, dtypes, options or pairs.
    """
    import numpy as np

    options = (options or SpectroscopyOptions()).validate()
    N, T, d = _shape3(activations.shape)
    dtype = np.dtype(activations.dtype)
    if dtype.kind != "f":
        raise InvalidInputError(f"activations must be floating point, got dtype {dtype}")
    if d != sae.d:
        raise InvalidInputError(
            f"activations have d={d} but the SAE expects d={sae.d} (W_enc is {sae.d} x {sae.d_sae}); "
            "use the SAE trained on this layer's width"
        )
    pairs = resolve_pairs(pairs, N, options)
    first = 0 if options.keep_bos else 1
    n_tok = max(0, T - first)
    rows = chunk_rows(options, sae)
    blocks = plan_blocks(N, n_tok, rows)
    encoder = Encoder(sae)
    acc = Accumulator(sae.d_sae, d, T, first)
    results: list[InputResult | None] = [None] * N
    produce = partials or local_partials
    for part in produce(blocks, activations, encoder, options.thresholds, first):
        for n, res in acc.add(part):
            results[n] = res
    for n in range(N):
        if results[n] is None:
            results[n] = acc.empty(n)
    done = [r for r in results if r is not None]
    metrics, spectra_df, tokens, spectra = _tables(done, sae.d_sae, first, options.token_metrics)
    drift = absorption = None
    if pairs is not None:
        import polars as pl

        dcols, acols = pair_scores(
            spectra, pairs, top_k=options.top_k, absorption_threshold=options.absorption_threshold,
            absorption_rel=options.absorption_rel, absorption_ratio=options.absorption_ratio,
        )
        drift, absorption = pl.DataFrame(dcols), pl.DataFrame(acols)
    return Analysis(metrics, spectra_df, tokens, drift, absorption, (N, T, d), rows, len(blocks))


def _tables(
    results: list[InputResult], d_sae: int, first: int, token_metrics: bool,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None, Spectra]:
    import numpy as np
    import polars as pl

    schema = {c: pl.Float64 for c in METRIC_COLUMNS}
    schema.update({"input": pl.Int64, "seq_len": pl.Int64, "n_tokens": pl.Int64,
                   "bos_excluded": pl.Boolean, "n_features": pl.Int64})
    metrics = pl.DataFrame([r.metrics for r in results], schema=schema, orient="row")
    lengths = np.array([r.features.size for r in results], np.int64)
    n_tok = np.array([r.metrics["n_tokens"] for r in results], np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    feats = cat([r.features for r in results], np.int32)
    inten = cat([r.intensity for r in results], np.float32)
    per_tok = (inten / np.repeat(np.maximum(n_tok, 1), lengths)).astype(np.float32)
    spectra_df = pl.DataFrame({
        "input": np.repeat(np.arange(len(results), dtype=np.int64), lengths),
        "rank": cat([np.arange(r.features.size, dtype=np.int32) + 1 for r in results], np.int32),
        "feature": feats, "intensity": inten, "intensity_per_token": per_tok,
        "n_active": cat([r.n_active for r in results], np.int32),
    })
    tokens = None
    if token_metrics:
        counts = np.array([r.tokens["l0"].size for r in results], np.int64)
        tokens = pl.DataFrame({
            "input": np.repeat(np.arange(len(results), dtype=np.int64), counts),
            "position": cat([np.arange(c, dtype=np.int64) + first for c in counts], np.int64),
            **{k: cat([r.tokens[k] for r in results], np.float32) for k in Accumulator.TOKEN_KEYS},
        })
    return metrics, spectra_df, tokens, Spectra(indptr, feats, per_tok, d_sae)


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


def resolve_pairs(pairs: Any, n_inputs: int, options: SpectroscopyOptions) -> np.ndarray | None:
    """Validate explicit pairs against ``n_inputs``, or draw ``options.random_pairs`` seeded pairs.

    Raises:
        InvalidInputError: out-of-range or malformed pairs, both kinds requested, or more random
            pairs than :data:`MAX_RANDOM_PAIRS` or the inputs' distinct ordered pairs.
    """
    import numpy as np

    if pairs is not None and options.random_pairs:
        raise InvalidInputError("give either explicit pairs or random_pairs, not both")
    if pairs is None:
        if not options.random_pairs:
            return None
        if n_inputs < 2:
            raise InvalidInputError(f"random pairs need at least 2 inputs, the activations have {n_inputs}")
        options.validate()  # the fixed limit, before anything is drawn
        distinct = n_inputs * (n_inputs - 1)
        if options.random_pairs > distinct:
            raise InvalidInputError(
                f"random_pairs is {options.random_pairs:,}, but {n_inputs} inputs make only "
                f"{distinct:,} distinct ordered pairs (more draws can only repeat them); pass at "
                f"most {distinct:,}, or list the pairs you want with --pairs FILE"
            )
        rng = np.random.default_rng(options.seed)
        a = rng.integers(0, n_inputs, options.random_pairs)
        b = (a + rng.integers(1, n_inputs, options.random_pairs)) % n_inputs  # never a == b
        return np.stack([a, b], axis=1).astype(np.int64)
    arr = np.asarray(pairs)
    if arr.dtype.kind not in "iu" or (arr.size and (arr.ndim != 2 or arr.shape[1] != 2)):
        raise InvalidInputError(f"pairs must be integer [P, 2] input indices, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.reshape(-1, 2).astype(np.int64)
    bad = (arr < 0) | (arr >= n_inputs)
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        raise InvalidInputError(
            f"pair {i} ({int(arr[i, 0])}, {int(arr[i, 1])}) names an input outside 0..{n_inputs - 1}; "
            f"the activations have {n_inputs} input(s)"
        )
    return arr


# -- the vault side ----------------------------------------------------------------------------
def open_tensor(spec: CommittedSpecimen, name: str) -> zarr.Array:
    """A committed specimen's tensor ``strata/<name>.zarr`` as a lazy read-only zarr array.

    Slicing it reads only the chunk objects touched (each verified against its digest).

    Raises:
        NotFoundError: if the specimen has no such tensor (listing the ones it has).
    """
    return spec.tensor(name)


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
    vault: Vault,
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
        from ...digest import hash_file

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
            from .distributed import connect, environments

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
            from .distributed import analyse_dask

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


def _write(vault: Vault, new_id: str, wd: Path, analysis: Analysis, options: SpectroscopyOptions,
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
        from .spectrum import format_spectrum

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
