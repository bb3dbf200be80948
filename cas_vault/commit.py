"""Commits: the immutable, canonical record of a sealed specimen.

A commit is a canonical msgpack map (see :mod:`cas_vault.canonical`) stored as an object; its
id is the BLAKE3 digest of those bytes. The layout is specified in docs/format.md.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import canonical
from .digest import Digest, hash_bytes, is_digest
from .errors import InvalidInputError
from .ids import validate_id

__all__ = ["FORMAT_VERSION", "KINDS", "Commit", "Manifest", "TreeEntry", "kind_of", "utc_now"]

#: Version of the commit format this code writes (and the newest it reads).
FORMAT_VERSION = 1

KINDS = ("parquet", "zarr", "msgpack", "text", "other")
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
        """Parse and validate a tree entry.

        Raises:
            InvalidInputError: if it is malformed.
        """
        if not isinstance(value, dict) or set(value) != {"digest", "kind", "size"}:
            raise InvalidInputError(f"tree entry for {path!r} must have digest, kind and size")
        d, s, k = value["digest"], value["size"], value["kind"]
        if not is_digest(d):
            raise InvalidInputError(f"tree entry for {path!r} has a malformed digest")
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise InvalidInputError(f"tree entry for {path!r} has an invalid size")
        if k not in KINDS:
            raise InvalidInputError(f"tree entry for {path!r} has unknown kind {k!r}")
        return cls(Digest(d), s, k)


@dataclass(frozen=True)
class Manifest:
    """What a specimen is: its classification and free-form metadata."""

    domain: str
    method: str
    model: str | None = None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

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
        """Parse and validate a manifest map.

        Raises:
            InvalidInputError: if it is malformed.
        """
        if not isinstance(value, dict):
            raise InvalidInputError("manifest must be a map")
        for key in ("domain", "method"):
            if not isinstance(value.get(key), str) or not value[key]:
                raise InvalidInputError(f"manifest field {key!r} must be a non-empty string")
        model = value.get("model")
        if model is not None and not isinstance(model, str):
            raise InvalidInputError("manifest field 'model' must be a string or nil")
        tags = value.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidInputError("manifest field 'tags' must be a list of strings")
        metadata = value.get("metadata", {})
        if not isinstance(metadata, dict):
            raise InvalidInputError("manifest field 'metadata' must be a map")
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
        if not isinstance(value, dict):
            raise InvalidInputError("commit object is not a map")
        expected = {"author", "created", "manifest", "message", "parents", "specimen_id", "tree", "version"}
        if set(value) != expected:
            raise InvalidInputError(
                f"commit object has fields {sorted(value)}, expected {sorted(expected)}"
            )
        version = value["version"]
        if not isinstance(version, int) or version < 1:
            raise InvalidInputError(f"commit format version {version!r} is invalid")
        if version > FORMAT_VERSION:
            raise InvalidInputError(
                f"commit format version {version} is newer than this cas-vault supports "
                f"({FORMAT_VERSION}); upgrade cas-vault"
            )
        for key in ("author", "message"):
            if not isinstance(value[key], str):
                raise InvalidInputError(f"commit field {key!r} must be a string")
        parents = value["parents"]
        if not isinstance(parents, list):
            raise InvalidInputError("commit field 'parents' must be a list")
        tree = value["tree"]
        if not isinstance(tree, dict):
            raise InvalidInputError("commit field 'tree' must be a map")
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
