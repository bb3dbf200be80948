"""``vault plot METRIC [ID...] [--where SQL] [-o FILE.png]``: one metric across specimens.

One line per specimen, labelled with its id, drawn with matplotlib's Agg backend (no display
needed). The x axis is the ``step`` column when the metrics have one, else the row number.
Specimens come from explicit ids and/or ``--where``, a SQL condition over the catalog's
``catalog`` table (``SELECT specimen_id FROM catalog WHERE <condition>``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ChecksumMismatch, IntegrityError, InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["PlotResult", "plot_metric", "select_where"]

_METRICS_FILE = "strata/metrics.parquet"


class PlotResult:
    """What was drawn.

    Attributes:
        path: the PNG written.
        plotted: specimen ids drawn, in order.
        skipped: specimen id -> why it was not drawn (only for ``--where`` matches).
    """

    def __init__(self, path: Path, plotted: list[str], skipped: dict[str, str]) -> None:
        self.path = path
        self.plotted = plotted
        self.skipped = skipped


def select_where(vault: Repository, where: str) -> list[str]:
    """Specimen ids of the catalog rows matching a SQL condition.

    Raises:
        InvalidInputError: if the condition is not valid SQL over the catalog.
    """
    from .query import VaultQuery

    if not isinstance(where, str) or not where.strip() or ";" in where:
        raise InvalidInputError(
            f"--where must be one SQL condition over the catalog, e.g. \"domain = 'training'\", not {where!r}"
        )
    # VaultQuery refuses anything but one read-only SELECT, so the condition cannot write.
    result = VaultQuery(vault).search(
        f"SELECT specimen_id FROM catalog WHERE ({where}) ORDER BY specimen_id"
    )
    return [str(x) for x in result.get_column("specimen_id").to_list()]


def _series(vault: Repository, specimen_id: str, metric: str) -> tuple[Any, Any, str]:
    """Return x values, y values and the x label for one specimen, or raise why not.

    Raises:
        NotFoundError: the specimen is not committed or lacks the file or the metric.
        InvalidInputError: the metric is not numeric, or the sealed file is not Parquet.
        IntegrityError: the file's object is missing or its bytes were altered.
    """
    import polars as pl

    spec = vault.specimen(specimen_id)
    if _METRICS_FILE not in spec.files:
        raise NotFoundError(f"specimen {specimen_id} has no {_METRICS_FILE}")
    digest = spec.files[_METRICS_FILE].digest
    # Read verified bytes: a plot of altered numbers would look like a result.
    try:
        data = spec.read_bytes(_METRICS_FILE)
    except ChecksumMismatch as exc:
        raise IntegrityError(
            f"{_METRICS_FILE} of specimen {specimen_id} is damaged: its object {digest} was "
            f"altered (its bytes hash to {exc.got}); nothing was plotted. Run `vault verify "
            f"{specimen_id}` to see everything affected and how to repair it"
        ) from None
    except NotFoundError:
        raise IntegrityError(
            f"{_METRICS_FILE} of specimen {specimen_id} is damaged: its object {digest} is "
            f"missing from objects/; nothing was plotted. Run `vault verify {specimen_id}` to "
            "see everything affected and how to repair it"
        ) from None
    try:
        df = pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # polars raises its own errors (ComputeError, ...) for non-Parquet
        raise InvalidInputError(
            f"{_METRICS_FILE} of specimen {specimen_id} was sealed as it is but is not readable "
            f"Parquet ({type(exc).__name__}: {exc}); it cannot be plotted"
        ) from None
    if metric not in df.columns:
        cols = ", ".join(c for c in df.columns if c != "step") or "none"
        raise NotFoundError(f"specimen {specimen_id} has no metric {metric!r} (it has: {cols})")
    if not df.schema[metric].is_numeric():
        raise InvalidInputError(f"metric {metric!r} of {specimen_id} is not numeric")
    df = df.filter(pl.col(metric).is_not_null())
    if "step" in df.columns and df.schema["step"].is_numeric():
        return df["step"].to_numpy(), df[metric].cast(pl.Float64).to_numpy(), "step"
    return list(range(df.height)), df[metric].cast(pl.Float64).to_numpy(), "row"


def plot_metric(
    vault: Repository,
    metric: str,
    specimen_ids: Sequence[str] = (),
    *,
    where: str | None = None,
    output: str | os.PathLike[str] | None = None,
    log_y: bool = False,
) -> PlotResult:
    """Draw ``metric`` of each specimen as one labelled line and save a PNG.

    Args:
        vault: the vault.
        metric: a column of ``strata/metrics.parquet``.
        specimen_ids: committed specimens to draw (all must have the metric).
        where: also draw the catalog rows matching this SQL condition that have the metric.
        output: the PNG path (default ``<metric>.png`` in the current directory).
        log_y: logarithmic y axis.

    Returns:
        The path written and the specimens drawn or skipped.

    Raises:
        InvalidInputError: no specimens given, nothing to draw, or a bad output path.
        NotFoundError: an explicit specimen is not committed or lacks the metric.
        IntegrityError: a metrics file to draw (explicit or matched) is damaged; nothing is
            written.
    """
    if not isinstance(metric, str) or not metric:
        raise InvalidInputError("name the metric to plot, e.g. `vault plot loss ID...`")
    ids = list(dict.fromkeys(specimen_ids))
    if not ids and where is None:
        raise InvalidInputError("give specimen ids or --where CONDITION to choose what to plot")
    out = Path(output) if output is not None else Path(f"{metric}.png")
    if out.suffix.lower() != ".png":
        raise InvalidInputError(f"output {str(out)!r} must end in .png")
    if not out.parent.resolve().is_dir():
        raise InvalidInputError(f"directory {out.parent} does not exist; create it first")
    series: list[tuple[str, Any, Any, str]] = []
    for sid in ids:
        series.append((sid, *_series(vault, sid, metric)))
    skipped: dict[str, str] = {}
    if where is not None:
        for sid in select_where(vault, where):
            if sid in ids:
                continue
            try:
                series.append((sid, *_series(vault, sid, metric)))
            except (NotFoundError, InvalidInputError) as exc:
                skipped[sid] = str(exc)
    if not series:
        why = "; ".join(skipped.values()) or f"no catalog row matches --where {where!r}"
        raise InvalidInputError(f"nothing to plot for {metric!r}: {why}")
    _draw(metric, series, out, log_y)
    return PlotResult(out, [s[0] for s in series], skipped)


def _draw(metric: str, series: list[tuple[str, Any, Any, str]], out: Path, log_y: bool) -> None:
    # The object-oriented API with an explicit Agg canvas: no pyplot global state, no display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .atomic import write_replace

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for sid, x, y, _ in series:
        ax.plot(x, y, label=sid, linewidth=1.5, marker="o" if len(y) == 1 else None)
    xlabels = {s[3] for s in series}
    ax.set_xlabel("step" if xlabels == {"step"} else "step / row")
    ax.set_ylabel(metric)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(f"{metric} across {len(series)} specimen{'s' if len(series) != 1 else ''}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_replace(out.resolve(), buf.getbuffer())
