"""Benchmark: `vault verify` against one plain read-and-hash pass over the same files.

Target: a full verify (re-hash every object, check sizes, refs, journal, working
directories) runs at no less than half the rate of one pass that reads and BLAKE3-hashes the same
files. Measured side by side in one run, on a vault built here (default: 16 specimens with 1 GiB
of float32 tensors in 4 MiB chunks, plus 100 specimens of small files, whose per-file and
per-specimen costs a byte rate hides):

- baseline: a loop that reads and BLAKE3-hashes every file in objects/ once, one file after
  another (large files with BLAKE3's own multithreading, as `digest.hash_file` does);
- baseline, 2 threads: the same files hashed by a two-thread pool (what both cores give);
- verify: `Vault.verify()` (full), whose rate in MiB/s is compared to the baseline's;
- `Vault.verify(quick=True)`, which checks that every object exists with its recorded size
  (plus refs, journal and working directories) and reads only the small commit objects it walks:
  a byte rate would mean nothing for it, so it is reported as a time and in objects checked
  per second.

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import blake3
import numpy as np

from cas_vault import SpecimenStorage, Vault

_MMAP_THRESHOLD = 4 * 1024 * 1024
T = TypeVar("T")


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
    """Paths of every object file in the vault."""
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
    """Seconds to read and hash ``files`` one after another."""
    t = time.perf_counter()
    for p in files:
        hash_one(p)
    return time.perf_counter() - t


def baseline_threads(files: list[Path], threads: int = 2) -> float:
    """Seconds to read and hash ``files`` with a pool of ``threads``."""
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(hash_one, files))
    return time.perf_counter() - t


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Seconds ``fn()`` took, and its result."""
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

        one_pass = "baseline: read + BLAKE3, one pass"
        two_threads = "baseline: read + BLAKE3, 2 threads"
        full, quick = "vault verify (full)", "vault verify --quick"
        best: dict[str, float] = {}
        quick_report = None
        for _ in range(args.repeat):
            for name, fn in (
                (one_pass, lambda: baseline(files)),
                (two_threads, lambda: baseline_threads(files)),
                (full, lambda: timed(v.verify)[0]),
            ):
                seconds = fn()
                best[name] = min(best.get(name, float("inf")), seconds)
            seconds, quick_report = timed(lambda: v.verify(quick=True))
            best[quick] = min(best.get(quick, float("inf")), seconds)
        report = v.verify()
        assert report.ok and report.bytes_hashed >= total, "verify did not hash every byte"
        assert quick_report is not None and quick_report.ok

        print(f"\n{'measurement':<38} {'seconds':>8} {'objects/s':>10} {'MiB/s':>9}")
        for name in (one_pass, two_threads, full):
            seconds = best[name]
            print(f"{name:<38} {seconds:>8.3f} {len(files) / seconds:>10,.0f} "
                  f"{total / 2**20 / seconds:>9.0f}")
        print(f"{quick:<38} {best[quick]:>8.3f} {quick_report.objects_checked / best[quick]:>10,.0f} "
              f"{'-':>9}   (existence and sizes of {quick_report.objects_checked:,} objects; "
              f"only the {quick_report.bytes_hashed:,} bytes of commit objects are hashed)")
        ratio = best[one_pass] / best[full]
        ratio2 = best[two_threads] / best[full]
        print(f"\nfull verify rate / one-pass rate:  {ratio:.2f}  (target >= 0.50: "
              f"{'met' if ratio >= 0.5 else 'NOT met'})")
        print(f"full verify rate / 2-thread rate:  {ratio2:.2f}")
        print(f"verify --quick time / full verify time: {best[quick] / best[full]:.2f}"
              f"   / one-pass time: {best[quick] / best[one_pass]:.2f}"
              f"   (time ratios: --quick has no hashing rate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
