"""The specimens table (``GET /``): every live committed specimen, one page at a time.

One row per specimen in the catalog (a sealed run ``<id>.run_<run_id>`` is counted in its
specimen's ``runs`` column rather than listed, unless the specimen itself is not in the
catalog); retired specimens are not in the catalog, so they are not listed. Columns: id,
created, domain, method, model, tags, labels, runs, message, and the final value (the value at
the highest step) of each metric chosen with ``metrics=loss,acc``.

Everything the view shows is in the query string, so a view can be bookmarked:
``sort``/``desc`` (any column, or ``metric:<name>``), ``domain``, ``method``, ``tag``, ``q``
(free text over id, message, model and tags), ``where`` (a SQL condition over ``catalog``),
``page`` and ``per_page``. The page is rendered on the server, rows and all, with two catalog
queries per request (the filter choices, then the page): sorting, filtering and paging happen
in DuckDB (``LIMIT``/``OFFSET``), and final metric values are computed for the page's rows only
(for every matching row only when the table is sorted by one of them).

The ``where`` clause runs in the same read-only sandbox as ``vault query``
(:meth:`cas_vault.query.VaultQuery.search`), as a condition of its own subquery: a clause whose
parentheses do not balance is refused before it runs, so it cannot end the subquery and add
anything after it, and the sandbox's one-SELECT check refuses ``;`` and every other statement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ...catalog.metrics import quote_ident
from ...catalog.schema import METRIC_KEY_COLUMNS
from ...errors import InvalidInputError, QueryTimeoutError
from ...query import VaultQuery
from ..templating import render

__all__ = ["COLUMNS", "DEFAULT_PER_PAGE", "MAX_PER_PAGE", "ROUTES", "Choices", "TableView",
           "check_where", "index", "page_sql", "parse_view", "read_choices"]

#: Rows per page unless ``per_page`` says otherwise, and the most it may say.
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 500
#: Seconds a catalog query of this page may run before it is cancelled.
QUERY_TIMEOUT = 30.0
#: The table's own columns: query-string name -> heading.
COLUMNS: dict[str, str] = {
    "specimen_id": "id", "created": "created", "domain": "domain", "method": "method",
    "model": "model", "tags": "tags", "labels": "labels", "runs": "runs", "message": "message",
}
#: Prefix of a ``sort`` value naming a metric column (``sort=metric:loss``).
METRIC_SORT = "metric:"
# Columns of `metrics` that are not metrics: the key columns, and the step the final value is
# taken at.
_NOT_METRICS = frozenset(METRIC_KEY_COLUMNS) | {"step"}
_PARAMS = ("sort", "desc", "domain", "method", "tag", "q", "where", "metrics", "page", "per_page")


@dataclass(frozen=True)
class TableView:
    """What the table shows: every query-string parameter, validated.

    Attributes:
        sort: a key of :data:`COLUMNS` or ``metric:<name>``.
        desc: sort descending.
        domain, method, tag: exact filters ("" for none).
        q: free text searched (case-insensitively) in id, message, model and tags.
        where: a SQL condition over ``catalog`` ("" for none).
        metrics: metric columns whose final values are shown.
        page: the page number, from 1.
        per_page: rows per page.
    """

    sort: str = "created"
    desc: bool = True
    domain: str = ""
    method: str = ""
    tag: str = ""
    q: str = ""
    where: str = ""
    metrics: tuple[str, ...] = field(default_factory=tuple)
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE

    def query_string(self, **changes: Any) -> str:
        """This view's URL query string (``?...``), with ``changes`` applied; defaults left out."""
        view = replace(self, **changes)
        default = TableView()
        pairs: list[tuple[str, str]] = []
        for name in _PARAMS:
            value = getattr(view, name)
            if name == "desc":
                # The default direction belongs to the default sort; write it whenever either
                # differs, so that a link always says what it shows.
                if view.sort != default.sort or value != default.desc:
                    pairs.append(("desc", "1" if value else "0"))
            elif name == "metrics":
                if any("," in m for m in value):  # a name with a comma: one parameter each
                    pairs.extend(("metrics", m) for m in value)
                elif value:
                    pairs.append(("metrics", ",".join(value)))
            elif value != getattr(default, name):
                pairs.append((name, str(value)))
        return "?" + urlencode(pairs) if pairs else "?"

    def sort_link(self, column: str) -> str:
        """The link of a column heading: sort by it (ascending first), or flip its direction."""
        if self.sort == column:
            return self.query_string(desc=not self.desc, page=1)
        return self.query_string(sort=column, desc=False, page=1)


