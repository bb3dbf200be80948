"""Spectroscopy math without a vault: encode/decode, spectra, metrics, purity, drift, absorption.

Reference values are computed independently here with the seed's literal formulas (plain
loops and unfolded expressions), not with the engine's helpers. Results of differently blocked
computations are compared within the engine's stated tolerance (``numerics.RTOL``), never bit
for bit: BLAS does not promise the same rounding for another blocking, thread count or CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cas_vault.engines.spectroscopy.encode import Encoder, decode, encode, iter_encode
from cas_vault.engines.spectroscopy.analysis import (
    Analysis,
    SpectroscopyOptions,
    analyse,
    plan_blocks,
    resolve_pairs,
)
from cas_vault.engines.spectroscopy.engine import load_pairs
from cas_vault.engines.spectroscopy.numerics import RTOL, numeric_environment
from spectro_tolerance import assert_tables_close
from cas_vault.engines.spectroscopy.sae import SAE, load_sae_file, load_sae_npz, weights_digest
from cas_vault.engines.spectroscopy.scores import Spectra, pair_scores, purity, topk_concentration
from cas_vault.engines.spectroscopy.spectrum import format_spectrum
from cas_vault.errors import InvalidInputError, NotFoundError

D, D_SAE = 16, 48


def make_sae(seed: int = 0, jump: bool = True, d: int = D, d_sae: int = D_SAE, b_dec_scale: float = 0.1) -> SAE:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d_sae, d)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    arrays = {
        "W_enc": w.T.copy(), "W_dec": w, "b_enc": (0.1 * rng.standard_normal(d_sae)).astype(np.float32),
        "b_dec": (b_dec_scale * rng.standard_normal(d)).astype(np.float32),
    }
    if jump:
        arrays["threshold"] = rng.uniform(0.2, 0.8, d_sae).astype(np.float32)
    return SAE.from_arrays(arrays, source="test")


def acts(n: int = 4, t: int = 10, d: int = D, seed: int = 1, bos: float = 25.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    x[:, 0] *= bos  # a BOS-like high-norm position 0
    return x


# Tolerance for results of differently blocked float32 matmuls (other chunk_tokens, BLAS thread
# count or CPU). BLAS promises no summation order: one dot product of d terms is off by at most
# about d * u * sum_i |x_i w_i| (u = 2**-24, float32 unit roundoff), so two blockings differ by at
# most 2 * d * u = 1.9e-6 of the magnitude of the summed terms at d = 16. RTOL = 1e-5 (the value
# docs/spectroscopy.md states) leaves a 5x margin. The absolute part is RTOL times that magnitude,
# because an entry that cancels to near 0 keeps the absolute error of the terms it summed.
def term_scale(x: np.ndarray, sae: SAE) -> np.ndarray:
    """Per entry, the magnitude of the terms the encoder sums: |x| @ |W_enc| + |b_dec @ W_enc| + |b_enc|.

    The encoder computes ``x @ W_enc + (b_enc - b_dec @ W_enc)``, so these are its summands.
    """
    w = np.abs(sae.W_enc.astype(np.float64))
    x2 = np.abs(x.reshape(-1, x.shape[-1]).astype(np.float64))
    return x2 @ w + np.abs(sae.b_dec.astype(np.float64)) @ w + np.abs(sae.b_enc.astype(np.float64))


def assert_clear_of_boundaries(x: np.ndarray, sae: SAE, options: SpectroscopyOptions | None = None,
                               analysis: Analysis | None = None, pairs: np.ndarray | None = None) -> None:
    """Check the data decide nothing by less than the rounding another blocking may change.

    Integer results (active features, counts, strong and absorbed lines) come from comparing
    floats with thresholds. Comparing them exactly across blockings is sound only if no
    compared value lies within the tolerance of its threshold, which this asserts: the JumpReLU
    threshold and activity floor against RTOL x the magnitude of the summed terms (a rigorous
    bound), and, with ``pairs``, the absorption cut-offs of ``analysis`` against 100 x RTOL of
    the line's intensity (a sum over tokens, whose rounding has no tight bound).
    """
    options = options or SpectroscopyOptions()
    first = 0 if options.keep_bos else 1
    xs = x[:, first:] if x.ndim == 3 else x[first:]
    x64 = xs.reshape(-1, xs.shape[-1]).astype(np.float64)
    pre = (x64 - sae.b_dec) @ sae.W_enc.astype(np.float64) + sae.b_enc
    scale = term_scale(xs, sae)
    theta = np.maximum(sae.threshold if sae.threshold is not None else np.zeros(sae.d_sae), 0)
    assert (np.abs(pre - theta) > RTOL * scale).all(), "an entry lies within the tolerance of its threshold"
    on = pre > theta
    assert (np.abs(pre - options.min_activation)[on] > RTOL * scale[on]).all(), "an entry is at the activity floor"
    if pairs is None or analysis is None:
        return
    lines: dict[int, dict[int, float]] = {}
    for (n,), group in analysis.spectra.group_by(["input"]):
        lines[int(n)] = dict(zip(group["feature"].to_list(), group["intensity_per_token"].to_list()))
    for a, b in pairs:
        la, lb = lines.get(int(a), {}), lines.get(int(b), {})
        cut = max([options.absorption_threshold] + [options.absorption_rel * v for v in la.values()])
        for f, v in la.items():
            assert abs(v - cut) > 100 * RTOL * v, f"line {f} of input {a} is at the strong-line cut"
            if v >= cut:
                assert abs(lb.get(f, 0.0) - options.absorption_ratio * v) > 100 * RTOL * v, f"line {f} is at the absorption cut"


def reference_encode(x: np.ndarray, sae: SAE) -> np.ndarray:
    """The seed's literal JumpReLU / ReLU formula, in float64."""
    pre = (x.astype(np.float64) - sae.b_dec) @ sae.W_enc.astype(np.float64) + sae.b_enc
    relu = np.maximum(pre, 0)
    if sae.threshold is None:
        return relu
    return relu * (pre > sae.threshold)


