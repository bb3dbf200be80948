"""A committed specimen's tensor, opened lazily: how the engine reads activations and SAE weights.

A module of its own so that the SAE loaders (:mod:`.sae`) and the orchestration
(:mod:`.engine`) share it without importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import zarr

    from ...specimen import CommittedSpecimen

__all__ = ["open_tensor"]


def open_tensor(spec: CommittedSpecimen, name: str) -> zarr.Array:
    """A committed specimen's tensor ``strata/<name>.zarr`` as a lazy read-only zarr array.

    Slicing it reads only the chunk objects touched (each verified against its digest).

    Raises:
        NotFoundError: if the specimen has no such tensor (listing the ones it has).
    """
    return spec.tensor(name)
