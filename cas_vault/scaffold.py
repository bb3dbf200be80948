"""Scaffolding: ``vault new`` creates a specimen's working directory.

``specimens/<id>/`` gets a manifest (domain, method, model, tags, parents, metadata), a
``protocol.py`` template that writes results with :class:`~cas_vault.storage.SpecimenStorage`,
a ``field_notes.md`` template and an empty ``strata/``. The directory is built under a temp name
and renamed, so a failed scaffold leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import canonical
from .atomic import fsync_many, write_durable
from .commit import utc_now
from .errors import AlreadyExistsError, InvalidInputError
from .ids import validate_id
from .taxonomies import vault_taxonomy
from .workdir import MANIFEST_NAME, WorkingCopies, check_tags

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["FIELD_NOTES_TEMPLATE", "LAYOUTS", "PROTOCOL_TEMPLATE", "RUNS_PROTOCOL_TEMPLATE",
           "SCAFFOLD_FILES", "new_specimen", "scaffold_files"]

PROTOCOL_TEMPLATE = '''"""Protocol for specimen {specimen_id}: {domain} / {method}.

Run it with `python protocol.py` (or `vault run {specimen_id}`), then seal the results with
`vault commit {specimen_id} -m "what this run shows"`.
"""

from pathlib import Path

import numpy as np

from cas_vault import SpecimenStorage


def run_experiment() -> None:
    storage = SpecimenStorage(Path(__file__).parent)
    rng = np.random.default_rng(0)

    # Metrics: a dict of equally long columns (or a polars DataFrame) -> strata/metrics.parquet
    steps = np.arange(100)
    storage.write_metrics({{"step": steps, "loss": np.exp(-steps / 30) + 0.01 * rng.random(100)}})

    # Config -> strata/config.msgpack
    storage.write_config({{"seed": 0, "steps": 100}})

    # Tensors -> strata/<name>.zarr (chunked, read back lazily)
    storage.write_tensors("activations", rng.standard_normal((100, 768), dtype=np.float32))


if __name__ == "__main__":
    run_experiment()
'''

RUNS_PROTOCOL_TEMPLATE = '''"""Protocol for specimen {specimen_id}: {domain} / {method}.

Every execution is a run of its own, runs/<run_id>/ (named by its start time). Run it with
`python protocol.py` (or `vault run {specimen_id}`), then seal the new runs with
`vault commit {specimen_id} -m "what these runs show"`; run it again later for another run.
"""

from pathlib import Path

import numpy as np

from cas_vault import SpecimenStorage


def run_experiment() -> None:
    storage = SpecimenStorage(Path(__file__).parent)  # a new run
    rng = np.random.default_rng()

    # The run's manifest: what this run is -> runs/<run_id>/manifest.msgpack
    storage.write_manifest({{"config": {{"steps": 100}}}})

    # Metrics -> runs/<run_id>/metrics.parquet (with a run_id column)
    steps = np.arange(100)
    storage.write_metrics({{"step": steps, "loss": np.exp(-steps / 30) + 0.01 * rng.random(100)}})

    # Tensors -> runs/<run_id>/<name>.zarr (chunked, read back lazily)
    storage.write_tensors("activations", rng.standard_normal((100, 768), dtype=np.float32))


if __name__ == "__main__":
    run_experiment()
'''

#: ``vault new --layout``: results in ``strata/`` (the seed's first API), or one directory per
#: run in ``runs/`` (the original's later API).
LAYOUTS = ("strata", "runs")

FIELD_NOTES_TEMPLATE = """# Field notes: {specimen_id}

- domain: {domain}
- method: {method}
- created: {created}

## Hypothesis

## Methodology

