"""Commits: the immutable, canonical record of a sealed specimen.

A commit is a canonical msgpack map (see :mod:`cas_vault.canonical`) stored as an object; its
id is the BLAKE3 digest of those bytes. The layout is specified in docs/format.md.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import os
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import canonical
from .digest import Digest, hash_bytes, is_digest
from .errors import InvalidInputError
from .ids import validate_id

__all__ = [
    "AUTHOR_ENV", "FORMAT_VERSION", "KINDS", "METADATA_MAX_DEPTH", "Commit", "Manifest",
    "TreeEntry", "default_author", "kind_of", "utc_now",
]

#: Environment variable naming the author of commits and events (default: the login name).
AUTHOR_ENV = "CAS_VAULT_AUTHOR"

#: Version of the commit format this code writes (and the newest it reads).
FORMAT_VERSION = 1

KINDS = ("parquet", "zarr", "msgpack", "text", "other")

#: How deep manifest metadata may nest (the metadata map is level 1): a commit holds it two
#: levels down, and a commit nests at most :data:`canonical.MAX_DEPTH` levels.
METADATA_MAX_DEPTH = canonical.MAX_DEPTH - 2
_TEXT_SUFFIXES = {".md", ".py", ".txt", ".json", ".log", ".csv", ".tsv", ".yaml", ".yml", ".toml", ".rst"}


def kind_of(path: str) -> str:
    """Classify a tree path: parquet, zarr, msgpack, text or other.

    A path with a component ending in ``.zarr`` is part of a Zarr store.
    """
    parts = path.split("/")
    if any(p.endswith(".zarr") for p in parts[:-1]):
        return "zarr"
    name = parts[-1].lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".msgpack"):
        return "msgpack"
    dot = name.rfind(".")
    if dot >= 0 and name[dot:] in _TEXT_SUFFIXES:
        return "text"
    return "other"


def utc_now() -> str:
    """Return the current UTC time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_author() -> str:
    """Who a commit or event is by: ``$CAS_VAULT_AUTHOR``, else the login name."""
    return os.environ.get(AUTHOR_ENV) or _login_name()


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _check_time(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string timestamp")
    try:
        _dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        raise InvalidInputError(
            f"{what} {value!r} is not a UTC timestamp like 2024-12-19T10:00:00.000000Z"
        ) from None
    return value


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# An empty, "." or ".." component: at the start, between slashes, or at the end.
_BAD_COMPONENT = re.compile(r"(?:^|/)(?:\.{0,2})(?:/|$)")


def check_tree_path(path: object) -> str:
    """Validate a relative path inside a specimen (POSIX separators, no escapes).

    Raises:
        InvalidInputError: for absolute paths, ``..``, empty or control-character components.
    """
    if not isinstance(path, str) or not path:
        raise InvalidInputError(f"tree path {path!r} must be a non-empty string")
    if path.startswith("/") or "\\" in path:
        raise InvalidInputError(f"tree path {path!r} must be relative and use '/'")
    # One regex pass over the whole path (a commit checks hundreds of tensor chunk paths).
    if _CONTROL_CHARS.search(path) is None and _BAD_COMPONENT.search(path) is None:
        return path
    for part in path.split("/"):
        if part in ("", ".", "..") or _CONTROL_CHARS.search(part):
            raise InvalidInputError(f"tree path {path!r} has an invalid component {part!r}")
    raise AssertionError("unreachable: a bad path has a bad component")  # pragma: no cover


@dataclass(frozen=True)
class TreeEntry:
    """One file of a specimen: its object digest, byte size and kind."""

    digest: Digest
    size: int
    kind: str

    def to_map(self) -> dict[str, Any]:
        """Return the canonical map form."""
        return {"digest": self.digest, "kind": self.kind, "size": self.size}

    @classmethod
    def from_map(cls, value: object, path: str) -> TreeEntry:
        """Parse and validate a tree entry (docs/format.md 4.2).

        Raises:
            InvalidInputError: if it is not a map of exactly ``digest``, ``kind`` and ``size``
                with the specified types, naming what is wrong.
        """
        what = f"tree entry for {path!r}"
        value = _check_keys(value, _ENTRY_KEYS, what)
        d, s, k = value["digest"], value["size"], value["kind"]
        if not is_digest(d):
            raise InvalidInputError(
                f"{what} has a malformed digest {d!r} (64 lowercase hex characters)")
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise InvalidInputError(f"{what} has size {s!r}, not a non-negative integer")
        if k not in KINDS:
            raise InvalidInputError(f"{what} has unknown kind {k!r} (one of {', '.join(KINDS)})")
        return cls(Digest(d), s, k)


@dataclass(frozen=True)
class Manifest:
    """What a specimen is: its classification and free-form metadata."""

    domain: str
    method: str
    model: str | None = None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The metadata map sits at level 3 of a commit (commit, manifest, metadata): refuse
        # here, before anything is stored, what would make the commit too deep to encode.
        canonical.check_nesting(self.metadata, "manifest metadata", METADATA_MAX_DEPTH)

    @property
    def run(self) -> tuple[str, str] | None:
        """``(specimen id, run id)`` if this commit seals a run of a specimen, else None.

        Read from ``metadata.run`` (docs/format.md, "Runs"); runs that ``import-legacy`` brought
        in before that key existed say it in ``metadata.legacy`` (``layout: "run"``).
        """
        run = self.metadata.get("run")
        if isinstance(run, Mapping):
            sid, rid = run.get("specimen_id"), run.get("run_id")
        else:
            legacy = self.metadata.get("legacy")
            if not isinstance(legacy, Mapping) or legacy.get("layout") != "run":
                return None
            sid, rid = legacy.get("specimen_id"), legacy.get("run")
        return (sid, rid) if isinstance(sid, str) and isinstance(rid, str) else None

    def to_map(self) -> dict[str, Any]:
        """Return the canonical map form."""
        return {
            "domain": self.domain,
            "metadata": dict(self.metadata),
            "method": self.method,
            "model": self.model,
            "tags": list(self.tags),
        }

    @classmethod
    def from_map(cls, value: object) -> Manifest:
        """Parse and validate the manifest map of a commit (docs/format.md 4.2).

        Strict: a map with a missing or an extra key would decode to a manifest that encodes
        to other bytes, so the commit could no longer be named by its digest.

        Raises:
            InvalidInputError: if it is not a map of exactly ``domain``, ``metadata``,
                ``method``, ``model`` and ``tags`` with the specified types, naming what is wrong.
        """
        value = _check_keys(value, _MANIFEST_KEYS, "commit manifest")
        for key in ("domain", "method"):
            if not isinstance(value[key], str) or not value[key]:
                raise InvalidInputError(f"commit manifest field {key!r} is "
                                        f"{_shown(value[key])}, not a non-empty string")
        model = value["model"]
        if model is not None and not isinstance(model, str):
            raise InvalidInputError(
                f"commit manifest field 'model' is {_shown(model)}, not a string or nil")
        tags = value["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidInputError(
                f"commit manifest field 'tags' is {_shown(tags)}, not a list of strings")
        metadata = value["metadata"]
        if not isinstance(metadata, dict):
            raise InvalidInputError(
                f"commit manifest field 'metadata' is {_shown(metadata)}, not a map")
        return cls(value["domain"], value["method"], model, tuple(tags), metadata)


@dataclass(frozen=True)
class Commit:
    """A sealed specimen.

    Attributes:
        specimen_id: the specimen's id.
        created: UTC timestamp of sealing.
        author: who sealed it.
        message: the commit message.
        manifest: classification and metadata.
        parents: commit digests this specimen was derived from.
        tree: relative path -> :class:`TreeEntry`, for every file of the specimen.
        version: the commit format version.
    """

    specimen_id: str
    created: str
    author: str
    message: str
    manifest: Manifest
    parents: tuple[Digest, ...]
    tree: Mapping[str, TreeEntry]
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        validate_id(self.specimen_id)
        _check_time(self.created, "created")
        for p in self.parents:
            if not is_digest(p):
                raise InvalidInputError(f"parent {p!r} is not a commit digest")
        if len(set(self.parents)) != len(self.parents):
            raise InvalidInputError("a parent is listed twice")
        for path in self.tree:
            check_tree_path(path)
        object.__setattr__(self, "tree", MappingProxyType(dict(sorted(self.tree.items()))))

    def to_map(self) -> dict[str, Any]:
        """Return the canonical map form."""
        return {
            "author": self.author,
            "created": self.created,
            "manifest": self.manifest.to_map(),
            "message": self.message,
            "parents": list(self.parents),
            "specimen_id": self.specimen_id,
            "tree": {p: e.to_map() for p, e in self.tree.items()},
            "version": self.version,
        }

    def to_bytes(self) -> bytes:
        """Return the canonical msgpack encoding (the bytes whose digest is the commit id)."""
        return canonical.packb(self.to_map())

    @property
    def digest(self) -> Digest:
        """The commit id: BLAKE3 of :meth:`to_bytes`."""
        return hash_bytes(self.to_bytes())

    @property
    def logical_bytes(self) -> int:
        """Sum of the sizes of every file in the tree."""
        return sum(e.size for e in self.tree.values())

    @classmethod
    def from_bytes(cls, data: bytes) -> Commit:
        """Decode and validate a commit object.

        Raises:
            InvalidInputError: if the bytes are not a canonical, well-formed commit of a
                version this code can read.
        """
        value = canonical.unpackb(data, "commit object", strict=True)
        value = _check_keys(value, _COMMIT_KEYS, "commit object")
        version = value["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise InvalidInputError(
                f"commit field 'version' is {_shown(version)}, not a format version (1)")
        if version > FORMAT_VERSION:
            raise InvalidInputError(
                f"commit format version {version} is newer than this cas-vault supports "
                f"({FORMAT_VERSION}); upgrade cas-vault"
            )
        for key in ("author", "created", "message", "specimen_id"):
            if not isinstance(value[key], str):
                raise InvalidInputError(
                    f"commit field {key!r} is {_shown(value[key])}, not a string")
        parents = value["parents"]
        if not isinstance(parents, list):
            raise InvalidInputError(f"commit field 'parents' is {_shown(parents)}, not a list")
        tree = value["tree"]
        if not isinstance(tree, dict):
            raise InvalidInputError(f"commit field 'tree' is {_shown(tree)}, not a map")
        # The id, time, parent digests and tree paths are checked by __post_init__, as for
        # a new commit.
        return cls(
            specimen_id=value["specimen_id"],
            created=value["created"],
            author=value["author"],
            message=value["message"],
            manifest=Manifest.from_map(value["manifest"]),
            parents=tuple(parents),
            tree={p: TreeEntry.from_map(e, p) for p, e in tree.items()},
            version=version,
        )


_COMMIT_KEYS = frozenset(
    ("author", "created", "manifest", "message", "parents", "specimen_id", "tree", "version"))
_MANIFEST_KEYS = frozenset(("domain", "metadata", "method", "model", "tags"))
_ENTRY_KEYS = frozenset(("digest", "kind", "size"))


def _shown(value: object) -> str:
    """A short description of a decoded value for an error message."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


def _check_keys(value: object, keys: frozenset[str], what: str) -> dict[str, Any]:
    """Require ``value`` to be a map with exactly ``keys``.

    Returns:
        ``value``, typed as the map it is.

    Raises:
        InvalidInputError: naming the missing and the unexpected keys.
    """
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} is {_shown(value)}, not a map")
    if value.keys() == keys:
        return value
    missing = sorted(keys - value.keys())
    extra = sorted(value.keys() - keys)
    parts = ([f"lacks {', '.join(map(repr, missing))}"] if missing else []) + (
        [f"has unexpected {', '.join(repr(k)[:40] for k in extra[:5])}"
         + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")] if extra else [])
    raise InvalidInputError(
        f"{what} {' and '.join(parts)}; it must have exactly {', '.join(sorted(keys))}")
