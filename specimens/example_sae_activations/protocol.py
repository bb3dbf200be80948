"""Example specimen: synthetic residual-stream activations with a BOS outlier (no model needed).

Each input is a "prompt" of SEQ_LEN tokens. Every token is a sparse combination of a few
directions of a fixed dictionary (the features a good SAE should find) plus noise, and
position 0 is a huge-norm vector, as the BOS position of real language models is. Writes:

- strata/activations.zarr: float32 [N_INPUTS, SEQ_LEN, D_MODEL];
- strata/config.msgpack: seeds, sizes and the (synthetic) layer, 0.

The SAE in example_sae_weights is built from the same dictionary, so spectroscopy should
recover the planted features, except at BOS, which lights up most of the dictionary.
Run by `vault demo`, or by hand: `python protocol.py`, then `vault commit example_sae_activations`.
"""

from pathlib import Path

import numpy as np

from cas_vault import SpecimenStorage

DICTIONARY_SEED = 2024  # shared with example_sae_weights: both rebuild the same dictionary
SEED = 7
N_INPUTS = 12
SEQ_LEN = 33
D_MODEL = 128
D_SAE = 512
ACTIVE_PER_TOKEN = 3
BOS_NORM = 40.0
LAYER = 0


def dictionary(seed: int = DICTIONARY_SEED, d_sae: int = D_SAE, d: int = D_MODEL) -> np.ndarray:
    """Unit-norm feature directions [d_sae, d]."""
    w = np.random.default_rng(seed).standard_normal((d_sae, d)).astype(np.float32)
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def run_experiment() -> None:
    storage = SpecimenStorage(Path(__file__).parent)
    rng = np.random.default_rng(SEED)
    atoms = dictionary()
    # Each input favours its own small "topic" of features, so spectra differ between inputs.
    codes = np.zeros((N_INPUTS, SEQ_LEN, D_SAE), np.float32)
    for n in range(N_INPUTS):
        topic = rng.choice(D_SAE, size=24, replace=False)
        for t in range(SEQ_LEN):
            chosen = rng.choice(topic, size=ACTIVE_PER_TOKEN, replace=False)
            codes[n, t, chosen] = 3.0 + rng.exponential(1.0, ACTIVE_PER_TOKEN)
    x = codes @ atoms + 0.05 * rng.standard_normal((N_INPUTS, SEQ_LEN, D_MODEL)).astype(np.float32)
    bos = rng.standard_normal(D_MODEL).astype(np.float32)
    x[:, 0, :] = BOS_NORM * bos / np.linalg.norm(bos) + 0.05 * rng.standard_normal((N_INPUTS, D_MODEL))
    storage.write_tensors("activations", x.astype(np.float32))
    storage.write_config({
        "seed": SEED, "dictionary_seed": DICTIONARY_SEED, "n_inputs": N_INPUTS, "seq_len": SEQ_LEN,
        "d_model": D_MODEL, "d_sae": D_SAE, "active_per_token": ACTIVE_PER_TOKEN,
        "bos_norm": BOS_NORM, "layer": LAYER, "dtype": "float32",
    })


if __name__ == "__main__":
    run_experiment()
