"""`vault status` (what is not sealed yet, read-only) and `vault rm` (discard an uncommitted
specimen, crash-safely).

Locks that another process must hold are held by real child processes that wait on their
standard input; a child says "held" once it has the lock, so no test sleeps or times anything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cas_vault import SpecimenStorage, Vault, canonical
from cas_vault.atomic import FileLock
from cas_vault.catalog import release_writer
from cas_vault.cli import cli
from cas_vault.errors import ImmutableError, LockTimeoutError, NotFoundError
from cas_vault.seal import commit
from cas_vault.workdir import WorkingIndex

TRAINING = {"domain": "training", "method": "fine_tuning"}


def invoke(*args: str, **kw):
    return CliRunner().invoke(cli, list(args), **kw)


# -- helpers ---------------------------------------------------------------------------------
HOLDER = """
import sys
from pathlib import Path
from cas_vault.atomic import FileLock
from cas_vault.workdir import sealing, writing

kind, path = sys.argv[1], Path(sys.argv[2])
lock = {"writing": lambda: writing(path), "sealing": lambda: sealing(path),
        "file": lambda: FileLock(path, timeout=0)}[kind]()
with lock:
    print("held", flush=True)
    sys.stdin.read()
"""

LOGGER = """
import sys
from cas_vault import Vault

with Vault.open(sys.argv[1]).start_specimen(sys.argv[2], domain="training",
                                            method="fine_tuning") as s:
    s.log({"loss": 0.5}, step=0)
    s.flush()
    print("held", flush=True)
    sys.stdin.read()
"""


@contextmanager
def held(kind: str, path: Path) -> Iterator[subprocess.Popen]:
    """A child process holding a lock until the block ends: ``writing`` / ``sealing`` take the
    working directory's lock of ``path`` shared / exclusively, ``file`` the lock file ``path``."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, kind, str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)


@contextmanager
def logging_into(vault: Vault, sid: str) -> Iterator[subprocess.Popen]:
    """A child process in a step-wise log's ``with`` block (one row flushed); killed at the end,
    so the log is left unfinished, as after a crash."""
    proc = subprocess.Popen([sys.executable, "-c", LOGGER, str(vault.root), sid],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=60)


