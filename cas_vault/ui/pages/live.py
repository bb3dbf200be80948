"""The live page: specimens with work in progress, their metrics updated as steps arrive.

What is in progress is what ``vault status`` reports (:mod:`cas_vault.status`), found the same
way without the rest of a status (no catalog is opened): a step-wise logger writing
``specimens/<id>/.cas/log/<name>/part-*.parquet`` (``logging``), one whose process is gone
(``unfinished_log``), a ``vault run`` (``run``), and runs of a committed runs-layout specimen
that no commit sealed yet (``unsealed_run``, its ``runs/<run_id>/metrics.parquet``).

The page polls ``GET /api/live`` about once a second, passing one cursor per item it shows
(``c=<key>:<token>``): the answer holds the rows flushed since (only the Parquet parts it has
not seen, found by listing their directory), the items that appeared, and for each item that
is no longer in progress whether it was committed (the page then links to it). Polling, not a
stream: no request outlives a second, so nothing keeps the server from stopping.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ...errors import InvalidInputError, VaultError
from ...ids import validate_id
from ...logger import LOG_DIR
from ...seal import unsealed_runs
from ...status import is_committed, specimen_in_progress, working_dirs
from ...storage import check_name
from ...workdir import RUNS_DIR
from ..templating import json_dumps, render

if TYPE_CHECKING:
    import polars as pl

    from ...repository import Repository

__all__ = ["MAX_CURSORS", "MAX_ROWS", "POLL_SECONDS", "ROUTES", "LiveItem", "scan"]

#: How often the page asks for news.
POLL_SECONDS = 1.0
#: Rows one answer carries at most per item; the page asks again at once for the rest.
MAX_ROWS = 200_000
#: Cursors one request may pass (items a page tracks).
MAX_CURSORS = 1000
#: A scan of the working directories is shared by requests within this many seconds.
_SCAN_TTL = 0.5
_PART = re.compile(r"\Apart-\d+\.parquet\Z")
_TOKEN = re.compile(r"\A[0-9A-Za-z_-]{0,64}\Z")


@dataclass(frozen=True)
class LiveItem:
    """Something in progress in a working directory.

    Attributes:
        key: ``<id>/<log name>`` (``<id>/`` when there are no rows to follow), where ``<id>``
            is what the work will be committed as: the specimen, or ``<id>.run_<run_id>``.
        specimen_id: the working directory's specimen.
        sealed_as: the id a commit of it will have.
        kind: ``logging``, ``unfinished_log``, ``run`` or ``unsealed_run``.
        name: the log's name, or ``metrics`` for an unsealed run, else None.
        source: the directory of the log's parts, or the run's Parquet file; None if none.
    """

    key: str
    specimen_id: str
    sealed_as: str
    kind: str
    name: str | None
    source: Path | None


def scan(repo: Repository) -> list[LiveItem]:
    """Every piece of work in progress in ``repo``, in specimen id order.

    What ``vault status`` reports as in progress, found the same way (directory listings and
    lock probes that never wait); writes nothing.
    """
    out: list[LiveItem] = []
    for sid, wd in working_dirs(repo):
        try:
            out.extend(_items(repo, sid, wd))
        except OSError:
            continue  # a directory that vanished or cannot be read: not live
    return out


def _items(repo: Repository, sid: str, wd: Path) -> list[LiveItem]:
    out = []
    progress = specimen_in_progress(sid, wd)
    logs = [p for p in progress if p.kind in ("logging", "unfinished_log")]
    for p in logs:
        out.append(LiveItem(f"{sid}/{p.name}", sid, sid, p.kind, p.name, wd / LOG_DIR / p.name))
    # A run that logs step by step is followed through its log; one that does not, by itself.
    if any(p.kind == "run" for p in progress) and not any(p.kind == "logging" for p in logs):
        out.append(LiveItem(f"{sid}/", sid, sid, "run", None, None))
    if (wd / RUNS_DIR).is_dir() and is_committed(repo, sid):
        try:
            pending = unsealed_runs(repo, sid, wd)
        except VaultError:
            pending = []  # `vault status` says what is wrong with it
        for run_id, sealed_as in pending:
            out.append(LiveItem(f"{sealed_as}/metrics", sid, sealed_as, "unsealed_run", "metrics",
                                wd / RUNS_DIR / run_id / "metrics.parquet"))
    return out


class _ScanCache:
    """One scan shared by the requests of every open page within :data:`_SCAN_TTL`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = -1.0
        self._items: list[LiveItem] = []

    def get(self, repo: Repository) -> list[LiveItem]:
        with self._lock:
            now = time.monotonic()
            if now - self._at > _SCAN_TTL:
                self._items = scan(repo)
                self._at = now
            return self._items


_CACHE_LOCK = threading.Lock()


def _scan_cached(request: Request) -> list[LiveItem]:
    state = request.app.state
    with _CACHE_LOCK:
        cache = getattr(state, "live_scan", None)
        if cache is None:
            cache = state.live_scan = _ScanCache()
    return cache.get(state.repo)


