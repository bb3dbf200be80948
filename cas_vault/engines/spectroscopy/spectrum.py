"""Spectra and per-input metrics, accumulated block by block.

A *block* is a slab ``[n_b, t_b, d]`` of the activations: several whole inputs, or a token
range of one long input. :func:`block_partial` encodes and decodes it and reduces it to
per-input partial sums (intensities per feature, active counts) and per-token statistics;
:class:`Accumulator` adds the partials of each input in block order and, once an input's
last block is in, :func:`finalize` turns them into the input's spectrum and metrics row.

The same functions run in one process (engine.py) and on dask workers (distributed.py), and
partials are combined in the same order in both, so the two give identical numbers.

Activity: an entry F[t, i] is *active* if ``F[t, i] > max(min_activation, min_activation_rel *
max_i F[t, i])``: an absolute floor and an optional per-token relative one (the seed had only
the absolute 1e-6, whose meaning depends on the SAE's scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .scores import TOPK, entropy, purity, topk_concentration

if TYPE_CHECKING:
    import numpy as np

    from .encode import Encoder

__all__ = [
    "METRIC_COLUMNS",
    "Accumulator",
    "BlockPartial",
    "InputResult",
    "Thresholds",
    "block_partial",
    "finalize",
    "format_spectrum",
]

#: Column order of ``strata/metrics.parquet`` (docs/spectroscopy.md documents each).
METRIC_COLUMNS = (
    "input", "seq_len", "n_tokens", "bos_excluded", "n_features", "features_per_token",
    "l0_mean", "l1_mean", "sse_mean", "x_norm_sq_mean", "fvu", "rel_error",
    "intensity_total", "intensity_per_token", "entropy", "purity",
    *(f"topk_{k}" for k in TOPK),
)


@dataclass(frozen=True)
class Thresholds:
    """When an SAE entry counts as active.

    Attributes:
        min_activation: absolute floor (the seed's 1e-6).
        min_activation_rel: fraction of the token's strongest feature (0 disables it).
    """

    min_activation: float = 1e-6
    min_activation_rel: float = 0.0


@dataclass
class BlockPartial:
    """Partial statistics of one block.

    Attributes:
        n0: first input of the block.
        t0: first analysed token (relative to the first analysed position).
        intensity: float64 [n_b, d_sae], sum over the block's tokens of active F.
        counts: int64 [n_b, d_sae], tokens at which each feature is active.
        l0, l1, sse, x_norm_sq: float32 [n_b, t_b] per-token statistics.
        xsum: float64 [n_b, d], sum of x over the block's tokens (for the FVU's mean).
    """

    n0: int
    t0: int
    intensity: np.ndarray
    counts: np.ndarray
    l0: np.ndarray
    l1: np.ndarray
    sse: np.ndarray
    x_norm_sq: np.ndarray
    xsum: np.ndarray


def block_partial(x: np.ndarray, encoder: Encoder, thresholds: Thresholds, n0: int = 0, t0: int = 0) -> BlockPartial:
    """Encode, decode and reduce one block ``x`` [n_b, t_b, d] (any float dtype -> float32).

    Memory: a few [n_b * t_b, d_sae] float32 buffers (the block size bounds it).
    """
    import numpy as np

    n_b, t_b, d = x.shape
    d_sae = encoder.sae.d_sae
    X = np.ascontiguousarray(x, dtype=np.float32).reshape(n_b * t_b, d)
    F = encoder.encode(X)
    x_hat = encoder.decode(F)
    np.subtract(X, x_hat, out=x_hat)  # x_hat now holds the residual
    sse = np.einsum("ij,ij->i", x_hat, x_hat)
    x_norm_sq = np.einsum("ij,ij->i", X, X)
    del x_hat
    if thresholds.min_activation_rel > 0:
        floor = np.maximum(thresholds.min_activation, thresholds.min_activation_rel * F.max(axis=1, initial=0.0))
        active = F > floor[:, None].astype(np.float32)
    else:
        active = F > np.float32(thresholds.min_activation)
    np.multiply(F, active, out=F)  # keep active entries only: what spectra and L1 measure
    l0 = np.count_nonzero(active, axis=1).astype(np.float32)
    l1 = F.sum(axis=1, dtype=np.float32)
    intensity = F.reshape(n_b, t_b, d_sae).sum(axis=1, dtype=np.float64)
    counts = active.reshape(n_b, t_b, d_sae).sum(axis=1, dtype=np.int64)
    xsum = X.reshape(n_b, t_b, d).sum(axis=1, dtype=np.float64)
    return BlockPartial(
        n0, t0, intensity, counts, l0.reshape(n_b, t_b), l1.reshape(n_b, t_b),
        sse.reshape(n_b, t_b), x_norm_sq.reshape(n_b, t_b), xsum,
    )


@dataclass
class _Open:
    intensity: np.ndarray
    counts: np.ndarray
    xsum: np.ndarray
    tokens: dict[str, list[np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class InputResult:
    """One input's spectrum, metrics and per-token statistics.

    Attributes:
        metrics: one row of the metrics table (``METRIC_COLUMNS``).
        features: int32 feature ids, strongest first (ties: lower id first).
        intensity: float32 total intensities, same order.
        n_active: int32 number of tokens at which each feature was active.
        tokens: per-token float32 arrays ``l0, l1, sse, x_norm_sq`` (analysed positions only).
    """

    metrics: dict[str, Any]
    features: np.ndarray
    intensity: np.ndarray
    n_active: np.ndarray
    tokens: dict[str, np.ndarray]


class Accumulator:
    """Adds block partials per input, in block order, and finalises finished inputs.

    Args:
        d_sae: SAE width. d: model width.
        seq_len: tokens per input before BOS removal. first: first analysed position (0 or 1).
    """

    TOKEN_KEYS = ("l0", "l1", "sse", "x_norm_sq")

    def __init__(self, d_sae: int, d: int, seq_len: int, first: int) -> None:
        self.d_sae, self.d, self.seq_len, self.first = d_sae, d, seq_len, first
        self.n_tokens = max(0, seq_len - first)
        self._open: dict[int, _Open] = {}

    def add(self, part: BlockPartial) -> list[tuple[int, InputResult]]:
        """Add one block's partials; returns the inputs it completed, in input order."""
        import numpy as np

        done: list[tuple[int, InputResult]] = []
        n_b, t_b = part.l0.shape
        for j in range(n_b):
            n = part.n0 + j
            state = self._open.get(n)
            if state is None:
                state = self._open[n] = _Open(
                    np.zeros(self.d_sae, np.float64), np.zeros(self.d_sae, np.int64),
                    np.zeros(self.d, np.float64), {k: [] for k in self.TOKEN_KEYS},
                )
            state.intensity += part.intensity[j]
            state.counts += part.counts[j]
            state.xsum += part.xsum[j]
            for k in self.TOKEN_KEYS:
                state.tokens[k].append(getattr(part, k)[j])
            if part.t0 + t_b >= self.n_tokens:
                del self._open[n]
                done.append((n, self._finish(n, state)))
        return done

    def empty(self, n: int) -> InputResult:
        """The result of an input with no analysed token (e.g. T = 1 with BOS excluded)."""
        import numpy as np

        state = _Open(np.zeros(self.d_sae), np.zeros(self.d_sae, np.int64), np.zeros(self.d),
                      {k: [] for k in self.TOKEN_KEYS})
        return self._finish(n, state)

    def _finish(self, n: int, s: _Open) -> InputResult:
        import numpy as np

        tokens = {k: (np.concatenate(v) if v else np.zeros(0, np.float32)) for k, v in s.tokens.items()}
        return finalize(n, s.intensity, s.counts, s.xsum, tokens, self.seq_len, self.first)


