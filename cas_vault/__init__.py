"""cas-vault: a local-first, content-addressed archive for machine-learning experiments.

The public API is imported lazily, so that ``vault --help`` does not pay for numpy, polars,
zarr or DuckDB::

    from cas_vault import Vault, SpecimenStorage, VaultQuery
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Vault": "cas_vault.vault",
    "SpecimenStorage": "cas_vault.storage",
    "Commit": "cas_vault.commit",
    "VaultError": "cas_vault.errors",
    "seed_everything": "cas_vault.seeding",
    "VaultQuery": "cas_vault.query",
}

__all__ = ["__version__", *_EXPORTS]

# The package wires its features into the seal pipeline; the core names none of them.
from . import hooks as _hooks  # noqa: E402  (a few lines, no imports of its own)

_hooks.register("prepare", "cas_vault.logger:prepare_commit")  # crashed runs' step-wise logs
_hooks.register("sealed", "cas_vault.catalog:after_commit")    # index the commit
_hooks.register("batch_done", "cas_vault.catalog:update_after_batch")

if TYPE_CHECKING:
    from .commit import Commit
    from .errors import VaultError
    from .seeding import seed_everything
    from .storage import SpecimenStorage
    from .query import VaultQuery
    from .vault import Vault


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cas_vault' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
