"""The numeric environment: what decides a result's last bits besides the inputs and options.

BLAS promises no summation order. The same float32 matmul can round differently with a
different row blocking (``chunk_tokens``), BLAS library or version, CPU kernel (OpenBLAS picks
one per CPU when it loads: Haswell, SkylakeX, Zen...) or BLAS thread count; numpy's own
reductions depend on its version and on the SIMD extensions it dispatches to. The engine
therefore puts the chunk rows and :func:`numeric_environment` into the analysis id: results are
bit-identical only when those are the same, and otherwise agree within :data:`RTOL`
(docs/spectroscopy.md, "Reproducibility").
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

__all__ = ["RTOL", "numeric_environment"]

#: Relative tolerance within which two runs that differ only in chunk_tokens or numeric
#: environment agree. A float32 dot product of d terms is off by at most about
#: d * u * sum_i |x_i w_i| (u = 2**-24, float32 unit roundoff), so two blockings differ by at
#: most 2 * d * u of the magnitude of the summed terms: 1.9e-6 at d = 16. Rounding errors of
#: long sums grow like sqrt(d) * u in practice (about 3e-6 at d = 2304), not like the bound.
#: Compare near-zero values against RTOL times the magnitude of what was summed, not their own
#: size: a sum that cancels to almost nothing keeps the absolute error of its terms.
RTOL = 1e-5


def numeric_environment() -> dict[str, Any]:
    """Fingerprint of this process's numeric environment (msgpack-able, deterministic).

    Only what can change the bits of a float computation enters: numpy's version and SIMD
    extensions, the machine architecture, and for numpy's BLAS its library, version, CPU kernel
    architecture, threading layer and thread count (read from threadpoolctl at each call, so a
    ``threadpool_limits`` block or ``OPENBLAS_NUM_THREADS`` shows). File paths, host names and
    times never enter, so the same installation on the same machine gives the same fingerprint.

    Returns:
        ``{"numpy", "machine", "simd": {"baseline", "found"}, "blas": [{"library", "version",
        "architecture", "threading_layer", "num_threads"}, ...]}``.
    """
    import numpy as np
    from threadpoolctl import threadpool_info

    try:
        simd = np.show_config(mode="dicts").get("SIMD Extensions", {})
    except (TypeError, ValueError):  # a numpy without mode="dicts": record no SIMD details
        simd = {}
    blas = [
        {"library": i.get("internal_api"), "version": i.get("version"),
         "architecture": i.get("architecture"), "threading_layer": i.get("threading_layer"),
         "num_threads": i.get("num_threads")}
        for i in _numpy_blas(threadpool_info())
    ]
    return {
        "numpy": np.__version__,
        "machine": platform.machine(),
        "simd": {"baseline": sorted(simd.get("baseline", [])), "found": sorted(simd.get("found", []))},
        "blas": sorted(blas, key=lambda b: tuple(str(v) for v in b.values())),
    }


def _numpy_blas(info: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The BLAS entries of ``threadpool_info()`` that numpy itself calls.

    Another package (scipy, torch) may load a second BLAS later in the process; numpy's matmul
    never uses it, and counting it would change the fingerprint mid-process. Wheels ship numpy's
    BLAS inside the package or beside it in ``numpy.libs``; a numpy built against a system BLAS
    has none there, and then every loaded BLAS is reported.
    """
    import numpy as np

    root = Path(np.__file__).resolve().parent
    homes = (root, root.parent / "numpy.libs")
    blas = [i for i in info if i.get("user_api") == "blas"]

    def inside(path: Any) -> bool:
        if not path:
            return False
        p = Path(path).resolve()
        return any(p.is_relative_to(h) for h in homes)

    own = [i for i in blas if inside(i.get("filepath"))]
    return own or blas
