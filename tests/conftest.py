"""Shared fixtures: every test gets its own vault in a temp directory."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Every property and stateful test takes its example counts from the profile (no test sets
# its own, which pytest_collection_modifyitems below enforces), so `nightly` reaches them all.
# No deadline and no too_slow check: example speed depends on the machine, never on the code.
_EXAMPLES = 30
_PROFILE = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow],
            "stateful_step_count": 15}
settings.register_profile("default", max_examples=_EXAMPLES, **_PROFILE)
settings.register_profile("ci", max_examples=_EXAMPLES, **_PROFILE)
settings.register_profile("nightly", max_examples=20 * _EXAMPLES, **_PROFILE)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a hypothesis test whose settings differ from the loaded profile's counts."""
    profile = settings.default
    for item in items:
        fn = getattr(item, "obj", None)
        own = getattr(fn, "_hypothesis_internal_use_settings", None)
        machine = getattr(getattr(fn, "__self__", None), "settings", None)
        for s in (own, machine):
            if s is not None and (s.max_examples, s.stateful_step_count) != (
                    profile.max_examples, profile.stateful_step_count):
                raise pytest.UsageError(
                    f"{item.nodeid} sets its own max_examples/stateful_step_count; "
                    "take them from the hypothesis profile (tests/conftest.py)")


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Never let a test find a developer's vault through the environment or the cwd.
    monkeypatch.delenv("CAS_VAULT_DIR", raising=False)
    monkeypatch.setenv("CAS_VAULT_AUTHOR", "tester")


@pytest.fixture
def vault(tmp_path: Path):
    """A fresh, empty vault."""
    from cas_vault import Vault

    return Vault.init(tmp_path / "vault")


@pytest.fixture
def make_specimen(vault):
    """Create a specimen with small metrics and config; returns its working directory."""
    from cas_vault import SpecimenStorage

    def make(specimen_id: str, *, steps: int = 10, seed: int = 0, parents=(), tags=("t",),
             domain: str = "training", method: str = "fine_tuning"):
        import numpy as np

        path = vault.new(specimen_id, domain=domain, method=method, tags=list(tags),
                         parents=list(parents))
        s = SpecimenStorage(path)
        rng = np.random.default_rng(seed)
        s.write_metrics({"step": np.arange(steps), "loss": rng.random(steps)})
        s.write_config({"seed": seed})
        return path

    return make


# -- recording durable file-system calls -----------------------------------------------------
# A SIGKILL cannot tell whether an fsync happened (the page cache survives the process), so the
# write-ordering rules of docs/format.md are checked on the sequence of calls instead: the real
# calls still run, and each successful one is recorded with the path it acted on.


@dataclass(frozen=True)
class FsEvent:
    """One successful file-system call that matters for durability.

    Attributes:
        op: ``fsync``, ``link``, ``rename``, ``replace``, ``unlink``, ``rmdir``, ``mkdir``,
            ``create`` (``os.open`` made a new file), ``write`` (or pwrite), ``lock`` / ``unlock``
            (``flock``), or a label a test gave to :meth:`FsLog.mark`.
        path: the file or directory (the source of link, rename and replace), relative to the
            log's root when inside it (``.`` is the root), else absolute.
        dest: the new name made by link, rename and replace (relative likewise), else ``""``.
        shared: for ``lock``, whether the lock is shared rather than exclusive.
    """

    op: str
    path: str
    dest: str = ""
    shared: bool = False

    def __str__(self) -> str:
        arrow = f" -> {self.dest}" if self.dest else ""
        return f"{self.op}{' (shared)' if self.shared else ''} {self.path}{arrow}"


class FsLog:
    """Records, in order and from every thread, the durable-relevant calls made on ``os``.

    Installed by the ``fs_log`` fixture, which wraps ``os.fsync``, ``os.fdatasync``, ``os.link``,
    ``os.rename``, ``os.replace``, ``os.unlink``, ``os.remove``, ``os.rmdir``, ``os.mkdir``,
    ``os.open``, ``os.write``, ``os.pwrite`` and ``fcntl.flock``. Calls are recorded only inside
    :meth:`recording`, after they succeed (an fsync is durable once it has returned; a link that
    failed named nothing). An fsync's path is read from ``/proc/self/fd`` when it is called.

    Args:
        root: paths inside it are recorded relative to it (set :attr:`root` to change it).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._mutex = threading.Lock()
        self._events: list[FsEvent] = []
        self._on = False
        self._faults: list[tuple[str, Callable[[FsEvent], bool], int]] = []

    # -- recording -------------------------------------------------------------------------
    @contextmanager
    def recording(self) -> Iterator[FsLog]:
        """Forget earlier events and record the calls made inside the block."""
        with self._mutex:
            self._events = []
            self._on = True
        try:
            yield self
        finally:
            with self._mutex:
                self._on = False

    def mark(self, label: str, path: str = "") -> None:
        """Record a point of the test's own choosing (e.g. a catalog transaction)."""
        self._add(FsEvent(label, path))

    def fail(self, op: str, when: Callable[[FsEvent], bool], err: int) -> None:
        """Make every later call of ``op`` for which ``when(event)`` holds raise ``OSError(err)``.

        Simulates conditions a test cannot create for real (a cross-device link, an inode at
        its link limit); such a call is not made and not recorded.
        """
        self._faults.append((op, when, err))

    @property
    def events(self) -> list[FsEvent]:
        """The events recorded so far, in order."""
        with self._mutex:
            return list(self._events)

    def rel(self, path: str | os.PathLike[str]) -> str:
        """``path`` as recorded: relative to :attr:`root` when inside it."""
        p = os.path.normpath(os.fspath(path))
        root = os.path.normpath(os.fspath(self.root))
        if p == root:
            return "."
        if p.startswith(root + os.sep):
            return p[len(root) + 1:]
        return p

    def _add(self, event: FsEvent) -> None:
        with self._mutex:
            if self._on:
                self._events.append(event)

    def _check_fault(self, event: FsEvent) -> None:
        for op, when, err in self._faults:
            if op == event.op and when(event):
                raise OSError(err, os.strerror(err), event.path)

    # -- queries ---------------------------------------------------------------------------
    def where(self, op: str, path: str | None = None, dest: str | None = None) -> list[int]:
        """Indices of the events of ``op`` whose path and dest match these fnmatch patterns."""
        return [
            i for i, e in enumerate(self.events)
            if e.op == op and (path is None or fnmatchcase(e.path, path))
            and (dest is None or fnmatchcase(e.dest, dest))
        ]

    def first(self, op: str, path: str | None = None, dest: str | None = None) -> int:
        """Index of the first matching event; fails the test, listing the log, if none."""
        found = self.where(op, path, dest)
        assert found, f"no {op} {path or ''} {dest or ''} in:\n{self.dump()}"
        return found[0]

    def last(self, op: str, path: str | None = None, dest: str | None = None) -> int:
        """Index of the last matching event; fails the test, listing the log, if none."""
        found = self.where(op, path, dest)
        assert found, f"no {op} {path or ''} {dest or ''} in:\n{self.dump()}"
        return found[-1]

    def dump(self) -> str:
        """The log, one numbered event per line (for assertion messages)."""
        return "\n".join(f"{i:4d} {e}" for i, e in enumerate(self.events))


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"<fd {fd}>"


