"""The same analysis with dask: blocks become tasks over ``dask.array.from_zarr``.

For activation tensors too large for one machine: the tensor stays in the vault's zarr store,
each block is a dask task that reads its slab, encodes it and reduces it to partial sums, and
only those partials (per-input sums, no [tokens, d_sae] arrays) travel back. They are combined
in block order by the same :class:`~.spectrum.Accumulator` as the one-process path, on the same
block plan, so the two give the same numbers.

Pass ``scheduler="dask"`` (dask's current scheduler: a dask.distributed Client if one is
active, else threads), a scheduler address (``tcp://host:8786``; a client is opened for the run
and closed after it) or a ``dask.distributed.Client``. Needs the ``dask`` extra. Workers must
see the vault's directory at the same path (a shared filesystem), since they read the chunks.

The workers' BLAS does the arithmetic, so :func:`environments` asks them for their numeric
environment (dask's nanny starts workers with one BLAS thread, unlike this process): that, not
this process's, is what the analysis id and the manifest record.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ... import canonical
from ...errors import InvalidInputError
from . import numerics
from .analysis import analyse
from .spectrum import BlockPartial, Thresholds, block_partial

if TYPE_CHECKING:
    import numpy as np

    from .analysis import Analysis, Block, SpectroscopyOptions
    from .encode import Encoder
    from .sae import SAE

__all__ = ["analyse_dask", "connect", "dask_partials", "environments"]


def _partial(x: np.ndarray, encoder: Encoder, thresholds: Thresholds, n0: int, t0: int) -> BlockPartial:
    if x.ndim == 2:
        x = x[None]
    return block_partial(x, encoder, thresholds, n0, t0)


def dask_partials(
    blocks: Sequence[Block], array: Any, encoder: Encoder, thresholds: Thresholds, first: int,
    *, client: Any = None, window: int | None = None,
) -> Iterator[BlockPartial]:
    """Compute block partials as dask tasks, yielding them in block order.

    Args:
        blocks: the block plan.
        array: a zarr array (wrapped with ``dask.array.from_zarr``), a dask array, or any
            array ``dask.array.from_array`` accepts.
        encoder: the encoder (sent to the workers once).
        thresholds: activity thresholds.
        first: first analysed position.
        client: a dask.distributed Client, or None for dask's current scheduler.
        window: blocks in flight at once (bounds the partials held; default 4 per worker).
    """
    import dask
    import dask.array as da

    import zarr

    if isinstance(array, da.Array):
        X = array
    elif isinstance(array, zarr.Array):
        X = da.from_zarr(array)  # tasks read the vault's chunk objects themselves
    else:
        X = da.from_array(array)
    if client is not None:
        [enc] = client.scatter([encoder], broadcast=True)
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    else:
        enc = dask.delayed(encoder, pure=True)
        n_workers = 2
    window = window or 4 * n_workers
    task = dask.delayed(_partial, pure=True)

    def delayed_block(b: Block) -> Any:
        n0, n1, t0, t1 = b
        slab = X[first + t0:first + t1] if X.ndim == 2 else X[n0:n1, first + t0:first + t1]
        return task(slab, enc, thresholds, n0, t0)

    for s in range(0, len(blocks), window):
        batch = [delayed_block(b) for b in blocks[s:s + window]]
        if client is not None:
            results = client.gather(client.compute(batch))
        else:
            results = dask.compute(*batch)
        yield from results


def analyse_dask(
    array: Any, sae: SAE, options: SpectroscopyOptions | None = None, pairs: np.ndarray | None = None,
    *, scheduler: Any = "dask", window: int | None = None,
) -> Analysis:
    """:func:`~.analysis.analyse` with the blocks computed by dask.

    Args:
        array: the activations (zarr array from the vault, a dask array, or numpy).
        sae: the SAE. options, pairs: as :func:`~.analysis.analyse`.
        scheduler: ``"dask"`` for dask's current scheduler, a scheduler address, or a
            dask.distributed Client.
        window: blocks in flight at once.

    Raises:
        InvalidInputError: if dask is not installed, or as :func:`~.analysis.analyse`.
    """
    with connect(scheduler) as client:
        def produce(blocks: Sequence[Block], arr: Any, encoder: Encoder, thresholds: Thresholds,
                    first: int) -> Iterator[BlockPartial]:
            return dask_partials(blocks, arr, encoder, thresholds, first, client=client, window=window)

        return analyse(array, sae, options, pairs, partials=produce)


def _require_dask() -> None:
    try:
        import dask  # noqa: F401
        import dask.array  # noqa: F401
    except ImportError:
        raise InvalidInputError(
            "the dask path needs dask: pip install 'cas-vault[dask]' (or run without --dask)"
        ) from None


@contextmanager
def connect(scheduler: Any) -> Iterator[Any]:
    """The dask.distributed Client a run uses, open for the duration of the block.

    Args:
        scheduler: ``"dask"`` (the Client dask currently uses, if any), a scheduler address
            (a Client is opened here and closed on exit) or a dask.distributed Client.

    Yields:
        The Client, or None when dask computes in this process (threads or processes).

    Raises:
        InvalidInputError: if dask is not installed, the scheduler is neither of those, or the
            address cannot be reached.
    """
    _require_dask()
    own_client = None
    if isinstance(scheduler, str) and scheduler != "dask":
        if "://" not in scheduler:
            raise InvalidInputError(
                f"scheduler must be 'dask', a scheduler address such as tcp://host:8786, or a "
                f"dask.distributed Client, not {scheduler!r}"
            )
        try:
            from distributed import Client
        except ImportError:
            raise InvalidInputError(
                "a scheduler address needs dask.distributed: pip install 'cas-vault[dask]'"
            ) from None
        try:
            own_client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise InvalidInputError(f"cannot reach the dask scheduler at {scheduler} ({exc})") from None
    client = own_client if own_client is not None else (
        _current_client() if isinstance(scheduler, str) else scheduler)
    try:
        yield client
    finally:
        if own_client is not None:
            own_client.close()


def _current_client() -> Any:
    """The dask.distributed Client ``dask.compute`` would use now, or None for a local scheduler."""
    import dask.base

    try:
        from distributed import Client
    except ImportError:
        return None
    owner = getattr(dask.base.get_scheduler(), "__self__", None)
    return owner if isinstance(owner, Client) else None


def environments(client: Any) -> list[dict[str, Any]]:
    """The distinct numeric environments the blocks of a run are computed in, in a fixed order.

    Args:
        client: a dask.distributed Client (its workers' environments, asked now; a worker that
            joins later is not known), or None (dask computes in this process).

    Returns:
        One :func:`~.numerics.numeric_environment` per distinct environment.
    """
    if client is None:
        return [numerics.numeric_environment()]
    found = client.run(numerics.numeric_environment).values()
    distinct = {canonical.packb(env): env for env in found}
    return [distinct[k] for k in sorted(distinct)]
