"""Scores on spectra: purity, top-k concentration, drift and absorption.

Definitions (docs/spectroscopy.md has the full text):

- **purity** of intensities ``I_1..I_K > 0``: ``1 - H / ln K`` with ``H = -sum p_i ln p_i`` and
  ``p_i = I_i / sum I``; ``K = 0`` gives 0 and ``K = 1`` gives 1 (no NaN). Range [0, 1]: 1 for
  one line, 0 for a flat spectrum of any width. It is scale invariant and moving intensity
  from a weaker to a stronger line never lowers it (entropy is Schur-concave).
- **top-k concentration**: the share of total intensity in the k strongest lines (1 when
  ``K <= k``, 0 for an empty spectrum).
- **drift** between spectra a and b: with ``Ta``, ``Tb`` their top-k feature sets and ``U`` their
  union, ``0.5 * (1 - |Ta & Tb| / |U|) + 0.5 * (1 - cos(a|U, b|U))``. Two empty spectra have
  drift 0; one empty spectrum against a non-empty one has drift 1.
- **absorption** a -> b: the features strong in a (per-token intensity >= max(absolute
  threshold, relative threshold * a's strongest line)) whose per-token intensity in b is below
  ``ratio`` times their intensity in a (absent counts as 0).

Pair scores are vectorised over batches of pairs: no Python loop over features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "TOPK",
    "Spectra",
    "entropy",
    "pair_scores",
    "purity",
    "topk_concentration",
]

#: The concentration columns of the metrics table.
TOPK = (10, 50, 100, 500)


def _positive(intensities: np.ndarray) -> np.ndarray:
    import numpy as np

    a = np.asarray(intensities, dtype=np.float64).ravel()
    return a[a > 0]


def entropy(intensities: np.ndarray) -> float:
    """Shannon entropy (nats) of the normalised positive intensities; 0 for K <= 1."""
    import numpy as np

    a = _positive(intensities)
    if a.size <= 1:
        return 0.0
    p = a / a.sum()
    return float(-(p * np.log(p)).sum())


def purity(intensities: np.ndarray) -> float:
    """Purity ``1 - H / ln K`` of a spectrum, in [0, 1] (see the module docstring).

    Args:
        intensities: feature intensities; entries <= 0 are not lines and are ignored.

    Returns:
        0.0 for an empty spectrum, 1.0 for a single line, else ``1 - H / ln K`` clipped to [0, 1].
    """
    import math

    a = _positive(intensities)
    k = a.size
    if k == 0:
        return 0.0
    if k == 1:
        return 1.0
    value = 1.0 - entropy(a) / math.log(k)
    return min(1.0, max(0.0, value))


def topk_concentration(sorted_desc: np.ndarray, ks: Sequence[int] = TOPK) -> dict[int, float]:
    """Share of total intensity held by the k strongest lines, for each k in ``ks``.

    Args:
        sorted_desc: positive intensities sorted from strongest to weakest.
        ks: the k values.

    Returns:
        k -> share in [0, 1] (0.0 for an empty spectrum).
    """
    import numpy as np

    a = np.asarray(sorted_desc, dtype=np.float64)
    total = float(a.sum())
    if a.size == 0 or total <= 0:
        return {k: 0.0 for k in ks}
    csum = np.cumsum(a)
    return {k: min(1.0, float(csum[min(k, a.size) - 1] / total)) for k in ks}


@dataclass(frozen=True)
class Spectra:
    """All spectra of one analysis in CSR form, each row sorted strongest line first.

    Attributes:
        indptr: int64 [N + 1]; input n's lines are ``indptr[n]:indptr[n+1]``.
        features: int32 feature ids.
        intensity: float32 per-token intensities (total intensity / analysed tokens).
        d_sae: number of features of the SAE.
    """

    indptr: np.ndarray
    features: np.ndarray
    intensity: np.ndarray
    d_sae: int

    @property
    def n_inputs(self) -> int:
        """Number of inputs (rows)."""
        return int(self.indptr.shape[0] - 1)

    def dense(self, rows: np.ndarray, top_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Dense float64 intensities [len(rows), d_sae] and the top-k membership mask.

        Args:
            rows: input indices.
            top_k: size of the top set (None: no mask, an all-False array is returned).
        """
        import numpy as np

        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        out = np.zeros((rows.size, self.d_sae), np.float64)
        top = np.zeros((rows.size, self.d_sae), bool)
        if total:
            row_of = np.repeat(np.arange(rows.size), lengths)
            offsets = np.cumsum(lengths) - lengths
            pos_in_row = np.arange(total) - np.repeat(offsets, lengths)
            src = np.repeat(starts, lengths) + pos_in_row
            cols = self.features[src]
            out[row_of, cols] = self.intensity[src]
            if top_k is not None:
                keep = pos_in_row < top_k
                top[row_of[keep], cols[keep]] = True
        return out, top


