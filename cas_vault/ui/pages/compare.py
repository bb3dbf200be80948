"""The compare page: metric curves of several specimens overlaid, and a diff of two of them.

``GET /compare?ids=a,b,c&file=metrics&metric=loss&log=1&smooth=0.6`` shows the chosen
specimens (anything :meth:`~cas_vault.repository.Repository.lookup` accepts: ids, ``@labels``,
commit digest prefixes), a picker of the numeric columns of their ``strata/<file>.parquet`` and
the ``vault diff`` of a pair of them (``a=`` and ``b=``, by default the first two). Everything the
page shows is in its URL, so a comparison can be bookmarked.

The curves come from ``GET /api/curves?ids=...&file=...&metric=...`` as one binary body (see
:func:`encode_curves`): every value each specimen logged, exact float64, never downsampled, and
decoded in the browser as ``Float64Array`` views of the response, with no parsing at all.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ...diff import Change, SpecimenDiff, diff_specimens, flatten
from ...errors import InvalidInputError, NotFoundError, VaultError
from ...storage import check_name
from ..templating import render

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from ...repository import Repository
    from ...specimen import CommittedSpecimen

__all__ = ["MAGIC", "MAX_IDS", "ROUTES", "Curve", "encode_curves", "parse_ids", "read_curves"]

#: Most specimens one comparison takes (500 curves of 10,000 steps are 40 MB of float64).
MAX_IDS = 500
#: Committed ids offered as suggestions in the picker (the first by name).
MAX_SUGGESTED = 5000
#: A diff value longer than this is cut, with how much was left out.
VALUE_CHARS = 2000
#: The binary body's first bytes, so a reader knows what it holds and which version.
MAGIC = b"CVCURVE1"
_SPLIT = re.compile(r"[\s,]+")
_SMOOTH_DEFAULT = 0.6


def parse_ids(text: str | None) -> list[str]:
    """The names in ``ids=``: separated by commas or spaces, repeats dropped, order kept.

    Raises:
        InvalidInputError: for more than :data:`MAX_IDS` names.
    """
    names = list(dict.fromkeys(t for t in _SPLIT.split(text or "") if t))
    if len(names) > MAX_IDS:
        raise InvalidInputError(
            f"{len(names)} specimens asked for; compare at most {MAX_IDS} at a time (narrow the "
            "selection, e.g. with a WHERE clause on the specimens page)")
    return names


def _file_param(request: Request) -> str:
    return check_name(request.query_params.get("file") or "metrics", "metrics file")


def _metric_param(request: Request) -> str | None:
    metric = request.query_params.get("metric")
    if metric is not None and (not metric or len(metric) > 256):
        raise InvalidInputError("metric= must be a column name of 1 to 256 characters")
    return metric or None


def _parquet_rel(file: str) -> str:
    return f"strata/{file}.parquet"


def _numeric_columns(spec: CommittedSpecimen, file: str) -> list[str] | None:
    """The numeric columns (``step`` aside) of a specimen's ``strata/<file>.parquet``, or None
    if it has no such file. Only the Parquet footer is read."""
    import polars as pl

    rel = _parquet_rel(file)
    if rel not in spec.commit.tree:
        return None
    try:
        schema = pl.read_parquet_schema(spec.object_path(rel))
    except Exception:  # an unreadable object is `vault verify`'s to report
        return None
    return [c for c, t in schema.items() if c != "step" and t.is_numeric()]


# -- reading and encoding curves ---------------------------------------------------------------
@dataclass
class Curve:
    """One specimen's curve of one metric, every row it logged.

    Attributes:
        specimen_id: the specimen.
        x: the ``step`` column as float64, or the row index when there is no ``step``.
        y: the metric as float64 (null and NaN both NaN, so the plot leaves a gap).
        x_name: ``"step"`` or ``"row"``.
        missing: why there is no curve (no such file or column), else None.
    """

    specimen_id: str
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    x_name: str = "step"
    missing: str | None = None


def read_curves(repo: Repository, ids: list[str], file: str, metric: str) -> list[Curve]:
    """Read ``metric`` from ``strata/<file>.parquet`` of each committed specimen, in full.

    Each file is read from the specimen's commit (its object in the store), two columns only.

    Args:
        repo: the vault.
        ids: committed specimen ids.
        file: the Parquet file's name in ``strata/`` (without ``.parquet``).
        metric: the column.

    Returns:
        One curve per id, in order; a specimen without the file or a numeric column ``metric``
        has an empty curve that says why.

    Raises:
        NotFoundError: if no specimen has a numeric column ``metric`` in that file.
    """
    import numpy as np
    import polars as pl

    rel = _parquet_rel(file)
    empty = np.empty(0, dtype="<f8")

    def read(sid: str) -> Curve:
        spec = repo.specimen(sid)
        if rel not in spec.commit.tree:
            return Curve(sid, empty, empty, missing=f"no file {rel}")
        path = spec.object_path(rel)
        schema = pl.read_parquet_schema(path)
        dtype = schema.get(metric)
        if dtype is None or not dtype.is_numeric() or metric == "step":
            why = "no column" if dtype is None else "not a numeric column"
            return Curve(sid, empty, empty, missing=f"{why} {metric!r} in {rel}")
        has_step = "step" in schema and schema["step"].is_numeric()
        df = pl.read_parquet(path, columns=["step", metric] if has_step else [metric])
        y = _float64(df[metric])
        x = _float64(df["step"]) if has_step else np.arange(len(y), dtype="<f8")
        return Curve(sid, x, y, "step" if has_step else "row")

    # One file after another: decoding in parallel threads took the cores the browser needs
    # to parse plotly.js at the same moment, and the plot came later, not sooner.
    out = [read(sid) for sid in ids]
    if out and all(c.missing for c in out):
        raise NotFoundError(
            f"none of the {len(out)} specimen(s) has a numeric column {metric!r} in "
            f"{rel}; pick a metric they have")
    return out


def _float64(s: pl.Series) -> np.ndarray:
    import polars as pl

    return s.cast(pl.Float64).fill_null(float("nan")).to_numpy().astype("<f8", copy=False)


def _as_range(x: np.ndarray) -> tuple[float, float] | None:
    """``(start, stride)`` if ``x`` is exactly ``start + i * stride`` (steps usually are)."""
    import numpy as np

    n = len(x)
    if n == 0:
        return (0.0, 1.0)
    if not np.isfinite(x).all():
        return None
    start = float(x[0])
    stride = float(x[1] - x[0]) if n > 1 else 1.0
    if not (stride.is_integer() and start.is_integer()):
        return None  # exact integer arithmetic only, so the browser rebuilds the same values
    expected = start + stride * np.arange(n, dtype="<f8")
    return (start, stride) if np.array_equal(expected, x) else None


def encode_curves(curves: list[Curve], *, file: str, metric: str) -> bytes:
    """The body of ``/api/curves``: a JSON header, then the curves' float64 arrays.

    Layout (little-endian): the 8 bytes :data:`MAGIC`, a uint32 header length ``H``, ``H``
    bytes of UTF-8 JSON, zero padding up to a multiple of 8 bytes, then the data: for each
    series, its ``x`` (unless the header gives it as a range) and its ``y``, float64 each. The
    header is ``{"file", "metric", "series": [{"id", "n", "x_name", "missing", "x": {"start",
    "stride"} or {"offset"}, "y": {"offset"}}]}``, offsets in bytes from the start of the data
    (which begins at a multiple of 8 bytes, as every offset is one, so a reader can view the
    arrays as ``Float64Array`` without copying).

    Args:
        curves: the curves, in order.
        file: the Parquet file's name.
        metric: the column.

    Returns:
        The body.
    """
    series: list[dict[str, Any]] = []
    arrays: list[np.ndarray] = []
    offset = 0
    for c in curves:
        entry: dict[str, Any] = {"id": c.specimen_id, "n": len(c.y), "x_name": c.x_name,
                                 "missing": c.missing}
        rng = _as_range(c.x)
        if rng is not None:
            entry["x"] = {"start": rng[0], "stride": rng[1]}
        else:
            entry["x"] = {"offset": offset}
            arrays.append(c.x)
            offset += 8 * len(c.x)
        entry["y"] = {"offset": offset}
        arrays.append(c.y)
        offset += 8 * len(c.y)
        series.append(entry)
    header = json.dumps({"file": file, "metric": metric, "series": series},
                        ensure_ascii=False, separators=(",", ":")).encode()
    head = MAGIC + struct.pack("<I", len(header)) + header
    return b"".join([head, b"\0" * (-len(head) % 8), *(a.tobytes() for a in arrays)])


def curves_api(request: Request) -> Response:
    """``GET /api/curves?ids=...&file=metrics&metric=loss``: the curves as binary float64.

    Raises:
        InvalidInputError: for bad parameters (400). NotFoundError: for an unknown id, or a
            metric no chosen specimen has (404).
    """
    repo = request.app.state.repo
    file = _file_param(request)
    metric = _metric_param(request)
    if metric is None:
        raise InvalidInputError("metric= is required: the column to plot, e.g. metric=loss")
    names = parse_ids(request.query_params.get("ids"))
    if not names:
        raise InvalidInputError("ids= is required: specimen ids separated by commas")
    ids = list(dict.fromkeys(repo.lookup(n) for n in names))
    body = encode_curves(read_curves(repo, ids, file, metric), file=file, metric=metric)
    # application/octet-stream is never gzipped (app.py): float64 data hardly compresses.
    return Response(body, media_type="application/octet-stream",
                    headers={"cache-control": "no-store"})


# -- the diff ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffRow:
    """One row of a diff table: a key path and its value in A and B, as text."""

    key: str
    a: str
    b: str
    only_in: str | None = None


@dataclass
class DiffSection:
    """A part of the diff (manifest, provenance, config): changed and identical rows."""

    title: str
    changed: list[DiffRow]
    same: list[DiffRow]


def _text(value: Any) -> str:
    """A value as one line of text (strings as they are; the page escapes it)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bytes):
        text = f"<{len(value):,} bytes> {value[:16].hex()}"
    elif isinstance(value, float) and not math.isfinite(value):
        text = str(value)
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > VALUE_CHARS:
        text = f"{text[:VALUE_CHARS]}… ({len(text) - VALUE_CHARS:,} more chars)"
    return text