# -- encode / decode ---------------------------------------------------------------------------
@pytest.mark.parametrize("jump", [True, False])
def test_encode_matches_literal_formula(jump: bool) -> None:
    sae = make_sae(jump=jump)
    x = acts(3, 7).reshape(-1, D)
    f = encode(x, sae)
    ref = reference_encode(x, sae)
    assert f.dtype == np.float32 and f.shape == (21, D_SAE)
    np.testing.assert_allclose(f, ref, rtol=1e-4, atol=1e-4)
    assert (f >= 0).all()
    # the active pattern is the literal one (away from the threshold boundary)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    theta = sae.threshold if jump else np.zeros(D_SAE)
    clear = np.abs(pre - np.maximum(theta, 0)) > 1e-3
    assert ((f > 0) == (ref > 0))[clear].all()


def test_negative_threshold_still_relu() -> None:
    sae = SAE.from_arrays({"W_enc": np.eye(2, dtype=np.float32), "b_enc": np.zeros(2), "W_dec": np.eye(2),
                           "b_dec": np.zeros(2), "threshold": np.array([-1.0, 0.5])})
    f = encode(np.array([[-0.5, 0.4], [0.3, 0.7]], np.float32), sae)
    # Exact on purpose: with an identity W_enc every product is exact and the other terms are
    # zeros, so any summation order gives these bits.
    np.testing.assert_array_equal(f, np.array([[0.0, 0.0], [0.3, 0.7]], np.float32))


