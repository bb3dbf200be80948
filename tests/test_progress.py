"""Progress of long operations: the library's ``progress(advance, total)`` calls, and the CLI's
bar, drawn on stderr only when stderr is a terminal (a real pseudo-terminal at the end)."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner

from cas_vault import SpecimenStorage, Vault
from cas_vault.cli import cli
from cas_vault.cli import progress as cli_progress
from cas_vault.legacy import import_legacy
from cas_vault.seal import commit as seal
from cas_vault.verify import verify

SID = "2024_12_19_many_files"

#: What a tqdm bar always prints and no command's own stderr does.
BAR_MARKS = ("%|", "\r")


class Recorder:
    """A progress callback that keeps every call (verify calls it from hashing threads)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __call__(self, advance: int, total: int) -> None:
        with self._lock:
            self.calls.append((advance, total))

    def check(self) -> int:
        """Assert the contract of cas_vault.progress; return the final total."""
        assert self.calls, "progress was never called"
        done = 0
        last_total = 0
        for advance, total in self.calls:
            assert advance >= 0
            assert total >= last_total, f"the total shrank: {self.calls}"
            done += advance
            assert done <= total, f"advanced past the total: {self.calls}"
            last_total = total
        assert done == last_total, f"ended at {done} of {last_total}"
        return last_total


def _many_files(vault: Vault, n: int = 40) -> Path:
    wd = vault.new(SID, domain="training", method="fine_tuning")
    for i in range(n):
        (wd / "strata" / f"part_{i:03d}.bin").write_bytes(bytes([i % 251]) * (100 * i + 1))
    (wd / "strata" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))  # several blocks
    return wd


def _garbage(vault: Vault, n: int) -> None:
    for i in range(n):
        vault.objects.put_bytes(f"garbage {i}".encode())


# -- the library -----------------------------------------------------------------------------
def test_commit_reports_the_bytes_of_every_file_it_seals(vault: Vault) -> None:
    _many_files(vault)
    rec = Recorder()
    c = vault.commit(SID, progress=rec)
    assert rec.check() == sum(e.size for e in c.tree.values())
    assert len(rec.calls) == len(c.tree)  # one call per file


def test_commit_of_runs_grows_the_total_run_by_run(vault: Vault) -> None:
    wd = vault.new(SID, domain="training", method="fine_tuning", layout="runs")
    for i, run_id in enumerate(("20250102_090000", "20250102_100000")):
        s = SpecimenStorage(wd, run_id=run_id)
        s.write_manifest({"lr": i})
        s.write_metrics({"step": list(range(10 * (i + 1))), "loss": [0.5] * (10 * (i + 1))})
    rec = Recorder()
    made = seal(vault, SID, progress=rec)
    assert len(made) == 3
    # Every file copied or reused counts; a run's own manifest is made by the commit, not copied.
    expected = sum(e.size for c in made for path, e in c.tree.items()
                   if not (c.manifest.run is not None and path == "manifest.msgpack"))
    assert rec.check() == expected
    assert len({total for _, total in rec.calls}) == 3  # the total grew at each run


def test_checkout_reports_every_byte_it_copies(vault: Vault, tmp_path: Path) -> None:
    _many_files(vault)
    c = vault.commit(SID)
    rec = Recorder()
    vault.checkout(SID, tmp_path / "out", progress=rec)
    assert rec.check() == sum(e.size for e in c.tree.values())
    assert len(rec.calls) > len(c.tree)  # block by block: big.bin takes several calls


def test_gc_reports_one_object_at_a_time(vault: Vault) -> None:
    _many_files(vault, n=5)
    vault.commit(SID)
    _garbage(vault, 7)
    objects = sum(1 for _ in vault.objects.iter_digests())
    rec = Recorder()
    report = vault.gc(grace=0, progress=rec)
    assert report.removed_objects == 7
    assert rec.check() == objects
    assert {advance for advance, _ in rec.calls} == {1}


