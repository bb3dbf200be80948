"""SAE spectroscopy: sparse-autoencoder feature "spectra" of activation tensors.

An activations tensor ([N, T, d] or [T, d]) is encoded with an SAE; for every input (row n)
the features active at any analysed position form its spectrum. The engine writes a derived
specimen whose parents are the activations and the SAE specimens (docs/spectroscopy.md)::

    from cas_vault import Vault
    result = Vault.open("v").spectroscopy("acts", sae="my_sae")
    result.specimen_id, result.metrics

Modules, one concept each:

- :mod:`.sae`: SAE weights and their loaders (specimen, .npz, .safetensors);
- :mod:`.encode`: float32 encode/decode (JumpReLU and ReLU), chunk by chunk;
- :mod:`.spectrum`: per-block partial statistics, spectra and per-input metrics;
- :mod:`.scores`: purity, top-k concentration, drift and absorption (vectorised);
- :mod:`.analysis`: the computation, block by block with bounded memory, and its options;
- :mod:`.tensor`: a committed specimen's tensor, opened lazily;
- :mod:`.engine`: orchestration over a vault, and the derived specimen;
- :mod:`.distributed`: the same computation over dask arrays (dask.distributed);
- :mod:`.numerics`: the numeric environment that enters the analysis id, and the tolerance.

Everything numeric is numpy float32; torch and TransformerLens are never imported.
"""

from __future__ import annotations

__all__ = ["ENGINE_NAME", "ENGINE_VERSION"]

ENGINE_NAME = "cas_vault.spectroscopy"
#: Bumped whenever a stored number could change for the same inputs and options.
ENGINE_VERSION = "1.0.0"