def test_apply_b_dec_to_input_false() -> None:
    base = make_sae(jump=False)
    arrays = {"W_enc": base.W_enc, "b_enc": base.b_enc, "W_dec": base.W_dec, "b_dec": base.b_dec}
    sae = SAE.from_arrays(arrays, apply_b_dec_to_input=False)
    x = acts(1, 5).reshape(-1, D)
    np.testing.assert_allclose(encode(x, sae), np.maximum(x @ base.W_enc + base.b_enc, 0), rtol=1e-5, atol=1e-5)
    assert sae.digest != base.digest


def test_decode_and_3d_shapes() -> None:
    sae = make_sae()
    x = acts(2, 5)
    f = encode(x, sae)
    assert f.shape == (2, 5, D_SAE)
    xh = decode(f, sae)
    np.testing.assert_allclose(xh, f.astype(np.float64) @ sae.W_dec + sae.b_dec, rtol=1e-4, atol=1e-4)


def test_iter_encode_chunks_equal_whole() -> None:
    sae = make_sae()
    x = acts(4, 10).reshape(-1, D)
    whole = encode(x, sae)
    parts = [c.copy() for c in iter_encode((x[i:i + 7] for i in range(0, len(x), 7)), sae)]
    # Another row blocking may round differently (see term_scale); JumpReLU zeros stay zeros
    # because no entry lies within the tolerance of its threshold.
    assert_clear_of_boundaries(x, sae, SpectroscopyOptions(keep_bos=True))
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=RTOL, atol=RTOL * term_scale(x, sae).max())
    assert ((np.concatenate(parts) > 0) == (whole > 0)).all()


def test_float16_and_float64_inputs_computed_in_float32() -> None:
    sae = make_sae()
    x = acts(1, 6).reshape(-1, D)
    f16 = Encoder(sae).encode(x.astype(np.float16))
    assert f16.dtype == np.float32
    # ||x||^2 of a BOS-like row overflows float16 (the seed's bug); float32 keeps it finite.
    big = np.full((1, D), 300.0, np.float16)
    a = analyse(big[None].repeat(2, axis=1), sae, SpectroscopyOptions(keep_bos=True))
    assert math.isfinite(a.metrics["x_norm_sq_mean"][0]) and a.metrics["x_norm_sq_mean"][0] > 65504


def test_wrong_width_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="d=16"):
        encode(np.zeros((3, 5), np.float32), make_sae())
    with pytest.raises(InvalidInputError, match="expects d=16"):
        analyse(np.zeros((2, 3, 5), np.float32), make_sae())


# -- SAE container and loaders ------------------------------------------------------------------
def test_sae_validation_messages() -> None:
    good = make_sae()
    arrays = {"W_enc": good.W_enc, "b_enc": good.b_enc, "W_dec": good.W_dec, "b_dec": good.b_dec}
    with pytest.raises(InvalidInputError, match="lacks tensor"):
        SAE.from_arrays({k: v for k, v in arrays.items() if k != "b_dec"})
    with pytest.raises(InvalidInputError, match="transposed"):
        SAE.from_arrays({**arrays, "W_dec": good.W_dec.T})
    with pytest.raises(InvalidInputError, match="NaN"):
        SAE.from_arrays({**arrays, "b_enc": np.full(D_SAE, np.nan)})
    with pytest.raises(InvalidInputError, match="threshold"):
        SAE.from_arrays({**arrays, "threshold": np.zeros(3)})


def test_npz_and_safetensors_give_the_same_digest(tmp_path) -> None:
    sae = make_sae()
    arrays = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec,
              "threshold": sae.threshold}
    np.savez(tmp_path / "params.npz", **arrays)
    from_npz = load_sae_npz(tmp_path / "params.npz")
    assert from_npz.digest == sae.digest == weights_digest(arrays)
    assert from_npz.info["file_digest"] and from_npz.activation == "jumprelu"
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    safetensors_numpy.save_file(arrays, str(tmp_path / "sae.safetensors"))
    from_st = load_sae_file(tmp_path / "sae.safetensors")
    assert from_st.digest == sae.digest
    np.testing.assert_array_equal(from_st.W_dec, sae.W_dec)