def test_import_legacy_reports_one_specimen_at_a_time(vault: Vault, tmp_path: Path) -> None:
    specimens = tmp_path / "seed" / "specimens"
    for i in range(3):
        d = specimens / f"2024_01_0{i + 1}_old"
        (d / "strata").mkdir(parents=True)
        (d / "manifest.msgpack").write_bytes(
            msgpack.packb({"domain": "training", "method": "fine_tuning"}))
        (d / "protocol.py").write_text(f"print({i})\n")
        (d / "strata" / "config.msgpack").write_bytes(msgpack.packb({"seed": i}))
    (specimens / "not_a_specimen").mkdir()  # counted too: import looked at it
    rec = Recorder()
    report = import_legacy(vault, tmp_path / "seed", progress=rec)
    assert len(report.imported) == 3 and report.problems
    assert rec.check() == 4
    assert {advance for advance, _ in rec.calls} == {1}


def test_verify_reports_the_bytes_it_hashes(vault: Vault) -> None:
    _many_files(vault)
    vault.commit(SID)
    rec = Recorder()
    report = verify(vault, progress=rec)
    assert report.ok, report.problems
    total = rec.check()
    # Hashed: every object and every committed working file again (the commit objects are
    # read, not queued, so the report counts a few bytes more).
    sealed = sum(e.size for e in vault.get(SID).tree.values())
    assert 2 * sealed <= total <= report.bytes_hashed


def test_no_progress_costs_no_call(vault: Vault, tmp_path: Path) -> None:
    # None is the default everywhere; nothing breaks and nothing is drawn.
    _many_files(vault, n=3)
    vault.commit(SID)
    vault.checkout(SID, tmp_path / "out")
    vault.gc(grace=0)
    assert verify(vault).ok


# -- the CLI off a terminal ------------------------------------------------------------------
def _committed(vault: Vault) -> None:
    _many_files(vault, n=5)
    vault.commit(SID)
    _garbage(vault, 3)


def _cli(*args: str) -> object:
    return CliRunner().invoke(cli, list(args))


def test_no_bar_when_stderr_is_not_a_terminal(vault: Vault, tmp_path: Path) -> None:
    _many_files(vault, n=5)
    v = str(vault.root)
    seed = tmp_path / "seed" / "specimens" / "2024_01_01_old"
    (seed / "strata").mkdir(parents=True)
    (seed / "manifest.msgpack").write_bytes(
        msgpack.packb({"domain": "training", "method": "fine_tuning"}))
    for args in (["commit", SID], ["checkout", SID, str(tmp_path / "out")], ["verify"],
                 ["gc", "--grace", "0"], ["import-legacy", str(tmp_path / "seed")]):
        r = _cli("--vault", v, *args)
        assert r.exit_code == 0, r.output
        assert not any(m in r.stderr for m in BAR_MARKS), (args, r.stderr)