def pair_scores(
    spectra: Spectra,
    pairs: np.ndarray,
    *,
    top_k: int = 100,
    absorption_threshold: float = 0.0,
    absorption_rel: float = 0.1,
    absorption_ratio: float = 0.5,
    batch: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Drift and absorption for each pair (a, b) of input indices, vectorised per batch.

    Args:
        spectra: the spectra.
        pairs: int [P, 2] of input indices (validated by the caller).
        top_k: size of the top sets compared by drift.
        absorption_threshold: absolute per-token intensity a line of ``a`` needs to count.
        absorption_rel: relative threshold, as a fraction of ``a``'s strongest line.
        absorption_ratio: a strong line is absorbed if its intensity in ``b`` is below this
            fraction of its intensity in ``a``.
        batch: pairs per batch (default: 8 MiB per dense [batch, d_sae] float64 matrix; the
            batch holds about eight of them).

    Returns:
        ``(drift, absorption)`` as dicts of columns. drift: ``a, b, iou, cosine, drift,
        n_strong, n_absorbed, absorption`` (absorption = n_absorbed / n_strong, 0 if none);
        absorption: ``a, b, feature, intensity_a, intensity_b`` (one row per absorbed line).
    """
    import numpy as np

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if batch is None:
        batch = max(1, (8 << 20) // (8 * max(1, spectra.d_sae)))
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("iou", "cosine", "n_strong", "n_absorbed")}
    ab: dict[str, list[np.ndarray]] = {k: [] for k in ("a", "b", "feature", "intensity_a", "intensity_b")}
    for s in range(0, pairs.shape[0], batch):
        pa, pb = pairs[s:s + batch, 0], pairs[s:s + batch, 1]
        A, ta = spectra.dense(pa, top_k)
        B, tb = spectra.dense(pb, top_k)
        inter = np.count_nonzero(ta & tb, axis=1)
        union_mask = ta | tb
        union = np.count_nonzero(union_mask, axis=1)
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        au, bu = A * union_mask, B * union_mask
        na, nb = np.sqrt((au * au).sum(1)), np.sqrt((bu * bu).sum(1))
        dot = (au * bu).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where((na > 0) & (nb > 0), dot / (na * nb), np.where((na == 0) & (nb == 0), 1.0, 0.0))
        cols["iou"].append(iou)
        cols["cosine"].append(np.clip(cos, -1.0, 1.0))
        thr = np.maximum(absorption_threshold, absorption_rel * A.max(axis=1, initial=0.0))
        strong = (A > 0) & (A >= thr[:, None])
        absorbed = strong & (B < absorption_ratio * A)
        cols["n_strong"].append(np.count_nonzero(strong, axis=1))
        cols["n_absorbed"].append(np.count_nonzero(absorbed, axis=1))
        r, f = np.nonzero(absorbed)
        ab["a"].append(pa[r])
        ab["b"].append(pb[r])
        ab["feature"].append(f.astype(np.int32))
        ab["intensity_a"].append(A[r, f].astype(np.float32))
        ab["intensity_b"].append(B[r, f].astype(np.float32))

    def cat(parts: list[np.ndarray], dtype: str) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    iou, cos = cat(cols["iou"], "float64"), cat(cols["cosine"], "float64")
    n_strong, n_absorbed = cat(cols["n_strong"], "int64"), cat(cols["n_absorbed"], "int64")
    drift = {
        "a": pairs[:, 0], "b": pairs[:, 1], "iou": iou, "cosine": cos,
        "drift": np.clip(0.5 * (1 - iou) + 0.5 * (1 - cos), 0.0, 1.0),
        "n_strong": n_strong, "n_absorbed": n_absorbed,
        "absorption": np.where(n_strong > 0, n_absorbed / np.maximum(n_strong, 1), 0.0),
    }
    absorption = {
        "a": cat(ab["a"], "int64"), "b": cat(ab["b"], "int64"), "feature": cat(ab["feature"], "int32"),
        "intensity_a": cat(ab["intensity_a"], "float32"), "intensity_b": cat(ab["intensity_b"], "float32"),
    }
    return drift, absorption
