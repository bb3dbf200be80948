"""``vault run``: run a specimen's protocol and, if it succeeds, commit it with provenance.

The protocol runs as ``python protocol.py ARGS...`` in its working directory, with this
interpreter. Its combined stdout and stderr go to ``specimens/<id>/run.log`` (a file of the
specimen, so the commit keeps it as a blob) and, as they arrive, to an optional sink (the CLI
passes the terminal). Exit status 0 commits the specimen with ``metadata.provenance``; any
other status commits nothing and raises :class:`RunFailedError` naming the log.
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
from .provenance import capture_environment
from .seeding import SEEDS_FILE_ENV, read_seeds_file
from .workdir import PRIVATE_DIR, writing

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["LOG_NAME", "RUN_SPECIMEN_ENV", "RunResult", "failed_run_provenance", "run_protocol"]

#: The run's combined stdout/stderr, a file of the specimen.
LOG_NAME = "run.log"
#: Set for the protocol: the id of the specimen ``vault run`` will commit (the step-wise
#: logger sees it and leaves committing to the runner).
RUN_SPECIMEN_ENV = "CAS_VAULT_RUN_SPECIMEN"
_SEEDS_NAME = "seeds.jsonl"
#: Provenance of the last failed run, in the working directory's private folder.
FAILED_RUN_NAME = "failed_run.msgpack"
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
    vault.check_uncommitted(
        specimen_id,
        f"to run it again, create a new specimen: `vault new NEW_ID --parent {specimen_id} ...`, "
        "copy protocol.py, then `vault run NEW_ID`",
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
    lock = FileLock(private / "run.lock", timeout=0.0)
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
    environment = capture_environment(code_dir)
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
    log_path = wd / LOG_NAME
    started = utc_now()
    t0 = time.monotonic()
    status = _stream(command, wd, env, log_path, output, timeout)
    wall = time.monotonic() - t0
    provenance = {
        **environment,
        "command": command[1:],
        "started": started,
        "finished": utc_now(),
        "wall_time_s": round(wall, 6),
        "exit_status": status,
        "seeds": read_seeds_file(seeds_file),
        "log": LOG_NAME,
    }
    seeds_file.unlink(missing_ok=True)
    failed = private / FAILED_RUN_NAME
    if status != 0:
        # Kept so that `vault commit ID --partial` can seal the failure with its provenance.
        write_replace(failed, canonical.packb(provenance))
        raise RunFailedError(specimen_id, status, str(log_path), _tail(log_path))
    failed.unlink(missing_ok=True)
    if not message:
        message = " ".join(["vault run", specimen_id, *args])
    commit = vault.commit(specimen_id, message=message, extra_metadata={"provenance": provenance})
    return RunResult(specimen_id, commit, provenance, log_path)


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
