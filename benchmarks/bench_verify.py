"""Benchmark: `vault verify` against one plain read-and-hash pass over the same files.

Target (issue 5): a full verify (re-hash every object, check sizes, refs, journal, working
directories) runs at no less than half the rate of one pass that reads and BLAKE3-hashes the same
files. Measured side by side in one run, on a vault built here (default: 16 specimens with 1 GiB
of float32 tensors in 4 MiB chunks, plus 100 specimens of small files, whose per-file and
per-specimen costs a byte rate hides):

- baseline: a loop that reads and BLAKE3-hashes every file in objects/ once, one file after
  another (large files with BLAKE3's own multithreading, as `digest.hash_file` does);
- baseline, 2 threads: the same files hashed by a two-thread pool (what both cores give);
- verify: `Vault.verify()` (full) and `Vault.verify(quick=True)`.

The page cache is warmed first and every timing is the best of ``--repeat`` runs, so the figures
compare CPU work and not the disk's mood; the machine is shared, so expect noise.

Usage: python benchmarks/bench_verify.py [--mib N] [--specimens N] [--small N] [--repeat N]
       [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import numpy as np

from cas_vault import SpecimenStorage, Vault

_MMAP_THRESHOLD = 4 * 1024 * 1024


def build(root: Path, mib: int, specimens: int, small: int) -> Vault:
    """A vault of ``specimens`` specimens holding ``mib`` MiB of float32 tensors in total,
    plus ``small`` specimens of small files only (metrics, config, notes: per-file overheads)."""
    v = Vault.init(root)
    for i in range(small):
        rng = np.random.default_rng(10_000 + i)
        s = SpecimenStorage(v.new(f"small{i:04d}", domain="training", method="fine_tuning"))
        s.write_metrics({"step": np.arange(100), "loss": rng.random(100)})
        s.write_config({"seed": i, "lr": 3e-4})
        v.commit(f"small{i:04d}", message="bench")
    per = max(1, mib * 1024 * 1024 // specimens // (1024 * 4))
    for i in range(specimens):
        rng = np.random.default_rng(i)
        s = SpecimenStorage(v.new(f"s{i:03d}", domain="training", method="fine_tuning"))
        s.write_metrics({"step": np.arange(1000), "loss": rng.random(1000)})
        s.write_config({"seed": i})
        s.write_tensors("acts", rng.standard_normal((per, 1024), dtype=np.float32),
                        chunks=(1024, 1024), compressor=None)  # 4 MiB chunks
        v.commit(f"s{i:03d}", message="bench")
    return v


def object_files(v: Vault) -> list[Path]:
    return [v.objects.path(d) for d in v.objects.iter_digests()]


def hash_one(path: Path) -> str:
    """Read and hash one file: the plain way, mmap + BLAKE3 threads for large files."""
    if path.stat().st_size >= _MMAP_THRESHOLD:
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        h.update_mmap(path)
        return h.hexdigest()
    with open(path, "rb") as f:
        return blake3.blake3(f.read()).hexdigest()


def baseline(files: list[Path]) -> float:
    t = time.perf_counter()
    for p in files:
        hash_one(p)
    return time.perf_counter() - t


def baseline_threads(files: list[Path], threads: int = 2) -> float:
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(hash_one, files))
    return time.perf_counter() - t


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024, help="tensor MiB in the vault (default 1024)")
    ap.add_argument("--specimens", type=int, default=16, help="number of specimens (default 16)")
    ap.add_argument("--small", type=int, default=100,
                    help="extra specimens of small files only (default 100)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; best is kept")
    ap.add_argument("--quick", action="store_true", help="128 MiB, 8+20 specimens, 2 repeats")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the vault")
    args = ap.parse_args(argv)
    if args.quick:
        args.mib, args.specimens, args.small, args.repeat = 128, 8, 20, 2

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        v = build(Path(tmp) / "vault", args.mib, args.specimens, args.small)
        files = object_files(v)
        total = sum(p.stat().st_size for p in files)
        print(f"vault: {args.specimens} tensor + {args.small} small specimens, {len(files)} "
              f"objects, {total / 2**20:.0f} MiB "
              f"(built in {time.perf_counter() - t0:.1f} s); {os.cpu_count()} CPUs")
        baseline(files)  # warm the page cache

        best: dict[str, float] = {}
        for _ in range(args.repeat):
            for name, fn in (
                ("baseline: read + BLAKE3, one pass", lambda: baseline(files)),
                ("baseline: read + BLAKE3, 2 threads", lambda: baseline_threads(files)),
                ("vault verify (full)", lambda: timed(v.verify)[0]),
                ("vault verify --quick", lambda: timed(lambda: v.verify(quick=True))[0]),
            ):
                seconds = fn()
                best[name] = min(best.get(name, float("inf")), seconds)
        report = v.verify()
        assert report.ok and report.bytes_hashed >= total, "verify did not hash every byte"

        print(f"\n{'measurement':<38} {'seconds':>8} {'MiB/s':>9}")
        for name, seconds in best.items():
            print(f"{name:<38} {seconds:>8.3f} {total / 2**20 / seconds:>9.0f}")
        ratio = best["baseline: read + BLAKE3, one pass"] / best["vault verify (full)"]
        ratio2 = best["baseline: read + BLAKE3, 2 threads"] / best["vault verify (full)"]
        print(f"\nverify rate / one-pass rate:  {ratio:.2f}  (target >= 0.50: "
              f"{'met' if ratio >= 0.5 else 'NOT met'})")
        print(f"verify rate / 2-thread rate:  {ratio2:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
