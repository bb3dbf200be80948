"""Crash safety: a committer killed with SIGKILL at random moments never damages the vault.

A real subprocess commits specimens (metrics, config and a Zarr tensor, through the public API)
in a loop; the test kills it with SIGKILL at a random moment after it is ready, dozens of times,
restarting it each time. Afterwards every ref must point to a complete commit whose objects are
intact, ``verify`` must find nothing but garbage (unreferenced objects, temp files, uncommitted
working directories), and ``gc`` must remove that garbage.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pytest

from cas_vault import Vault

KILLS = 30

COMMITTER = r'''
import sys
import numpy as np
import polars, zarr  # imported before "ready" so kills land in the commit loop, not in imports
from cas_vault import SpecimenStorage, Vault

vault = Vault.open(sys.argv[1])
run = int(sys.argv[2])
print("ready", flush=True)
i = 0
while True:
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
'''


@pytest.mark.slow
def test_sigkill_at_random_moments_never_damages_the_vault(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "vault")
    script = tmp_path / "committer.py"
    script.write_text(COMMITTER)
    rnd = random.Random(5)
    committed: set[str] = set()
    started = time.monotonic()
    for run in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(vault.root), str(run)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", (line, proc.stderr.read() if proc.stderr else "")
        time.sleep(rnd.uniform(0.0, 0.35))
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err
        committed.update(x.split()[1] for x in out.splitlines() if x.startswith("committed "))
    assert time.monotonic() - started < 120

    # Every ref points to a complete commit whose objects hash to their names (checked with
    # blake3 directly, not through the store).
    refs = vault.refs.all()
    assert committed <= set(refs), "a commit reported as done lost its ref"
    assert len(refs) >= 5
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