def tree_state(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every entry below ``root`` (and ``root``): type, size, mtime and inode."""
    def one(p: str) -> tuple[int, int, int, int]:
        st = os.lstat(p)
        return (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino)

    out = {".": one(os.fspath(root))}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = one(p)
    return out


def object_count(vault: Vault) -> int:
    return sum(1 for _ in vault.objects.iter_digests())


def with_results(vault: Vault, sid: str, **kw) -> Path:
    """An uncommitted specimen with metrics, a config and a tensor (its chunks only in the
    working index)."""
    wd = vault.new(sid, **{**TRAINING, **kw})
    s = SpecimenStorage(wd)
    s.write_metrics({"step": np.arange(5), "loss": np.linspace(1, 0, 5)})
    s.write_config({"lr": 3e-4})
    s.write_tensors("acts", np.arange(600, dtype=np.float32).reshape(20, 30))
    return wd


def runs_specimen(vault: Vault, sid: str, runs: int) -> list[str]:
    """A committed specimen in the runs layout with ``runs`` runs made after its commit."""
    wd = vault.new(sid, layout="runs", **TRAINING)
    vault.commit(sid)
    made = []
    for i in range(runs):
        s = SpecimenStorage(wd, run_id=f"2025010{i + 1}_120000")
        s.write_metrics({"step": np.arange(3), "loss": np.ones(3) * i})
        made.append(s.run_id)
    return made


# -- uncommitted specimens -------------------------------------------------------------------
def test_a_new_specimen_is_uncommitted_with_nothing_added(vault: Vault) -> None:
    vault.new("fresh", **TRAINING)
    vault.new("fresh_runs", layout="runs", **TRAINING)  # its protocol is the runs template
    report = vault.status()
    assert [u.specimen_id for u in report.uncommitted] == ["fresh", "fresh_runs"]
    for u in report.uncommitted:
        assert (u.added, u.added_files, u.added_bytes, u.scaffold, u.problem) == ((), 0, 0, (), None)
    assert report.unsealed_runs == () and report.in_progress == ()


def test_added_files_count_tensors_that_exist_only_in_the_working_index(vault: Vault) -> None:
    wd = with_results(vault, "results")
    (wd / "run.log").write_text("step 0\n")
    indexed = WorkingIndex(wd).load()
    assert indexed and not any((wd / p).exists() for p in indexed)  # chunks live in objects/
    [u] = vault.status().uncommitted
    files = {"run.log": (wd / "run.log").stat().st_size,
             "strata/metrics.parquet": (wd / "strata/metrics.parquet").stat().st_size,
             "strata/config.msgpack": (wd / "strata/config.msgpack").stat().st_size}
    tensor = sum(vault.objects.path(d).stat().st_size for d in indexed.values())
    assert {a.path: (a.files, a.bytes) for a in u.added} == {
        **{p: (1, size) for p, size in files.items()},
        "strata/acts.zarr/": (len(indexed), tensor),
    }
    assert u.added_files == 3 + len(indexed)
    assert u.added_bytes == sum(files.values()) + tensor
    assert u.scaffold == ()


def test_many_added_files_are_summarised_per_top_level_directory(vault: Vault) -> None:
    from cas_vault.status import MAX_LISTED

    wd = vault.new("many", **TRAINING)
    (wd / "data" / "deep").mkdir(parents=True)
    for i in range(MAX_LISTED + 5):
        (wd / "data" / "deep" / f"{i:03d}.bin").write_bytes(b"x" * i)
    (wd / "strata" / "a.txt").write_bytes(b"ab")
    (wd / "README").write_bytes(b"r")
    [u] = vault.status().uncommitted
    assert [(a.path, a.files, a.bytes) for a in u.added] == [
        ("README", 1, 1),
        ("data/", MAX_LISTED + 5, sum(range(MAX_LISTED + 5))),
        ("strata/", 1, 2),
    ]
    assert u.added_files == MAX_LISTED + 7


def test_scaffold_changes_since_vault_new(vault: Vault) -> None:
    wd = vault.new("edited", **TRAINING)
    protocol = (wd / "protocol.py").read_bytes()

    def changes() -> dict[str, str]:
        [u] = vault.status().uncommitted
        return {c.path: c.change for c in u.scaffold}

    # Same bytes rewritten, the manifest touched: its identity changed, its bytes did not.
    (wd / "protocol.py").write_bytes(protocol)
    os.utime(wd / "manifest.msgpack", ns=(1, 1))
    assert changes() == {}
    vault.note("edited", "loss went down")
    (wd / "protocol.py").write_bytes(protocol + b"# tuned\n")
    assert changes() == {"protocol.py": "modified", "field_notes.md": "modified"}
    manifest = canonical.unpackb((wd / "manifest.msgpack").read_bytes())
    (wd / "manifest.msgpack").write_bytes(canonical.packb({**manifest, "tags": ["new"]}))
    (wd / "field_notes.md").unlink()
    assert changes() == {"manifest.msgpack": "modified", "protocol.py": "modified",
                         "field_notes.md": "removed"}
    # The templates are filled in from the manifest as `vault new` recorded it, not as edited.
    (wd / "manifest.msgpack").write_bytes(
        canonical.packb({**manifest, "domain": "benchmarking", "method": "ablation_study"}))
    (wd / "protocol.py").write_bytes(protocol)
    assert changes() == {"manifest.msgpack": "modified", "field_notes.md": "removed"}


def test_without_the_record_of_vault_new_the_manifest_is_unknown(vault: Vault) -> None:
    wd = vault.new("old_style", **TRAINING)
    (wd / ".cas" / "copies.msgpack").unlink()
    [u] = vault.status().uncommitted
    # The templates still compare against the current manifest.
    assert [(c.path, c.change) for c in u.scaffold] == [("manifest.msgpack", "unknown")]


def test_a_symlink_is_named_as_what_a_commit_would_refuse(vault: Vault, tmp_path: Path) -> None:
    wd = vault.new("linked", **TRAINING)
    (tmp_path / "outside").write_text("x")
    (wd / "strata" / "link").symlink_to(tmp_path / "outside")
    [u] = vault.status().uncommitted
    assert u.problem is not None and "symlink" in u.problem
    r = invoke("--vault", str(vault.root), "status")
    assert r.exit_code == 0, r.output
    assert "a commit would refuse it" in r.output


# -- committed specimens with runs not sealed ------------------------------------------------
def test_unsealed_runs_are_those_the_next_commit_seals(vault: Vault) -> None:
    made = runs_specimen(vault, "sweep", 2)
    (vault.specimen_dir("sweep") / "runs" / "20250109_000000").mkdir()  # empty: not a run
    vault.new("other", **TRAINING)
    vault.commit("other")
    report = vault.status()
    assert report.uncommitted == ()
    [s] = report.unsealed_runs
    assert s.specimen_id == "sweep" and s.problem is None
    assert [(r.run_id, r.sealed_as) for r in s.runs] == [(m, f"sweep.run_{m}") for m in made]
    for r in s.runs:
        run_dir = vault.specimen_dir("sweep") / "runs" / r.run_id
        files = [p for p in run_dir.rglob("*") if p.is_file()]
        assert (r.files, r.bytes) == (len(files), sum(p.stat().st_size for p in files))
    sealed = [c.specimen_id for c in commit(vault, "sweep")]
    assert sealed == [r.sealed_as for r in s.runs]
    assert vault.status().unsealed_runs == ()


# -- work in progress ------------------------------------------------------------------------
def test_writers_commits_and_logs_in_progress(vault: Vault) -> None:
    a = vault.new("a_writing", **TRAINING)
    b = vault.new("b_committing", **TRAINING)

    def progress() -> list[tuple[str, str, str | None]]:
        return [(p.specimen_id, p.kind, p.name) for p in vault.status().in_progress]

    with held("writing", a), held("sealing", b):
        assert progress() == [("a_writing", "writing", None), ("b_committing", "committing", None)]
        r = invoke("--vault", str(vault.root), "status")
        assert r.exit_code == 0, r.output
        assert "being written" in r.output and "being committed" in r.output
    # Status left no lock taken: both can be taken at once now.
    for wd in (a, b):
        with FileLock(wd / ".cas" / "write.lock", timeout=0):
            pass
    with logging_into(vault, "c_logging"):
        assert progress() == [("c_logging", "logging", "metrics")]
    assert progress() == [("c_logging", "unfinished_log", "metrics")]
    r = invoke("--vault", str(vault.root), "status")
    assert "vault commit c_logging --partial" in r.output


def test_a_vault_run_in_progress(vault: Vault) -> None:
    wd = vault.new("running", **TRAINING)
    (wd / "protocol.py").write_text("import signal\nprint('started', flush=True)\nsignal.pause()\n")
    proc = subprocess.Popen([sys.executable, "-m", "cas_vault", "--vault", str(vault.root),
                             "run", "running"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        assert [(p.specimen_id, p.kind) for p in vault.status().in_progress] == [
            ("running", "run")]
        r = invoke("--vault", str(vault.root), "status")
        assert "`vault run` in progress" in r.output
        with pytest.raises(LockTimeoutError, match="vault run"):
            vault.rm("running")
        assert wd.is_dir()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its protocol
        proc.wait(timeout=60)
    assert vault.status().in_progress == ()


# -- the catalog -----------------------------------------------------------------------------
def test_catalog_freshness(vault: Vault) -> None:
    assert vault.status().catalog.to_dict() == {"up_to_date": True, "reason": None}
    vault.new("one", **TRAINING)
    vault.commit("one")
    assert vault.status().catalog.up_to_date
    release_writer(vault.root)
    kept = vault.catalog_path.read_bytes()
    wal = vault.catalog_path.with_name(vault.catalog_path.name + ".wal")
    kept_wal = wal.read_bytes() if wal.exists() else None
    vault.new("two", **TRAINING)
    vault.commit("two")
    release_writer(vault.root)
    vault.catalog_path.write_bytes(kept)  # the catalog as it was before the second commit
    if kept_wal is None:
        wal.unlink(missing_ok=True)
    else:
        wal.write_bytes(kept_wal)
    catalog = vault.status().catalog
    assert not catalog.up_to_date and "commits were made" in (catalog.reason or "")
    r = invoke("--vault", str(vault.root), "status")
    assert r.exit_code == 0, r.output
    assert "Catalog: not up to date" in r.output and "vault index" in r.output
    vault.index()
    assert vault.status().catalog.up_to_date
    release_writer(vault.root)
    vault.catalog_path.unlink()
    wal.unlink(missing_ok=True)
    assert vault.status().catalog.reason == "the catalog has not been built yet"


# -- read-only, stable JSON, plain output ----------------------------------------------------
def test_status_writes_nothing(vault: Vault, fs_log) -> None:
    with_results(vault, "uncommitted")
    runs_specimen(vault, "sweep", 1)
    with logging_into(vault, "crashed"):
        pass  # leaves an unfinished log and its lock file
    empty = vault.new("no_private_files", **TRAINING)
    shutil.rmtree(empty / ".cas")  # no lock files at all: status must not create them
    release_writer(vault.root)
    for catalog in ("current", "missing"):
        if catalog == "missing":
            vault.catalog_path.unlink()
        before = tree_state(vault.root)
        with fs_log.recording():
            report = vault.status()
            r = invoke("--vault", str(vault.root), "status")
            j = invoke("--vault", str(vault.root), "status", "--json")
        assert r.exit_code == 0 and j.exit_code == 0, r.output + j.output
        assert report.uncommitted and report.unsealed_runs and report.in_progress
        assert tree_state(vault.root) == before
        writes = [e for e in fs_log.events if e.op not in ("lock", "unlock")]
        assert writes == [], fs_log.dump()
        assert not (empty / ".cas").exists()


def test_status_json_is_stable(vault: Vault) -> None:
    with_results(vault, "uncommitted")
    vault.note("uncommitted", "a note")
    runs_specimen(vault, "sweep", 1)
    with logging_into(vault, "crashed"):
        pass
    r = invoke("--vault", str(vault.root), "status", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out == vault.status().to_dict()
    assert set(out) == {"uncommitted", "unsealed_runs", "in_progress", "catalog"}
    assert set(out["catalog"]) == {"up_to_date", "reason"}
    u = next(u for u in out["uncommitted"] if u["specimen_id"] == "uncommitted")
    assert set(u) == {"specimen_id", "added", "added_files", "added_bytes", "scaffold", "problem"}
    assert all(set(a) == {"path", "files", "bytes"} for a in u["added"])
    assert u["scaffold"] == [{"path": "field_notes.md", "change": "modified"}]
    [s] = out["unsealed_runs"]
    assert set(s) == {"specimen_id", "runs", "problem"}
    assert [set(x) for x in s["runs"]] == [{"run_id", "sealed_as", "files", "bytes"}]
    assert out["in_progress"] == [
        {"specimen_id": "crashed", "kind": "unfinished_log", "name": "metrics"}]


def test_plain_status_is_short_and_names_the_next_command(vault: Vault) -> None:
    r = invoke("--vault", str(vault.root), "status")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == ["Nothing to commit: every specimen is sealed.",
                                     "Catalog: up to date."]
    with_results(vault, "results")
    runs_specimen(vault, "sweep", 2)
    r = invoke("--vault", str(vault.root), "status")
    assert r.exit_code == 0, r.output
    assert "vault commit ID" in r.output and "vault rm ID" in r.output
    assert "strata/acts.zarr/" in r.output and "sweep.run_20250101_120000" in r.output
    assert len(r.output.splitlines()) < 20


# -- vault rm --------------------------------------------------------------------------------
def test_rm_removes_an_uncommitted_specimen_and_gc_frees_what_it_staged(vault: Vault) -> None:
    vault.new("kept", **TRAINING)
    vault.commit("kept")
    baseline = object_count(vault)
    journal = vault.refs.journal.read_bytes()
    wd = with_results(vault, "discard")
    assert object_count(vault) > baseline  # manifest, small results and tensor chunks staged
    r = invoke("--vault", str(vault.root), "rm", "discard", "--yes")
    assert r.exit_code == 0, r.output
    assert "Removed discard" in r.output
    assert not wd.exists() and os.listdir(vault.specimens_dir) == ["kept"]
    assert vault.refs.journal.read_bytes() == journal
    assert vault.status().uncommitted == ()
    r = invoke("--vault", str(vault.root), "gc", "--grace", "0")
    assert r.exit_code == 0, r.output
    assert object_count(vault) == baseline
    assert vault.verify().ok


def test_rm_makes_the_rename_durable_before_deleting_anything(vault: Vault, fs_log) -> None:
    with_results(vault, "discard")
    with fs_log.recording():
        vault.rm("discard")
    rename = fs_log.first("rename", "specimens/discard", "specimens/.discard.*.tmp")
    synced = fs_log.first("fsync", "specimens")
    deleted = min(fs_log.where("unlink") + fs_log.where("rmdir"))
    assert rename < synced < deleted, fs_log.dump()
    assert all(e.path.startswith("specimens/.discard.") for e in fs_log.events
               if e.op in ("unlink", "rmdir"))


def test_rm_refuses_a_committed_specimen(vault: Vault) -> None:
    wd = vault.new("sealed", **TRAINING)
    vault.commit("sealed")
    with pytest.raises(ImmutableError, match=r"vault retire sealed --reason TEXT"):
        vault.rm("sealed")
    r = invoke("--vault", str(vault.root), "rm", "sealed", "--yes")
    assert r.exit_code == 2 and "vault retire sealed --reason TEXT" in r.output
    assert wd.is_dir() and vault.resolve("sealed")


def test_rm_refuses_an_unknown_specimen(vault: Vault) -> None:
    with pytest.raises(NotFoundError):
        vault.rm("nothing_here")
    r = invoke("--vault", str(vault.root), "rm", "nothing_here", "--yes")
    assert r.exit_code == 2 and "no specimen nothing_here" in r.output
    r = invoke("--vault", str(vault.root), "rm", "../escape", "--yes")
    assert r.exit_code == 2


@pytest.mark.parametrize("holder", ["writing", "sealing", "run", "logging"])
def test_rm_refuses_while_a_lock_is_held(vault: Vault, holder: str) -> None:
    sid = "busy"
    if holder == "logging":
        busy = logging_into(vault, sid)
    else:
        wd = with_results(vault, sid)
        busy = (held("file", wd / ".cas" / "run.lock") if holder == "run"
                else held(holder, wd))
    with busy:
        wd = vault.specimen_dir(sid)
        before = tree_state(wd)
        with pytest.raises(LockTimeoutError):
            vault.rm(sid)
        r = invoke("--vault", str(vault.root), "rm", sid, "--yes")
        assert r.exit_code == 2 and r.output.startswith("error: specimen busy is being"), r.output
        assert tree_state(wd) == before
    vault.rm(sid)  # once the holder is gone
    assert not wd.exists()


def test_rm_without_yes_off_a_terminal_refuses_and_removes_nothing(vault: Vault) -> None:
    wd = with_results(vault, "keep_me")
    before = tree_state(vault.root)
    r = invoke("--vault", str(vault.root), "rm", "keep_me")
    assert r.exit_code == 2, r.output
    assert "--yes" in r.output and "not a terminal" in r.output
    assert tree_state(vault.root) == before and wd.is_dir()


def test_rm_asks_on_a_terminal(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    from cas_vault.cli import workdirs

    wd = with_results(vault, "ask_me")
    monkeypatch.setattr(workdirs, "_interactive", lambda: True)
    r = invoke("--vault", str(vault.root), "rm", "ask_me", input="n\n")
    assert r.exit_code == 0, r.output
    assert "Remove uncommitted specimen ask_me" in r.output and "Nothing removed" in r.output
    assert wd.is_dir()
    r = invoke("--vault", str(vault.root), "rm", "ask_me", input="y\n")
    assert r.exit_code == 0, r.output
    assert not wd.exists()


CRASH_AFTER_RENAME = """
import os, sys
from cas_vault import Vault, remove

remove._delete = lambda aside: os._exit(0)  # the process dies between rename and delete
remove.remove_specimen(Vault.open(sys.argv[1]), sys.argv[2])
"""


def test_a_crash_between_rename_and_delete_leaves_garbage_for_gc(vault: Vault) -> None:
    baseline = object_count(vault)
    wd = with_results(vault, "crashing")
    subprocess.run([sys.executable, "-c", CRASH_AFTER_RENAME, str(vault.root), "crashing"],
                   check=True, timeout=120)
    [leftover] = [p for p in vault.specimens_dir.iterdir()]
    assert leftover.name.startswith(".crashing.") and leftover.name.endswith(".tmp")
    assert not wd.exists()
    assert vault.status().uncommitted == ()  # never a half-deleted specimen under its name
    report = vault.gc(grace=0)
    assert report.removed_temp == 1
    assert list(vault.specimens_dir.iterdir()) == []
    # The leftover's working index kept its objects live while it existed; now nothing does.
    vault.gc(grace=0)
    assert object_count(vault) == baseline