def _row(c: Change) -> DiffRow:
    missing = "(absent)"
    return DiffRow(c.key, missing if c.only_in == "b" else _text(c.a),
                   missing if c.only_in == "a" else _text(c.b), c.only_in)


def _sections(repo: Repository, d: SpecimenDiff) -> list[DiffSection]:
    """Manifest (provenance apart) and config: what differs, then what is the same."""
    ma = repo.specimen(d.a).commit.manifest.to_map()
    mb = repo.specimen(d.b).commit.manifest.to_map()
    same_manifest = _same_fields(ma, mb, d.manifest_fields)
    prov = "metadata.provenance"

    def is_prov(key: str) -> bool:
        return key == prov or key.startswith((prov + ".", prov + "["))

    changed = [_row(c) for c in d.manifest_fields]
    sections = [
        DiffSection("Manifest", [r for r in changed if not is_prov(r.key)],
                    [r for r in same_manifest if not is_prov(r.key)]),
        DiffSection("Provenance", [r for r in changed if is_prov(r.key)],
                    [r for r in same_manifest if is_prov(r.key)]),
    ]
    ca, cb = _config(repo, d.a), _config(repo, d.b)
    sections.append(DiffSection("Config", [_row(c) for c in d.config_fields],
                                _same_fields(ca, cb, d.config_fields)))
    return sections