def _at(path: object, dir_fd: int | None) -> str:
    """The absolute path a ``*at`` call acts on."""
    p = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    if dir_fd is not None and not os.path.isabs(p):
        p = os.path.join(_fd_path(dir_fd), p)
    # Resolve the directory as /proc/self/fd does (the leaf may be gone: a rename's source).
    head, tail = os.path.split(os.path.abspath(p))
    return os.path.join(os.path.realpath(head), tail)


@pytest.fixture
def fs_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FsLog:
    """An :class:`FsLog` rooted where the ``vault`` fixture puts its vault (not started)."""
    log = FsLog((tmp_path / "vault").resolve())
    real = {name: getattr(os, name) for name in (
        "fsync", "fdatasync", "link", "rename", "replace", "unlink", "remove", "rmdir", "mkdir",
        "open", "write", "pwrite")}
    real_flock = fcntl.flock

    def fsync(fd: Any) -> None:
        n = fd if isinstance(fd, int) else fd.fileno()
        event = FsEvent("fsync", log.rel(_fd_path(n)))
        log._check_fault(event)
        real["fsync"](fd)
        log._add(event)

    def fdatasync(fd: Any) -> None:
        n = fd if isinstance(fd, int) else fd.fileno()
        event = FsEvent("fsync", log.rel(_fd_path(n)))
        real["fdatasync"](fd)
        log._add(event)

    def two_paths(name: str) -> Callable[..., Any]:
        def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            event = FsEvent(name, log.rel(_at(src, kwargs.get("src_dir_fd"))),
                            log.rel(_at(dst, kwargs.get("dst_dir_fd"))))
            log._check_fault(event)
            out = real[name](src, dst, *args, **kwargs)
            log._add(event)
            return out
        return call

    def one_path(name: str, op: str) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            event = FsEvent(op, log.rel(_at(path, kwargs.get("dir_fd"))))
            log._check_fault(event)
            out = real[name](path, *args, **kwargs)
            log._add(event)
            return out
        return call

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        target = _at(path, kwargs.get("dir_fd"))
        new = bool(flags & os.O_CREAT) and not os.path.lexists(target)
        fd = real["open"](path, flags, *args, **kwargs)
        if new:
            log._add(FsEvent("create", log.rel(target)))
        return fd

    def writer(name: str) -> Callable[..., int]:
        def call(fd: int, *args: Any) -> int:
            n = real[name](fd, *args)
            if log._on:
                target = _fd_path(fd)
                if target.startswith("/"):  # files, not pipes or sockets
                    log._add(FsEvent("write", log.rel(target)))
            return n
        return call

    def flock(fd: Any, operation: int) -> None:
        real_flock(fd, operation)
        n = fd if isinstance(fd, int) else fd.fileno()
        if operation & fcntl.LOCK_UN:
            log._add(FsEvent("unlock", log.rel(_fd_path(n))))
        else:
            log._add(FsEvent("lock", log.rel(_fd_path(n)), shared=bool(operation & fcntl.LOCK_SH)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    for name in ("link", "rename", "replace"):
        monkeypatch.setattr(os, name, two_paths(name))
    monkeypatch.setattr(os, "unlink", one_path("unlink", "unlink"))
    monkeypatch.setattr(os, "remove", one_path("remove", "unlink"))
    monkeypatch.setattr(os, "rmdir", one_path("rmdir", "rmdir"))
    monkeypatch.setattr(os, "mkdir", one_path("mkdir", "mkdir"))
    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "write", writer("write"))
    monkeypatch.setattr(os, "pwrite", writer("pwrite"))
    monkeypatch.setattr(fcntl, "flock", flock)
    return log