def finalize(
    n: int, intensity: np.ndarray, counts: np.ndarray, xsum: np.ndarray,
    tokens: dict[str, np.ndarray], seq_len: int, first: int,
) -> InputResult:
    """Turn one input's summed partials into its spectrum and metrics row."""
    import numpy as np

    n_tok = int(tokens["l0"].shape[0])
    feats = np.flatnonzero(counts > 0).astype(np.int32)
    vals = intensity[feats]
    order = np.lexsort((feats, -vals))  # strongest first; equal intensities by feature id
    feats, vals = feats[order], vals[order]
    n_active = counts[feats].astype(np.int32)
    K = int(feats.size)
    total = float(vals.sum())

    def mean(key: str) -> float | None:
        return float(tokens[key].astype(np.float64).mean()) if n_tok else None

    sse_total = float(tokens["sse"].astype(np.float64).sum())
    xsq_total = float(tokens["x_norm_sq"].astype(np.float64).sum())
    variance = xsq_total - float(xsum @ xsum) / n_tok if n_tok else 0.0
    # A single token has no variance around its own mean; the FVU is then undefined (null).
    fvu = sse_total / variance if n_tok > 1 and variance > 1e-12 * max(xsq_total, 1e-30) else None
    conc = topk_concentration(vals)
    row: dict[str, Any] = {
        "input": n, "seq_len": seq_len, "n_tokens": n_tok, "bos_excluded": first == 1,
        "n_features": K, "features_per_token": K / n_tok if n_tok else None,
        "l0_mean": mean("l0"), "l1_mean": mean("l1"), "sse_mean": mean("sse"),
        "x_norm_sq_mean": mean("x_norm_sq"), "fvu": fvu,
        "rel_error": sse_total / xsq_total if xsq_total > 0 else None,
        "intensity_total": total, "intensity_per_token": total / n_tok if n_tok else None,
        "entropy": entropy(vals), "purity": purity(vals),
        **{f"topk_{k}": conc[k] for k in TOPK},
    }
    for key in ("fvu", "rel_error", "intensity_total"):
        if row[key] is not None and not math.isfinite(row[key]):
            row[key] = None
    return InputResult(row, feats, vals.astype(np.float32), n_active, tokens)


def format_spectrum(
    features: np.ndarray, intensity: np.ndarray, *, top: int = 20, title: str = "spectrum",
    n_tokens: int | None = None,
) -> str:
    """Render a spectrum as a small text table (strongest lines first); empty spectra included.

    Args:
        features: feature ids, strongest first.
        intensity: their intensities, same order.
        top: lines to show.
        title: heading.
        n_tokens: analysed tokens, to show per-token intensities.

    Returns:
        The text (no trailing newline).
    """
    k = len(features)
    head = f"{title}: {k} feature{'s' if k != 1 else ''}"
    if k == 0:
        return head + " (empty: no feature was active above the threshold)"
    total = float(sum(float(v) for v in intensity))
    lines = [head, f"{'rank':>5}  {'feature':>8}  {'intensity':>12}  {'per token':>10}  {'share':>6}"]
    for r in range(min(top, k)):
        v = float(intensity[r])
        per_tok = f"{v / n_tokens:10.4g}" if n_tokens else f"{'-':>10}"
        share = v / total if total > 0 else 0.0
        lines.append(f"{r + 1:>5}  {int(features[r]):>8}  {v:12.6g}  {per_tok}  {share:6.1%}")
    if k > top:
        lines.append(f"  ... {k - top} more")
    return "\n".join(lines)
