"""Benchmark: committing a large float32 tensor, side by side with the bare disk and peers.

Measures, in one run on the same array (2-D, random normal, float32, 4 MiB chunks):

1. bare disk: the same bytes written as 4 MiB files by a few threads, one fsync each
   (no hashing, no format): the limit; also fsynced in rounds of 64 MiB as cas-vault does
   (zarrstore.SYNC_BATCH_BYTES), and written to the page cache only (not durable);
2. cas-vault commit: ``write_tensors(..., compressor=None)`` + ``Vault.commit``, and the ratio
   to the bare disk (target: within 2x);
3. an identical second copy in a new specimen: ``write_tensors`` + ``Vault.commit`` timed
   together, bytes added to ``objects/`` (target < 1 MiB) and throughput (target >= 2 GiB/s),
   next to BLAKE3 alone over the same bytes (the floor: every chunk is still hashed);
4. one-row read latency from the committed tensor (target < 20 ms), and ``Vault.show`` time;
5. peers, when available: an Icechunk commit of the same array (``import icechunk``) and
   ``dvc add`` of it saved as .npy (a ``dvc`` executable on PATH or $DVC); skipped otherwise.

Each write phase also reports the system CPU time it used. On a VM that hands freed memory
back to its host (virtio-balloon free page reporting), filling the page cache with 1 GiB costs
1.5-2 s of system time unless pages freed a moment ago (by the previous phase's cleanup) are
at hand, so a phase's figure depends on how long ago the previous one freed its files; a
system time well above the wall time marks such a phase. ``--settle 5`` waits before every
write phase, so that all of them start in that same state.

Run::

    /tmp/venv2/bin/python benchmarks/bench_tensors.py            # 1 GiB
    /tmp/venv2/bin/python benchmarks/bench_tensors.py --quick    # 256 MiB, fewer repeats
    /tmp/venv2/bin/python benchmarks/bench_tensors.py --size-gib 2 --dir /mnt/ssd/tmp
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cas_vault.atomic import fsync_dir, fsync_path

GIB = 1 << 30
CHUNK_BYTES = 4 << 20
COLS = 1024  # one 4 MiB chunk = 1024 rows x 1024 float32
#: Files fsynced per round by the "rounds" bare-disk baseline: cas-vault's round size.
ROUND_FILES = (64 << 20) // CHUNK_BYTES


def sys_seconds() -> float:
    """System CPU time used so far by this process and its waited-for children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_stime + kids.ru_stime


def settle(seconds: float) -> None:
    """Wait before a timed write phase (``--settle``), so every phase starts alike."""
    if seconds > 0:
        time.sleep(seconds)


def bare_disk(a: np.ndarray, where: Path, threads: int, fsync: str = "each") -> float:
    """Write ``a`` as 4 MiB files with ``threads`` writers; return seconds.

    Args:
        a: the array.
        where: a new directory for the files.
        threads: concurrent writers.
        fsync: ``"each"`` (fsync each file as it is written), ``"rounds"`` (fsync
            :data:`ROUND_FILES` files at a time side by side, as cas-vault does) or ``"none"``
            (the bytes only reach the page cache: not durable, but it shows what a writer
            that never fsyncs, e.g. Icechunk on a local filesystem, can reach).
    """
    where.mkdir()
    mv = memoryview(a.reshape(-1)).cast("B")
    n = -(-len(mv) // CHUNK_BYTES)
    lock = threading.Lock()
    unsynced: list[Path] = []
    syncer = ThreadPoolExecutor(threads)

    def put(i: int) -> None:
        path = where / f"{i:08d}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = mv[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]
            while view:
                view = view[os.write(fd, view):]
            if fsync == "each":
                os.fsync(fd)
        finally:
            os.close(fd)
        if fsync == "rounds":
            with lock:
                unsynced.append(path)
                batch = unsynced[:] if len(unsynced) >= ROUND_FILES else []
                if batch:
                    unsynced.clear()
            list(syncer.map(fsync_path, batch))

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(put, range(n)))
    list(syncer.map(fsync_path, unsynced))
    syncer.shutdown()
    if fsync != "none":
        fsync_dir(where)
    return time.perf_counter() - t