def _text(request: Request, name: str, limit: int = 10_000) -> str:
    value = request.query_params.get(name, "")
    if len(value) > limit:
        raise InvalidInputError(f"{name} is {len(value):,} characters long; at most {limit:,} "
                                "are accepted")
    if "\x00" in value:
        raise InvalidInputError(f"{name} contains a NUL character; remove it")
    return value.strip()


def _integer(request: Request, name: str, default: int, low: int, high: int | None) -> int:
    raw = request.query_params.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInputError(f"{name} must be a whole number, not {raw[:40]!r}") from None
    if value < low or (high is not None and value > high):
        most = f" and at most {high}" if high is not None else ""
        raise InvalidInputError(f"{name} must be at least {low}{most}, not {value}")
    return value


def parse_view(request: Request, metric_columns: list[str]) -> TableView:
    """Read and validate the query string.

    Args:
        request: the request.
        metric_columns: the metric columns that exist (what ``metrics`` and a metric ``sort``
            may name).

    Returns:
        The view asked for.

    Raises:
        InvalidInputError: for a parameter that is not valid, saying what to send instead.
    """
    params = request.query_params
    wanted: list[str] = []
    for raw in params.getlist("metrics"):
        # A metric whose name holds a comma comes as a parameter of its own.
        names = [raw] if raw in metric_columns else [m.strip() for m in raw.split(",")]
        for name in names:
            if not name:
                continue
            if name not in metric_columns:
                have = ", ".join(metric_columns[:20]) or "none: no specimen logged metrics"
                raise InvalidInputError(f"metrics: there is no metric column {name!r} (the "
                                        f"columns are {have})")
            if name not in wanted:
                wanted.append(name)
    sort = params.get("sort", "created").strip() or "created"
    if sort.startswith(METRIC_SORT):
        if sort[len(METRIC_SORT):] not in metric_columns:
            raise InvalidInputError(f"sort: there is no metric column "
                                    f"{sort[len(METRIC_SORT):]!r}")
    elif sort not in COLUMNS:
        raise InvalidInputError(f"sort must be one of {', '.join(COLUMNS)} or "
                                f"{METRIC_SORT}<metric>, not {sort[:60]!r}")
    raw_desc = params.get("desc", "").strip().lower()
    if raw_desc not in ("", "0", "1", "true", "false"):
        raise InvalidInputError(f"desc must be 1 or 0, not {raw_desc[:20]!r}")
    desc = (sort == "created") if raw_desc == "" and "sort" not in params else raw_desc in ("1", "true")
    if sort.startswith(METRIC_SORT) and sort[len(METRIC_SORT):] not in wanted:
        wanted.append(sort[len(METRIC_SORT):])  # a sorted metric is also shown
    return TableView(
        sort=sort, desc=desc, domain=_text(request, "domain", 200),
        method=_text(request, "method", 200), tag=_text(request, "tag", 200),
        q=_text(request, "q", 500), where=_text(request, "where"), metrics=tuple(wanted),
        page=_integer(request, "page", 1, 1, 1_000_000_000),
        per_page=_integer(request, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE),
    )


def check_where(clause: str) -> None:
    """Refuse a ``where`` clause that could end the subquery it is placed in.

    The clause must be a condition: its parentheses (outside strings, quoted names and comments)
    balance and never close more than they opened, so that whatever it contains stays inside
    ``WHERE (...)``. Statements after it (``; DROP ...``) are refused by the sandbox itself.

    Raises:
        InvalidInputError: if the parentheses do not balance or it cannot be read as SQL.
    """
    import duckdb

    try:
        tokens = duckdb.tokenize(clause)
    except duckdb.Error as exc:
        raise InvalidInputError(f"the WHERE clause does not parse: {exc}") from None
    depth = 0
    for i, (start, kind) in enumerate(tokens):
        if kind != duckdb.token_type.operator:
            continue
        end = tokens[i + 1][0] if i + 1 < len(tokens) else len(clause)
        for ch in clause[start:end]:
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth < 0:
                raise InvalidInputError(
                    "the WHERE clause closes a parenthesis it did not open; write one condition "
                    "over catalog's columns, e.g. domain = 'training' AND list_contains(tags, "
                    "'gpt2')")
    if depth != 0:
        raise InvalidInputError("the WHERE clause leaves a parenthesis open; close it")


