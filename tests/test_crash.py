"""Crash safety: a committer killed with SIGKILL at random moments never damages the vault.

A real subprocess commits specimens (metrics, config and a Zarr tensor, through the public API)
in a loop and is killed with SIGKILL at a random point of its own sequence of file-system calls
(open, write, fsync, link, rename, unlink, mkdir: the events that make up a commit), dozens of
times, restarting it each time. The kill points are chosen by event count, not by wall-clock
time, so where the kills land does not depend on the machine's speed or load. Afterwards every ref must point to a complete commit whose objects are
intact, ``verify`` must find nothing but garbage (unreferenced objects, temp files, uncommitted
working directories), and ``gc`` must remove that garbage.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from cas_vault import Vault

KILLS = 30

#: Commits a traced run makes before it stops by itself (the kill points are drawn below this).
TRACE_COMMITS = 3

COMMITTER = r'''
import os, signal, sys, threading
import numpy as np
import polars, zarr  # imported before counting so events are the commit loop's own
from cas_vault import SpecimenStorage, Vault

vault = Vault.open(sys.argv[1])
run = int(sys.argv[2])
kill_at = int(sys.argv[3])  # 0: count events, make TRACE_COMMITS commits and exit
stop_after = int(sys.argv[4])
events = 0
lock = threading.Lock()

def traced(fn):
    def call(*args, **kwargs):
        global events
        with lock:  # the fsync pool calls these from several threads
            events += 1
            n = events
        if n == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return call

for name in ("open", "write", "fsync", "link", "rename", "replace", "unlink", "mkdir"):
    setattr(os, name, traced(getattr(os, name)))

i = 0
while kill_at or i < stop_after:
    sid = f"run{run:03d}_{i:04d}"
    path = vault.new(sid, domain="training", method="fine_tuning")
    s = SpecimenStorage(path)
    rng = np.random.default_rng(run * 1000 + i)
    s.write_metrics({"step": np.arange(50), "loss": rng.random(50)})
    s.write_config({"run": run, "i": i})
    # Two chunks per tensor, one shared by every specimen (dedup paths are exercised too).
    t = np.concatenate([np.ones((8, 16), np.float32), rng.standard_normal((8, 16), np.float32)])
    s.write_tensors("acts", t, chunks=(8, 16))
    vault.commit(sid, message=f"run {run} item {i}")
    print(f"committed {sid}", flush=True)
    i += 1
print(f"events {events}", flush=True)
'''


def _committer(script: Path, vault: Vault, run: int, kill_at: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), str(vault.root), str(run), str(kill_at), str(TRACE_COMMITS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
def test_sigkill_at_random_moments_never_damages_the_vault(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "vault")
    script = tmp_path / "committer.py"
    script.write_text(COMMITTER)
    rnd = random.Random(5)
    committed: set[str] = set()

    # One run to completion counts the events of TRACE_COMMITS commits (its commits stay).
    out, err = _committer(script, vault, run=999, kill_at=0).communicate()
    lines = out.splitlines()
    assert lines and lines[-1].startswith("events "), err
    traced_events = int(lines[-1].split()[1])
    committed.update(x.split()[1] for x in lines if x.startswith("committed "))
    assert len(committed) == TRACE_COMMITS and traced_events > 10 * TRACE_COMMITS

    deaths_before_first_commit = 0
    for run in range(KILLS):
        kill_at = rnd.randint(1, traced_events)
        proc = _committer(script, vault, run, kill_at)
        out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err
        done = [x.split()[1] for x in out.splitlines() if x.startswith("committed ")]
        deaths_before_first_commit += not done
        committed.update(done)
    # Kill points spread over TRACE_COMMITS commits: most runs commit something first, some die
    # in their first one (the seeded draw makes both certain, whatever the machine's speed).
    assert 0 < deaths_before_first_commit < KILLS

    # Every ref points to a complete commit whose objects hash to their names (checked with
    # blake3 directly, not through the store).
    refs = vault.refs.all()
    assert committed <= set(refs), "a commit reported as done lost its ref"
    assert len(refs) >= TRACE_COMMITS + KILLS // 3
    for sid, digest in refs.items():
        commit_bytes = vault.objects.path(digest).read_bytes()
        assert blake3.blake3(commit_bytes).hexdigest() == digest
        commit = vault.get(sid)
        for rel, entry in commit.tree.items():
            data = vault.objects.path(entry.digest).read_bytes()
            assert len(data) == entry.size
            assert blake3.blake3(data).hexdigest() == entry.digest, (sid, rel)
        assert vault.specimen(sid).read_metrics().height == 50

    report = vault.verify()
    assert report.ok, [p.message for p in report.problems]
    # A kill between a ref and its catalog update leaves the catalog behind: derived data.
    assert {i.kind for i in report.info} <= {
        "unreferenced_objects", "temp_file", "uncommitted_workdir", "recovered_journal_entry",
        "catalog_behind"}
    assert len(report.specimens) == len(refs)
    # The kills did land inside specimens (not only between them).
    assert sum(i.kind == "uncommitted_workdir" for i in report.info) >= KILLS // 3

    # gc removes the garbage (nothing is writing any more, so no age is needed) and nothing else.
    gc = vault.gc(grace=0, temp_age=0)
    after = vault.verify()
    assert after.ok, [p.message for p in after.problems]
    leftover = {"unreferenced_objects", "temp_file"} & {i.kind for i in after.info}
    assert not leftover, (gc, after.info)
    assert after.specimens == report.specimens
    assert gc.kept_temp == 0
    assert not any(p.name.endswith(".tmp") for p in vault.root.rglob("*")), "temp files left"
