"""Provenance: how a result was made, captured without the researcher thinking about it.

:func:`capture_environment` records the interpreter, the machine, every installed package
version (from :mod:`importlib.metadata`, not a pip subprocess) and the code repository's git
state. ``vault run`` and the step-wise logger add the command line, timings, exit status and
seeds, and store the whole map under ``metadata.provenance`` of the commit's manifest
(docs/format.md, "Provenance, partial specimens and legacy import").
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from .digest import hash_bytes

__all__ = ["PROVENANCE_VERSION", "capture_environment", "git_state", "installed_packages"]

#: Version of the provenance map's layout.
PROVENANCE_VERSION = 1

_GIT_TIMEOUT = 20.0


def installed_packages() -> dict[str, str]:
    """Name -> version of every distribution importable by this interpreter, sorted by name.

    Names are normalised (lower case, ``-``) so the same package always has the same key.
    """
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        meta = dist.metadata  # parsed on every access: read it once
        name, version = (meta["Name"], meta["Version"]) if meta else (None, None)
        if not name or not version:
            continue
        out.setdefault(name.lower().replace("_", "-"), version)
    return dict(sorted(out.items()))


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, timeout=_GIT_TIMEOUT,
        env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
    )


def git_state(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The git state of the repository containing ``path``, or None if there is none.

    Returns:
        ``{"root", "commit", "branch", "dirty", "diff_digest", "untracked"}``: ``commit`` is
        None in a repository without commits; ``dirty`` is true when tracked files differ
        from HEAD or untracked files exist; ``diff_digest`` is the BLAKE3 of
        ``git diff HEAD --binary`` followed by the sorted untracked paths (None when clean),
        so two runs from the same uncommitted edits share a digest.
    """
    cwd = Path(path)
    if shutil.which("git") is None or not cwd.is_dir():
        return None
    try:
        top = _git(["rev-parse", "--show-toplevel"], cwd)
        if top.returncode != 0:
            return None
        root = top.stdout.decode().strip()
        head = _git(["rev-parse", "--verify", "-q", "HEAD"], cwd)
        commit = head.stdout.decode().strip() if head.returncode == 0 else None
        branch_p = _git(["symbolic-ref", "-q", "--short", "HEAD"], cwd)
        branch = branch_p.stdout.decode().strip() if branch_p.returncode == 0 else None
        diff = _git(["diff", "HEAD", "--binary"], cwd).stdout if commit else b""
        untracked_p = _git(["ls-files", "--others", "--exclude-standard", "-z"], cwd)
        untracked = sorted(p for p in untracked_p.stdout.decode(errors="replace").split("\0") if p)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit is None:
        tracked = _git(["ls-files", "-z"], cwd).stdout
        dirty = bool(untracked or tracked)
        diff = tracked
    else:
        dirty = bool(diff or untracked)
    digest = hash_bytes(diff + b"\0" + "\0".join(untracked).encode()) if dirty else None
    return {
        "root": root, "commit": commit, "branch": branch, "dirty": dirty,
        "diff_digest": digest, "untracked": len(untracked),
    }


def capture_environment(code_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Capture interpreter, machine, packages and git state.

    Args:
        code_dir: where the experiment's code lives (its git repository is recorded);
            default: the current directory.

    Returns:
        A map ready for canonical msgpack: ``version``, ``python`` (version, implementation,
        executable), ``platform``, ``machine``, ``hostname``, ``packages``, ``git`` (None
        outside a repository), ``cwd``.
    """
    where = Path(code_dir) if code_dir is not None else Path.cwd()
    return {
        "version": PROVENANCE_VERSION,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "packages": installed_packages(),
        "git": git_state(where),
        "cwd": str(where.resolve()),
    }