def hash_floor(a: np.ndarray, repeats: int = 3) -> float:
    """Seconds BLAKE3 alone needs for ``a`` in 4 MiB chunks on every core (best of ``repeats``).

    Chunks are hashed side by side, one thread each (blake3 releases the GIL), as cas-vault's
    writer threads do: the least any write of these bytes can take, even an identical copy.
    """
    import blake3

    mv = memoryview(a.reshape(-1)).cast("B")
    n = -(-len(mv) // CHUNK_BYTES)
    best = float("inf")
    with ThreadPoolExecutor(os.cpu_count() or 1) as ex:
        for _ in range(repeats):
            t = time.perf_counter()
            list(ex.map(lambda i: blake3.blake3(mv[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]).digest(),
                        range(n)))
            best = min(best, time.perf_counter() - t)
    return best


def tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def cas_vault_runs(a: np.ndarray, where: Path, repeats: int, wait: float = 0.0) -> dict[str, float]:
    from cas_vault import SpecimenStorage, Vault

    v = Vault.init(where)
    out: dict[str, float] = {}
    # Warm-up outside the timings: imports (zarr, DuckDB for the catalog) are paid once per
    # process, not per commit.
    warm = v.new("warmup", domain="training", method="fine_tuning")
    SpecimenStorage(warm).write_tensors("w", a[:2], progress=False)
    v.commit("warmup")

    def write_and_commit(sid: str) -> tuple[float, float, float]:
        path = v.new(sid, domain="training", method="fine_tuning")
        settle(wait)
        s0 = sys_seconds()
        t = time.perf_counter()
        SpecimenStorage(path).write_tensors("x", a, chunk_bytes=CHUNK_BYTES, compressor=None,
                                            progress=False)
        t_write = time.perf_counter() - t
        v.commit(sid, message="bench")
        return time.perf_counter() - t, t_write, sys_seconds() - s0

    out["commit_s"], out["write_s"], out["commit_sys_s"] = write_and_commit("first")
    before = tree_bytes(where / "objects")
    out["copy_s"], out["copy_write_s"], out["copy_sys_s"] = write_and_commit("copy")
    out["copy_added_bytes"] = tree_bytes(where / "objects") - before

    t = time.perf_counter()
    info = v.show("copy")
    out["show_s"] = time.perf_counter() - t
    out["copy_unique_bytes"] = info.unique_bytes

    rng = np.random.default_rng(1)
    rows = rng.integers(0, a.shape[0], size=repeats)
    lat, open_lat = [], []
    for r in rows:
        t = time.perf_counter()
        z = Vault.open(where).specimen("first").tensor("x")
        t1 = time.perf_counter()
        row = z[int(r)]
        lat.append(time.perf_counter() - t1)
        open_lat.append(t1 - t)
        assert np.array_equal(row, a[int(r)])
    out["row_read_ms"] = statistics.median(lat) * 1e3
    out["row_read_max_ms"] = max(lat) * 1e3
    out["open_ms"] = statistics.median(open_lat) * 1e3
    return out


def icechunk_commit(a: np.ndarray, where: Path, wait: float = 0.0) -> float | None:
    try:
        import icechunk
    except ImportError:
        return None
    import zarr

    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(where)))
    warm = repo.writable_session("main")  # warm-up, as for cas-vault
    zarr.create_array(store=warm.store, name="w", shape=(2, COLS), dtype=a.dtype)[...] = a[:2]
    warm.commit("warm-up")
    settle(wait)
    t = time.perf_counter()
    session = repo.writable_session("main")
    z = zarr.create_array(store=session.store, name="x", shape=a.shape, dtype=a.dtype,
                          chunks=(CHUNK_BYTES // (4 * COLS), COLS), compressors=None)
    z[...] = a
    session.commit("bench")
    return time.perf_counter() - t


def dvc_add(a: np.ndarray, where: Path, wait: float = 0.0) -> tuple[float, float] | None:
    exe = os.environ.get("DVC") or shutil.which("dvc")
    if not exe:
        return None
    where.mkdir()
    subprocess.run([exe, "init", "--no-scm", "-q"], cwd=where, check=True)
    settle(wait)
    t = time.perf_counter()
    with open(where / "x.npy", "wb") as f:
        np.save(f, a)
        f.flush()
        os.fsync(f.fileno())
    t_save = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([exe, "add", "-q", "x.npy"], cwd=where, check=True)
    return time.perf_counter() - t, t_save


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=None, help="tensor size (default 1, quick 0.25)")
    ap.add_argument("--quick", action="store_true", help="256 MiB, one round, fewer reads")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds of every measurement; medians are reported (default 3)")
    ap.add_argument("--threads", type=int, default=4, help="writer threads of the bare-disk baseline")
    ap.add_argument("--dir", default=None, help="scratch directory (default: system temp dir)")
    ap.add_argument("--no-peers", action="store_true", help="skip Icechunk and dvc")
    ap.add_argument("--settle", type=float, default=0.0, metavar="S",
                    help="wait S seconds before every timed write phase (default 0)")
    args = ap.parse_args()
    size = args.size_gib if args.size_gib is not None else (0.25 if args.quick else 1.0)
    rounds = args.rounds or (1 if args.quick else 3)
    reads = 5 if args.quick else 20

    rows = max(1, int(size * GIB) // (4 * COLS))
    a = np.random.default_rng(0).standard_normal((rows, COLS), dtype=np.float32)
    gib = a.nbytes / GIB
    print(f"tensor: float32 {a.shape} = {gib:.3f} GiB, 4 MiB chunks, compressor=None; "
          f"{rounds} interleaved round(s), medians")

    floor = hash_floor(a)
    scratch = Path(tempfile.mkdtemp(prefix="bench_tensors_", dir=args.dir))
    base, base8, rounds8, cache, cas, ice, dvc = [], [], [], [], [], [], []
    sys_s: dict[str, list[float]] = {}

    def phase(name: str, fn, *fn_args, **fn_kwargs):  # type: ignore[no-untyped-def]
        s0 = sys_seconds()
        result = fn(*fn_args, **fn_kwargs)
        sys_s.setdefault(name, []).append(sys_seconds() - s0)
        return result

    try:
        for r in range(rounds):
            settle(args.settle)
            base.append(phase("bare", bare_disk, a, scratch / f"bare{r}", args.threads))
            shutil.rmtree(scratch / f"bare{r}")
            settle(args.settle)
            base8.append(phase("bare8", bare_disk, a, scratch / f"bare8_{r}", 8))
            shutil.rmtree(scratch / f"bare8_{r}")
            settle(args.settle)
            rounds8.append(phase("rounds8", bare_disk, a, scratch / f"rounds8_{r}", 8, "rounds"))
            shutil.rmtree(scratch / f"rounds8_{r}")
            settle(args.settle)
            cache.append(phase("cache", bare_disk, a, scratch / f"cache{r}", args.threads, "none"))
            shutil.rmtree(scratch / f"cache{r}")
            cas.append(cas_vault_runs(a, scratch / f"vault{r}", reads, args.settle))
            shutil.rmtree(scratch / f"vault{r}", ignore_errors=True)
            if not args.no_peers:
                ice.append(phase("ice", icechunk_commit, a, scratch / f"icechunk{r}", args.settle))
                shutil.rmtree(scratch / f"icechunk{r}", ignore_errors=True)
                dvc.append(phase("dvc", dvc_add, a, scratch / f"dvc{r}", args.settle))
                shutil.rmtree(scratch / f"dvc{r}", ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    med = statistics.median
    b, b8 = med(base), med(base8)
    c = {k: med(run[k] for run in cas) for k in cas[0]}
    c["row_read_max_ms"] = max(run["row_read_max_ms"] for run in cas)
    c["copy_added_bytes"] = max(run["copy_added_bytes"] for run in cas)
    commit_rounds = [run["commit_s"] for run in cas]
    sys_s["cas"] = [run["commit_sys_s"] for run in cas]
    sys_s["copy"] = [run["copy_sys_s"] for run in cas]

    def sys_note(name: str) -> str:
        return f"[sys CPU {med(sys_s[name]):.2f} s]" if sys_s.get(name) else ""

    def listed(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in xs)

    print(f"BLAKE3 alone ({os.cpu_count()} threads, 4 MiB chunks):     {floor:7.3f} s  "
          f"({gib / floor:.2f} GiB/s): the floor of any write of these bytes, even a copy")
    print(f"bare disk ({args.threads} threads, 4 MiB files, fsync each): {b:7.3f} s  "
          f"({gib / b:.2f} GiB/s)   rounds: {listed(base)}  {sys_note('bare')}")
    print(f"bare disk (8 threads, as many as cas-vault):  {b8:7.3f} s  ({gib / b8:.2f} GiB/s)"
          f"   rounds: {listed(base8)}  {sys_note('bare8')}")
    print(f"bare disk (8 threads, fsync in 64 MiB rounds as cas-vault): {med(rounds8):7.3f} s  "
          f"({gib / med(rounds8):.2f} GiB/s)   rounds: {listed(rounds8)}  {sys_note('rounds8')}")
    print(f"page cache only (no fsync, not durable):     {med(cache):7.3f} s  "
          f"({gib / med(cache):.2f} GiB/s)  {sys_note('cache')}")
    # Ratios are medians of per-round ratios: a shared disk drifts between rounds.
    paired = med(x / y for x, y in zip(commit_rounds, base))
    paired_rounds = med(x / y for x, y in zip(commit_rounds, rounds8))
    print(f"cas-vault write_tensors + commit:            {c['commit_s']:7.3f} s  "
          f"({gib / c['commit_s']:.2f} GiB/s)  = {paired:.2f}x bare   [target <= 2x]"
          f"   (= {paired_rounds:.2f}x bare in rounds; write {c['write_s']:.3f} s, commit "
          f"{c['commit_s'] - c['write_s']:.3f} s; rounds: {listed(commit_rounds)})  "
          f"{sys_note('cas')}")
    ice_t = [x for x in ice if x is not None]
    if ice_t:
        i = med(ice_t)
        faster = med(x / y for x, y in zip(ice_t, commit_rounds))
        print(f"icechunk commit:                             {i:7.3f} s  "
              f"= {med(x / y for x, y in zip(ice_t, base)):.2f}x bare;"
              f"  cas-vault is {faster:.2f}x faster   [target >= 2x]   rounds: {listed(ice_t)}"
              f"  {sys_note('ice')}")
    else:
        print("icechunk commit:                             skipped (icechunk not importable)")
    dvc_t = [x for x in dvc if x is not None]
    if dvc_t:
        d = med(x[0] for x in dvc_t)
        faster = med(x[0] / y for x, y in zip(dvc_t, commit_rounds))
        print(f"dvc add (of an .npy saved in {med(x[1] for x in dvc_t):.2f} s):     {d:7.3f} s  = "
              f"{med(x[0] / y for x, y in zip(dvc_t, base)):.2f}x bare;  cas-vault is "
              f"{faster:.2f}x faster   [target >= 3x]  {sys_note('dvc')}")
    else:
        print("dvc add:                                     skipped (no dvc on PATH or $DVC)")
    copy_rounds = [run["copy_s"] for run in cas]
    print(f"identical copy write + commit:               {c['copy_s']:7.3f} s  "
          f"({gib / c['copy_s']:.2f} GiB/s)   [target >= 2 GiB/s]"
          f"   (write {c['copy_write_s']:.3f} s, commit {c['copy_s'] - c['copy_write_s']:.3f} s;"
          f" rounds: {listed(copy_rounds)}; {floor / c['copy_s']:.0%} of BLAKE3 alone's speed)"
          f"  {sys_note('copy')}")
    print(f"identical copy adds to objects/:             {c['copy_added_bytes']:,.0f} bytes   "
          f"[target < 1 MiB];  vault show: {c['copy_unique_bytes']:,.0f} new unique bytes, "
          f"{c['show_s'] * 1e3:.1f} ms")
    print(f"one-row read of the committed tensor:        {c['row_read_ms']:7.2f} ms median, "
          f"{c['row_read_max_ms']:.2f} ms max   [target < 20 ms]"
          f"   (+ {c['open_ms']:.2f} ms to open vault + specimen + array)")


if __name__ == "__main__":
    main()
