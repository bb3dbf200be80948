"""Provenance: how a result was made, captured without the researcher thinking about it.

:func:`capture_environment` records the interpreter, the machine, every installed package
version (from :mod:`importlib.metadata`, not a pip subprocess) and the code repository's git
state. ``vault run`` and the step-wise logger add the command line, timings, exit status and
seeds, and store the whole map under ``metadata.provenance`` of the commit's manifest
(docs/format.md, "Provenance, partial specimens and legacy import").

A dirty checkout is kept, not only named: :func:`capture` also returns the patch of its tracked
changes (``git diff --binary HEAD``, up to :data:`DIFF_CAP` bytes), and :func:`keep_patch`
writes it as ``provenance/git.diff`` beside the run's log, where the commit seals it like any
other file. ``git apply`` of that file onto a checkout of the recorded commit gives back the
tracked files as they were; untracked files are named, not kept.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import write_replace
from .digest import Hasher
from .workdir import check_writable, writing

__all__ = [
    "DIFF_CAP",
    "DIFF_PATH",
    "PROVENANCE_VERSION",
    "Capture",
    "capture",
    "capture_environment",
    "git_state",
    "installed_packages",
    "keep_patch",
]

#: Version of the provenance map's layout (2: ``git`` has ``diff_bytes``, ``diff_kept``,
#: ``diff_path`` and ``untracked_files``).
PROVENANCE_VERSION = 2
#: Where a dirty checkout's patch is written, relative to the directory holding the run's log
#: (the working directory, or ``runs/<run_id>/`` in the runs layout).
DIFF_PATH = "provenance/git.diff"
#: A patch larger than this many bytes is not kept (its size and digest are still recorded).
DIFF_CAP = 10 * 1024 * 1024
#: At most this many untracked paths are named (``untracked`` always counts them all).
UNTRACKED_NAMES = 1000

_GIT_TIMEOUT = 20.0
#: The patch must read the same whatever the user's git configuration: no colour, no external
#: diff or textconv filter, the a/ b/ prefixes ``git apply`` expects. Run from the top level, so
#: ``diff.relative`` cannot narrow it either.
_DIFF_ARGS = ["diff", "--binary", "--no-color", "--no-ext-diff", "--no-textconv",
              "--src-prefix=a/", "--dst-prefix=b/", "HEAD", "--"]


@dataclass(frozen=True)
class Capture:
    """What :func:`capture` found.

    Attributes:
        environment: the provenance map (:func:`capture_environment`); its ``git`` says the
            patch is not kept until :func:`keep_patch` writes it.
        patch: the patch to keep: the bytes of ``git diff --binary HEAD``, or None when there
            is none to keep (no repository, no commit, no tracked change, or over the cap).
    """

    environment: dict[str, Any]
    patch: bytes | None


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


_GIT_ENV = {"GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, timeout=_GIT_TIMEOUT,
        env={**os.environ, **_GIT_ENV},
    )


def _git_stream(args: list[str], cwd: Path, sink: Callable[[bytes], None]) -> int:
    """Run git, feeding its output to ``sink`` as it comes (memory stays bounded whatever the
    size of the output); return its exit status.

    Raises:
        subprocess.TimeoutExpired: git ran for over ``_GIT_TIMEOUT`` seconds (it is killed).
    """
    deadline = time.monotonic() + _GIT_TIMEOUT
    with subprocess.Popen(["git", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          env={**os.environ, **_GIT_ENV}) as proc:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        try:
            while True:
                ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise subprocess.TimeoutExpired(["git", *args], _GIT_TIMEOUT)
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                sink(chunk)
        except BaseException:
            proc.kill()
            raise
        return proc.wait()


class _Patch:
    """A sink for the patch: hashes and counts every byte, keeps them only up to ``cap``."""

    def __init__(self, cap: int) -> None:
        self.hasher = Hasher()
        self.cap = cap
        self.kept: bytearray | None = bytearray()

    def __call__(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        if self.kept is not None:
            if self.hasher.size > self.cap:
                self.kept = None  # over the cap: count and hash the rest, keep nothing
            else:
                self.kept += chunk


def _git_snapshot(path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, bytes | None]:
    """:func:`git_state`, and the patch to keep (see :class:`Capture`)."""
    cwd = Path(path)
    if shutil.which("git") is None or not cwd.is_dir():
        return None, None
    patch = _Patch(DIFF_CAP)
    try:
        top = _git(["rev-parse", "--show-toplevel"], cwd)
        if top.returncode != 0:
            return None, None
        root = top.stdout.decode().strip()
        head = _git(["rev-parse", "--verify", "-q", "HEAD"], cwd)
        commit = head.stdout.decode().strip() if head.returncode == 0 else None
        branch_p = _git(["symbolic-ref", "-q", "--short", "HEAD"], cwd)
        branch = branch_p.stdout.decode().strip() if branch_p.returncode == 0 else None
        if commit is not None and _git_stream(_DIFF_ARGS, Path(root), patch) != 0:
            patch.kept = None  # what a failing diff printed is no patch to apply
        untracked_p = _git(["ls-files", "--others", "--exclude-standard", "-z"], cwd)
        untracked = sorted(p for p in untracked_p.stdout.decode(errors="replace").split("\0") if p)
        if commit is None:  # nothing to diff against: the tracked paths stand for the changes
            patch(_git(["ls-files", "-z"], cwd).stdout)
            patch.kept = None
    except (OSError, subprocess.SubprocessError):
        return None, None
    size = patch.hasher.size
    dirty = bool(size or untracked)
    digest = None
    if dirty:
        # diff_digest: BLAKE3 of the patch, NUL, the NUL-joined untracked paths (fed on after
        # the patch, so it equals hash_bytes(patch + b"\0" + names)).
        patch.hasher.update(b"\0" + "\0".join(untracked).encode())
        digest = patch.hasher.hexdigest()
    kept = bytes(patch.kept) if patch.kept else None
    state = {
        "root": root, "commit": commit, "branch": branch, "dirty": dirty,
        "diff_digest": digest, "diff_bytes": size if commit is not None else None,
        "diff_kept": False, "diff_path": None,
        "untracked": len(untracked), "untracked_files": untracked[:UNTRACKED_NAMES],
    }
    return state, kept


def git_state(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The git state of the repository containing ``path``, or None if there is none.

    Returns:
        ``{"root", "commit", "branch", "dirty", "diff_digest", "diff_bytes", "diff_kept",
        "diff_path", "untracked", "untracked_files"}``: ``commit`` is None in a repository
        without commits; ``dirty`` is true when tracked files differ from HEAD or untracked
        files exist; ``diff_digest`` is the BLAKE3 of ``git diff --binary HEAD`` (the patch)
        followed by a NUL and the NUL-joined sorted untracked paths (None when clean), so two
        runs from the same uncommitted edits share a digest; ``diff_bytes`` is the patch's
        size (None without a commit); ``diff_kept`` and ``diff_path`` say whether and where a
        commit holds the patch (false and None here: :func:`keep_patch` sets them);
        ``untracked_files`` names the first :data:`UNTRACKED_NAMES` untracked paths in order.
    """
    return _git_snapshot(path)[0]


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
    return capture(code_dir).environment