def test_sae_file_errors(tmp_path) -> None:
    with pytest.raises(NotFoundError):
        load_sae_file(tmp_path / "missing.npz")
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(InvalidInputError, match=".npz or .safetensors"):
        load_sae_file(tmp_path / "w.pt")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidInputError):
        load_sae_npz(tmp_path / "bad.npz")


# -- purity and concentration ------------------------------------------------------------------
def test_purity_edge_cases_are_defined() -> None:
    assert purity(np.array([])) == 0.0
    assert purity(np.zeros(5)) == 0.0
    assert purity(np.array([3.0])) == 1.0
    assert purity(np.array([0.0, 7.0, 0.0])) == 1.0
    assert purity(np.ones(10)) == pytest.approx(0.0, abs=1e-12)  # the seed scored this 0.4
    assert purity(np.array([1.0, 1e-9])) > 0.99


positive = arrays(np.float64, st.integers(2, 40), elements=st.floats(1e-3, 1e3))


@given(positive)
def test_purity_range_and_scale_invariance(v: np.ndarray) -> None:
    p = purity(v)
    assert 0.0 <= p <= 1.0 and not math.isnan(p)
    assert purity(v * 37.5) == pytest.approx(p, abs=1e-9)
    assert purity(v[::-1]) == pytest.approx(p, abs=1e-9)


@given(positive, st.data())
def test_purity_rises_when_a_weaker_line_feeds_a_stronger_one(v: np.ndarray, data: st.DataObject) -> None:
    i, j = data.draw(st.integers(0, len(v) - 1)), data.draw(st.integers(0, len(v) - 1))
    assume(i != j)
    lo, hi = (i, j) if v[i] <= v[j] else (j, i)
    frac = data.draw(st.floats(0.0, 0.99))
    w = v.copy()
    delta = frac * w[lo]
    w[lo] -= delta
    w[hi] += delta
    assert purity(w) >= purity(v) - 1e-9  # a Robin-Hood transfer in reverse lowers the entropy


@given(positive, st.floats(1.0, 100.0))
def test_purity_rises_with_the_strongest_line(v: np.ndarray, factor: float) -> None:
    w = v.copy()
    w[np.argmax(w)] *= factor
    assert purity(w) >= purity(v) - 1e-9


@given(positive)
def test_topk_concentration_is_monotone_in_k(v: np.ndarray) -> None:
    s = np.sort(v)[::-1]
    c = topk_concentration(s, (1, 2, 5, 10, 50, 100, 500))
    vals = list(c.values())
    assert all(0 <= a <= b <= 1.0 for a, b in zip(vals, vals[1:]))
    assert c[500] == pytest.approx(1.0)
    assert c[1] == pytest.approx(s[0] / s.sum())


def test_topk_of_empty_spectrum() -> None:
    assert topk_concentration(np.array([])) == {10: 0.0, 50: 0.0, 100: 0.0, 500: 0.0}


# -- spectra and metrics -----------------------------------------------------------------------
def reference_input(x: np.ndarray, sae: SAE, first: int, thr: float = 1e-6) -> dict:
    """One input [T, d] by the seed's formulas (loops), BOS handled by slicing."""
    xs = x[first:].astype(np.float64)
    f = reference_encode(xs, sae)
    active = f > thr
    intensity = {i: float(f[active[:, i], i].sum()) for i in range(f.shape[1]) if active[:, i].any()}
    xh = f @ sae.W_dec.astype(np.float64) + sae.b_dec
    sse = ((xs - xh) ** 2).sum(1)
    var = ((xs - xs.mean(0)) ** 2).sum()
    return {"intensity": intensity, "l0": active.sum(1).mean(), "l1": (f * active).sum(1).mean(),
            "sse": sse.mean(), "fvu": sse.sum() / var, "n": len(xs)}


