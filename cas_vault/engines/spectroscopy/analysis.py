"""The analysis itself: read activations block by block and compute spectra, metrics and scores.

:func:`analyse` is the whole computation over any sliceable array (numpy, a lazy zarr array
from the vault): it reads one block at a time, so memory is bounded by a few blocks plus the
(sparse) results, whatever the size of the tensor. It knows nothing of vaults: :mod:`.engine`
feeds it a committed tensor and commits what it returns, and :mod:`.distributed` runs the same
blocks as dask tasks by passing its own ``partials``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ...errors import InvalidInputError
from .encode import Encoder, default_chunk_rows
from .scores import Spectra, pair_scores
from .spectrum import METRIC_COLUMNS, Accumulator, BlockPartial, InputResult, Thresholds, block_partial

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from .sae import SAE

__all__ = [
    "Analysis",
    "Block",
    "MAX_RANDOM_PAIRS",
    "PartialsFn",
    "SpectroscopyOptions",
    "analyse",
    "chunk_rows",
    "local_partials",
    "plan_blocks",
    "read_block",
    "resolve_pairs",
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
