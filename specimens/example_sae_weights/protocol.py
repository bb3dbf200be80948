"""Example specimen: a seeded JumpReLU SAE whose decoder is the dictionary behind
example_sae_activations (no training, no downloads).

Writes the five tensors the spectroscopy engine reads from an SAE specimen:

- strata/W_enc.zarr [D_MODEL, D_SAE], strata/b_enc.zarr [D_SAE],
- strata/W_dec.zarr [D_SAE, D_MODEL], strata/b_dec.zarr [D_MODEL],
- strata/threshold.zarr [D_SAE] (JumpReLU thresholds);

and strata/config.msgpack. The encoder is the decoder's transpose (a tied SAE), so a token
made of a few dictionary directions encodes to roughly those directions' magnitudes.
Run by `vault demo`, or by hand: `python protocol.py`, then `vault commit example_sae_weights`.
"""

from pathlib import Path

import numpy as np

from cas_vault import SpecimenStorage

DICTIONARY_SEED = 2024  # the same dictionary as example_sae_activations
D_MODEL = 128
D_SAE = 512
THRESHOLD = 2.0


def dictionary(seed: int = DICTIONARY_SEED, d_sae: int = D_SAE, d: int = D_MODEL) -> np.ndarray:
    """Unit-norm feature directions [d_sae, d] (same construction as example_sae_activations)."""
    w = np.random.default_rng(seed).standard_normal((d_sae, d)).astype(np.float32)
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def run_experiment() -> None:
    storage = SpecimenStorage(Path(__file__).parent)
    w_dec = dictionary()
    storage.write_tensors("W_enc", np.ascontiguousarray(w_dec.T))
    storage.write_tensors("b_enc", np.zeros(D_SAE, np.float32))
    storage.write_tensors("W_dec", w_dec)
    storage.write_tensors("b_dec", np.zeros(D_MODEL, np.float32))
    storage.write_tensors("threshold", np.full(D_SAE, THRESHOLD, np.float32))
    storage.write_config({
        "dictionary_seed": DICTIONARY_SEED, "d_model": D_MODEL, "d_sae": D_SAE,
        "activation": "jumprelu", "threshold": THRESHOLD, "tied": True,
    })


if __name__ == "__main__":
    run_experiment()
