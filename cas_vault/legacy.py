"""``vault import-legacy PATH``: bring experiments in the seed's layouts into the vault.

The seed kept ``specimens/<id>/`` with ``manifest.msgpack``, ``protocol.py``,
``field_notes.md``, and results in ``strata/`` and/or ``runs/<YYYYMMDD_HHMMSS>/`` (each run
with ``metrics.parquet``, ``*.zarr`` and its own ``manifest.msgpack``). Every run is kept:

* ``specimens/<id>/`` (everything but ``runs/``) becomes the specimen ``<id>``;
* each ``runs/<run>/`` becomes the specimen ``<id>.run_<run>`` whose parent is ``<id>``,
  holding the run's files under ``strata/`` plus the shared ``protocol.py`` and
  ``field_notes.md`` (deduplicated, so they cost nothing).

Seed manifest fields map to the manifest: ``domain`` and ``method`` (top level or under
``taxonomy``), ``tags`` (a list or comma-separated string), ``model``. Everything else, and
``created``, is kept under ``metadata.legacy`` (docs/format.md). A run's manifest overrides
its specimen's fields. Importing goes through :meth:`Vault.new` and :meth:`Vault.commit`.

Problems (no or corrupt manifest, a domain/method outside the taxonomy, an id that is not
allowed) are collected in the report, and everything else is still imported. Importing again
adds nothing: a specimen already committed from an import is skipped.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import canonical
from .errors import InvalidInputError, NotFoundError, VaultError
from .ids import validate_id
from .workdir import MANIFEST_NAME, read_manifest

if TYPE_CHECKING:
    from .vault import Vault

__all__ = ["ImportProblem", "ImportReport", "ImportedSpecimen", "import_legacy", "run_specimen_id"]

_MAPPED = {"domain", "method", "tags", "model", "taxonomy", "specimen_id", "created"}
_SCAFFOLD = ("protocol.py", "field_notes.md")


@dataclass(frozen=True)
class ImportedSpecimen:
    """One specimen committed by the import."""

    specimen_id: str
    source: str
    commit: str

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"specimen_id": self.specimen_id, "source": self.source, "commit": self.commit}


@dataclass(frozen=True)
class ImportProblem:
    """Something that could not be imported, and why."""

    source: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"source": self.source, "message": self.message}


@dataclass
class ImportReport:
    """What :func:`import_legacy` did."""

    source: str
    imported: list[ImportedSpecimen] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    problems: list[ImportProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing had to be reported."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The stable ``vault import-legacy --json`` form."""
        return {
            "source": self.source, "ok": self.ok,
            "imported": [i.to_dict() for i in self.imported],
            "already_imported": list(self.already),
            "problems": [p.to_dict() for p in self.problems],
        }


def run_specimen_id(specimen_id: str, run: str) -> str:
    """The id a legacy run gets: ``<id>.run_<run>``."""
    return f"{specimen_id}.run_{run}"


def _plain(value: Any) -> Any:
    """Turn a decoded legacy msgpack value into something canonical msgpack can store."""
    import msgpack

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, msgpack.Timestamp):
        return value.to_datetime().isoformat()
    if isinstance(value, msgpack.ExtType):
        return {"ext_type": value.code, "data": value.data}
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            return str(value)
        return value
    return repr(value)