def test_off_a_terminal_the_library_gets_no_callback(
    vault: Vault, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cas_vault.gc

    _committed(vault)
    seen = []
    real = cas_vault.gc.gc
    monkeypatch.setattr(cas_vault.gc, "gc", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    r = _cli("--vault", str(vault.root), "gc", "--grace", "0")
    assert r.exit_code == 0, r.output
    assert seen and seen[0]["progress"] is None


def test_no_bar_through_pipes(vault: Vault) -> None:
    _committed(vault)
    for args in (["verify"], ["gc", "--grace", "0", "--json"]):
        out = subprocess.run([sys.executable, "-m", "cas_vault", "--vault", str(vault.root), *args],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stderr == "", out.stderr
        assert not any(m in out.stdout for m in BAR_MARKS)
    assert json.loads(out.stdout)["removed_objects"] == 3


# -- the CLI on a terminal (in process) ------------------------------------------------------
@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Have the CLI believe stderr is a terminal (CliRunner captures it)."""
    monkeypatch.setattr(cli_progress, "stderr_is_terminal", lambda: True)


def _cleared_before_last_line(stderr: str) -> str:
    """Assert a bar was drawn and erased before whatever came last; return that last part."""
    assert "%|" in stderr, stderr
    *_, erased, last = stderr.split("\r")
    assert erased.strip() == "", f"the bar was not erased: {stderr!r}"
    return last


@pytest.mark.usefixtures("terminal")
def test_on_a_terminal_the_bar_goes_to_stderr_only(vault: Vault) -> None:
    _committed(vault)
    r = _cli("--vault", str(vault.root), "gc", "--grace", "0", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["removed_objects"] == 3  # stdout holds the JSON alone
    assert "gc:" in r.stderr and "object" in r.stderr
    assert _cleared_before_last_line(r.stderr) == ""


@pytest.mark.usefixtures("terminal")
def test_the_bar_is_erased_before_an_error(vault: Vault, tmp_path: Path) -> None:
    _many_files(vault, n=3)
    c = vault.commit(SID)
    obj = vault.objects.path(c.tree["strata/big.bin"].digest)
    os.chmod(obj, 0o644)
    with open(obj, "r+b") as f:
        f.seek(2 * 1024 * 1024)
        f.write(b"\x00\x01")
    r = _cli("--vault", str(vault.root), "checkout", SID, str(tmp_path / "out"))
    assert r.exit_code == 1, r.output
    assert "checkout:" in r.stderr
    assert _cleared_before_last_line(r.stderr).startswith("error: ")


@pytest.mark.usefixtures("terminal")
def test_the_bar_is_erased_on_ctrl_c(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    import cas_vault.gc

    def interrupted(*args: object, progress: object = None, **kw: object) -> None:
        assert callable(progress)
        progress(1, 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(cas_vault.gc, "gc", interrupted)
    r = _cli("--vault", str(vault.root), "gc")
    assert r.exit_code == 130, r.output
    assert _cleared_before_last_line(r.stderr).startswith("error: interrupted")
    assert r.stdout == ""


def test_a_bar_follows_a_growing_total(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(cli_progress, "stderr_is_terminal", lambda: True)
    with cli_progress.progress_bar("verify") as progress:
        assert progress is not None
        progress(512, 1024)
        progress(512, 4096)  # more work queued
        assert progress.bar.total == 4096 and progress.bar.n == 1024  # type: ignore[attr-defined]
    assert _cleared_before_last_line(err.getvalue()) == ""


# -- the CLI on a real terminal --------------------------------------------------------------
def _on_a_pty(args: list[str], size: tuple[int, int] | None) -> tuple[int, str, str]:
    """Run ``python -m cas_vault ARGS`` with stderr on a new pseudo-terminal, stdout a pipe.

    Returns:
        ``(exit status, stdout, everything written to the terminal)``.
    """
    master, slave = pty.openpty()
    if size is not None:
        import fcntl
        import struct
        import termios

        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:  # the terminal's buffer is small: read while the command runs
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every writer is gone
                return
            if not data:
                return
            chunks.append(data)

    try:
        proc = subprocess.Popen([sys.executable, "-m", "cas_vault", *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    finally:
        os.close(slave)
    reader = threading.Thread(target=drain)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        reader.join(timeout=300)
        os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode()


def test_gc_on_a_real_terminal(vault: Vault) -> None:
    _committed(vault)
    code, out, tty = _on_a_pty(["--vault", str(vault.root), "gc", "--grace", "0", "--json"],
                               size=(100, 30))
    assert code == 0, tty
    assert json.loads(out)["removed_objects"] == 3  # stdout (a pipe) holds the JSON alone
    assert "gc:" in tty and "object" in tty and "%|" in tty
    assert max(len(frame) for frame in tty.split("\r")) < 100  # fits the terminal
    assert _cleared_before_last_line(tty) == ""


def test_checkout_on_a_real_terminal_of_unknown_size(vault: Vault, tmp_path: Path) -> None:
    _many_files(vault, n=3)
    vault.commit(SID)
    dest = tmp_path / "out"
    code, out, tty = _on_a_pty(["--vault", str(vault.root), "checkout", SID, str(dest)],
                               size=None)  # a pty nobody sized reports 0 x 0
    assert code == 0, tty
    assert out == f"Checked out {SID} to {dest.resolve()}\n"
    assert "checkout:" in tty and "%|" in tty
    assert _cleared_before_last_line(tty) == ""