@pytest.mark.parametrize("keep_bos", [False, True])
def test_metrics_and_spectra_match_reference(keep_bos: bool) -> None:
    sae = make_sae()
    x = acts(3, 9)
    a = analyse(x, sae, SpectroscopyOptions(keep_bos=keep_bos))
    first = 0 if keep_bos else 1
    assert a.metrics.columns[:3] == ["input", "seq_len", "n_tokens"]
    for n in range(3):
        ref = reference_input(x[n], sae, first)
        row = a.metrics.row(n, named=True)
        assert row["n_tokens"] == ref["n"] == 9 - first and row["bos_excluded"] is (not keep_bos)
        assert row["n_features"] == len(ref["intensity"])
        assert row["l0_mean"] == pytest.approx(ref["l0"], rel=1e-5)
        assert row["l1_mean"] == pytest.approx(ref["l1"], rel=1e-4)
        assert row["sse_mean"] == pytest.approx(ref["sse"], rel=1e-3)
        assert row["fvu"] == pytest.approx(ref["fvu"], rel=1e-3)
        lines = a.spectra.filter(a.spectra["input"] == n).sort("rank")
        got = dict(zip(lines["feature"].to_list(), lines["intensity"].to_list()))
        assert got.keys() == ref["intensity"].keys()
        for k, v in ref["intensity"].items():
            assert got[k] == pytest.approx(v, rel=1e-4)
        assert (np.diff(lines["intensity"].to_numpy()) <= 0).all()  # strongest first
        assert row["purity"] == pytest.approx(purity(np.array(list(ref["intensity"].values()))), abs=1e-5)
    tok = a.tokens
    assert tok.height == 3 * (9 - first)
    assert tok["position"].min() == first


def test_bos_is_excluded_by_default_and_dominates_when_kept() -> None:
    sae = make_sae(d_sae=256)
    x = acts(4, 12, bos=60.0)
    x[:, 1:] *= 0.2  # ordinary tokens activate few features
    excl = analyse(x, sae)
    kept = analyse(x, sae, SpectroscopyOptions(keep_bos=True))
    assert (excl.metrics["n_tokens"] == 11).all() and (kept.metrics["n_tokens"] == 12).all()
    # the one BOS token lights up many features: K grows far more than one token's worth
    assert (kept.metrics["n_features"] > excl.metrics["n_features"] + 40).all()
    assert (kept.metrics["sse_mean"] > 5 * excl.metrics["sse_mean"]).all()


def test_per_token_means_do_not_track_length() -> None:
    """Same token distribution, different lengths: per-token means agree, sums do not."""
    sae = make_sae()
    rng = np.random.default_rng(3)
    long = rng.standard_normal((1, 401, D)).astype(np.float32)
    short = long[:, :41]
    a, b = analyse(long, sae).metrics, analyse(short, sae).metrics
    assert a["l0_mean"][0] == pytest.approx(b["l0_mean"][0], rel=0.2)
    assert a["intensity_per_token"][0] == pytest.approx(b["intensity_per_token"][0], rel=0.2)
    assert a["intensity_total"][0] > 5 * b["intensity_total"][0]


@pytest.mark.parametrize("chunk", [1, 5, 9, 16, 1000])
def test_results_with_other_chunk_tokens_agree_within_tolerance(chunk: int) -> None:
    sae = make_sae()
    x = acts(5, 10)
    pairs = np.array([[0, 1], [2, 3]])
    base = analyse(x, sae, SpectroscopyOptions(chunk_tokens=10_000), pairs=pairs)
    other = analyse(x, sae, SpectroscopyOptions(chunk_tokens=chunk), pairs=pairs)
    assert other.chunk_rows == chunk and (other.n_blocks > 1) == (chunk < 45)
    assert_clear_of_boundaries(x, sae, analysis=base, pairs=pairs)
    for name in ("metrics", "spectra", "tokens", "drift", "absorption"):
        assert_tables_close(getattr(other, name), getattr(base, name), name)


