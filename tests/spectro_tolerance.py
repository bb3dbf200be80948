"""The float tolerance the spectroscopy tests compare with, in one place.

RTOL = 1e-5 of the magnitude of the summed terms. BLAS promises no summation order, so another
blocking, thread count or CPU may round a float32 dot product of d terms differently, by at most
about 2 * d * u of that magnitude (u = 2**-24): 1.9e-6 at d = 16, a 5x margin.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from cas_vault.engines.spectroscopy.numerics import RTOL


def assert_tables_close(got: pl.DataFrame, want: pl.DataFrame, name: str = "table") -> None:
    """Float columns within RTOL (relative, plus RTOL x the column's magnitude), the rest equal.

    Integer columns are compared exactly: the callers' data is checked to lie clear of every
    threshold by more than the tolerance (assert_clear_of_boundaries and
    test_fixture_is_clear_of_decision_boundaries). Spectra are matched by
    (input, feature); a rank may differ only between lines whose intensities are within the
    tolerance of each other.
    """
    assert got.columns == want.columns and got.height == want.height, name
    ranked = "rank" in want.columns
    if ranked:
        got, want = got.sort("input", "feature"), want.sort("input", "feature")
    for col, dtype in want.schema.items():
        if dtype.is_float():
            w = want[col].cast(pl.Float64).to_numpy()
            finite = np.abs(w[np.isfinite(w)])
            atol = RTOL * float(finite.max()) if finite.size else 0.0
            np.testing.assert_allclose(got[col].cast(pl.Float64).to_numpy(), w, rtol=RTOL, atol=atol,
                                       err_msg=f"{name}.{col}")
        elif col != "rank":
            assert got[col].equals(want[col]), f"{name}.{col}"
    if ranked and want.height:
        # got's ranks must list want's intensities strongest first, up to the tolerance.
        order = np.lexsort((got["rank"].to_numpy(), got["input"].to_numpy()))
        intensity = want["intensity"].cast(pl.Float64).to_numpy()[order]
        same_input = np.diff(got["input"].to_numpy()[order]) == 0
        tol = RTOL * float(np.abs(intensity).max())
        assert (np.diff(intensity)[same_input] <= tol).all(), f"{name}.rank"
