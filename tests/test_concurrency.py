"""Concurrency: several processes committing at once, with gc and verify running beside them.

Four real processes commit 50 specimens each at the same time (some with tensors, many sharing
identical objects), while a fifth runs ``gc --grace 0`` in a loop and a sixth runs ``verify`` in a
loop. Afterwards all 200 specimens are present and intact, the journal holds 200 chained lines,
gc never removed an object a commit needed, and no verify run saw a problem.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from cas_vault import Vault

WRITERS = 4
PER_WRITER = 50

COMMITTER = r'''
import sys
import numpy as np
from cas_vault import SpecimenStorage, Vault

vault = Vault.open(sys.argv[1])
w = int(sys.argv[2])
n = int(sys.argv[3])
for i in range(n):
    sid = f"w{w}_{i:03d}"
    s = SpecimenStorage(vault.new(sid, domain="training", method="fine_tuning"))
    # Identical across writers: the same objects are put by several processes at once.
    s.write_config({"i": i % 10})
    s.write_metrics({"step": np.arange(10), "loss": np.full(10, float(w * 1000 + i))})
    if i % 5 == 0:
        s.write_tensors("acts", np.full((4, 4), i % 3, dtype=np.int32))
    vault.commit(sid, message=f"writer {w} item {i}")
print("done", flush=True)
'''

LOOPER = r'''
import json, sys, time
from pathlib import Path
from cas_vault import Vault

vault = Vault.open(sys.argv[1])
mode = sys.argv[2]
stop = Path(sys.argv[3])
runs, bad, removed = 0, [], 0
while True:
    last = stop.exists()  # one more run after the writers finished
    if runs == 0:
        print("ready", flush=True)  # writers start after this: the first run is not the last
    if mode == "gc":
        removed += vault.gc(grace=0).removed_objects
    else:
        report = vault.verify(quick=runs % 2 == 1)  # full and quick in turn
        bad += [p.message for p in report.problems]
    runs += 1
    if last:
        break
    time.sleep(0.2)
print(json.dumps({"runs": runs, "bad": bad, "removed": removed}), flush=True)
'''


@pytest.mark.slow
def test_four_writers_with_gc_and_verify_running(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "vault")
    committer, looper = tmp_path / "committer.py", tmp_path / "looper.py"
    committer.write_text(COMMITTER)
    looper.write_text(LOOPER)
    stop = tmp_path / "stop"
    loops = {
        mode: subprocess.Popen([sys.executable, str(looper), str(vault.root), mode, str(stop)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for mode in ("gc", "verify")
    }
    for p in loops.values():
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    writers = [
        subprocess.Popen([sys.executable, str(committer), str(vault.root), str(w), str(PER_WRITER)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in range(WRITERS)
    ]
    try:
        for p in writers:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0 and out.strip() == "done", err
    finally:
        stop.touch()
    results = {}
    for mode, p in loops.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results[mode] = json.loads(out)
    assert results["gc"]["runs"] >= 2 and results["verify"]["runs"] >= 2
    assert results["verify"]["bad"] == [], results["verify"]["bad"][:5]

    refs = vault.refs.all()
    expected = {f"w{w}_{i:03d}" for w in range(WRITERS) for i in range(PER_WRITER)}
    assert set(refs) == expected
    entries = list(vault.refs.entries())
    assert [e.seq for e in entries] == list(range(WRITERS * PER_WRITER))
    assert {e.specimen_id: e.commit for e in entries} == refs
    for sid in refs:
        commit = vault.get(sid)
        for entry in commit.tree.values():
            data = vault.objects.path(entry.digest).read_bytes()
            assert blake3.blake3(data).hexdigest() == entry.digest, sid
        w, i = int(sid[1]), int(sid[3:])
        assert vault.specimen(sid).read_config() == {"i": i % 10}
        assert vault.specimen(sid).read_metrics()["loss"][0] == float(w * 1000 + i)
        assert any(p.startswith("strata/acts.zarr/") for p in commit.tree) == (i % 5 == 0)
    report = vault.verify()
    assert report.ok, [p.message for p in report.problems]
    assert len(report.specimens) == WRITERS * PER_WRITER
    # Commits racing for the catalog may leave it behind (derived data): `vault index` catches up.
    assert {i.kind for i in report.info} <= {"temp_file", "catalog_behind"}, report.info
    vault.index()
    assert "catalog_behind" not in {i.kind for i in vault.verify().info}


def test_gc_waits_for_a_commit_holding_the_lock(tmp_path: Path) -> None:
    # A writer holding gc.lock shared (as commit does while it creates objects) blocks gc, and
    # gc times out rather than pruning under it.
    from cas_vault.atomic import FileLock
    from cas_vault.errors import LockTimeoutError
    from cas_vault.gc import gc

    vault = Vault.init(tmp_path / "vault")
    d = vault.objects.put_bytes(b"just written, not referenced yet")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from cas_vault.atomic import FileLock\n"
         "with FileLock(Path(sys.argv[1]), shared=True):\n"
         "    print('held', flush=True); sys.stdin.read()\n", str(vault.gc_lock_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeoutError):
            gc(vault, grace=0, lock_timeout=0.3)
        assert vault.objects.has(d)
        with FileLock(vault.gc_lock_path, shared=True, timeout=1):
            pass  # shared holders do not exclude each other
    finally:
        holder.kill()
        holder.wait()
    assert gc(vault, grace=0).removed_objects == 1
