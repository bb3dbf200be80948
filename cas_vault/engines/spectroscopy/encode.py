"""Float32 SAE encode and decode, one chunk of tokens at a time.

JumpReLU: ``pre = (x - b_dec) @ W_enc + b_enc``; ``F = ReLU(pre) * [pre > threshold]``.
ReLU:     ``F = ReLU((x - b_dec) @ W_enc + b_enc)``.  Decode: ``x_hat = F @ W_dec + b_dec``.

Two rewrites keep the encode within a few percent of the bare matmul:

- ``b_dec`` is folded into the bias once (``b_enc - b_dec @ W_enc``), so the [rows, d] input is
  never copied to subtract it;
- ``ReLU(pre) * [pre > threshold]`` equals ``pre * [pre > max(threshold, 0)]``, so one compare
  and one in-place multiply implement both activations (ReLU is threshold 0).

:class:`Encoder` holds those precomputed vectors and reusable buffers, so encoding chunk after
chunk allocates nothing new beyond the first chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ...errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np

    from .sae import SAE

__all__ = ["Encoder", "decode", "default_chunk_rows", "encode", "iter_encode"]

#: Bytes of the [rows, d_sae] feature buffer a chunk may use by default (16 MiB).
CHUNK_BYTES = 16 << 20


def default_chunk_rows(d_sae: int, d: int = 0) -> int:
    """Token rows per chunk so the [rows, d_sae] float32 buffer stays near 16 MiB.

    Large enough for BLAS to run at full speed (>= 64 rows), small enough that the bias,
    threshold and reduction passes over the buffer run mostly in cache, and memory is bounded
    by a few chunks whatever the number of tokens. (Measured: 4,096-row chunks of a 16k-feature
    SAE spend twice as long outside the matmul as 256-row ones.)
    """
    return int(max(64, min(8192, CHUNK_BYTES // (4 * max(1, d_sae + d)))))


class Encoder:
    """Chunked float32 encoder/decoder for one SAE.

    Args:
        sae: the SAE.
    """

    def __init__(self, sae: SAE) -> None:
        import numpy as np

        self.sae = sae
        # Fold b_dec into the bias so (x - b_dec) is never materialised: (x-b)W + c = xW + (c - bW).
        if sae.apply_b_dec_to_input:
            self.bias = (sae.b_enc - sae.b_dec @ sae.W_enc).astype(np.float32)
        else:
            self.bias = sae.b_enc
        theta = sae.threshold if sae.threshold is not None else np.zeros(sae.d_sae, np.float32)
        self.theta = np.maximum(theta, 0).astype(np.float32)

    def encode(
        self, x: np.ndarray, out: np.ndarray | None = None, mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """Encode ``x`` [rows, d] (any float dtype; computed in float32) to features [rows, d_sae].

        The encoder holds no mutable state, so one instance may serve several threads (dask
        workers share it); pass ``out``/``mask`` buffers to avoid allocating per chunk.

        Args:
            x: the activations.
            out: optional float32 [rows, d_sae] buffer to write into (reused across chunks).
            mask: optional bool [rows, d_sae] scratch buffer.

        Returns:
            The feature activations (``out`` if given); every entry is >= 0.

        Raises:
            InvalidInputError: if ``x`` has the wrong width.
        """
        import numpy as np

        x = _as_f32_2d(x, self.sae.d)
        rows = x.shape[0]
        if out is None:
            out = np.empty((rows, self.sae.d_sae), np.float32)
        np.matmul(x, self.sae.W_enc, out=out)
        out += self.bias
        if mask is None:
            mask = np.empty((rows, self.sae.d_sae), bool)
        np.greater(out, self.theta, out=mask)
        np.multiply(out, mask, out=out)
        return out

    def decode(self, f: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Decode features [rows, d_sae] to reconstructions [rows, d] (float32)."""
        import numpy as np

        if out is None:
            out = np.empty((f.shape[0], self.sae.d), np.float32)
        np.matmul(f, self.sae.W_dec, out=out)
        out += self.sae.b_dec
        return out


def encode(x: np.ndarray, sae: SAE) -> np.ndarray:
    """Encode ``x`` [..., d] with ``sae`` in float32; returns [..., d_sae]."""
    x2 = _as_f32_2d(x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x, sae.d)
    f = Encoder(sae).encode(x2)
    return f.reshape(*x.shape[:-1], sae.d_sae)


def decode(f: np.ndarray, sae: SAE) -> np.ndarray:
    """Decode features [..., d_sae] to [..., d] in float32."""
    import numpy as np

    f2 = np.ascontiguousarray(f.reshape(-1, f.shape[-1]), np.float32)
    return Encoder(sae).decode(f2).reshape(*f.shape[:-1], sae.d)


def iter_encode(chunks: Iterable[np.ndarray], sae: SAE) -> Iterator[np.ndarray]:
    """Encode an iterable of [rows, d] chunks, reusing one feature buffer.

    Each yielded array is only valid until the next one is requested (it is the same buffer);
    copy it to keep it. Memory stays at one [rows, d_sae] buffer plus its mask.
    """
    import numpy as np

    enc = Encoder(sae)
    buf: np.ndarray | None = None
    mask: np.ndarray | None = None
    for x in chunks:
        rows = x.shape[0]
        if buf is None or mask is None or buf.shape[0] < rows:
            buf = np.empty((rows, sae.d_sae), np.float32)
            mask = np.empty((rows, sae.d_sae), bool)
        yield enc.encode(x, out=buf[:rows], mask=mask[:rows])


def _as_f32_2d(x: np.ndarray, d: int) -> np.ndarray:
    import numpy as np

    if x.ndim != 2 or x.shape[1] != d:
        raise InvalidInputError(
            f"activations of shape {tuple(x.shape)} do not fit an SAE with d={d}: expected [rows, {d}]"
        )
    return np.ascontiguousarray(x, dtype=np.float32)
