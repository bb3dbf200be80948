"""``vault run``: run a specimen's protocol and, if it succeeds, commit it with provenance.

The protocol runs as ``python protocol.py ARGS...`` in its working directory, with this
interpreter. Its combined stdout and stderr go to ``specimens/<id>/run.log`` (a file of the
specimen, so the commit keeps it as a blob) and, as they arrive, to an optional sink (the CLI
passes the terminal). Exit status 0 commits the specimen with ``metadata.provenance``; any
other status commits nothing and raises :class:`RunFailedError` naming the log.

A specimen in the runs layout (its protocol writes ``runs/<run_id>/``) may be run again after
it was committed: each execution is a new run, and the commit seals it as a run of its own
(``<id>.run_<run_id>``). The log then belongs to the run: it goes to ``runs/<run_id>/run.log``
(``strata/run.log`` in the run's commit) when the protocol made exactly one run. A failed
execution's new runs are moved to ``.cas/failed_runs/`` with the log (their tensors, which
exist only as objects, are dropped from the working index), so no later commit seals them as if
they had succeeded.

When the code repository has uncommitted changes, their patch is written beside the log as
``provenance/git.diff`` (:func:`cas_vault.provenance.keep_patch`): in a working directory before
the protocol starts (replacing an earlier run's) and again after it ends, into the one new run
after it in the runs layout. The commit seals it like any file, so ``git apply`` can reproduce
the code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import canonical
from .atomic import FileLock, write_replace
from .commit import Commit, utc_now
from .errors import (
    InvalidInputError,
    LockTimeoutError,
    NotFoundError,
    RunFailedError,
)
from .provenance import capture, keep_patch
from .seeding import SEEDS_FILE_ENV, read_seeds_file
from .storage import STRATA_DIR, is_runs_layout
from .workdir import PRIVATE_DIR, RUNS_DIR, WorkingIndex, check_writable, writing

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["LOG_NAME", "RUN_LOCK_PATH", "RUN_SPECIMEN_ENV", "RunResult", "failed_run_provenance",
           "run_protocol"]

#: The run's combined stdout/stderr, a file of the specimen.
LOG_NAME = "run.log"
#: flock(2) file, relative to the working directory, held exclusively by `vault run` while the
#: protocol runs and commits.
RUN_LOCK_PATH = f"{PRIVATE_DIR}/run.lock"
#: Set for the protocol: the id of the specimen ``vault run`` will commit (the step-wise
#: logger sees it and leaves committing to the runner).
RUN_SPECIMEN_ENV = "CAS_VAULT_RUN_SPECIMEN"
_SEEDS_NAME = "seeds.jsonl"
#: Provenance of the last failed run, in the working directory's private folder.
FAILED_RUN_NAME = "failed_run.msgpack"
#: Where the runs of a failed execution are moved, in the private folder (runs layout).
FAILED_RUNS_DIR = "failed_runs"
_TAIL_LINES = 15


@dataclass(frozen=True)
class RunResult:
    """A successful run.

    Attributes:
        specimen_id: the specimen.
        commit: its new commit.
        provenance: what was stored under ``metadata.provenance``.
        log_path: the run's log in the working directory.
    """

    specimen_id: str
    commit: Commit
    provenance: dict[str, Any]
    log_path: Path


def _check_args(args: Sequence[str]) -> list[str]:
    if isinstance(args, str):
        raise InvalidInputError("protocol arguments must be a list of strings, not one string")
    out = list(args)
    for a in out:
        if not isinstance(a, str) or "\0" in a:
            raise InvalidInputError(f"protocol argument {a!r} must be a string without NUL bytes")
    return out


def run_protocol(
    vault: Repository,
    specimen_id: str,
    args: Sequence[str] = (),
    *,
    message: str = "",
    output: Callable[[bytes], None] | None = None,
    timeout: float | None = None,
    code_dir: str | os.PathLike[str] | None = None,
) -> RunResult:
    """Run ``specimens/<id>/protocol.py`` and commit the specimen if it exits 0.

    Args:
        vault: the vault.
        specimen_id: an uncommitted specimen with a ``protocol.py``.
        args: command-line arguments passed to the protocol.
        message: the commit message (default: ``vault run <id> <args>``).
        output: called with each chunk of the protocol's output as it arrives.
        timeout: seconds after which the protocol is killed (a failed run).
        code_dir: the code repository whose git state is recorded (default: the cwd).

    Returns:
        The run, with its commit.

    Raises:
        NotFoundError: no working directory or no protocol.py.
        InvalidInputError: arguments that are not strings, or a non-positive timeout.
        ImmutableError: the specimen is committed already (nothing is run).
        LockTimeoutError: another `vault run` of the same specimen is running.
        RunFailedError: the protocol exited non-zero or timed out; nothing was committed.
    """
    args = _check_args(args)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise InvalidInputError(f"timeout must be a positive number of seconds, not {timeout!r}")
    wd = vault.specimen_dir(specimen_id)
    if not is_runs_layout(wd):  # a committed specimen in the runs layout takes new runs
        vault.check_uncommitted(
            specimen_id,
            f"to run it again, create a new specimen: `vault new NEW_ID --parent {specimen_id} "
            "...`, copy protocol.py, then `vault run NEW_ID` (or keep runs: `vault new ... "
            "--layout runs`)",
        )
    protocol = wd / "protocol.py"
    if not protocol.is_file():
        raise NotFoundError(
            f"{protocol} does not exist; scaffold the specimen with "
            f"`vault new {specimen_id} --domain D --method M` and write its protocol"
        )
    private = wd / PRIVATE_DIR
    private.mkdir(exist_ok=True)
    # One run per specimen at a time: two would interleave run.log and race to commit.
    lock = FileLock(wd / RUN_LOCK_PATH, timeout=0.0)
    try:
        lock.acquire()
    except LockTimeoutError:
        raise LockTimeoutError(
            f"specimen {specimen_id} is being run by another `vault run`; wait for it to finish"
        ) from None
    try:
        return _run_locked(vault, specimen_id, args, wd, private, message, output, timeout,
                           code_dir)
    finally:
        lock.release()


def _run_locked(
    vault: Repository, specimen_id: str, args: list[str], wd: Path, private: Path, message: str,
    output: Callable[[bytes], None] | None, timeout: float | None,
    code_dir: str | os.PathLike[str] | None,
) -> RunResult:
    captured = capture(code_dir)
    environment = captured.environment
    seeds_file = private / _SEEDS_NAME
    seeds_file.unlink(missing_ok=True)
    command = [sys.executable, "protocol.py", *args]
    env = {
        **os.environ,
        SEEDS_FILE_ENV: str(seeds_file),
        RUN_SPECIMEN_ENV: specimen_id,
        "CAS_VAULT_DIR": str(vault.root),
        # Unbuffered, so output reaches the log and terminal as it is printed and a crash
        # loses none of it.
        "PYTHONUNBUFFERED": "1",
    }
    runs = is_runs_layout(wd)
    failed = private / FAILED_RUN_NAME
    if not runs:
        # This run's patch replaces (or removes) an earlier run's before the protocol starts, and
        # the earlier failure's provenance goes too: whatever this run leaves behind, even if it
        # is interrupted, no commit pairs one run's record with another run's patch.
        failed.unlink(missing_ok=True)
        keep_patch(captured, wd)
    before = _run_dirs(wd) if runs else set()
    log_path = (private if runs else wd) / LOG_NAME
    log_rel: str | None = LOG_NAME
    started = utc_now()
    t0 = time.monotonic()
    status = _stream(command, wd, env, log_path, output, timeout)
    wall = time.monotonic() - t0
    new_runs = sorted(_run_dirs(wd) - before) if runs else []
    if runs:
        log_rel = None
        if len(new_runs) == 1:  # the log is the run's, sealed with it
            target = wd / RUNS_DIR / new_runs[0] / LOG_NAME
            with writing(wd):
                check_writable(wd, f"{RUNS_DIR}/{new_runs[0]}/{LOG_NAME}")
                os.replace(log_path, target)
            log_path, log_rel = target, f"strata/{LOG_NAME}"
    # The patch goes with the log: beside it in the working directory (written again, in case
    # the protocol touched it), or into the one run (set aside with it if it failed).
    if not runs:
        environment = keep_patch(captured, wd)
    else:
        one = f"{RUNS_DIR}/{new_runs[0]}" if len(new_runs) == 1 else None
        environment = keep_patch(captured, wd, one, STRATA_DIR)
    provenance = {
        **environment,
        "command": command[1:],
        "started": started,
        "finished": utc_now(),
        "wall_time_s": round(wall, 6),
        "exit_status": status,
        "seeds": read_seeds_file(seeds_file),
    }
    if log_rel is not None:
        provenance["log"] = log_rel
    seeds_file.unlink(missing_ok=True)
    if status != 0:
        if runs:
            log_path = _set_aside(wd, private, new_runs, log_path)
        else:
            # Kept so that `vault commit ID --partial` can seal the failure with its provenance.
            write_replace(failed, canonical.packb(provenance))
        raise RunFailedError(specimen_id, status, str(log_path), _tail(log_path))
    failed.unlink(missing_ok=True)
    if not message:
        message = " ".join(["vault run", specimen_id, *args])
    commit = vault.commit(specimen_id, message=message, extra_metadata={"provenance": provenance})
    return RunResult(specimen_id, commit, provenance, log_path)


def _run_dirs(wd: Path) -> set[str]:
    """Names of the run directories in ``wd/runs``."""
    try:
        return {e.name for e in os.scandir(wd / RUNS_DIR) if e.is_dir(follow_symlinks=False)}
    except FileNotFoundError:
        return set()


def _set_aside(wd: Path, private: Path, new_runs: list[str], log_path: Path) -> Path:
    """Move a failed execution's runs out of ``runs/`` (no commit may seal them as results);
    return where its log is now."""
    aside = private / FAILED_RUNS_DIR
    aside.mkdir(exist_ok=True)
    with writing(wd):
        for run in new_runs:
            dest = aside / run
            if dest.exists():  # an earlier failure of the same name: keep both
                dest = aside / f"{run}.{time.time_ns()}"
            os.rename(wd / RUNS_DIR / run, dest)
            # Its tensors live only as objects listed in the working index: unlisted, they
            # are not sealed with a later run, and gc reclaims them after its grace period.
            WorkingIndex(wd).update({}, remove_prefix=f"{RUNS_DIR}/{run}")
            if log_path.parent == wd / RUNS_DIR / run:
                log_path = dest / LOG_NAME
    return log_path


def failed_run_provenance(specimen_dir: Path) -> dict[str, Any] | None:
    """The provenance of the last failed ``vault run`` of a working directory, if any."""
    try:
        value = canonical.unpackb((specimen_dir / PRIVATE_DIR / FAILED_RUN_NAME).read_bytes())
    except (FileNotFoundError, InvalidInputError):
        return None
    return value if isinstance(value, dict) else None


def _stream(
    command: list[str], cwd: Path, env: dict[str, str], log_path: Path,
    output: Callable[[bytes], None] | None, timeout: float | None,
) -> int:
    """Run ``command``, teeing its merged output to ``log_path`` and ``output``; return status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    # The log is written for as long as the protocol runs: hold the working directory's writer
    # lock meanwhile, so a commit from elsewhere waits for the whole log (shared: the
    # protocol's own SpecimenStorage writes take it too).
    with writing(log_path.parent), open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        try:
            while True:
                if deadline is not None:
                    import select

                    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                    if not ready:
                        proc.kill()
                        msg = f"\n[vault run: killed after the {timeout:g} s timeout]\n".encode()
                        log.write(msg)
                        if output is not None:
                            output(msg)
                        break
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                if output is not None:
                    output(chunk)
        except BaseException:
            # Interrupted (Ctrl-C) or the sink failed: never leave the protocol running.
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        status = proc.wait()
        log.flush()
        os.fsync(log.fileno())
    return status


def _tail(path: Path) -> str:
    try:
        text = path.read_bytes()[-8192:].decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-_TAIL_LINES:])
