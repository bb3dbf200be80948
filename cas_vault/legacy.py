"""``vault import-legacy PATH``: bring experiments in the seed's layouts into the vault.

The seed kept ``specimens/<id>/`` with ``manifest.msgpack``, ``protocol.py``,
``field_notes.md``, and results in ``strata/`` and/or ``runs/<YYYYMMDD_HHMMSS>/`` (each run
with ``metrics.parquet``, ``*.zarr`` and its own ``manifest.msgpack``). Every run is kept:

* ``specimens/<id>/`` (everything but ``runs/``) becomes the specimen ``<id>``;
* each ``runs/<run>/`` becomes the specimen ``<id>.run_<run>`` whose parent is the run before
  it (oldest first; the first run's parent is ``<id>``), holding the run's files under
  ``strata/`` plus the shared ``protocol.py`` and ``field_notes.md`` (deduplicated, so they
  cost nothing), and naming its run in ``metadata.run``.

This is the mapping a vault gives runs made in it (:func:`cas_vault.seal.commit`), so an
imported specimen reads like one whose protocol ran in the vault: ``vault show <id>`` shows its
newest run, and ``runs`` and ``exp_<id>`` in the catalog list and join all of them. A specimen
with runs but no manifest of its own is imported with its domain and method taken from its
newest run manifest that has them, else from a method name in its id; the report says which.

Seed manifest fields map to the manifest: ``domain`` and ``method`` (top level or under
``taxonomy``), ``tags`` (a list or comma-separated string), ``model``. Everything else, and
``created``, is kept under ``metadata.legacy`` (docs/format.md); the catalog's ``created`` is
that date (a run's own, else its id's timestamp), not the import's. A run's manifest overrides
its specimen's fields. Importing goes through :meth:`Repository.new` and :meth:`Repository.commit`.

Problems (no or corrupt manifest, a domain/method outside the taxonomy, an id that is not
allowed) are collected in the report, and everything else is still imported. Importing again
adds nothing: a specimen already committed from an import is skipped.

No link is ever followed below the imported path, as a commit refuses them: a specimen (or run)
holding a symbolic link or a special file (FIFO, socket, device) is not imported at all, and
the report names each such path and why. Files are opened with ``O_NOFOLLOW`` relative to
directories opened the same way, checked with ``fstat`` to be regular files and copied from
that descriptor, so a file swapped for a link after the check is not followed either. A
specimen is imported whole or not at all.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import canonical, taxonomy
from .commit import METADATA_MAX_DEPTH
from .errors import InvalidInputError, NotFoundError, VaultError
from .ids import run_specimen_id, validate_id
from .progress import Progress, counted
from .storage import run_sort_key
from .taxonomies import vault_taxonomy
from .workdir import MANIFEST_NAME, read_manifest

if TYPE_CHECKING:
    from .repository import Repository

__all__ = [
    "ImportProblem", "ImportReport", "ImportedSpecimen", "InferredFields", "MAX_DIR_DEPTH",
    "RefusedPath", "import_legacy", "run_specimen_id",
]

_MAPPED = {"domain", "method", "tags", "model", "taxonomy", "specimen_id", "created"}
_SCAFFOLD = ("protocol.py", "field_notes.md")
#: Never copied, at any depth (interpreter caches and Finder litter).
_JUNK = frozenset(("__pycache__", ".DS_Store"))
#: Directories nested deeper than this below a specimen or run are refused: the walk keeps one
#: open descriptor per level.
MAX_DIR_DEPTH = 128
#: A legacy manifest becomes ``metadata.legacy.fields``, two levels below the metadata map.
_FIELDS_MAX_DEPTH = METADATA_MAX_DEPTH - 2

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the scan must not block the open; fstat then refuses it.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


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


@dataclass(frozen=True)
class InferredFields:
    """The domain and method of a specimen that had no manifest, and where they came from.

    Attributes:
        specimen_id: the specimen.
        domain: the domain it was imported with.
        method: the method it was imported with.
        source: what they were taken from (a run manifest's path, or ``"the specimen id"``).
    """

    specimen_id: str
    domain: str
    method: str
    source: str

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"specimen_id": self.specimen_id, "domain": self.domain, "method": self.method,
                "source": self.source}


@dataclass(frozen=True)
class RefusedPath:
    """A symbolic link or special file found in a legacy specimen, which kept it out.

    Attributes:
        path: the link or file, in the legacy tree.
        reason: what it is (e.g. ``"a symbolic link to '/etc/shadow'"``).
        specimen_id: the specimen (or run) that was not imported because of it; None for a
            link to ``specimens/`` or ``runs/`` itself, which keeps out all of them.
    """

    path: str
    reason: str
    specimen_id: str | None

    def to_dict(self) -> dict[str, str | None]:
        """JSON form."""
        return {"path": self.path, "reason": self.reason, "specimen_id": self.specimen_id}


@dataclass
class ImportReport:
    """What :func:`import_legacy` did.

    Attributes:
        source: the directory imported.
        imported: the specimens committed.
        already: ids of specimens committed by an earlier import, left as they are.
        problems: one entry per specimen, run or directory that was not (fully) imported.
        refused: every symbolic link or special file that kept a specimen out (each one also
            has its specimen's entry in ``problems``).
        inferred: specimens imported without a manifest of their own, with the domain and
            method inferred for them.
    """

    source: str
    imported: list[ImportedSpecimen] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    problems: list[ImportProblem] = field(default_factory=list)
    refused: list[RefusedPath] = field(default_factory=list)
    inferred: list[InferredFields] = field(default_factory=list)

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
            "refused": [r.to_dict() for r in self.refused],
            "inferred": [i.to_dict() for i in self.inferred],
        }


def _plain(value: Any) -> Any:
    """Turn a decoded legacy msgpack value into something canonical msgpack can store."""
    import msgpack

    # Loops, not comprehensions: one frame per level (the caller bounds the depth).
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out[str(k)] = _plain(v)
        return out
    if isinstance(value, (list, tuple)):
        items = []
        for v in value:
            items.append(_plain(v))
        return items
    if isinstance(value, msgpack.Timestamp):
        return value.to_datetime().isoformat()
    if isinstance(value, msgpack.ExtType):
        return {"ext_type": value.code, "data": value.data}
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            return str(value)
        return value
    return repr(value)


def _decode_legacy_manifest(data: bytes, path: Path) -> dict[str, Any]:
    """Decode a seed manifest (plain msgpack, not necessarily canonical).

    Raises:
        InvalidInputError: corrupt, not a map, or nested too deep to keep in a commit.
    """
    import msgpack

    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False, timestamp=0)
    except Exception as exc:  # msgpack raises many types for corrupt input
        raise InvalidInputError(f"{path} is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise InvalidInputError(f"{path} holds a {type(value).__name__}, not a map of fields")
    canonical.check_nesting(value, str(path), _FIELDS_MAX_DEPTH)
    return _plain(value)


def _describe(mode: int) -> str:
    """What a non-regular, non-directory file is, for the report."""
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a regular file"


def _why(dir_fd: int, name: str, mode: int) -> str:
    """The reason a link or special file is refused."""
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            target = "?"
        return f"a symbolic link to {target!r}; links are never followed"
    return f"{_describe(mode)}, not a regular file or directory"


def _walk(dir_fd: int, name: str, where: Path, dest: Path | None,
          refused: list[tuple[Path, str]], depth: int = 0) -> None:
    """Scan (``dest`` None) or copy one entry of a legacy tree, following no link.

    Args:
        dir_fd: descriptor of the directory holding ``name`` (opened without following links).
        name: the entry.
        where: the path of that directory, for messages.
        dest: where to copy it, or None to only scan.
        refused: scanning appends ``(path, reason)`` for every link or special file here.
        depth: directory levels above ``name`` inside the specimen.

    Raises:
        InvalidInputError: when copying, for a link or special file (the tree changed since
            it was scanned).
        OSError: if it cannot be read.
    """
    path = where / name
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISREG(st.st_mode):
        if dest is not None:
            _copy_file(dir_fd, name, path, dest)
        return
    if stat.S_ISDIR(st.st_mode) and depth < MAX_DIR_DEPTH:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)  # ELOOP if it became a link meanwhile
        try:
            if dest is not None:
                dest.mkdir(exist_ok=True)
            for child in sorted(os.listdir(fd)):
                if child not in _JUNK and not child.endswith(".pyc"):
                    _walk(fd, child, path, None if dest is None else dest / child, refused,
                          depth + 1)
        finally:
            os.close(fd)
        return
    if stat.S_ISDIR(st.st_mode):
        reason = f"directories nested deeper than {MAX_DIR_DEPTH} levels"
    else:
        reason = _why(dir_fd, name, st.st_mode)
    if dest is not None:
        raise InvalidInputError(f"{path} is {reason} (it changed while it was imported)")
    refused.append((path, reason))


def _open_file(dir_fd: int, name: str, path: Path) -> int:
    """Open a regular file without following a link.

    Raises:
        NotFoundError: if it does not exist.
        InvalidInputError: if it is a link or not a regular file.
    """
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise NotFoundError(f"{path} is missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link
            raise InvalidInputError(f"{path} is {_why(dir_fd, name, stat.S_IFLNK)}") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InvalidInputError(f"{path} is {_describe(mode)}, not a regular file")
    return fd


def _copy_file(dir_fd: int, name: str, path: Path, dest: Path) -> None:
    """Copy a regular file from the descriptor that was checked, never through a link."""
    fd = _open_file(dir_fd, name, path)
    try:
        with open(dest, "xb") as out:
            while chunk := os.read(fd, 1 << 20):
                out.write(chunk)
    finally:
        os.close(fd)


def _read_file(dir_fd: int, name: str, path: Path) -> bytes:
    """Read a regular file without following a link (see :func:`_open_file`)."""
    fd = _open_file(dir_fd, name, path)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


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


def _override(f: dict[str, Any], raw: dict[str, Any], where: Path, table: taxonomy.Table) -> None:
    """Let a run manifest's own fields override its specimen's (in ``f``, in place).

    Raises:
        InvalidInputError / TaxonomyError: malformed fields or a pair outside ``table`` (the
            vault's taxonomy).
    """
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
    taxonomy.check(f["domain"], f["method"], table)


#: An entry to copy: (descriptor of its directory, its name, that directory's path, destination
#: path relative to the working directory).
_Entry = tuple[int, str, Path, str]


class _Importer:
    def __init__(self, vault: Repository, source: Path, source_fd: int) -> None:
        self.vault = vault
        self.source = source
        self.source_fd = source_fd
        self.report = ImportReport(str(source))
        self.table = vault_taxonomy(vault).table  # the vault's pairs, not only the seed's

    def problem(self, where: Path | str, message: str) -> None:
        self.report.problems.append(ImportProblem(str(where), message))

    def open_dir(self, path: Path) -> int:
        """Open a directory below the source, following no link on the way.

        Raises:
            OSError: ``ELOOP`` / ``ENOTDIR`` if a component is a link or not a directory.
        """
        fd = os.dup(self.source_fd)
        try:
            for part in path.relative_to(self.source).parts:
                below = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = below
        except BaseException:
            os.close(fd)
            raise
        return fd

    def specimen_dirs(self) -> list[Path]:
        """The specimen directories to import; links among them are reported, not followed."""
        path = self.source
        st = _lstat(self.source_fd, "specimens")
        if st is not None and stat.S_ISLNK(st.st_mode):
            self.refuse(None, [(path / "specimens", _why(self.source_fd, "specimens", st.st_mode))],
                        path / "specimens", "no specimen was imported")
            return []
        if st is not None and stat.S_ISDIR(st.st_mode):
            path = path / "specimens"
        elif any(_lstat(self.source_fd, n) is not None
                 for n in (MANIFEST_NAME, "strata", "runs", "protocol.py")):
            return [path]
        fd = self.open_dir(path)
        try:
            out = []
            for name in sorted(os.listdir(fd)):
                if name.startswith("."):
                    continue
                st = _lstat(fd, name)
                if st is None:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    out.append(path / name)
                elif stat.S_ISLNK(st.st_mode):
                    self.refuse(name, [(path / name, _why(fd, name, st.st_mode))], path / name,
                                "not imported")
            return out
        finally:
            os.close(fd)

    def refuse(self, specimen_id: str | None, refused: list[tuple[Path, str]], where: Path,
               consequence: str) -> None:
        """Report the links and special files that keep ``specimen_id`` out."""
        for path, reason in refused:
            self.report.refused.append(RefusedPath(str(path), reason, specimen_id))
        shown = ", ".join(str(p) for p, _ in refused[:3]) + (
            f" and {len(refused) - 3} more" if len(refused) > 3 else "")
        self.problem(where, f"{consequence}: {len(refused)} path(s) are symbolic links or special "
                            f"files, which import never follows or copies ({shown}); replace each "
                            "with the data it stands for (or remove it) and import again")

    def scan(self, entries: list[_Entry]) -> list[tuple[Path, str]]:
        """Every link and special file among ``entries`` (an empty list: all can be copied)."""
        refused: list[tuple[Path, str]] = []
        for dir_fd, name, where, _ in entries:
            _walk(dir_fd, name, where, None, refused)
        return refused

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
                parents: list[str], entries: list[_Entry], message: str,
                run: dict[str, str] | None = None) -> None:
        v = self.vault
        canonical.packb(legacy)
        metadata: dict[str, Any] = {"legacy": legacy}
        if run is not None:
            metadata["run"] = run
        wd = v.new(specimen_id, domain=f["domain"], method=f["method"], tags=f["tags"],
                   model=f["model"], parents=parents, metadata=metadata)
        try:
            for name in _SCAFFOLD:  # the legacy files replace the templates, or none is kept
                (wd / name).unlink()
            for dir_fd, name, where, rel in entries:
                _walk(dir_fd, name, where, wd / rel, [])
            commit = v.commit(specimen_id, message=message)
        except BaseException:
            if v.refs.get(specimen_id) is None:
                shutil.rmtree(wd, ignore_errors=True)
            raise
        self.report.imported.append(ImportedSpecimen(specimen_id, str(src), commit.digest))

    def _manifest(self, src_fd: int, src: Path) -> dict[str, Any]:
        """The seed manifest: ``<id>/manifest.msgpack``, else ``<id>/strata/manifest.msgpack``.

        Raises:
            NotFoundError: neither exists. InvalidInputError: corrupt, a link, not a file.
        """
        if _lstat(src_fd, MANIFEST_NAME) is not None:
            return _decode_legacy_manifest(_read_file(src_fd, MANIFEST_NAME, src / MANIFEST_NAME),
                                           src / MANIFEST_NAME)
        path = src / "strata" / MANIFEST_NAME
        try:
            strata_fd = os.open("strata", _DIR_FLAGS, dir_fd=src_fd)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"{src / MANIFEST_NAME} is missing") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidInputError(
                    f"{src / 'strata'} is a symbolic link; links are never followed") from None
            raise
        try:
            if _lstat(strata_fd, MANIFEST_NAME) is None:
                raise NotFoundError(f"{src / MANIFEST_NAME} is missing")
            return _decode_legacy_manifest(_read_file(strata_fd, MANIFEST_NAME, path), path)
        finally:
            os.close(strata_fd)

    def import_specimen(self, src: Path) -> None:
        try:
            sid = validate_id(src.name)
        except VaultError as exc:
            self.problem(src, f"not imported: {exc}")
            return
        try:
            src_fd = self.open_dir(src)
        except OSError as exc:
            self.problem(src, f"not imported: {src} cannot be opened as a directory without "
                              f"following a link ({exc.strerror})")
            return
        try:
            self._import_specimen(sid, src, src_fd)
        finally:
            os.close(src_fd)

    def _import_specimen(self, sid: str, src: Path, src_fd: int) -> None:
        inferred: InferredFields | None = None
        try:
            try:
                raw = self._manifest(src_fd, src)
            except NotFoundError:
                inferred = self._infer(sid, src, src_fd)
                if inferred is None:
                    raise
                raw = {"domain": inferred.domain, "method": inferred.method}
            f = _fields(raw, src / MANIFEST_NAME)
            taxonomy.check(f["domain"], f["method"], self.table)
        except NotFoundError:
            self.problem(src, f"not imported: no {MANIFEST_NAME}, and neither its runs' manifests "
                              "nor its id name a domain and method; add "
                              f"{src / MANIFEST_NAME} (a msgpack map with at least 'domain' and "
                              "'method') and import again")
            return
        except (VaultError, OSError) as exc:
            self.problem(src, f"not imported: {exc}")
            return
        base_state = self._state(sid, src)
        if base_state == "conflict":
            return
        runs = _lstat(src_fd, "runs")
        if base_state == "new":
            legacy = {"source": str(src), "layout": "specimen", "specimen_id": f["specimen_id"],
                      "created": f["created"], "fields": f["fields"]}
            if inferred is not None:
                legacy["inferred"] = {"domain": inferred.domain, "method": inferred.method,
                                      "from": inferred.source}
            try:
                entries: list[_Entry] = [
                    (src_fd, n, src, n) for n in sorted(os.listdir(src_fd))
                    if n not in (MANIFEST_NAME, "runs") and not n.startswith(".")
                    and n not in _JUNK and not n.endswith(".pyc")]
                refused = self.scan(entries)
                if refused:
                    self.refuse(sid, refused, src, "not imported" + (
                        " (nor its runs)" if runs is not None else ""))
                    return
                self._create(sid, src, f, legacy, [], entries, f"import-legacy {src}")
            except (VaultError, OSError) as exc:
                self.problem(src, f"not imported: {exc}")
                return
            if inferred is not None:
                self.report.inferred.append(inferred)
        if runs is None:
            return
        if not stat.S_ISDIR(runs.st_mode):
            if stat.S_ISLNK(runs.st_mode):
                self.refuse(None, [(src / "runs", _why(src_fd, "runs", runs.st_mode))],
                            src / "runs", "its runs were not imported")
            return
        try:
            runs_fd = os.open("runs", _DIR_FLAGS, dir_fd=src_fd)
        except OSError as exc:
            self.problem(src / "runs", f"runs not imported: {exc.strerror}")
            return
        try:
            try:
                names = sorted(os.listdir(runs_fd))
            except OSError as exc:
                self.problem(src / "runs", f"runs not imported: {exc.strerror}")
                return
            previous = sid  # each run's parent is the run before it, as sealed in a vault
            for name in sorted(names, key=run_sort_key):
                st = _lstat(runs_fd, name)
                if st is None:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if self.import_run(sid, src, src_fd, f, src / "runs" / name, runs_fd,
                                       previous):
                        previous = run_specimen_id(sid, name)
                elif stat.S_ISLNK(st.st_mode):
                    self.refuse(run_specimen_id(sid, name),
                                [(src / "runs" / name, _why(runs_fd, name, st.st_mode))],
                                src / "runs" / name, "run not imported")
        finally:
            os.close(runs_fd)

    def import_run(self, sid: str, src: Path, src_fd: int, base: dict[str, Any], run: Path,
                   runs_fd: int, previous: str) -> bool:
        """Import one run with ``previous`` as its parent.

        Returns:
            Whether the run is in the vault now (imported now or before).
        """
        try:
            rid = run_specimen_id(sid, run.name)
        except VaultError as exc:
            self.problem(run, f"run not imported: {exc}")
            return False
        state = self._state(rid, run)
        if state != "new":
            return state == "done"
        try:
            run_fd = os.open(run.name, _DIR_FLAGS, dir_fd=runs_fd)
        except OSError as exc:
            self.problem(run, f"run not imported: {exc.strerror}")
            return False
        try:
            return self._import_run(sid, rid, src, src_fd, base, run, run_fd, previous)
        except (VaultError, OSError) as exc:
            self.problem(run, f"run not imported: {exc}")
            return False
        finally:
            os.close(run_fd)

    def _infer(self, sid: str, src: Path, src_fd: int) -> InferredFields | None:
        """Domain and method for a specimen without a manifest: from its newest run manifest
        that names a valid pair, else from the one method of the taxonomy its id names."""
        try:
            runs_fd = os.open("runs", _DIR_FLAGS, dir_fd=src_fd)
        except OSError:
            return None
        try:
            for name in sorted(os.listdir(runs_fd), key=run_sort_key, reverse=True):
                try:
                    run_fd = os.open(name, _DIR_FLAGS, dir_fd=runs_fd)
                except OSError:
                    continue
                try:
                    if _lstat(run_fd, MANIFEST_NAME) is None:
                        continue
                    path = src / "runs" / name / MANIFEST_NAME
                    raw = _decode_legacy_manifest(_read_file(run_fd, MANIFEST_NAME, path), path)
                    f = _fields(raw, path)
                    taxonomy.check(f["domain"], f["method"], self.table)
                except (VaultError, OSError):
                    continue
                finally:
                    os.close(run_fd)
                return InferredFields(sid, f["domain"], f["method"], str(path))
        except OSError:
            return None
        finally:
            os.close(runs_fd)
        words = set(sid.lower().replace("-", "_").split("_"))
        named = [(d, m) for d, methods in self.table.items() for m in methods
                 if set(m.split("_")) <= words]
        if len(named) == 1:
            return InferredFields(sid, named[0][0], named[0][1], "the specimen id")
        return None

    def _import_run(self, sid: str, rid: str, src: Path, src_fd: int, base: dict[str, Any],
                    run: Path, run_fd: int, previous: str) -> bool:
        entries: list[_Entry] = []
        for n in _SCAFFOLD:  # the specimen's, shared by its runs; a link is refused below
            st = _lstat(src_fd, n)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                entries.append((src_fd, n, src, n))
        entries += [(run_fd, n, run, f"strata/{n}") for n in sorted(os.listdir(run_fd))
                    if not n.startswith(".") and n not in _JUNK and not n.endswith(".pyc")]
        refused = self.scan(entries)
        if refused:
            self.refuse(rid, refused, run, "run not imported")
            return False
        f = dict(base)
        f["created"] = None  # a run's date is its own (or its id's), never its specimen's
        run_fields: dict[str, Any] = {}
        if _lstat(run_fd, MANIFEST_NAME) is not None:
            mpath = run / MANIFEST_NAME
            try:
                raw = _decode_legacy_manifest(_read_file(run_fd, MANIFEST_NAME, mpath), mpath)
            except VaultError as exc:
                self.problem(run, f"run imported with its specimen's fields, because {exc}")
                raw = {}
            try:
                _override(f, raw, mpath, self.table)
            except VaultError as exc:
                self.problem(run, f"run not imported: {exc}")
                return False
            run_fields = {k: v for k, v in raw.items() if k not in _MAPPED}
        legacy = {"source": str(run), "layout": "run", "run": run.name,
                  "specimen_id": sid, "created": f.get("created"),
                  "fields": {**base["fields"], **run_fields}}
        self._create(rid, run, f, legacy, [previous], entries, f"import-legacy {run}",
                     run={"specimen_id": sid, "run_id": run.name})
        return True


def import_legacy(
    vault: Repository, path: str | os.PathLike[str], *, progress: Progress | None = None,
) -> ImportReport:
    """Import a directory in the seed's layouts (see the module docstring).

    Args:
        vault: the vault to import into.
        path: a seed checkout (holding ``specimens/``), a ``specimens/`` directory, or one
            specimen directory.
        progress: called with ``(advance_specimens, total_specimens)``, once per specimen
            directory found (with all its runs), imported or not.

    Returns:
        What was imported, what was already there, and every problem.

    Raises:
        NotFoundError: if ``path`` is not a directory.
    """
    source = Path(path).resolve()
    if not source.is_dir():
        raise NotFoundError(f"{source} is not a directory; pass the seed checkout or its specimens/")
    # PATH itself is the caller's choice (it was resolved above); nothing below it is followed.
    source_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        importer = _Importer(vault, source, source_fd)
        for src in counted(importer.specimen_dirs(), progress):
            importer.import_specimen(src)
    finally:
        os.close(source_fd)
    return importer.report
