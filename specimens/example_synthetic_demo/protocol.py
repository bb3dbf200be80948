"""Example specimen: seeded synthetic training curves and activations (no ML dependencies).

Writes, like the seed's example:
- strata/metrics.parquet: 100 steps of loss, accuracy and entropy;
- strata/config.msgpack: the settings below;
- strata/activations.zarr: a 100 x 512 float32 activation matrix.

Run by `vault demo`, or by hand: `python protocol.py`, then `vault commit example_synthetic_demo`.
"""

from pathlib import Path

import numpy as np

from cas_vault import SpecimenStorage

SEED = 1219
STEPS = 100
D_MODEL = 512


def run_experiment() -> None:
    storage = SpecimenStorage(Path(__file__).parent)
    rng = np.random.default_rng(SEED)
    step = np.arange(STEPS)
    # An exponentially decaying loss with noise, accuracy rising towards 0.95, and the
    # predictive entropy falling with the loss: the shape of a healthy training run.
    loss = 2.3 * np.exp(-step / 25.0) + 0.05 + 0.02 * rng.standard_normal(STEPS)
    accuracy = np.clip(0.95 - 0.85 * np.exp(-step / 20.0) + 0.01 * rng.standard_normal(STEPS), 0, 1)
    entropy = np.log(10) * np.exp(-step / 40.0) + 0.1 + 0.01 * rng.standard_normal(STEPS)
    storage.write_metrics({"step": step, "loss": loss, "accuracy": accuracy, "entropy": entropy})
    storage.write_config({"seed": SEED, "steps": STEPS, "d_model": D_MODEL, "lr": 3e-4})
    activations = rng.standard_normal((STEPS, D_MODEL), dtype=np.float32)
    storage.write_tensors("activations", activations)


if __name__ == "__main__":
    run_experiment()
