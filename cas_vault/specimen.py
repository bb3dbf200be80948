"""Reading a committed specimen: its files, metrics, config and tensors, from the object store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import canonical
from .commit import Commit, TreeEntry
from .errors import NotFoundError
from .storage import check_name

if TYPE_CHECKING:
    from .repository import Repository
    from .tensors import TensorSummary

__all__ = ["CommittedSpecimen"]


class CommittedSpecimen:
    """Read access to a committed specimen, straight from the object store.

    Args:
        vault: the repository holding it.
        specimen_id: the specimen.
        commit: its commit.
    """

    def __init__(self, vault: Repository, specimen_id: str, commit: Commit) -> None:
        self.vault = vault
        self.specimen_id = specimen_id
        self.commit = commit

    @property
    def files(self) -> dict[str, TreeEntry]:
        """Relative path -> tree entry."""
        return dict(self.commit.tree)

    def object_path(self, rel: str) -> Path:
        """Path of the object holding file ``rel`` (for zero-copy readers such as DuckDB).

        Raises:
            NotFoundError: if the specimen has no such file.
        """
        entry = self.commit.tree.get(rel)
        if entry is None:
            raise NotFoundError(f"specimen {self.specimen_id} has no file {rel!r}")
        return self.vault.objects.path(entry.digest)

    def read_bytes(self, rel: str) -> bytes:
        """Return file ``rel``'s bytes, verified against its digest."""
        self.object_path(rel)
        return self.vault.objects.get(self.commit.tree[rel].digest)

    def read_metrics(self, name: str = "metrics") -> Any:
        """Read ``strata/<name>.parquet`` as a polars DataFrame."""
        import polars as pl

        return pl.read_parquet(self.object_path(f"strata/{name}.parquet"))

    def read_config(self, name: str = "config") -> dict[str, Any]:
        """Read ``strata/<name>.msgpack``."""
        return canonical.unpackb(self.read_bytes(f"strata/{name}.msgpack"))

    def tensors(self) -> list[str]:
        """Names of the specimen's tensors (``strata/<name>.zarr``)."""
        from .tensors import list_tree_tensors

        return list_tree_tensors(self.commit.tree)

    def tensor_summaries(self) -> list[TensorSummary]:
        """Every Zarr array of the specimen, wherever it is (``strata/``, ``runs/<run_id>/``).

        Returns:
            Dtype, shape, chunks, logical bytes (shape x item size), stored bytes and distinct
            chunk objects of each, read from its metadata document alone (no chunk is read).
        """
        from .tensors import summarize_tree_tensors

        return summarize_tree_tensors(self.vault.objects, self.commit.tree)

    def tensor(self, name: str, *, verify: bool = True) -> Any:
        """Open tensor ``name`` as a lazy, read-only ``zarr.Array`` over the object store.

        Reading one row of a large tensor reads the one chunk holding it; every chunk read is
        verified against its digest unless ``verify=False``.

        Raises:
            NotFoundError: if the specimen has no such tensor (the message lists those it has).
            IntegrityError: on reading a chunk whose object is missing or altered.
        """
        from .tensors import open_tree_tensor

        check_name(name, "tensor")
        tree = {p: e.digest for p, e in self.commit.tree.items()}
        return open_tree_tensor(self.vault.objects, tree, name,
                                where=f"specimen {self.specimen_id}", verify=verify)
