"""The Python API: :class:`Vault` is a repository with every feature one method away.

:class:`~cas_vault.repository.Repository` is the core (open, new, commit, resolve, log, show,
checkout). Each feature is a module with a function that takes a repository, and the CLI calls
those functions directly; this class only gathers them so that a script needs one import::

    from cas_vault import Vault

    v = Vault.open("my-vault")
    v.commit("2024_12_19_mlp", message="baseline")
    v.query("SELECT specimen_id FROM catalog")
    report = v.verify()

Nothing in the package imports this module except the package's public names, so the core
never depends on a feature.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import (
    annotations, catalog, diff, gc, labels, legacy, logger, notes, plot, query, remove, run, status,
    taxonomies, verify,
)
from .gc import DEFAULT_GRACE, DEFAULT_TEMP_AGE
from .progress import Progress
from .engines.spectroscopy import engine as spectroscopy
from .repository import Repository

if TYPE_CHECKING:
    import polars as pl

    from .annotations import Annotation
    from .catalog import IndexResult
    from .diff import SpecimenDiff
    from .engines.spectroscopy.engine import SpectroscopyResult, StoredSpectrum
    from .gc import GcReport
    from .journal import JournalTip
    from .labels import Label
    from .legacy import ImportReport
    from .logger import SpecimenLogger
    from .plot import PlotResult
    from .remove import Removal
    from .run import RunResult
    from .status import StatusReport
    from .taxonomies import Taxonomy, TaxonomyChange
    from .verify import VerifyReport

__all__ = ["Vault"]


class Vault(Repository):
    """A cas-vault directory, with the features as methods.

    Use :meth:`init` to create one and :meth:`open` to open an existing one. Every method
    below is the library function of the same CLI command, called with this vault.

    Args:
        root: the vault directory (must already be a vault).
    """

    # -- catalog and queries -------------------------------------------------------------
    def index(self, rebuild: bool = False, accept_rollback: bool = False) -> IndexResult:
        """Bring ``vault.duckdb`` up to date; see :func:`cas_vault.catalog.index`.

        Args:
            rebuild: drop the catalog and rebuild it from the journal and objects.
            accept_rollback: rebuild even if the journal lost lines the catalog or the tip
                record witnessed (a backup restored on purpose).

        Returns:
            What was indexed.

        Raises:
            LockTimeoutError: if other processes kept the catalog busy too long.
            IntegrityError: if the journal is damaged.
            JournalRolledBackError: if the journal lost witnessed lines.
        """
        return catalog.index(self, rebuild=rebuild, accept_rollback=accept_rollback)

    def query(self, sql: str, params: Any = None) -> pl.DataFrame:
        """Run one read-only SQL SELECT over the catalog; see :class:`cas_vault.query.VaultQuery`.

        Returns:
            A polars DataFrame (typed even when empty).

        Raises:
            InvalidInputError: for SQL that fails or is not a single SELECT.
        """
        return query.VaultQuery(self).search(sql, params)

    # -- integrity: verify and gc --------------------------------------------------------
    def verify(
        self, specimen_ids: Sequence[str] = (), *, quick: bool = False,
        progress: Progress | None = None,
        witness: JournalTip | str | None = None,
    ) -> VerifyReport:
        """Check that every committed byte is intact; see :func:`cas_vault.verify.verify`.

        Args:
            specimen_ids: only these specimens (default: the whole vault, garbage included).
            quick: check existence and sizes only, without re-hashing.
            progress: ``progress(advance_bytes, total_bytes)`` callback while hashing.
            witness: a journal tip (or ``"LINES:DIGEST"``) kept outside the vault; the
                journal must still hold that line.

        Returns:
            The report (``report.ok`` is False on any problem).

        Raises:
            InvalidIdError: for a malformed id. NotFoundError: for an unknown specimen.
            InvalidInputError: for a malformed witness.
        """
        return verify.verify(self, specimen_ids, quick=quick, progress=progress, witness=witness)

    def gc(
        self, *, grace: float | str = DEFAULT_GRACE, dry_run: bool = False,
        temp_age: float | str = DEFAULT_TEMP_AGE, progress: Progress | None = None,
    ) -> GcReport:
        """Remove unreachable objects older than ``grace`` and crash leftovers.

        Args:
            grace: seconds, or a duration such as ``"14d"``, ``"12h"``, ``"0"``.
            dry_run: only report what would be removed.
            temp_age: temp files older than this are removed even if their writer may be alive.
            progress: ``progress(advance_objects, total_objects)`` as each object is decided.

        Returns:
            What was (or would be) removed.

        Raises:
            InvalidInputError: for a malformed duration.
            IntegrityError: if a ref's commits are damaged (nothing is deleted then).
            LockTimeoutError: if running commits hold the gc lock too long.
        """
        return gc.gc(self, grace=grace, dry_run=dry_run, temp_age=temp_age, progress=progress)

    # -- working directories: status and rm ----------------------------------------------
    def status(self) -> StatusReport:
        """What is not sealed yet, what is in progress, and the catalog's freshness.

        See :func:`cas_vault.status.status`; writes nothing.

        Returns:
            The report (``report.to_dict()`` is the ``vault status --json`` form).
        """
        return status.status(self)

    def rm(self, specimen_id: str) -> Removal:
        """Remove an uncommitted specimen's working directory, without asking.

        See :func:`cas_vault.remove.remove_specimen`; the objects it staged become garbage for
        :meth:`gc`.

        Returns:
            What was removed.

        Raises:
            ImmutableError: the specimen is committed. NotFoundError: no such working
            directory. LockTimeoutError: a run, writer, commit or log is busy with it.
        """
        return remove.remove_specimen(self, specimen_id)

    # -- engines -------------------------------------------------------------------------
    def spectroscopy(self, activations_id: str, sae: Any, **kwargs: Any) -> SpectroscopyResult:
        """SAE spectroscopy of a committed activations tensor, committed as a derived specimen.

        Args:
            activations_id: committed specimen holding the activations ([N, T, d] or [T, d]).
            sae: SAE specimen id, Path to a .npz/.safetensors file, or an ``SAE``.
            **kwargs: ``tensor``, ``new_id``, ``pairs``, ``options``, ``scheduler``, ``message``
                (see :func:`cas_vault.engines.spectroscopy.engine.run_spectroscopy`).

        Returns:
            The result (``.specimen_id``, ``.commit``, ``.metrics``).

        Raises:
            NotFoundError, InvalidInputError, AlreadyExistsError: nothing is written then.
        """
        return spectroscopy.run_spectroscopy(self, activations_id, sae, **kwargs)

    def spectrum(self, specimen_id: str, input_index: int = 0) -> StoredSpectrum:
        """One input's stored spectrum from a spectroscopy specimen (``.format()`` prints it).

        Raises:
            NotFoundError: no such specimen or input. InvalidInputError: not a spectroscopy result.
        """
        return spectroscopy.read_spectrum(self.specimen(specimen_id), input_index)

    # -- runs, logging, import, diff, plot, notes ----------------------------------------
    def run(
        self, specimen_id: str, args: Sequence[str] = (), *, message: str = "",
        output: Callable[[bytes], Any] | None = None, timeout: float | None = None,
        code_dir: str | os.PathLike[str] | None = None,
    ) -> RunResult:
        """Run ``specimens/<id>/protocol.py`` and commit it with provenance if it exits 0.

        See :func:`cas_vault.run.run_protocol` (``output`` receives the output as it comes).

        Raises:
            RunFailedError: non-zero exit or timeout; nothing committed, the log is kept.
            ImmutableError: already committed. NotFoundError: no specimen or protocol.py.
        """
        return run.run_protocol(self, specimen_id, args, message=message, output=output,
                                timeout=timeout, code_dir=code_dir)

    def start_specimen(self, specimen_id: str, **kwargs: Any) -> SpecimenLogger:
        """Log a training loop step by step into a specimen, committed when the block exits.

        ``with vault.start_specimen(ID, domain=D, method=M) as s: s.log({"loss": x}, step=i)``;
        keyword arguments are those of :class:`cas_vault.logger.SpecimenLogger`.
        """
        return logger.start_specimen(self, specimen_id, **kwargs)

    def import_legacy(
        self, path: str | os.PathLike[str], *, progress: Progress | None = None,
    ) -> ImportReport:
        """Import a directory in the seed's layouts; see :func:`cas_vault.legacy.import_legacy`.

        ``progress(advance_specimens, total_specimens)`` is called as each specimen is done.

        Returns:
            What was imported (problems are reported, not raised).

        Raises:
            NotFoundError: if ``path`` is not a directory.
        """
        return legacy.import_legacy(self, path, progress=progress)

    def diff(self, a: str, b: str) -> SpecimenDiff:
        """Compare two committed specimens; see :func:`cas_vault.diff.diff_specimens`.

        Raises:
            NotFoundError: if either is not committed.
        """
        return diff.diff_specimens(self, a, b)

    def plot(
        self, metric: str, specimen_ids: Sequence[str] = (), *, where: str | None = None,
        output: str | os.PathLike[str] | None = None, log_y: bool = False,
    ) -> PlotResult:
        """Draw one metric across specimens as a PNG; see :func:`cas_vault.plot.plot_metric`.

        Raises:
            InvalidInputError: nothing to draw, bad output path or condition.
            NotFoundError: an explicit specimen is missing or lacks the metric.
        """
        return plot.plot_metric(self, metric, specimen_ids, where=where, output=output,
                                log_y=log_y)

    def annotate(self, specimen_id: str, text: str) -> Annotation:
        """Add a note to a sealed specimen without changing it (journaled, append-only).

        Raises:
            NotFoundError: the specimen is not committed (use :meth:`note`).
            InvalidInputError: empty or oversized text.
        """
        return annotations.annotate(self, self.lookup(specimen_id), text)

    def label(self, name: str, specimen_id: str) -> Label:
        """Point label ``name`` at a committed specimen (journaled; ``@name`` then names it).

        Raises:
            NotFoundError: the specimen is not committed. InvalidInputError: a bad name.
        """
        return labels.set_label(self, name, specimen_id)

    def taxonomy(self) -> Taxonomy:
        """The vault's taxonomy: the seed's pairs with the vault's adds and removes, and its
        history (``vault taxonomy``)."""
        return taxonomies.vault_taxonomy(self)

    def taxonomy_add(self, domain: str, method: str,
                     description: str | None = None) -> TaxonomyChange:
        """Allow a domain/method pair in this vault (journaled; ``vault taxonomy add``).

        Raises:
            InvalidInputError: a name outside the rule. AlreadyExistsError: a pair it has.
        """
        return taxonomies.add_pair(self, domain, method, description)

    def taxonomy_remove(self, domain: str, method: str) -> TaxonomyChange:
        """Stop allowing a pair (journaled; ``vault taxonomy remove``); sealed specimens stay
        valid.

        Raises:
            InvalidInputError: a pair in use (naming the specimens). NotFoundError: no such pair.
        """
        return taxonomies.remove_pair(self, domain, method)

    def note(self, specimen_id: str, text: str) -> Path:
        """Append a timestamped entry to an uncommitted specimen's ``field_notes.md``.

        Returns:
            The notes file.

        Raises:
            ImmutableError: the specimen is committed (its notebook is sealed: :meth:`annotate`).
            NotFoundError: no such specimen. InvalidInputError: empty text.
        """
        return notes.append_note(self, specimen_id, text)
