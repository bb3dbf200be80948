"""Analysis engines: computations that read committed specimens and write derived ones.

Each engine lives in its own subpackage and records its inputs as the parents of the specimen
it writes, so `vault log --graph` shows exactly what every result was computed from.

- :mod:`cas_vault.engines.spectroscopy`: SAE feature spectra of activation tensors.
"""