# -- reading rows --------------------------------------------------------------------------------
def _parts(directory: Path) -> list[Path]:
    """The log's flushed parts in order (each written whole, then renamed into place)."""
    try:
        names = [e.name for e in os.scandir(directory) if _PART.match(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [directory / n for n in sorted(names)]


def _columns(df: pl.DataFrame) -> dict[str, list[Any]]:
    """``step`` and the numeric columns, as lists (NaN becomes null in the JSON)."""
    import polars as pl

    keep = [c for c, t in df.schema.items() if t.is_numeric()]
    if "step" not in keep:
        df = df.with_row_index("step")
        keep = ["step", *keep]
    else:
        keep = ["step", *(c for c in keep if c != "step")]
    return df.select(pl.col(keep)).to_dict(as_series=False)


def _log_rows(item: LiveItem, token: str) -> dict[str, Any]:
    """New rows of a step-wise log: the parts after the ``token``-th."""
    import polars as pl

    assert item.source is not None
    parts = _parts(item.source)
    seen = int(token) if token.isdigit() else 0
    if not parts and seen:
        # Finishing: the parts were assembled into strata/ and removed; the commit follows.
        return {"token": token, "reset": False, "more": False, "parts": 0, "state": "finishing"}
    reset = seen > len(parts)  # the log was started again under the same name
    if reset or not token:
        seen = 0
    frames: list[pl.DataFrame] = []
    rows = 0
    for p in parts[seen:]:
        if frames and rows >= MAX_ROWS:
            break
        try:
            df = pl.read_parquet(p)
        except FileNotFoundError:
            break  # the log finished while we read: its parts were assembled and removed
        frames.append(df)
        rows += df.height
    done = seen + len(frames)
    state = "waiting" if not parts else "logging"
    out: dict[str, Any] = {"token": str(done), "reset": reset or not token,
                           "more": done < len(parts), "parts": len(parts), "state": state}
    if frames:
        out["rows"] = _columns(pl.concat(frames, how="diagonal_relaxed"))
    return out


def _file_rows(item: LiveItem, token: str) -> dict[str, Any]:
    """A run's metrics file, whole, whenever it changed (its size or time differ)."""
    import polars as pl

    assert item.source is not None
    try:
        st = item.source.stat()
    except FileNotFoundError:
        return {"token": "none", "reset": False, "more": False, "state": "waiting"}
    now = f"{st.st_mtime_ns}-{st.st_size}"
    changed = now != token
    out: dict[str, Any] = {"token": now, "reset": changed, "more": False, "state": "logging"}
    if changed:
        try:
            out["rows"] = _columns(pl.read_parquet(item.source))
        except Exception:  # half-written by a protocol that writes in place: next time
            out["token"] = token
            out["reset"] = False
    return out


# -- routes ---------------------------------------------------------------------------------------
def _cursors(request: Request) -> dict[str, str]:
    """``c=<key>:<token>`` parameters, checked: keys name ids and log names, nothing else."""
    values = request.query_params.getlist("c")
    if len(values) > MAX_CURSORS:
        raise InvalidInputError(f"at most {MAX_CURSORS} cursors (c=) per request")
    out = {}
    for v in values:
        key, sep, token = v.rpartition(":")
        sid, slash, name = key.partition("/")
        if not sep or not slash or not _TOKEN.match(token):
            raise InvalidInputError(f"cursor {v!r} is malformed: c=<id>/<log name>:<token>")
        validate_id(sid)
        if name:
            check_name(name, "log")
        out[key] = token
    return out


def live_api(request: Request) -> Response:
    """``GET /api/live?c=<key>:<token>...``: the work in progress and what changed since.

    Returns:
        JSON ``{"items": [...], "ended": [...], "poll": seconds}``: each item with its key, ids,
        kind, log name, state and the rows since the cursor (``rows``, columns of values;
        ``reset``: replace what was shown; ``more``: ask again at once), and for every cursor
        whose item is no longer in progress, whether it was committed and as which commit.

    Raises:
        InvalidInputError: for a malformed cursor (400).
    """
    repo = request.app.state.repo
    cursors = _cursors(request)
    items = []
    current = set()
    for item in _scan_cached(request):
        current.add(item.key)
        entry: dict[str, Any] = {"key": item.key, "specimen_id": item.specimen_id,
                                 "id": item.sealed_as, "kind": item.kind, "name": item.name}
        token = cursors.get(item.key, "")
        if item.kind in ("logging", "unfinished_log"):
            entry.update(_log_rows(item, token))
        elif item.kind == "unsealed_run":
            entry.update(_file_rows(item, token))
        else:
            entry.update(token="", reset=False, more=False, state="running")
        items.append(entry)
    ended = []
    for key in cursors:
        if key in current:
            continue
        sid = key.partition("/")[0]
        try:
            digest = repo.refs.get(sid)
        except InvalidInputError:
            digest = None
        ended.append({"key": key, "id": sid, "committed": digest is not None,
                      "commit": str(digest) if digest else None})
    body = {"items": items, "ended": ended, "poll": POLL_SECONDS}
    return Response(json_dumps(body), media_type="application/json",
                    headers={"cache-control": "no-store"})


def live(request: Request) -> Response:
    """``GET /live``: the page (its script fills it in from ``/api/live``)."""
    return render(request, "live.html", title="Live",
                  config={"api": "/api/live", "poll": POLL_SECONDS})


ROUTES: list[BaseRoute] = [
    Route("/live", live, name="live"),
    Route("/api/live", live_api, name="live_api"),
]