def _read_legacy_manifest(path: Path) -> dict[str, Any]:
    """Decode a seed manifest (plain msgpack, not necessarily canonical).

    Raises:
        NotFoundError: missing. InvalidInputError: corrupt or not a map.
    """
    import msgpack

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"{path} is missing") from None
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False, timestamp=0)
    except Exception as exc:  # msgpack raises many types for corrupt input
        raise InvalidInputError(f"{path} is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise InvalidInputError(f"{path} holds a {type(value).__name__}, not a map of fields")
    return _plain(value)


def _fields(raw: dict[str, Any], where: Path) -> dict[str, Any]:
    """Map seed manifest fields to ``vault new`` arguments plus the kept legacy fields.

    Raises:
        InvalidInputError: no usable domain/method, or malformed tags/model.
    """
    tax = raw.get("taxonomy") if isinstance(raw.get("taxonomy"), dict) else {}
    domain = raw.get("domain", tax.get("domain"))
    method = raw.get("method", tax.get("method"))
    if not isinstance(domain, str) or not isinstance(method, str):
        raise InvalidInputError(
            f"{where} has no domain/method (neither top-level nor under 'taxonomy'); add them "
            "and import again"
        )
    tags = raw.get("tags", [])
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidInputError(f"{where}: 'tags' must be a list of strings")
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        model = str(model)
    extra_tax = {k: v for k, v in tax.items() if k not in ("domain", "method")}
    unknown = {k: v for k, v in raw.items() if k not in _MAPPED}
    if extra_tax:
        unknown["taxonomy"] = extra_tax
    return {"domain": domain, "method": method, "tags": tags, "model": model or None,
            "created": raw.get("created"), "specimen_id": raw.get("specimen_id"),
            "fields": unknown}


def _override(f: dict[str, Any], raw: dict[str, Any], where: Path) -> None:
    """Let a run manifest's own fields override its specimen's (in ``f``, in place).

    Raises:
        InvalidInputError / TaxonomyError: malformed fields or a pair outside the taxonomy.
    """
    from . import taxonomy

    tax = raw.get("taxonomy") if isinstance(raw.get("taxonomy"), dict) else {}
    for key in ("domain", "method"):
        value = raw.get(key, tax.get(key))
        if value is not None:
            if not isinstance(value, str):
                raise InvalidInputError(f"{where}: {key!r} must be a string")
            f[key] = value
    if "tags" in raw or "model" in raw:
        mapped = _fields({**raw, "domain": f["domain"], "method": f["method"]}, where)
        if "tags" in raw:
            f["tags"] = mapped["tags"]
        if "model" in raw:
            f["model"] = mapped["model"]
    if "created" in raw:
        f["created"] = raw["created"]
    taxonomy.check(f["domain"], f["method"])


def _specimen_dirs(path: Path) -> list[Path]:
    if (path / "specimens").is_dir():
        path = path / "specimens"
    elif any((path / n).exists() for n in (MANIFEST_NAME, "strata", "runs", "protocol.py")):
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _copy_entry(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".DS_Store"))
    else:
        shutil.copyfile(src, dest)