def test_plan_blocks_covers_everything_once() -> None:
    for n, t, rows in [(5, 10, 7), (3, 4, 100), (2, 25, 10), (1, 1, 1)]:
        cells = [(i, j) for (n0, n1, t0, t1) in plan_blocks(n, t, rows) for i in range(n0, n1) for j in range(t0, t1)]
        assert sorted(cells) == [(i, j) for i in range(n) for j in range(t)]
        assert all((n1 - n0) * (t1 - t0) <= max(rows, t) for n0, n1, t0, t1 in plan_blocks(n, t, rows))
    assert plan_blocks(4, 0, 10) == []


def test_two_dimensional_activations_are_one_input() -> None:
    sae = make_sae()
    x = acts(1, 8)
    a2, a3 = analyse(x[0], sae), analyse(x, sae)
    assert a2.metrics.height == 1
    assert_clear_of_boundaries(x, sae)
    assert_tables_close(a2.metrics, a3.metrics, "metrics")


def test_empty_spectrum_stores_and_prints() -> None:
    sae = SAE.from_arrays({"W_enc": np.eye(D, D_SAE, dtype=np.float32), "b_enc": np.full(D_SAE, -100.0),
                           "W_dec": np.eye(D_SAE, D, dtype=np.float32), "b_dec": np.zeros(D)})
    a = analyse(acts(2, 5), sae, pairs=np.array([[0, 1]]))
    row = a.metrics.row(0, named=True)
    assert row["n_features"] == 0 and row["purity"] == 0.0 and row["topk_10"] == 0.0 and row["l0_mean"] == 0.0
    assert a.spectra.height == 0
    assert a.drift["drift"][0] == 0.0 and a.drift["iou"][0] == 1.0  # two empty spectra agree
    text = format_spectrum(np.array([], np.int32), np.array([], np.float32), title="input 0")
    assert "0 features" in text and "empty" in text


def test_no_analysed_token() -> None:
    """T = 1 with BOS excluded: every input is an empty spectrum with null means, no crash."""
    a = analyse(acts(3, 1), make_sae())
    assert (a.metrics["n_tokens"] == 0).all() and (a.metrics["n_features"] == 0).all()
    assert a.metrics["l0_mean"].null_count() == 3 and a.metrics["fvu"].null_count() == 3
    assert not a.metrics["purity"].is_nan().any()


def test_relative_activity_threshold() -> None:
    sae = make_sae()
    x = acts(2, 8)
    absolute = analyse(x, sae)
    relative = analyse(x, sae, SpectroscopyOptions(min_activation_rel=0.5))
    assert (relative.metrics["l0_mean"] < absolute.metrics["l0_mean"]).all()
    assert (relative.metrics["n_features"] <= absolute.metrics["n_features"]).all()
    f = reference_encode(x[0, 1:], sae)
    expected_l0 = (f > 0.5 * f.max(axis=1, keepdims=True)).sum(1).mean()
    assert relative.metrics["l0_mean"][0] == pytest.approx(expected_l0)


# -- drift and absorption ----------------------------------------------------------------------
def reference_drift(a: dict[int, float], b: dict[int, float], k: int) -> float:
    """The seed's drift with a Python loop (ties broken by feature id)."""
    top = lambda s: {f for f, _ in sorted(s.items(), key=lambda kv: (-kv[1], kv[0]))[:k]}
    ta, tb = top(a), top(b)
    union = ta | tb
    if not union:
        return 0.0
    iou = len(ta & tb) / len(union)
    va = np.array([a.get(f, 0.0) for f in sorted(union)])
    vb = np.array([b.get(f, 0.0) for f in sorted(union)])
    na, nb = np.linalg.norm(va), np.linalg.norm(vb)
    cos = va @ vb / (na * nb) if na and nb else 0.0
    return min(1.0, max(0.0, 0.5 * (1 - iou) + 0.5 * (1 - cos)))