# Orphan runs (sealed runs whose specimen is not in the catalog) are listed as rows of their own.
_BASE = """
    SELECT c.specimen_id, c.created, c.domain, c.method, c.model, c.tags, c.message,
           coalesce(l.labels, []::VARCHAR[]) AS labels, coalesce(r.runs, 0) AS runs
    FROM catalog c
    LEFT JOIN (SELECT specimen_id, list(name ORDER BY name) AS labels FROM labels GROUP BY 1) l
        USING (specimen_id)
    LEFT JOIN (SELECT specimen_id, count(*) AS runs FROM runs GROUP BY 1) r USING (specimen_id)
    WHERE (c.run_of IS NULL
           OR c.run_of NOT IN (SELECT specimen_id FROM catalog WHERE run_of IS NULL))"""


def page_sql(view: TableView, step_column: str | None) -> tuple[str, dict[str, Any]]:
    """The query of one page: its rows, their final metric values, and the matching total.

    The result has one row per specimen of the page and a ``_total`` column; when the page is
    past the end it has one row whose ``specimen_id`` is NULL, holding the total only.

    Args:
        view: the validated view.
        step_column: the ``metrics`` column final values are taken at (``step``), or None when
            there is none (then the last row written counts).

    Returns:
        The SQL and its named parameters.
    """
    params: dict[str, Any] = {}
    ctes: list[str] = []
    conditions: list[str] = []
    if view.where:
        # A CTE of its own, at the top level: the clause sees catalog's columns and nothing of
        # the outer query. Newlines keep a trailing `--` comment from hiding the parenthesis.
        ctes.append(f"matched AS (SELECT specimen_id FROM catalog WHERE (\n{view.where}\n))")
        conditions.append("c.specimen_id IN (SELECT specimen_id FROM matched)")
    for name in ("domain", "method"):
        if getattr(view, name):
            params[name] = getattr(view, name)
            conditions.append(f"c.{name} = ${name}")
    if view.tag:
        params["tag"] = view.tag
        conditions.append("list_contains(c.tags, $tag)")
    if view.q:
        params["q"] = view.q.lower()
        conditions.append(
            "(contains(lower(c.specimen_id), $q) OR contains(lower(coalesce(c.message, '')), $q)"
            " OR contains(lower(coalesce(c.model, '')), $q)"
            " OR contains(lower(array_to_string(c.tags, ' ')), $q))")
    base = _BASE + "".join(f"\n      AND {c}" for c in conditions)
    ctes.append(f"base AS ({base})")

    metric_alias = {m: f"_m{i}" for i, m in enumerate(view.metrics)}
    by_metric = view.sort.startswith(METRIC_SORT)
    direction = "DESC" if view.desc else "ASC"
    offset = (view.page - 1) * view.per_page
    if metric_alias:
        # Final values for the page's rows only, unless the order depends on them.
        scope = "base" if by_metric else "page_ids"
        if not by_metric:
            ctes.append(f"page_ids AS (SELECT specimen_id FROM base ORDER BY "
                        f"{quote_ident(view.sort)} {direction} NULLS LAST, specimen_id "
                        f"LIMIT {view.per_page} OFFSET {offset})")
        ctes.append(_final_values_sql(scope, metric_alias, step_column))
    if by_metric:
        key = metric_alias[view.sort[len(METRIC_SORT):]]
        order = f"f.{key} {direction} NULLS LAST, b.specimen_id"
    else:
        order = f"b.{quote_ident(view.sort)} {direction} NULLS LAST, b.specimen_id"
    finals = "".join(f", f.{a}" for a in metric_alias.values())
    join = " LEFT JOIN finals f USING (specimen_id)" if metric_alias else ""
    ctes.append(f"page AS (SELECT b.*{finals}, row_number() OVER (ORDER BY {order}) AS _pos "
                f"FROM base b{join} ORDER BY {order} LIMIT {view.per_page} OFFSET {offset})")
    sql = ("WITH " + ",\n".join(ctes) +
           "\nSELECT p.*, t._total FROM (SELECT count(*) AS _total FROM base) t "
           "LEFT JOIN page p ON true ORDER BY p._pos")
    return sql, params


