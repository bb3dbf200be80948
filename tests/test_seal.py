"""The seal holds: nothing done through a working directory changes or hides sealed bytes.

Every test here is an ordinary action of a user or a tool (run as root, as CI is, so file modes
stop nothing): appending to a committed log, overwriting a result in place, editing a `cp -al`
copy, a process that opened a file before the commit and writes after it, a writer racing the
commit. Real subprocesses play the late and concurrent writers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import blake3
import numpy as np
import polars as pl
import pytest

from cas_vault import SpecimenStorage, Vault
from cas_vault.errors import FileChangedError, ImmutableError, LockTimeoutError


def sealed_bytes(v: Vault) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in (v.root / "objects").rglob("*") if p.is_file()}


def assert_all_objects_hash_to_their_names(v: Vault) -> None:
    for p in (v.root / "objects").rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            assert blake3.blake3(p.read_bytes()).hexdigest() == p.name, p


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def specimen_with_log(v: Vault, sid: str) -> Path:
    wd = v.new(sid, domain="training", method="fine_tuning")
    SpecimenStorage(wd).write_metrics({"step": [0, 1], "loss": [1.0, 0.5]})
    (wd / "strata" / "t.log").write_text("step 0\nstep 1\n")
    np.save(wd / "strata" / "w.npy", np.arange(10.0))
    return wd


def test_ordinary_writes_after_commit_never_reach_sealed_bytes(vault: Vault, tmp_path: Path) -> None:
    # Two specimens with identical files share objects (dedup): damage to one would be
    # damage to both.
    a, b = specimen_with_log(vault, "a"), specimen_with_log(vault, "b")
    ca, cb = vault.commit("a"), vault.commit("b")
    assert ca.tree["strata/t.log"].digest == cb.tree["strata/t.log"].digest
    before = sealed_bytes(vault)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-al", str(a), str(copy)], check=True)

    with open(a / "strata" / "t.log", "a") as f:          # echo x >> t.log
        f.write("x\n")
    np.save(a / "strata" / "w.npy", np.zeros(10))            # np.save over the result, in place
    pl.DataFrame({"loss": ["poison"]}).write_parquet(a / "strata" / "metrics.parquet")
    with open(copy / "strata" / "t.log", "r+") as f:         # an edit of a `cp -al` copy
        f.write("EDITED")
    (b / "field_notes.md").unlink()

    assert sealed_bytes(vault) == before
    assert_all_objects_hash_to_their_names(vault)
    for sid in ("a", "b"):
        spec = vault.specimen(sid)
        assert spec.read_bytes("strata/t.log") == b"step 0\nstep 1\n"
        assert spec.read_metrics()["loss"].to_list() == [1.0, 0.5]
    report = vault.verify()
    assert report.ok, report.problems
    assert {i.kind for i in report.info} >= {"workdir_modified", "workdir_missing"}


def test_a_process_that_opened_a_file_before_the_commit_cannot_change_it_after(
    vault: Vault,
) -> None:
    wd = specimen_with_log(vault, "late")
    # A training job keeps its log open, and a second handle on a result, across the commit.
    writer = spawn("""
        import sys
        log = open(sys.argv[1], "a")
        res = open(sys.argv[2], "r+b")
        print("open", flush=True)
        sys.stdin.readline()
        log.write("written after the commit\\n"); log.flush()
        res.seek(0); res.write(b"\\0" * 64); res.flush()
        print("wrote", flush=True)
    """, str(wd / "strata" / "t.log"), str(wd / "strata" / "w.npy"))
    try:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "open"
        commit = vault.commit("late")
        before = sealed_bytes(vault)
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "wrote"
    finally:
        writer.communicate(timeout=60)
    assert (wd / "strata" / "t.log").read_text().endswith("written after the commit\n")
    assert sealed_bytes(vault) == before
    assert vault.specimen("late").read_bytes("strata/t.log") == b"step 0\nstep 1\n"
    np.testing.assert_array_equal(
        np.load(vault.objects.path(commit.tree["strata/w.npy"].digest)), np.arange(10.0))
    assert vault.verify().ok


def test_a_file_linked_in_from_outside_stays_the_users_own(vault: Vault, tmp_path: Path) -> None:
    outside = tmp_path / "my_data.csv"
    outside.write_text("a,b\n1,2\n")
    outside.chmod(0o640)
    wd = vault.new("linked", domain="training", method="fine_tuning")
    (wd / "strata").mkdir(exist_ok=True)
    os.link(outside, wd / "strata" / "data.csv")
    commit = vault.commit("linked")
    assert outside.stat().st_mode & 0o777 == 0o640  # not made read-only behind the user's back
    obj = vault.objects.path(commit.tree["strata/data.csv"].digest)
    assert obj.stat().st_ino != outside.stat().st_ino and obj.stat().st_nlink == 1
    outside.write_text("changed by its owner\n")
    assert vault.specimen("linked").read_bytes("strata/data.csv") == b"a,b\n1,2\n"
    assert vault.verify().ok


def test_commit_waits_for_a_writer_and_never_seals_half_a_tensor(vault: Vault) -> None:
    wd = vault.new("busy", domain="training", method="fine_tuning")
    writer = spawn("""
        import sys
        import numpy as np
        from cas_vault import SpecimenStorage
        s = SpecimenStorage(sys.argv[1])
        with s.tensor_writer("acts", "float32", (8,), chunks=(4, 8)) as w:
            w.append(np.ones((6, 8), np.float32))
            print("half", flush=True)
            sys.stdin.readline()
            w.append(np.full((6, 8), 2, np.float32))
        print("done", flush=True)
    """, str(wd))
    try:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "half", writer.stderr.read()
        with pytest.raises(LockTimeoutError, match="still being written"):
            vault.commit("busy", lock_timeout=0.5)
        assert vault.refs.get("busy") is None
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "done"
    finally:
        writer.communicate(timeout=60)
    vault.commit("busy")
    acts = vault.specimen("busy").tensor("acts")[...]
    np.testing.assert_array_equal(acts, np.concatenate([np.ones((6, 8)), np.full((6, 8), 2)]))
    # After the commit, the API refuses to write, under the same lock.
    with pytest.raises(ImmutableError):
        SpecimenStorage(wd).write_tensors("acts", np.zeros(3))


def test_a_file_changed_while_it_is_copied_is_refused_and_nothing_is_sealed(
    vault: Vault, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cas_vault.objects as objects_mod

    wd = specimen_with_log(vault, "racy")
    target = wd / "strata" / "t.log"
    os.utime(target, ns=(0, 0))  # so the append below moves the mtime on any clock
    appender = spawn("""
        import sys
        sys.stdin.readline()
        with open(sys.argv[1], "a") as f:
            f.write("appended during the copy\\n")
        print("appended", flush=True)
    """, str(target))
    real_read = objects_mod._read_all  # t.log is small: read whole, then checked
    raced: list[bool] = []

    def copy_while_a_process_appends(fd_in: int, expected: int):
        out = real_read(fd_in, expected)
        if os.fstat(fd_in).st_ino == target.stat().st_ino and not raced:
            assert appender.stdin is not None and appender.stdout is not None
            appender.stdin.write("go\n")
            appender.stdin.flush()
            raced.append(appender.stdout.readline().strip() == "appended")
        return out

    monkeypatch.setattr(objects_mod, "_read_all", copy_while_a_process_appends)
    try:
        with pytest.raises(FileChangedError, match="t.log changed while it was being committed"):
            vault.commit("racy")
    finally:
        appender.communicate(timeout=60)
    assert raced == [True]
    assert vault.refs.get("racy") is None
    assert not list((vault.root / "tmp").glob("*"))
    monkeypatch.undo()
    commit = vault.commit("racy")  # once the writer is done, the commit goes through
    assert vault.specimen("racy").read_bytes("strata/t.log").endswith(b"during the copy\n")
    assert commit.tree["strata/t.log"].size == target.stat().st_size


MUTATOR = r'''
import os, sys, time
from pathlib import Path
import numpy as np
from cas_vault import SpecimenStorage
from cas_vault.errors import ImmutableError, NotFoundError, LockTimeoutError

slot, current, stop = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
n = 0
log = None
wd = None
print("ready", flush=True)
while not stop.exists():
    try:
        path = Path(current.read_text())
    except (FileNotFoundError, ValueError):
        continue
    if path != wd:  # a new specimen: the old log handle stays open, a late writer
        wd, log = path, open(path / "strata" / "t.log", "a")
    n += 1
    try:
        log.write(f"{slot} {n}\n"); log.flush()                       # keeps appending
        tmp = wd / "strata" / f".x.{os.getpid()}.tmp"
        tmp.write_bytes(os.urandom(64)); os.replace(tmp, wd / "strata" / "x.bin")  # replaces
        np.save(wd / "strata" / "w.npy", np.full(16, n))                # overwrites in place
        if n % 5 == 0:
            SpecimenStorage(wd).write_metrics({"step": [n], "loss": [1.0 / n]})  # plays by the rules
    except (ImmutableError, NotFoundError, LockTimeoutError, FileNotFoundError):
        pass
print("stopped", n, flush=True)
'''


@pytest.mark.slow
def test_four_writers_keep_changing_specimens_while_200_commits_run(vault: Vault,
                                                                    tmp_path: Path) -> None:
    script = tmp_path / "mutator.py"
    script.write_text(MUTATOR)
    stop = tmp_path / "stop"
    slots = 4
    currents = [tmp_path / f"current{i}" for i in range(slots)]
    mutators = [subprocess.Popen([sys.executable, str(script), str(i), str(currents[i]), str(stop)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(slots)]
    refused = 0
    committed: dict[str, str] = {}
    try:
        for m in mutators:
            assert m.stdout is not None and m.stdout.readline().strip() == "ready"
        for k in range(200 // slots):
            for i in range(slots):
                sid = f"s{i}_{k:03d}"
                wd = specimen_with_log(vault, sid)
                tmp = currents[i].with_suffix(".tmp")
                tmp.write_text(str(wd))
                os.replace(tmp, currents[i])  # the mutator never reads half a path
                for _attempt in range(1000):
                    try:
                        committed[sid] = vault.commit(sid, message=f"slot {i}").digest
                        break
                    except FileChangedError:
                        refused += 1  # a writer changed a file mid-copy: nothing sealed, retry
                else:
                    pytest.fail(f"{sid} could not be committed in 1000 attempts")
    finally:
        stop.touch()
        outs = [m.communicate(timeout=120) for m in mutators]
    for m, (out, err) in zip(mutators, outs, strict=True):
        assert m.returncode == 0 and "stopped" in out, err
    assert len(committed) == 200 and vault.refs.all() == committed
    assert_all_objects_hash_to_their_names(vault)
    report = vault.verify()
    assert report.ok, [p.message for p in report.problems][:5]
    for sid in committed:
        sealed = vault.specimen(sid).read_bytes("strata/t.log")
        # Only ever appended to: what was sealed is a snapshot of the log at one moment.
        assert (vault.specimen_dir(sid) / "strata" / "t.log").read_bytes().startswith(sealed)
    print(json.dumps({"commits": len(committed), "refused_mid_copy": refused}))


def test_a_commit_waits_for_vault_run_and_seals_the_whole_log(vault: Vault, tmp_path: Path) -> None:
    wd = vault.new("ran", domain="training", method="fine_tuning")
    started, go = tmp_path / "started", tmp_path / "go"
    (wd / "protocol.py").write_text(textwrap.dedent(f"""
        import pathlib, time
        print("first half", flush=True)
        pathlib.Path({str(started)!r}).touch()
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.01)
        print("second half", flush=True)
    """))
    runner = subprocess.Popen([sys.executable, "-m", "cas_vault", "--vault", str(vault.root),
                               "run", "ran"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        while not started.exists():  # an event, not a duration: the protocol says it runs
            assert runner.poll() is None, runner.communicate()
            time.sleep(0.01)
        with pytest.raises(LockTimeoutError, match="still being written"):
            vault.commit("ran", lock_timeout=0.5)
        go.touch()
        out, err = runner.communicate(timeout=120)
    finally:
        go.touch()
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 0, err
    assert vault.specimen("ran").read_bytes("run.log") == b"first half\nsecond half\n"


def test_small_results_are_stored_when_written_and_sealed_from_that_record(
    vault: Vault, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A result written through SpecimenStorage becomes an object at once (its bytes are in
    # memory), so the commit neither reads nor copies it, as long as the file is unchanged.
    from cas_vault.objects import ObjectBatch

    wd = vault.new("w", domain="training", method="fine_tuning")
    s = SpecimenStorage(wd)
    s.write_metrics({"step": [0, 1], "loss": [1.0, 0.5]})
    s.write_config({"lr": 0.1})
    copied: list[str] = []
    real = ObjectBatch.add_file
    monkeypatch.setattr(ObjectBatch, "add_file",
                        lambda self, p: (copied.append(Path(p).name), real(self, p))[1])
    commit = vault.commit("w")
    assert "metrics.parquet" not in copied and "config.msgpack" not in copied
    for rel in ("strata/metrics.parquet", "strata/config.msgpack"):
        obj = vault.objects.path(commit.tree[rel].digest)
        assert obj.read_bytes() == (wd / rel).read_bytes()
        assert obj.stat().st_ino != (wd / rel).stat().st_ino and obj.stat().st_nlink == 1
    # Changed after the write (even to the same size): the record no longer applies.
    wd2 = vault.new("w2", domain="training", method="fine_tuning")
    s2 = SpecimenStorage(wd2)
    s2.write_config({"lr": 0.1})
    cfg = wd2 / "strata" / "config.msgpack"
    data = bytearray(cfg.read_bytes())
    data[-1] ^= 1
    cfg.write_bytes(bytes(data))
    copied.clear()
    commit = vault.commit("w2")
    assert "config.msgpack" in copied
    assert vault.objects.get(commit.tree["strata/config.msgpack"].digest) == bytes(data)