def random_spectra(seed: int, n: int, d_sae: int) -> tuple[Spectra, list[dict[int, float]]]:
    rng = np.random.default_rng(seed)
    dicts, feats, vals, indptr = [], [], [], [0]
    for i in range(n):
        k = int(rng.integers(0, d_sae // 2)) if i else 0  # input 0 is empty
        f = rng.choice(d_sae, k, replace=False)
        v = rng.exponential(1.0, k).astype(np.float32)
        order = np.lexsort((f, -v))
        f, v = f[order], v[order]
        feats.append(f)
        vals.append(v)
        indptr.append(indptr[-1] + k)
        dicts.append({int(a): float(b) for a, b in zip(f, v)})
    s = Spectra(np.array(indptr), np.concatenate(feats).astype(np.int32), np.concatenate(vals), d_sae)
    return s, dicts


@pytest.mark.parametrize("top_k", [1, 5, 100])
def test_vectorised_drift_matches_loop(top_k: int) -> None:
    spectra, dicts = random_spectra(0, 12, 64)
    pairs = np.array([(i, j) for i in range(12) for j in range(12)])
    drift, _ = pair_scores(spectra, pairs, top_k=top_k, batch=17)
    for (i, j), got in zip(pairs, drift["drift"]):
        assert got == pytest.approx(reference_drift(dicts[i], dicts[j], top_k), abs=1e-6)
    assert drift["drift"][pairs[:, 0] == pairs[:, 1]].max() < 1e-9
    one_empty = (pairs[:, 0] == 0) & (pairs[:, 1] != 0)
    assert (drift["drift"][one_empty] == 1.0).all()


def test_absorption_matches_definition() -> None:
    spectra, dicts = random_spectra(1, 6, 40)
    pairs = np.array([[1, 2], [3, 3], [4, 0], [0, 5]])
    drift, absorbed = pair_scores(spectra, pairs, absorption_threshold=0.2, absorption_rel=0.3,
                                  absorption_ratio=0.5)
    for p, (a, b) in enumerate(pairs):
        sa, sb = dicts[a], dicts[b]
        thr = max(0.2, 0.3 * max(sa.values(), default=0.0))
        strong = {f for f, v in sa.items() if v >= thr}
        expected = {f for f in strong if sb.get(f, 0.0) < 0.5 * sa[f]}
        rows = (absorbed["a"] == a) & (absorbed["b"] == b)
        assert set(absorbed["feature"][rows].tolist()) == expected
        assert drift["n_strong"][p] == len(strong) and drift["n_absorbed"][p] == len(expected)
    assert drift["n_absorbed"][1] == 0  # nothing is absorbed into itself
    assert drift["absorption"][2] == 1.0  # everything strong vanishes into an empty spectrum


# -- pairs ---------------------------------------------------------------------------------------
def test_pairs_files(tmp_path) -> None:
    (tmp_path / "p.csv").write_text("a,b,note\n0,1,x\n2,3,y\n")
    np.testing.assert_array_equal(load_pairs(tmp_path / "p.csv"), [[0, 1], [2, 3]])
    (tmp_path / "p.json").write_text("[[0, 1], [1, 2]]")
    np.testing.assert_array_equal(load_pairs(tmp_path / "p.json"), [[0, 1], [1, 2]])
    (tmp_path / "bad.csv").write_text("x,y\n0,1\n")
    with pytest.raises(InvalidInputError, match="'a' and 'b'"):
        load_pairs(tmp_path / "bad.csv")
    (tmp_path / "bad.json").write_text('[[0, "1"]]')
    with pytest.raises(InvalidInputError, match="integer pairs"):
        load_pairs(tmp_path / "bad.json")
    with pytest.raises(NotFoundError):
        load_pairs(tmp_path / "none.csv")


def test_pairs_are_validated_and_random_pairs_are_seeded() -> None:
    opts = SpectroscopyOptions()
    with pytest.raises(InvalidInputError, match="outside 0..3"):
        resolve_pairs(np.array([[0, 4]]), 4, opts)
    seeded = SpectroscopyOptions(random_pairs=20, seed=5)
    p1, p2 = resolve_pairs(None, 6, seeded), resolve_pairs(None, 6, seeded)
    np.testing.assert_array_equal(p1, p2)
    assert (p1[:, 0] != p1[:, 1]).all() and p1.max() < 6
    assert not np.array_equal(p1, resolve_pairs(None, 6, SpectroscopyOptions(random_pairs=20, seed=6)))


@pytest.mark.parametrize("bad", [
    {"min_activation": -1.0}, {"min_activation_rel": 1.5}, {"top_k": 0}, {"layer": -1},
    {"absorption_ratio": float("nan")}, {"chunk_tokens": 0},
])
def test_bad_options_are_rejected(bad: dict) -> None:
    with pytest.raises(InvalidInputError):
        SpectroscopyOptions(**bad).validate()


def test_layer_zero_is_valid() -> None:
    assert SpectroscopyOptions(layer=0).validate().layer == 0


def test_engine_never_imports_torch_or_transformer_lens() -> None:
    """The whole analysis runs with torch and transformer_lens made unimportable."""
    import subprocess
    import sys

    code = """
import importlib.machinery, sys
class Boom:  # a module that fails the moment anything really imports it
    def create_module(self, spec):
        raise ImportError('blocked ' + spec.name)
    def exec_module(self, module):
        raise ImportError('blocked')
class Block:  # libraries may probe for torch (find_spec) but never import it
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformer_lens'):
            return importlib.machinery.ModuleSpec(name, Boom())
        return None
sys.meta_path.insert(0, Block())
import numpy as np
from cas_vault.engines.spectroscopy.analysis import analyse
from cas_vault.engines.spectroscopy.sae import SAE
w = np.eye(4, 8, dtype=np.float32)
sae = SAE.from_arrays({'W_enc': w, 'b_enc': np.zeros(8), 'W_dec': w.T, 'b_dec': np.zeros(4)})
a = analyse(np.ones((2, 3, 4), np.float32), sae, pairs=np.array([[0, 1]]))
assert a.metrics.height == 2 and a.drift.height == 1
print('ok')
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# -- numeric environment -------------------------------------------------------------------------
def test_numeric_environment_is_deterministic_and_tracks_blas_threads() -> None:
    from threadpoolctl import threadpool_limits

    from cas_vault import canonical

    env = numeric_environment()
    assert canonical.packb(numeric_environment()) == canonical.packb(env)  # same process, same bytes
    assert env["numpy"] == np.__version__ and env["blas"], env
    assert all(set(b) == {"library", "version", "architecture", "threading_layer", "num_threads"} for b in env["blas"])
    assert "/" not in str(env) and "\\" not in str(env)  # no file paths: they never change the bits
    with threadpool_limits(limits=1, user_api="blas"):
        single = numeric_environment()
    assert all(b["num_threads"] == 1 for b in single["blas"])
    assert numeric_environment() == env  # back to what it was outside the block


def test_numeric_environment_counts_only_numpys_blas() -> None:
    """A BLAS loaded by another package (scipy, torch) never runs numpy's matmul."""
    from pathlib import Path

    from cas_vault.engines.spectroscopy.numerics import _numpy_blas

    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    own = {"user_api": "blas", "internal_api": "openblas", "filepath": str(libs / "libopenblas.so")}
    other = {"user_api": "blas", "internal_api": "mkl", "filepath": "/opt/torch/lib/libmkl_rt.so"}
    omp = {"user_api": "openmp", "internal_api": "openmp", "filepath": str(libs / "libgomp.so")}
    assert _numpy_blas([other, own, omp]) == [own]
    assert _numpy_blas([other, omp]) == [other]  # numpy built against a system BLAS: report it