## Observations
"""


#: The files ``vault new`` writes into a working directory, besides its empty results directory.
SCAFFOLD_FILES = (MANIFEST_NAME, "protocol.py", "field_notes.md")


def scaffold_files(manifest: Mapping[str, Any]) -> dict[str, bytes]:
    """The bytes ``vault new`` writes for a specimen with this manifest.

    ``protocol.py`` and ``field_notes.md`` are the templates filled in with the manifest's
    ``specimen_id``, ``domain``, ``method`` and ``created``; the protocol template is the runs
    one when the manifest's ``layout`` is ``"runs"``.

    Args:
        manifest: the manifest map (as :func:`new_specimen` makes it, or as decoded from a
            working directory's ``manifest.msgpack``).

    Returns:
        :data:`SCAFFOLD_FILES` -> bytes.

    Raises:
        KeyError: if one of the four fields is missing.
        InvalidInputError: if the manifest cannot be stored as canonical msgpack.
    """
    fmt = {k: manifest[k] for k in ("specimen_id", "domain", "method", "created")}
    template = RUNS_PROTOCOL_TEMPLATE if manifest.get("layout") == "runs" else PROTOCOL_TEMPLATE
    return {
        MANIFEST_NAME: canonical.packb(dict(manifest)),
        "protocol.py": template.format(**fmt).encode(),
        "field_notes.md": FIELD_NOTES_TEMPLATE.format(**fmt).encode(),
    }


def new_specimen(
    repo: Repository,
    specimen_id: str,
    *,
    domain: str,
    method: str,
    tags: Iterable[str] = (),
    model: str | None = None,
    parents: Sequence[str] = (),
    metadata: dict[str, Any] | None = None,
    layout: str = "strata",
) -> Path:
    """Scaffold ``specimens/<id>/`` with a manifest, protocol template, notes and ``strata/``.

    In the runs layout the results directory is ``runs/``, the manifest says
    ``"layout": "runs"`` (so ``SpecimenStorage`` starts a new run at every execution) and the
    protocol template writes runs.

    Args:
        repo: the repository.
        specimen_id: the new id (``YYYY_MM_DD_descriptor`` by convention).
        domain: a domain of the vault's taxonomy (:func:`cas_vault.taxonomies.vault_taxonomy`).
        method: a method valid for ``domain`` there.
        tags: free tags (e.g. model names, layers).
        model: the model studied, if any.
        parents: ids of committed specimens this one derives from.
        metadata: free-form metadata stored in the manifest.
        layout: ``"strata"`` or ``"runs"`` (:data:`LAYOUTS`).

    Returns:
        The new working directory.

    Raises:
        InvalidIdError: for a bad id. TaxonomyError: for a bad domain/method pair.
        AlreadyExistsError: if the specimen exists (working directory or commit).
        NotFoundError: if a parent is not committed.
    """
    validate_id(specimen_id)
    vault_taxonomy(repo).check(domain, method)
    tags = check_tags(tags)
    if model is not None and (not isinstance(model, str) or not model):
        raise InvalidInputError("model must be a non-empty string")
    if layout not in LAYOUTS:
        raise InvalidInputError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    parent_ids = [validate_id(p) for p in parents]
    repo.resolve_parents(parent_ids)  # committed, live ones: fail before writing anything
    metadata = dict(metadata or {})
    canonical.packb(metadata)  # fail before writing if it cannot be stored
    repo.check_uncommitted(specimen_id, "choose a different id, e.g. with a _v2 suffix")
    target = repo.specimen_dir(specimen_id)
    if target.exists():
        raise AlreadyExistsError(
            f"specimen {specimen_id} already exists at {target}; choose a different id, "
            "e.g. with a _v2 suffix"
        )
    created = utc_now()
    manifest = {
        "specimen_id": specimen_id, "domain": domain, "method": method, "model": model,
        "tags": tags, "parents": parent_ids, "created": created, "metadata": metadata,
    }
    if layout == "runs":
        manifest["layout"] = "runs"
    # Build in a temp dir and rename, so a failed scaffold leaves nothing behind.
    tmp = repo.specimens_dir / f".{specimen_id}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir(parents=True)
    try:
        (tmp / layout).mkdir()
        scaffold = scaffold_files(manifest)
        for name, data in scaffold.items():
            write_durable(tmp / name, data, sync=False)
        # One concurrent round: the files and their directory are durable before the rename,
        # so the working directory never appears with half-written files. specimens/ itself
        # is not fsynced: like a working file's name, nothing durable depends on it until a
        # commit (docs/format.md section 6); a crash before then leaves no specimen or this one.
        fsync_many([*(tmp / name for name in scaffold), tmp])
        try:
            os.rename(tmp, target)
        except OSError:
            raise AlreadyExistsError(f"specimen {specimen_id} was created concurrently") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    # The manifest is rarely edited after `new`: storing it now saves its copy at commit.
    # protocol.py and field_notes.md are meant to be edited, so their template bytes would
    # mostly be stored for nothing.
    WorkingCopies(target).store(repo.objects, {MANIFEST_NAME: scaffold[MANIFEST_NAME]})
    return target