class _Importer:
    def __init__(self, vault: Vault, source: Path) -> None:
        self.vault = vault
        self.report = ImportReport(str(source))

    def problem(self, where: Path | str, message: str) -> None:
        self.report.problems.append(ImportProblem(str(where), message))

    def _state(self, specimen_id: str, src: Path) -> str:
        """'new', 'done' (committed from an import) or 'conflict' (reported)."""
        v = self.vault
        committed = v.refs.get(specimen_id)
        if committed is not None:
            meta = v.read_commit(committed).manifest.metadata
            if isinstance(meta.get("legacy"), dict):
                self.report.already.append(specimen_id)
                return "done"
            self.problem(src, f"specimen {specimen_id} already exists in the vault and was not "
                              "imported; it was left as it is (rename the legacy directory to import it)")
            return "conflict"
        wd = v.specimen_dir(specimen_id)
        if wd.exists():
            try:
                meta = read_manifest(wd).get("metadata", {})
            except VaultError:
                meta = {}
            if isinstance(meta, dict) and isinstance(meta.get("legacy"), dict) \
                    and meta["legacy"].get("source") == str(src):
                # An import of this same directory was interrupted before its commit.
                shutil.rmtree(wd)
                return "new"
            self.problem(src, f"an uncommitted working directory {wd} exists; commit or remove it, "
                              "then import again")
            return "conflict"
        return "new"

    def _create(self, specimen_id: str, src: Path, f: dict[str, Any], legacy: dict[str, Any],
                parents: list[str], files: list[tuple[Path, str]], message: str) -> None:
        v = self.vault
        canonical.packb(legacy)
        wd = v.new(specimen_id, domain=f["domain"], method=f["method"], tags=f["tags"],
                   model=f["model"], parents=parents, metadata={"legacy": legacy})
        try:
            for name in _SCAFFOLD:  # the legacy files replace the templates, or none is kept
                (wd / name).unlink()
            for path, rel in files:
                _copy_entry(path, wd / rel)
            commit = v.commit(specimen_id, message=message)
        except BaseException:
            if v.refs.get(specimen_id) is None:
                shutil.rmtree(wd, ignore_errors=True)
            raise
        self.report.imported.append(ImportedSpecimen(specimen_id, str(src), commit.digest))

    def import_specimen(self, src: Path) -> None:
        try:
            sid = validate_id(src.name)
        except VaultError as exc:
            self.problem(src, f"not imported: {exc}")
            return
        manifest_path = src / MANIFEST_NAME
        if not manifest_path.exists() and (src / "strata" / MANIFEST_NAME).exists():
            manifest_path = src / "strata" / MANIFEST_NAME
        try:
            raw = _read_legacy_manifest(manifest_path)
            f = _fields(raw, manifest_path)
            from . import taxonomy

            taxonomy.check(f["domain"], f["method"])
        except NotFoundError:
            self.problem(src, f"not imported: no {MANIFEST_NAME}, so its domain and method are "
                              f"unknown; add {src / MANIFEST_NAME} (a msgpack map with at least "
                              "'domain' and 'method') and import again")
            return
        except VaultError as exc:
            self.problem(src, f"not imported: {exc}")
            return
        runs_dir = src / "runs"
        base_state = self._state(sid, src)
        if base_state == "conflict":
            return
        if base_state == "new":
            legacy = {"source": str(src), "layout": "specimen", "specimen_id": f["specimen_id"],
                      "created": f["created"], "fields": f["fields"]}
            files = [(p, p.name) for p in sorted(src.iterdir())
                     if p.name not in (MANIFEST_NAME, "runs", "__pycache__")
                     and not p.name.startswith(".")]
            try:
                self._create(sid, src, f, legacy, [], files, f"import-legacy {src}")
            except (VaultError, OSError) as exc:
                self.problem(src, f"not imported: {exc}")
                return
        if runs_dir.is_dir():
            for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
                self.import_run(sid, src, f, run)

    def import_run(self, sid: str, src: Path, base: dict[str, Any], run: Path) -> None:
        try:
            rid = validate_id(run_specimen_id(sid, run.name))
        except VaultError as exc:
            self.problem(run, f"run not imported: {exc}")
            return
        if self._state(rid, run) != "new":
            return
        f = dict(base)
        run_fields: dict[str, Any] = {}
        mpath = run / MANIFEST_NAME
        if mpath.exists():
            try:
                raw = _read_legacy_manifest(mpath)
            except VaultError as exc:
                self.problem(run, f"run imported with its specimen's fields, because {exc}")
                raw = {}
            try:
                _override(f, raw, mpath)
            except VaultError as exc:
                self.problem(run, f"run not imported: {exc}")
                return
            run_fields = {k: v for k, v in raw.items() if k not in _MAPPED}
        legacy = {"source": str(run), "layout": "run", "run": run.name,
                  "specimen_id": sid, "created": f.get("created"),
                  "fields": {**base["fields"], **run_fields}}
        files = [(src / n, n) for n in _SCAFFOLD if (src / n).is_file()]
        files += [(p, f"strata/{p.name}") for p in sorted(run.iterdir())
                  if not p.name.startswith(".") and p.name != "__pycache__"]
        try:
            self._create(rid, run, f, legacy, [sid], files, f"import-legacy {run}")
        except (VaultError, OSError) as exc:
            self.problem(run, f"run not imported: {exc}")


def import_legacy(vault: Vault, path: str | os.PathLike[str]) -> ImportReport:
    """Import a directory in the seed's layouts (see the module docstring).

    Args:
        vault: the vault to import into.
        path: a seed checkout (holding ``specimens/``), a ``specimens/`` directory, or one
            specimen directory.

    Returns:
        What was imported, what was already there, and every problem.

    Raises:
        NotFoundError: if ``path`` is not a directory.
    """
    source = Path(path).resolve()
    if not source.is_dir():
        raise NotFoundError(f"{source} is not a directory; pass the seed checkout or its specimens/")
    importer = _Importer(vault, source)
    for src in _specimen_dirs(source):
        importer.import_specimen(src)
    return importer.report