def capture(code_dir: str | os.PathLike[str] | None = None) -> Capture:
    """:func:`capture_environment`, with the patch of a dirty checkout to keep.

    Args:
        code_dir: as for :func:`capture_environment`.

    Returns:
        The map and the patch; pass both to :func:`keep_patch` before committing.
    """
    where = Path(code_dir) if code_dir is not None else Path.cwd()
    git, patch = _git_snapshot(where)
    environment = {
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
        "git": git,
        "cwd": str(where.resolve()),
    }
    return Capture(environment, patch)


def keep_patch(
    captured: Capture, specimen_dir: Path, rel_dir: str | None = "", tree_dir: str = "",
) -> dict[str, Any]:
    """Put the captured patch where the commit seals it, and say so in the provenance map.

    The one rule for the file: ``<rel_dir>/provenance/git.diff`` is replaced with this capture's
    patch, or removed when there is none to keep, so a patch never outlives the run that wrote
    it (a failed run's stays for ``vault commit --partial``, until the next run).

    Args:
        captured: what :func:`capture` returned.
        specimen_dir: the working directory.
        rel_dir: the directory holding the run's log, relative to ``specimen_dir``: ``""``, or
            ``runs/<run_id>`` in the runs layout; None when no commit will hold the patch (a
            runs-layout execution that made no run or several): it is then not kept.
        tree_dir: where ``rel_dir`` is in the commit's tree (``""``, or ``strata``).

    Returns:
        The provenance map, its ``git.diff_kept`` and ``git.diff_path`` (the path in the commit's
        tree) set.

    Raises:
        ImmutableError: the path may not change any more (:func:`check_writable`).
        OSError: the file could not be written.
    """
    environment = captured.environment
    git = environment.get("git")
    if rel_dir is None:
        return environment
    rel = f"{rel_dir}/{DIFF_PATH}" if rel_dir else DIFF_PATH
    target = specimen_dir / rel
    with writing(specimen_dir):
        if captured.patch is None:
            if not target.exists():
                return environment
            check_writable(specimen_dir, rel)
            target.unlink()
            try:
                target.parent.rmdir()  # the folder is the patch's: leave no empty one
            except OSError:
                pass
            return environment
        check_writable(specimen_dir, rel)
        target.parent.mkdir(exist_ok=True)
        # A working file: the commit makes it durable as an object (docs/format.md, section 6).
        write_replace(target, captured.patch, sync_dir=False)
    assert git is not None  # a patch comes only with a git state
    where = f"{tree_dir}/{DIFF_PATH}" if tree_dir else DIFF_PATH
    return {**environment, "git": {**git, "diff_kept": True, "diff_path": where}}
