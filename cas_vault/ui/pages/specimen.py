"""The specimen page: one committed specimen in full, and the data its plots fetch.

``GET /specimen/{id}`` takes anything :meth:`~cas_vault.repository.Repository.lookup` accepts
(an id, ``@label``, a commit digest prefix) and redirects to the page of the exact id when the
name was not one. The page shows what ``vault show`` shows (header, manifest, provenance,
config, field notes and annotations, files, runs, tensors) plus a lineage graph, the specimen's
metric curves and, for a result of the SAE spectroscopy engine, its scores and spectra as
plots. ``?run=RUN_ID`` shows one sealed run, as ``vault show --run``. A retired specimen's page
still works and says that, why and by whom it was retired.

The plots' data come from three JSON endpoints, each reading only what it is asked for:

- ``GET /api/specimen/{id}/tensor?name=&index=``: a 2-D slice of a tensor, strided down to at
  most :data:`PREVIEW_MAX` x :data:`PREVIEW_MAX` (lazy Zarr: only the chunks the slice touches
  are read, each verified against its digest);
- ``GET /api/specimen/{id}/metrics?file=``: every numeric column of ``strata/<file>.parquet``,
  all rows;
- ``GET /api/specimen/{id}/spectrum?input=&top=``: the strongest lines of one input's spectrum.

Files are only ever found through the specimen's commit; no path is built from the request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ...engines.spectroscopy import ENGINE_NAME
from ...errors import InvalidInputError, NotFoundError, VaultError
from ...ids import run_specimen_id
from ...query import VaultQuery
from ...repository import ShowInfo
from ...retirement import Retirement, retirements
from ...storage import check_run_id
from ..templating import json_dumps, render

if TYPE_CHECKING:
    from ...commit import Commit
    from ...repository import Repository
    from ...specimen import CommittedSpecimen

__all__ = ["PREVIEW_MAX", "ROUTES"]

#: Largest side of a tensor preview: a longer axis is read every k-th element.
PREVIEW_MAX = 256
#: Files listed at first; ``?files=all`` lists every one.
FILES_SHOWN = 200
#: Generations of ancestors, and of descendants, drawn in the lineage graph.
ANCESTOR_DEPTH = 3
DESCENDANT_DEPTH = 2
#: Nodes drawn per generation (the rest are counted in one "+N more" node).
GRAPH_ROW_MAX = 8
#: Edges listed as links under the graph.
EDGES_LISTED = 200
#: Rows shown of a Parquet file that is a table rather than a series of steps.
TABLE_ROWS = 50
#: Plots drawn per Parquet file (one per numeric column).
PLOTS_PER_FILE = 24
#: Bytes of a text file (field notes, a git diff, a run log) shown on the page.
TEXT_CAP = 512 * 1024
#: Items of a list, and entries of a map, shown in a metadata table before "... (N more)"
#: (maps get more: provenance lists every installed package).
LIST_CAP = 100
MAP_CAP = 2000
#: Columns that make a Parquet file a series of steps (the x axis of its plots), in order.
STEP_COLUMNS = ("step", "global_step", "iteration", "iter", "epoch")
#: Per-input scores of a spectroscopy result drawn as bar charts, in order.
SPECTRO_SCORES = ("purity", "l0_mean", "fvu", "entropy", "n_features", "topk_10", "topk_100",
                  "rel_error")
#: Default and largest number of lines of a spectrum drawn.
SPECTRUM_TOP = 30
SPECTRUM_TOP_MAX = 1000

_INT_RE = re.compile(r"\A-?[0-9]{1,18}\Z")


# -- the page ----------------------------------------------------------------------------------
def specimen_page(request: Request) -> Response:
    """The specimen page (see the module docstring).

    Raises:
        NotFoundError: no such specimen or run (404, with the closest ids).
        InvalidInputError: a malformed id, run or query parameter (400).
    """
    repo: Repository = request.app.state.repo
    text = request.path_params["id"]
    sid = repo.lookup(text)
    if sid != text:
        # One URL per specimen: a label or prefix may later name another one.
        target = f"/specimen/{quote(sid, safe='')}"
        if request.url.query:
            target += f"?{request.url.query}"
        return RedirectResponse(target, status_code=302)
    run = _run_param(request)
    files_all = _choice(request, "files", ("all",)) == "all"

    retired = retirements(repo)
    info = _show(repo, sid, run)
    spec = repo.specimen(info.specimen_id)
    commit = info.commit
    metadata = dict(commit.manifest.metadata)
    provenance = metadata.pop("provenance", None)
    tree = sorted(commit.tree.items())
    strata_tensors = set(spec.tensors())
    tensors = [_tensor_row(t, strata_tensors) for t in info.tensors]
    parquet = _parquet_files(spec)
    spectro = _spectroscopy(spec, metadata)
    lineage = _lineage(repo, info, retired)

    page_data = {
        "id": info.specimen_id,
        "tensors": [t for t in tensors if t["previewable"]],
        "metrics": [{"name": p["name"], "x": p["x"], "columns": p["columns"]}
                    for p in parquet if p["plot"] and not (spectro and p["name"] in _SPECTRO_FILES)],
        "spectroscopy": spectro and {"inputs": spectro["inputs"], "scores": spectro["scores"],
                                     "n_inputs": spectro["n_inputs"]},
    }
    return render(
        request, "specimen.html", title=f"Specimen {sid}",
        sid=sid, info=info, commit=commit, run=info.run,
        retired=retired.get(sid) or retired.get(info.specimen_id),
        unique_known=info.unique_bytes is not None,
        metadata=metadata, provenance=_displayable(provenance) if provenance is not None else None,
        prov_summary=_provenance_summary(provenance),
        git_diff=_git_diff(spec, provenance), run_log=_run_log(spec, provenance),
        config=_msgpack_results(spec),
        metadata_view=_displayable(metadata),
        field_notes=_text_file(spec, "field_notes.md"),
        files=tree if files_all else tree[:FILES_SHOWN], files_total=len(tree),
        files_all=files_all, tensors=tensors, parquet=parquet, spectro=spectro,
        lineage=lineage, page_data=page_data, run_of=commit.manifest.run,
        all_files_url="?" + _query(run=run, files="all") + "#files",
        is_more=lambda v: isinstance(v, More),
    )


def _show(repo: Repository, sid: str, run: str | None) -> ShowInfo:
    """``repo.show(sid, run)``, retired specimens included (their page still answers, saying
    so), with ``unique_bytes`` from the catalog (None when it has no row: retired specimens).

    ``show`` would compute the new bytes by reading every earlier commit, which takes most of
    a second in a vault of 10,000 specimens; the catalog already holds that figure.
    """
    info = repo.show(sid, run=run, unique_bytes=False, retired=True)
    try:
        found = VaultQuery(repo).search(
            "SELECT unique_bytes FROM catalog WHERE specimen_id = ? AND commit = ?",
            [info.specimen_id, info.digest], timeout=30)
    except VaultError:
        return info  # the catalog cannot answer now: the page goes without the figure
    if found.height == 0 or found.item(0, 0) is None:
        return info
    return replace(info, unique_bytes=int(found.item(0, 0)))


def _run_param(request: Request) -> str | None:
    run = request.query_params.get("run")
    if run is None or run == "":
        return None
    try:
        return check_run_id(run)
    except InvalidInputError:
        raise InvalidInputError(
            f"run {run!r} is not a run id (runs are named like 20250102_090000); pick one "
            "from the specimen's Runs section") from None


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if value not in allowed:
        raise InvalidInputError(f"{name}={value!r} is not understood; use "
                                + " or ".join(f"{name}={a}" for a in allowed))
    return value


# -- metadata, provenance, config, notes ------------------------------------------------------
@dataclass(frozen=True)
class More:
    """What a metadata table leaves out: ``... (N more)``."""

    count: int


def _displayable(value: Any) -> Any:
    """A metadata value ready for the nested key/value table: long lists and maps cut with a
    :class:`More` marker, bytes as hex, everything else as it is (the template escapes it)."""
    if isinstance(value, Mapping):
        items = list(value.items())
        out: dict[Any, Any] = {str(k): _displayable(v) for k, v in items[:MAP_CAP]}
        if len(items) > MAP_CAP:
            out["\u2026"] = More(len(items) - MAP_CAP)
        return out
    if isinstance(value, (list, tuple)):
        shown = [_displayable(v) for v in value[:LIST_CAP]]
        if len(value) > LIST_CAP:
            shown.append(More(len(value) - LIST_CAP))
        return shown
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return f"0x{data[:64].hex()}" + (f"\u2026 ({len(data)} bytes)" if len(data) > 64 else "")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _provenance_summary(prov: Any) -> list[tuple[str, Any]]:
    """The few provenance facts people look for first, as (label, value) rows."""
    if not isinstance(prov, Mapping):
        return []
    rows: list[tuple[str, Any]] = []
    python = prov.get("python")
    git = prov.get("git") if isinstance(prov.get("git"), Mapping) else None

    def add(label: str, value: Any) -> None:
        if value is not None and value != "" and value != []:
            rows.append((label, value))

    command = prov.get("command")
    add("command", " ".join(map(str, command)) if isinstance(command, list) else command)
    add("exit status", prov.get("exit_status"))
    wall = prov.get("wall_time_s")
    add("wall time", f"{wall:.3f} s" if isinstance(wall, (int, float)) else wall)
    add("started", prov.get("started"))
    add("finished", prov.get("finished"))
    add("python", python.get("version") if isinstance(python, Mapping) else python)
    add("platform", prov.get("platform"))
    add("host", prov.get("hostname"))
    if git is not None:
        add("git commit", git.get("commit"))
        add("git branch", git.get("branch"))
        add("git dirty", git.get("dirty"))
        if git.get("untracked"):
            add("untracked files", git.get("untracked"))
    packages = prov.get("packages")
    if isinstance(packages, Mapping):
        add("packages", f"{len(packages)} recorded (below)")
    seeds = prov.get("seeds")
    if seeds:
        add("seeds", _displayable(seeds))
    return rows


def _git_diff(spec: CommittedSpecimen, prov: Any) -> str | None:
    """The patch of a dirty checkout that the commit kept, if any (as text, capped)."""
    if not isinstance(prov, Mapping) or not isinstance(prov.get("git"), Mapping):
        return None
    path = prov["git"].get("diff_path")
    if not prov["git"].get("diff_kept") or not isinstance(path, str):
        return None
    return _text_file(spec, path)


def _run_log(spec: CommittedSpecimen, prov: Any) -> str | None:
    """The output of the ``vault run`` that made the specimen, if the commit holds it."""
    if not isinstance(prov, Mapping) or not isinstance(prov.get("log"), str):
        return None
    return _text_file(spec, prov["log"], tail=True)


def _text_file(spec: CommittedSpecimen, rel: str, *, tail: bool = False) -> str | None:
    """A text file of the commit (verified), at most :data:`TEXT_CAP` bytes of it.

    A file whose object is missing or altered is shown as a sentence saying so: the rest of
    the page still answers (``vault verify`` says what is damaged and how to repair it).
    """
    entry = spec.files.get(rel)
    if entry is None:
        return None
    try:
        data = spec.read_bytes(rel)
    except VaultError as exc:
        return f"({rel} cannot be read: {exc})"
    if len(data) <= TEXT_CAP:
        return data.decode("utf-8", errors="replace")
    if tail:
        return (f"\u2026 (the first {len(data) - TEXT_CAP} bytes are not shown)\n"
                + data[-TEXT_CAP:].decode("utf-8", errors="replace"))
    return (data[:TEXT_CAP].decode("utf-8", errors="replace")
            + f"\n\u2026 ({len(data) - TEXT_CAP} more bytes not shown)")


def _msgpack_results(spec: CommittedSpecimen) -> list[tuple[str, Any]]:
    """Every ``strata/<name>.msgpack`` (the config first) as (name, displayable value)."""
    names = sorted(p[len("strata/"):-len(".msgpack")] for p in spec.files
                   if p.startswith("strata/") and p.endswith(".msgpack") and p.count("/") == 1)
    names.sort(key=lambda n: n != "config")
    out = []
    for name in names:
        try:
            value: Any = spec.read_config(name)
        except VaultError as exc:
            value = f"(cannot be read: {exc})"
        out.append((name, _displayable(value)))
    return out


# -- tensors -----------------------------------------------------------------------------------
def _tensor_row(t: Any, strata: set[str]) -> dict[str, Any]:
    previewable = (t.error is None and t.shape is not None and 0 not in t.shape
                   and t.path == f"strata/{t.name}.zarr" and t.name in strata
                   and _preview_dtype(t.dtype))
    return {"path": t.path, "name": t.name, "dtype": t.dtype,
            "shape": list(t.shape) if t.shape is not None else None,
            "chunks": list(t.chunks) if t.chunks is not None else None,
            "codecs": list(t.codecs), "logical_bytes": t.logical_bytes,
            "stored_bytes": t.stored_bytes, "chunk_files": t.chunk_files, "error": t.error,
            "previewable": bool(previewable)}


def _preview_dtype(dtype: str | None) -> bool:
    import numpy as np

    try:
        kind = np.dtype(dtype).kind
    except (TypeError, ValueError):
        return False
    return kind in "biufc"


def tensor_data(request: Request) -> Response:
    """A 2-D slice of a tensor for the heatmap preview, as JSON.

    Query parameters: ``name`` (one of the specimen's ``strata/`` tensors), ``index`` (for a
    tensor of more than 2 dimensions, the leading indices, comma-separated, default all 0) and
    ``run``. The slice is read every k-th row and column so that neither side exceeds
    :data:`PREVIEW_MAX`; ``row_step`` and ``col_step`` say k. A 1-D tensor is one row.

    Returns:
        ``{name, dtype, shape, index, rows, cols, row_step, col_step, x, y, z}``: ``z`` a list
        of rows of floats (NaN and infinities null), ``x``/``y`` the column and row indices.

    Raises:
        InvalidInputError: a missing or unknown name, a bad index (400).
        NotFoundError: no such specimen or run (404).
    """
    import numpy as np

    spec = _api_specimen(request)
    name = request.query_params.get("name", "")
    have = spec.tensors()
    if name not in have:
        listed = ", ".join(repr(t) for t in have) if have else "none"
        raise InvalidInputError(
            f"name={name!r} is not a tensor of specimen {spec.specimen_id}; its tensors: {listed}")
    arr = spec.tensor(name)
    shape = tuple(int(n) for n in arr.shape)
    lead = _indices(request.query_params.get("index", ""), shape[:-2] if len(shape) > 2 else ())
    if len(shape) == 0:
        block = np.asarray(arr[()]).reshape(1, 1)
        row_step = col_step = 1
    elif len(shape) == 1:
        col_step = _step(shape[0])
        block = np.asarray(arr[::col_step]).reshape(1, -1)
        row_step = 1
    else:
        row_step, col_step = _step(shape[-2]), _step(shape[-1])
        block = np.asarray(arr[(*lead, slice(None, None, row_step), slice(None, None, col_step))])
    is_complex = block.dtype.kind == "c"
    if is_complex:
        block = np.abs(block)  # a heatmap of magnitudes
    values = block.astype(np.float64)
    z = [[v if math.isfinite(v) else None for v in row] for row in values.tolist()]
    rows = shape[-2] if len(shape) >= 2 else 1
    cols = shape[-1] if shape else 1
    body = {
        "name": name, "dtype": str(arr.dtype), "shape": list(shape), "index": list(lead),
        "rows": rows, "cols": cols, "row_step": row_step, "col_step": col_step,
        "x": list(range(0, cols, col_step)), "y": list(range(0, rows, row_step)), "z": z,
        "complex": is_complex,
    }
    return _json(body)


def _step(n: int) -> int:
    return max(1, math.ceil(n / PREVIEW_MAX))


def _indices(text: str, dims: tuple[int, ...]) -> tuple[int, ...]:
    """Parse ``index`` (comma-separated integers, one per leading dimension; empty: all 0)."""
    if 0 in dims:
        raise InvalidInputError(f"the tensor has no elements (a leading dimension of {list(dims)} "
                                "is 0): there is nothing to preview")
    if text.strip() == "":
        return tuple(0 for _ in dims)
    parts = [p.strip() for p in text.split(",")]
    if not dims:
        raise InvalidInputError(f"index={text!r} given, but the tensor has at most 2 dimensions: "
                                "leave index out")
    if len(parts) != len(dims):
        raise InvalidInputError(f"index={text!r} has {len(parts)} values; the tensor needs "
                                f"{len(dims)} (one per leading dimension of {list(dims)})")
    out = []
    for i, (p, n) in enumerate(zip(parts, dims)):
        if not _INT_RE.match(p):
            raise InvalidInputError(f"index={text!r}: {p!r} is not an integer")
        v = int(p)
        if not 0 <= v < n:
            raise InvalidInputError(f"index={text!r}: dimension {i} has size {n}, so its index "
                                    f"must be 0 to {n - 1}, not {v}")
        out.append(v)
    return tuple(out)


# -- metrics (strata/*.parquet) ----------------------------------------------------------------
def _parquet_names(spec: CommittedSpecimen) -> list[str]:
    return sorted(p[len("strata/"):-len(".parquet")] for p in spec.files
                  if p.startswith("strata/") and p.endswith(".parquet") and p.count("/") == 1)


def _parquet_files(spec: CommittedSpecimen) -> list[dict[str, Any]]:
    """Each ``strata/*.parquet``: rows, columns, and whether it is plotted or tabled.

    A file with a step column (:data:`STEP_COLUMNS`) is a series: each numeric column is
    plotted against it; ``metrics.parquet`` without one is plotted against its row number.
    Any other file is shown as a table of its first rows.
    """
    import polars as pl

    out = []
    for name in _parquet_names(spec):
        try:
            frame = pl.scan_parquet(spec.object_path(f"strata/{name}.parquet"))
            schema = frame.collect_schema()
            rows = int(frame.select(pl.len()).collect().item())
        except Exception as exc:  # a Parquet file polars cannot read: say so, show the rest
            out.append({"name": name, "rows": None, "schema": [], "x": None, "columns": [],
                        "plot": False, "table": None, "error": str(exc).splitlines()[0]})
            continue
        numeric = [c for c, t in schema.items() if t.is_numeric() or t == pl.Boolean]
        x = next((c for c in STEP_COLUMNS if c in numeric), None)
        plot = bool(numeric) and (x is not None or name == "metrics")
        columns = [c for c in numeric if c != x][:PLOTS_PER_FILE]
        table = None
        if not plot:
            head = frame.head(TABLE_ROWS).collect()
            table = {"columns": head.columns,
                     "rows": [[_cell(v) for v in row] for row in head.iter_rows()]}
        out.append({"name": name, "rows": rows, "schema": [(c, str(t)) for c, t in schema.items()],
                    "x": x, "columns": columns, "plot": plot, "table": table,
                    "more_columns": max(0, len([c for c in numeric if c != x]) - PLOTS_PER_FILE),
                    "error": None})
    return out


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return value
    if isinstance(value, (list, dict)):
        return json_dumps(value)
    if isinstance(value, bytes):
        return f"0x{value[:32].hex()}" + ("\u2026" if len(value) > 32 else "")
    return value


def metrics_data(request: Request) -> Response:
    """Every numeric column of ``strata/<file>.parquet``, all rows, as JSON.

    Query parameters: ``file`` (a Parquet file of the specimen, without ``strata/`` and
    ``.parquet``; default ``metrics``) and ``run``.

    Returns:
        ``{file, x, rows, columns: {name: [values]}}``; ``x`` the step column, or null when the
        row number is the x axis. NaN and infinities are null.

    Raises:
        InvalidInputError: a file the specimen does not have (400).
    """
    import polars as pl

    spec = _api_specimen(request)
    name = request.query_params.get("file", "metrics")
    have = _parquet_names(spec)
    if name not in have:
        listed = ", ".join(repr(n) for n in have) if have else "none"
        raise InvalidInputError(f"file={name!r} is not a Parquet file of specimen "
                                f"{spec.specimen_id} (strata/<file>.parquet); its files: {listed}")
    frame = spec.read_metrics(name)
    numeric = [c for c, t in frame.schema.items() if t.is_numeric() or t == pl.Boolean]
    x = next((c for c in STEP_COLUMNS if c in numeric), None)
    columns = {c: frame[c].cast(pl.Float64).to_list() for c in numeric}
    return _json({"file": name, "x": x, "rows": frame.height, "columns": columns})


# -- spectroscopy ------------------------------------------------------------------------------
_SPECTRO_FILES = frozenset(("metrics", "spectra", "tokens", "drift", "absorption"))


def _is_spectroscopy(spec: CommittedSpecimen, metadata: Mapping[str, Any]) -> bool:
    engine = metadata.get("engine")
    return (isinstance(engine, Mapping) and engine.get("name") == ENGINE_NAME
            and "strata/spectra.parquet" in spec.files and "strata/metrics.parquet" in spec.files)


def _spectroscopy(spec: CommittedSpecimen, metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the page shows of a spectroscopy result: per-input scores, drift, absorption."""
    if not _is_spectroscopy(spec, metadata):
        return None
    metrics = spec.read_metrics("metrics").sort("input")
    scores = {c: metrics[c].cast(float).to_list() for c in SPECTRO_SCORES if c in metrics.columns}
    tables = {}
    for name in ("drift", "absorption"):
        if f"strata/{name}.parquet" in spec.files:
            frame = spec.read_metrics(name)
            tables[name] = {"columns": frame.columns, "total": frame.height,
                            "rows": [[_cell(v) for v in r] for r in frame.head(FILES_SHOWN).iter_rows()]}
    engine = metadata.get("engine", {})
    return {"inputs": metrics["input"].to_list(), "n_inputs": metrics.height, "scores": scores,
            "tables": tables, "engine": engine, "sae": metadata.get("sae"),
            "activations": metadata.get("activations"), "bos": metadata.get("bos")}


def spectrum_data(request: Request) -> Response:
    """The strongest lines of one input's spectrum, as JSON.

    Query parameters: ``input`` (an input index of the result), ``top`` (lines, 1 to
    :data:`SPECTRUM_TOP_MAX`, default :data:`SPECTRUM_TOP`) and ``run``.

    Returns:
        ``{input, n_features, features, intensity, metrics}``: features strongest first.

    Raises:
        InvalidInputError: not a spectroscopy result, or a bad input or top (400).
    """
    from ...engines.spectroscopy.engine import read_spectrum

    spec = _api_specimen(request)
    if not _is_spectroscopy(spec, spec.commit.manifest.metadata):
        raise InvalidInputError(f"specimen {spec.specimen_id} is not a result of the SAE "
                                "spectroscopy engine: it has no spectra")
    which = _int_param(request, "input", 0, 0, None)
    top = _int_param(request, "top", SPECTRUM_TOP, 1, SPECTRUM_TOP_MAX)
    try:
        stored = read_spectrum(spec, which)
    except NotFoundError as exc:
        raise InvalidInputError(str(exc)) from None
    features = stored.features[:top].tolist()
    intensity = stored.intensity[:top].astype(float).tolist()
    return _json({"input": which, "n_features": int(len(stored.features)), "features": features,
                  "intensity": intensity, "metrics": stored.metrics})


def _int_param(request: Request, name: str, default: int, low: int, high: int | None) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    if not _INT_RE.match(text.strip()):
        raise InvalidInputError(f"{name}={text!r} is not an integer")
    value = int(text)
    if value < low or (high is not None and value > high):
        bound = f"{low} to {high}" if high is not None else f"at least {low}"
        raise InvalidInputError(f"{name}={value} is out of range: give {bound}")
    return value


# -- lineage -----------------------------------------------------------------------------------
@dataclass
class _Node:
    """A box of the lineage graph, before and after layout."""

    key: str  # the commit digest
    sid: str | None
    level: int
    retired: bool = False
    more: int = 0  # a "+N more" placeholder
    x: float = 0.0
    y: float = 0.0


@dataclass
class Lineage:
    """The lineage of the shown commit: the graph's boxes and lines, and the same as links.

    Attributes:
        nodes: the boxes: position, size, label (clipped), title (full), href (None for the
            shown specimen, a "+N more" box and a commit no ref names), flags.
        edges: the lines, parent box bottom to child box top.
        links: every edge as (parent id, parent commit, child id, child commit), at most
            :data:`EDGES_LISTED`; ids are None for a commit no ref names.
        parents: the shown commit's parents as (id, commit).
        children: its children as (id, commit), from the catalog.
        width: the SVG's width in pixels.
        height: its height.
        error: why the children could not be read, else None.
        more_edges: edges beyond :data:`EDGES_LISTED`, not listed.
    """

    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, float]] = field(default_factory=list)
    links: list[tuple[str | None, str, str | None, str]] = field(default_factory=list)
    parents: list[tuple[str | None, str]] = field(default_factory=list)
    children: list[tuple[str, str]] = field(default_factory=list)
    width: int = 0
    height: int = 0
    error: str | None = None
    more_edges: int = 0


_NODE_W, _NODE_H, _GAP_X, _GAP_Y, _PAD = 180, 30, 24, 56, 10


def _lineage(repo: Repository, info: ShowInfo, retired: Mapping[str, Retirement]) -> Lineage:
    """Ancestors (from the commits' parents) and descendants (from the catalog's ``lineage``
    table) of the shown commit, laid out top to bottom: oldest generation first."""
    out = Lineage()
    gone = set(retired)
    nodes: dict[str, _Node] = {info.digest: _Node(info.digest, info.specimen_id, 0,
                                                  info.specimen_id in gone)}
    edges: set[tuple[str, str]] = set()  # (parent commit, child commit)

    # Ancestors: the commits themselves say who their parents are (a few object reads; no
    # listing of every ref, which costs seconds in a large vault).
    known = dict(zip(info.commit.parents, info.parent_ids))
    frontier: list[tuple[str, Commit]] = [(info.digest, info.commit)]
    for depth in range(1, ANCESTOR_DEPTH + 1):
        nxt: list[tuple[str, Commit]] = []
        for child, commit in frontier:
            for p in commit.parents:
                edges.add((p, child))
                if p in nodes:
                    continue
                try:
                    parent: Commit | None = repo.read_commit(p)
                except VaultError:
                    parent = None  # a missing parent: `vault verify` reports it; draw the rest
                sid = known[p] if p in known else repo.id_of(p)
                nodes[p] = _Node(p, sid, -depth, sid in gone)
                if parent is not None and depth < ANCESTOR_DEPTH:
                    nxt.append((p, parent))
        frontier = nxt
    out.parents = [(sid, d) for d, sid in zip(info.commit.parents, info.parent_ids)]

    # Descendants: the catalog knows who names this commit as a parent.
    try:
        found = VaultQuery(repo).search(
            "WITH RECURSIVE d(child, child_commit, parent_commit, depth) AS ("
            " SELECT child, child_commit, parent_commit, 1 FROM lineage WHERE parent_commit = ?"
            " UNION SELECT l.child, l.child_commit, l.parent_commit, d.depth + 1"
            " FROM lineage l JOIN d ON l.parent_commit = d.child_commit"
            f" WHERE d.depth < {DESCENDANT_DEPTH})"
            " SELECT child, child_commit, parent_commit, min(depth) AS depth FROM d"
            " GROUP BY ALL ORDER BY depth, child LIMIT 2000", [info.digest], timeout=30)
        for child, child_commit, parent_commit, depth in found.iter_rows():
            edges.add((parent_commit, child_commit))
            if child_commit not in nodes:
                nodes[child_commit] = _Node(child_commit, child, int(depth), child in gone)
            if depth == 1:
                out.children.append((child, child_commit))
    except VaultError as exc:
        out.error = f"the children could not be read from the catalog: {exc}"

    _layout(out, nodes, edges, info.digest)
    return out


def _layout(out: Lineage, nodes: dict[str, _Node], edges: set[tuple[str, str]], me: str) -> None:
    """Place the nodes in rows by generation (at most :data:`GRAPH_ROW_MAX` a row)."""
    levels: dict[int, list[_Node]] = {}
    for n in nodes.values():
        levels.setdefault(n.level, []).append(n)
    shown: dict[str, _Node] = {}
    rows: list[list[_Node]] = []
    for level in sorted(levels):
        row = sorted(levels[level], key=lambda n: (n.sid is None, n.sid or "", n.key))
        if len(row) > GRAPH_ROW_MAX:
            extra = _Node(f"more{level}", None, level, more=len(row) - GRAPH_ROW_MAX + 1)
            row = row[:GRAPH_ROW_MAX - 1] + [extra]
        rows.append(row)
    widest = max(len(r) for r in rows)
    out.width = _PAD * 2 + widest * _NODE_W + (widest - 1) * _GAP_X
    out.height = _PAD * 2 + len(rows) * _NODE_H + (len(rows) - 1) * _GAP_Y
    for i, row in enumerate(rows):
        span = len(row) * _NODE_W + (len(row) - 1) * _GAP_X
        left = (out.width - span) / 2
        for j, n in enumerate(row):
            n.x, n.y = left + j * (_NODE_W + _GAP_X), _PAD + i * (_NODE_H + _GAP_Y)
            if not n.more:
                shown[n.key] = n
            out.nodes.append({
                "x": n.x, "y": n.y, "w": _NODE_W, "h": _NODE_H,
                "label": _clip(n.sid or (f"+{n.more} more" if n.more else f"commit {n.key[:12]}"), 24),
                "title": n.sid or (f"{n.more} more specimens in this generation" if n.more
                                   else f"commit {n.key} (no ref names it)"),
                "href": f"/specimen/{quote(n.sid, safe='')}" if n.sid and n.key != me else None,
                "self": n.key == me, "retired": n.retired, "more": bool(n.more),
                "level": n.level, "sid": n.sid,
            })
    ordered = sorted(edges, key=lambda e: (nodes[e[1]].level if e[1] in nodes else 0,
                                           nodes[e[0]].sid or e[0] if e[0] in nodes else e[0],
                                           nodes[e[1]].sid or e[1] if e[1] in nodes else e[1]))
    for parent, child in ordered:
        a, b = shown.get(parent), shown.get(child)
        if a is not None and b is not None:
            out.edges.append({"x1": a.x + _NODE_W / 2, "y1": a.y + _NODE_H,
                              "x2": b.x + _NODE_W / 2, "y2": b.y})
    for parent, child in ordered[:EDGES_LISTED]:
        pa, ch = nodes.get(parent), nodes.get(child)
        out.links.append((pa.sid if pa else None, parent, ch.sid if ch else None, child))
    out.more_edges = max(0, len(ordered) - EDGES_LISTED)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "\u2026"


# -- shared ------------------------------------------------------------------------------------
def _api_specimen(request: Request) -> CommittedSpecimen:
    """The specimen an API request names (any name :meth:`lookup` takes), or its ``run``.

    With no ``run``, a specimen with sealed runs means its newest run, as on its page.
    """
    repo: Repository = request.app.state.repo
    sid = repo.lookup(request.path_params["id"])
    run = _run_param(request)
    runs = repo.runs(sid)
    if run is not None and run not in runs:
        raise NotFoundError(f"specimen {sid} has no sealed run {run!r}; its runs: "
                            + (", ".join(runs[:10]) if runs else "none"))
    shown = run if run is not None else (runs[0] if runs else None)
    return repo.specimen(run_specimen_id(sid, shown) if shown else sid)


def _json(body: Any) -> Response:
    return Response(json_dumps(body), media_type="application/json")


def _query(**params: Any) -> str:
    return urlencode({k: v for k, v in params.items() if v is not None})


ROUTES: list[BaseRoute] = [
    Route("/specimen/{id}", specimen_page, name="specimen"),
    Route("/api/specimen/{id}/tensor", tensor_data, name="specimen_tensor"),
    Route("/api/specimen/{id}/metrics", metrics_data, name="specimen_metrics"),
    Route("/api/specimen/{id}/spectrum", spectrum_data, name="specimen_spectrum"),
]