def _config(repo: Repository, sid: str) -> dict[str, Any]:
    spec = repo.specimen(sid)
    if "strata/config.msgpack" not in spec.commit.tree:
        return {}
    try:
        value = spec.read_config()
    except VaultError:
        return {}
    return value if isinstance(value, dict) else {}


def _same_fields(a: Any, b: Any, changes: list[Change]) -> list[DiffRow]:
    differing = {c.key for c in changes}
    fb = dict(flatten(b))
    return [DiffRow(k, _text(v), _text(v)) for k, v in flatten(a)
            if k in fb and k not in differing]


# -- the page ------------------------------------------------------------------------------------
def _url(params: dict[str, str]) -> str:
    return "/compare?" + urlencode({k: v for k, v in params.items() if v != ""})


def compare(request: Request) -> Response:
    """``GET /compare``: pick specimens, overlay a metric, diff a pair.

    Bad input is answered on the page itself (the picker stays usable), with status 400 for
    malformed parameters and 404 for names that mean no committed specimen.
    """
    repo = request.app.state.repo
    q = request.query_params
    names_text = q.get("ids", "")
    add = q.get("add", "").strip()
    if add:  # the "add" box: fold it into ids= and show the canonical, bookmarkable URL
        params = {k: v for k, v in q.items() if k != "add"}
        params["ids"] = ",".join([*_SPLIT.split(names_text.strip()), *_SPLIT.split(add)]).strip(",")
        return RedirectResponse(_url(params), status_code=303)
    context: dict[str, Any] = {
        "title": "Compare", "ids": [], "files": [], "metrics": [], "file": "metrics",
        "metric": None, "log": q.get("log") == "1", "smooth_on": "smooth" in q,
        "smooth": _SMOOTH_DEFAULT, "error": None, "pair": None, "diff": None,
        "sections": [], "chosen": [], "suggestions": _suggestions(repo), "ids_text": names_text,
        "config": None,
    }
    try:
        context["smooth"] = _smooth_param(q.get("smooth"))
        file = context["file"] = _file_param(request)
        metric = _metric_param(request)
        names = parse_ids(names_text)
        removes = [_url({**dict(q), "ids": ",".join(n for n in names if n != name)})
                   for name in names]
        # Listed before they are looked up, so a name that means nothing can still be removed.
        context["chosen"] = [(n, None, u) for n, u in zip(names, removes)]
        resolved = [repo.lookup(n) for n in names]
        context["chosen"] = [(n, i, u) for n, i, u in zip(names, resolved, removes)]
        ids = list(dict.fromkeys(resolved))  # two names may mean one specimen
    except (InvalidInputError, NotFoundError) as exc:
        context["error"] = str(exc)
        status = 404 if isinstance(exc, NotFoundError) else 400
        return render(request, "compare.html", status_code=status, **context)
    context["ids"] = ids
    if not ids:
        return render(request, "compare.html", **context)
    specs = [repo.specimen(i) for i in ids]
    context["files"] = _files(specs, file)
    metrics: list[str] = []
    for spec in specs:
        for col in _numeric_columns(spec, file) or ():
            if col not in metrics:
                metrics.append(col)
    context["metrics"] = metrics
    if metric is None and metrics:
        metric = "loss" if "loss" in metrics else metrics[0]
    context["metric"] = metric
    status = 200
    if not metrics:
        context["error"] = (f"none of the chosen specimens has numeric columns in "
                            f"{_parquet_rel(file)}; pick another file")
        status = 404
    elif metric not in metrics:
        context["error"] = (f"none of the chosen specimens has a numeric column {metric!r} in "
                            f"{_parquet_rel(file)}; pick one of the metrics listed")
        status = 404
    else:
        context["config"] = {
            "ids": ids, "metric": metric, "file": file, "log": context["log"],
            "smoothOn": context["smooth_on"], "smooth": context["smooth"],
            "curvesUrl": "/api/curves?" + urlencode({"ids": ",".join(ids), "file": file,
                                                      "metric": metric}),
        }
    if len(ids) >= 2:
        a = q.get("a") if q.get("a") in ids else ids[0]
        b = q.get("b") if q.get("b") in ids and q.get("b") != a else next(i for i in ids if i != a)
        d = diff_specimens(repo, a, b)
        context.update(pair=(a, b), diff=d, sections=_sections(repo, d))
    return render(request, "compare.html", status_code=status, **context)


def _smooth_param(text: str | None) -> float:
    if text is None or text in ("", "1"):
        return _SMOOTH_DEFAULT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise InvalidInputError(f"smooth={text!r}: the smoothing weight is a number from 0 to 0.999")
    return value


def _files(specs: list[CommittedSpecimen], current: str) -> list[str]:
    """The ``strata/<name>.parquet`` names the chosen specimens have (the current one first)."""
    names: list[str] = [current]
    for spec in specs:
        for rel in spec.commit.tree:
            if rel.startswith("strata/") and rel.endswith(".parquet") and rel.count("/") == 1:
                name = rel[len("strata/"):-len(".parquet")]
                if name not in names:
                    names.append(name)
    return names


def _suggestions(repo: Repository) -> list[str]:
    """Committed ids for the picker's list: the refs' names alone (no commit is read)."""
    return repo.refs.names()[:MAX_SUGGESTED]


ROUTES: list[BaseRoute] = [
    Route("/compare", compare, name="compare"),
    Route("/api/curves", curves_api, name="curves"),
]