def _final_values_sql(scope: str, aliases: dict[str, str], step_column: str | None) -> str:
    """The ``finals`` CTE: each metric's value at the highest step where it is not NULL.

    A specimen whose results are sealed runs and that logged no value of its own shows its
    newest run's (what ``vault show`` shows for it).
    """
    # DuckDB's arg_max skips rows whose value is NULL (arg_max_null would not): a specimen that
    # stopped logging a metric before its last step shows the last value it logged. Rows without
    # a step (a file that has none) count in the order they were written.
    def final(column: str) -> str:
        by_row = f"arg_max(m.{quote_ident(column)}, m.rowid)"
        if step_column is None:
            return by_row
        return f"coalesce(arg_max(m.{quote_ident(column)}, m.{quote_ident(step_column)}), {by_row})"

    per_source = ", ".join(f"{final(m)} AS {a}" for m, a in aliases.items())
    prefer = ", ".join(f"arg_min(v.{a}, s.pref) FILTER (WHERE v.{a} IS NOT NULL) AS {a}"
                       for a in aliases.values())
    return f"""sources AS (
        SELECT specimen_id AS shown, specimen_id AS source, 0 AS pref FROM {scope}
        UNION ALL
        SELECT specimen_id, arg_max(run_specimen_id, created), 1 FROM runs
        WHERE specimen_id IN (SELECT specimen_id FROM {scope}) GROUP BY specimen_id),
    per_source AS (
        SELECT m.specimen_id AS source, {per_source} FROM metrics m
        WHERE m.specimen_id IN (SELECT source FROM sources) GROUP BY m.specimen_id),
    finals AS (
        SELECT s.shown AS specimen_id, {prefer} FROM sources s JOIN per_source v USING (source)
        GROUP BY s.shown)"""


_CHOICES_SQL = """
SELECT
    (SELECT count(*) FROM catalog) AS specimens,
    (SELECT list(DISTINCT domain ORDER BY domain) FROM catalog WHERE domain IS NOT NULL) AS domains,
    (SELECT list(DISTINCT method ORDER BY method) FROM catalog WHERE method IS NOT NULL) AS methods,
    (SELECT list(DISTINCT t ORDER BY t) FROM (SELECT unnest(tags) AS t FROM catalog)) AS tags,
    (SELECT list(column_name ORDER BY column_index) FROM duckdb_columns()
     WHERE table_name = 'metrics' AND schema_name = 'main'
       AND database_name = current_database()) AS metric_columns
"""


@dataclass(frozen=True)
class Choices:
    """What the filters can choose from, read from the catalog.

    Attributes:
        specimens: rows in ``catalog`` (0: the vault has no committed specimen).
        domains, methods, tags: the values present.
        metrics: the metric columns of ``metrics``.
        step_column: ``step`` if ``metrics`` has it, else None.
    """

    specimens: int
    domains: list[str]
    methods: list[str]
    tags: list[str]
    metrics: list[str]
    step_column: str | None


def read_choices(query: VaultQuery) -> Choices:
    """The filter choices: domains, methods, tags and metric columns present in the catalog.

    Raises:
        NotFoundError, LockTimeoutError: if the catalog cannot be read.
    """
    row = query.search(_CHOICES_SQL, timeout=QUERY_TIMEOUT).row(0, named=True)
    columns = row["metric_columns"] or []
    return Choices(
        specimens=int(row["specimens"] or 0), domains=row["domains"] or [],
        methods=row["methods"] or [], tags=row["tags"] or [],
        metrics=[c for c in columns if c not in _NOT_METRICS],
        step_column="step" if "step" in columns else None,
    )


def index(request: Request) -> Response:
    """The specimens table, first page (or the page asked for) rendered on the server.

    Returns:
        The page; status 400 with the table empty when the ``where`` clause is refused or fails.

    Raises:
        InvalidInputError: for an invalid query parameter.
    """
    query = VaultQuery(request.app.state.repo)
    choices = read_choices(query)
    view = parse_view(request, choices.metrics)
    rows: list[dict[str, Any]] = []
    total = 0
    error = None
    if choices.specimens:
        sql, params = page_sql(view, choices.step_column)
        try:
            if view.where:
                check_where(view.where)
            result = query.search(sql, params, timeout=QUERY_TIMEOUT)
        except (InvalidInputError, QueryTimeoutError) as exc:
            if not view.where:
                raise
            error = f"The WHERE clause was not run: {exc}"
        else:
            total = int(result["_total"][0])
            aliases = {f"_m{i}": m for i, m in enumerate(view.metrics)}
            for r in result.iter_rows(named=True):
                if r["specimen_id"] is None:
                    continue
                r["finals"] = {m: r[a] for a, m in aliases.items()}
                rows.append(r)
    pages = max(1, math.ceil(total / view.per_page))
    return render(
        request, "specimens.html", status_code=400 if error else 200, title="Specimens",
        view=view, choices=choices, rows=rows, total=total, pages=pages, error=error,
        columns=COLUMNS, metric_sort=METRIC_SORT,
        first=(view.page - 1) * view.per_page + 1 if rows else 0,
        last=(view.page - 1) * view.per_page + len(rows),
    )


ROUTES: list[BaseRoute] = [Route("/", index, name="specimens")]
