"""Benchmark: what sealing costs now that a commit copies working files into ``objects/``.

A commit copies every working file into the object store (hashed as it is copied, from one open
file, then fsynced and linked to its object name) instead of hard-linking it. Measured side by
side in one run:

1. a large user-written file: 100 MiB of random bytes written with plain Python into
   ``specimens/ID/strata/blob.bin`` (outside SpecimenStorage), sealed by ``Vault.commit``, next
   to a bare copy + fsync of the same bytes in the same process: read the file, write a new
   one, fsync it, fsync its directory, with ``os.copy_file_range`` and with read/write of 4 MiB
   blocks; the faster of the two is the peer (target: commit <= 1.3x it). Both sides start
   alike: the source is written just before (the same function, and fsynced untimed so that no
   write-back of it competes with the timed phase), so both read it from the page cache, and
   every trial removes what it wrote once timed, so each starts just after a cleanup (see
   :func:`bench_large` on why that matters on a VM). Every trial writes new bytes (no
   deduplication); the variants run in a rotated order, medians are reported, ratios are
   medians of per-round ratios, and each figure's system CPU time is shown. The commit is
   also shown inside ``Vault.batch()`` (catalog update deferred, not timed), to show what the
   catalog adds, and BLAKE3 alone over the same bytes in one thread, the hashing a copy adds;
2. a small commit (100 steps x 3 metric columns via ``SpecimenStorage.write_metrics`` and a
   config via ``write_config``), with the code checked out here ("current") and with the code
   of a baseline revision (default f85056e, the last commit that hard-linked working files)
   in a git worktree ("baseline"). Each side runs in a subprocess of the same Python with
   PYTHONPATH set to its tree (the subprocess checks that ``cas_vault`` was imported from
   there); the sides alternate in rounds so machine drift hits both. Every round commits in a
   fresh vault, after warm-up commits, inside ``Vault.batch()`` and one at a time (each commit
   updating the catalog). ``Vault.commit`` alone is timed (the target: current <= baseline),
   and so is the whole specimen (``Vault.new`` + writes + commit), since the writers take the
   working-directory lock now.

The baseline worktree is created with ``git worktree add --detach`` if it does not exist (and
left in place for the next run); an existing one must be at the baseline revision, with no
changes under ``cas_vault/``.

Usage: python benchmarks/bench_seal.py [--quick] [--rounds N] [--commits N]
       python benchmarks/bench_seal.py --baseline-tree /tmp/oldtree   # an existing worktree
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

MIB = 1 << 20
#: Bytes per read/write call of the read/write bare copy (as cas-vault's objects.COPY_BLOCK).
BLOCK = 4 * MIB
#: This checkout: the "current" code.
REPO = Path(__file__).resolve().parents[1]
#: What the worker subprocess prints before its JSON result.
RESULT_MARK = "BENCH_SEAL_RESULT "

med = statistics.median


# -- 1. a large user-written file ---------------------------------------------------------------
def write_source(path: Path, data: bytes | bytearray) -> None:
    """Write ``data`` to ``path`` with plain Python, as a user would, then fsync it (untimed).

    The fsync is not part of either timed phase: it only makes sure that no write-back of the
    source runs on the disk while a copy of it is timed.
    """
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_range(src: Path, dst: Path) -> float:
    """Copy ``src`` to the new file ``dst`` in the kernel (``os.copy_file_range``), fsync both
    the file and its directory; return seconds."""
    t = time.perf_counter()
    fin = os.open(src, os.O_RDONLY)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            left = os.fstat(fin).st_size
            while left > 0:
                n = os.copy_file_range(fin, fout, left)
                if n == 0:
                    break
                left -= n
            os.fsync(fout)
        finally:
            os.close(fout)
    finally:
        os.close(fin)
    _fsync_dir(dst.parent)
    return time.perf_counter() - t


def copy_blocks(src: Path, dst: Path) -> float:
    """Copy ``src`` to the new file ``dst`` by read/write of 4 MiB blocks through one reused
    buffer, fsync both the file and its directory; return seconds."""
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    t = time.perf_counter()
    with open(src, "rb", buffering=0) as fin:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            while n := fin.readinto(view):
                chunk = view[:n]
                while chunk:
                    chunk = chunk[os.write(fout, chunk):]
            os.fsync(fout)
        finally:
            os.close(fout)
    _fsync_dir(dst.parent)
    return time.perf_counter() - t


def blake3_alone(data: bytes | bytearray, repeats: int = 3) -> float:
    """Seconds to hash ``data`` with BLAKE3 in one thread, 4 MiB at a time, as a commit's copy
    hashes a file (best of ``repeats``)."""
    import blake3

    view = memoryview(data)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        h = blake3.blake3()
        for i in range(0, len(view), BLOCK):
            h.update(view[i:i + BLOCK])
        h.hexdigest()
        best = min(best, time.perf_counter() - t)
    return best


def sys_seconds() -> float:
    """System CPU time used so far by this process (all its threads)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def bench_large(scratch: Path, size: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Time committing a ``size``-byte user-written file against a bare copy + fsync of it.

    Every trial removes what it wrote (source and copy; for a commit, the working directory and
    the blob's object) once its clock has stopped. On a VM that hands freed memory back to its
    host, filling the page cache costs up to 10x more system time when no recently freed pages
    are at hand, so a trial that follows one which kept its files pays more than one that
    follows a cleanup: with the cleanup, every trial, commit or copy, starts in the same state.

    Returns:
        Per variant, per round: ``(seconds, system CPU seconds)``, for ``commit``
        (``Vault.commit``), ``commit_batch`` (the same inside ``Vault.batch()``, the catalog
        update at its end not timed), ``copy_range`` and ``copy_blocks``.
    """
    from cas_vault import Vault

    v = Vault.init(scratch / "vault")
    bare = scratch / "bare"
    (bare / "src").mkdir(parents=True)
    (bare / "copies").mkdir()
    # One random buffer; each trial stamps its own number at the start, so every commit seals
    # new bytes (a known object would be hashed but not written: deduplication, not a copy).
    data = bytearray(np.random.default_rng(0).bytes(size))
    trial = 0

    def fresh() -> bytearray:
        nonlocal trial
        trial += 1
        data[:8] = trial.to_bytes(8, "little")
        return data

    def committing(in_batch: bool) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            payload = fresh()
            sid = f"2024_12_19_seal_{trial:04d}"
            wd = v.new(sid, domain="training", method="fine_tuning")
            write_source(wd / "strata" / "blob.bin", payload)
            with v.batch() if in_batch else contextlib.nullcontext():
                s0, t = sys_seconds(), time.perf_counter()
                commit = v.commit(sid, message="bench")
                out = time.perf_counter() - t, sys_seconds() - s0
            shutil.rmtree(wd)
            v.objects.path(commit.tree["strata/blob.bin"].digest).unlink()
            return out
        return run

    def copying(copy: Callable[[Path, Path], float], tag: str) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            payload = fresh()
            src, dst = bare / "src" / f"{trial:04d}.bin", bare / "copies" / f"{trial:04d}-{tag}.bin"
            write_source(src, payload)
            s0 = sys_seconds()
            out = copy(src, dst), sys_seconds() - s0
            src.unlink()
            dst.unlink()
            return out
        return run

    variants = {
        "commit": committing(False),
        "commit_batch": committing(True),
        "copy_range": copying(copy_range, "range"),
        "copy_blocks": copying(copy_blocks, "blocks"),
    }
    # Warm-up, untimed: imports, the catalog's creation, tmp/ and first-use costs are paid
    # once, not per commit; every variant runs once, so the first round starts as later ones.
    for run in variants.values():
        run()
    names = list(variants)
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for r in range(rounds):
        # Rotated order: no variant always runs first, or always right after another one.
        for name in names[r % len(names):] + names[:r % len(names)]:
            out[name].append(variants[name]())
    return out


# -- 2. small commits, current vs baseline ---------------------------------------------------------
def small_metrics(i: int) -> dict[str, np.ndarray]:
    """Specimen ``i``'s 100 steps of loss and accuracy (seeded, as in bench_commit.py)."""
    rng = np.random.default_rng(i)
    step = np.arange(100)
    return {"step": step, "loss": np.exp(-step / 30) + 0.01 * rng.random(100),
            "accuracy": 1 - np.exp(-step / 20) * rng.random(100)}


def worker(where: Path, n: int, warm: int, expect_root: Path) -> dict[str, object]:
    """Run in a subprocess: ``n`` small commits in batch() and ``n`` one at a time.

    Only API that both sides have is used (``Vault.init/new/commit/batch``,
    ``SpecimenStorage.write_metrics/write_config``).

    Returns:
        ``file`` (where ``cas_vault`` was imported from), per-specimen seconds ``batch_commit``,
        ``batch_specimen``, ``single_commit``, ``single_specimen``, and ``batch_catalog_s``
        (the catalog update when the batch block ends).
    """
    import cas_vault
    from cas_vault import SpecimenStorage, Vault

    file = Path(cas_vault.__file__).resolve()
    if not file.is_relative_to(expect_root.resolve()):
        raise SystemExit(f"cas_vault was imported from {file}, not from {expect_root}")

    def one(v: Vault, i: int) -> tuple[float, float]:
        sid = f"2024_12_19_bench_{i:05d}"
        t0 = time.perf_counter()
        s = SpecimenStorage(v.new(sid, domain="training", method="fine_tuning", tags=["bench"]))
        s.write_metrics(small_metrics(i))
        s.write_config({"seed": i, "lr": 3e-4})
        t1 = time.perf_counter()
        v.commit(sid, message="bench")
        t2 = time.perf_counter()
        return t2 - t1, t2 - t0

    out: dict[str, object] = {"file": str(file)}
    for mode in ("batch", "single"):
        v = Vault.init(where / mode)
        # Warm-up commits (imports, the catalog's creation, first-use costs) outside the clock.
        for i in range(warm):
            one(v, 10**6 + i)
        commits, specimens = [], []
        if mode == "batch":
            with v.batch():
                for i in range(n):
                    c, s = one(v, i)
                    commits.append(c)
                    specimens.append(s)
                t_end = time.perf_counter()
            out["batch_catalog_s"] = time.perf_counter() - t_end
        else:
            for i in range(n):
                c, s = one(v, i)
                commits.append(c)
                specimens.append(s)
        out[f"{mode}_commit"] = commits
        out[f"{mode}_specimen"] = specimens
    return out


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd``; return its stdout, stripped."""
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def ensure_baseline(tree: Path, rev: str) -> str:
    """Make sure ``tree`` is a worktree of this repository at ``rev``; return the commit id.

    Raises:
        SystemExit: if ``tree`` exists at another commit or has changes under ``cas_vault/``
            (what would be measured would not be the baseline).
    """
    want = git(REPO, "rev-parse", "--verify", f"{rev}^{{commit}}")
    if not tree.exists():
        print(f"creating the baseline worktree: git worktree add --detach {tree} {want[:7]}",
              flush=True)
        git(REPO, "worktree", "add", "--detach", str(tree), want)
        return want
    have = git(tree, "rev-parse", "HEAD")
    if have != want:
        raise SystemExit(f"{tree} is at {have[:7]}, not at the baseline {want[:7]}: pass another "
                         "--baseline-tree, or remove it (git worktree remove)")
    if git(tree, "status", "--porcelain", "--", "cas_vault"):
        raise SystemExit(f"{tree} has changes under cas_vault/: it is not the baseline revision")
    return want


def run_worker(root: Path, where: Path, n: int, warm: int) -> dict[str, object]:
    """Run :func:`worker` in a subprocess of this Python that imports cas_vault from ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(where), "--commits",
         str(n), "--warm", str(warm), "--expect-root", str(root)],
        env=env, capture_output=True, text=True, cwd=where.parent)
    if proc.returncode != 0:
        raise SystemExit(f"the worker for {root} failed:\n{proc.stdout}{proc.stderr}")
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(RESULT_MARK))
    return json.loads(line[len(RESULT_MARK):])


#: Per side (baseline, current), per series (e.g. ``batch_commit``): per-round lists of seconds.
SmallResults = dict[str, dict[str, list[list[float]]]]


def bench_small(scratch: Path, baseline: Path, rounds: int, per_round: int,
                warm: int) -> tuple[SmallResults, dict[str, str]]:
    """Alternate the baseline and current workers for ``rounds`` rounds.

    Returns:
        The timings (``batch_catalog_s`` as a one-element list per round)
        and, per side, the file ``cas_vault`` was imported from.
    """
    sides = {"baseline": baseline, "current": REPO}
    out: SmallResults = {s: {} for s in sides}
    files: dict[str, str] = {}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for side in order:
            where = scratch / f"small-{side}-{r}"
            where.mkdir()
            res = run_worker(sides[side], where, per_round, warm)
            shutil.rmtree(where)
            files[side] = str(res.pop("file"))
            for key, value in res.items():
                out[side].setdefault(key, []).append(value if isinstance(value, list) else [value])
    return out, files


# -- report ---------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    """``met`` or ``MISSED``."""
    return "met" if ok else "MISSED"


def listed(xs: Sequence[float], scale: float = 1.0, fmt: str = ".3f") -> str:
    """Numbers as a comma-separated list."""
    return ", ".join(f"{x * scale:{fmt}}" for x in xs)


def ratio(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Median of the per-round ratios x / y."""
    return med(x / y for x, y in zip(xs, ys, strict=True))


def report_large(res: dict[str, list[tuple[float, float]]], size: int, rounds: int,
                 hash_s: float) -> None:
    """Print section 1."""
    mib = size / MIB
    secs = {k: [t for t, _ in runs] for k, runs in res.items()}

    def sys_note(key: str) -> str:
        return f"[sys CPU {med(s for _, s in res[key]):.2f} s]"

    print(f"1. a {mib:.0f} MiB user-written file (strata/blob.bin, random bytes written with plain "
          f"Python), {rounds} rounds in rotated order, medians; ratios are medians of per-round "
          "ratios")
    peers = {"copy_range": "os.copy_file_range", "copy_blocks": "read/write of 4 MiB blocks"}
    for key, label in peers.items():
        xs = secs[key]
        print(f"   bare copy + fsync, {label + ':':31} {med(xs):7.3f} s  "
              f"({mib / med(xs):6.0f} MiB/s)   rounds: {listed(xs)}  {sys_note(key)}")
    best = min(peers, key=lambda k: med(secs[k]))
    print(f"   the peer at its best: {peers[best]} (lower median)  <- 'bare'")
    for key, label, target in (
            ("commit", "vault.commit (copy, hash, fsync, link):", True),
            ("commit_batch", "vault.commit in Vault.batch() (no catalog):", False)):
        xs = secs[key]
        r = ratio(xs, secs[best])
        tail = f"[target <= 1.3x: {verdict(r <= 1.3)}]" if target else "(no target)"
        print(f"   {label:50} {med(xs):7.3f} s  ({mib / med(xs):6.0f} MiB/s)  = {r:.2f}x bare"
              f"   {tail}   rounds: {listed(xs)}  {sys_note(key)}")
    print(f"   {'BLAKE3 alone, one thread, 4 MiB updates:':50} {hash_s:7.3f} s  "
          f"({mib / hash_s:6.0f} MiB/s): the hashing a commit adds to a copy "
          f"(= {hash_s / med(secs[best]):.2f}x bare)")


def report_small(res: SmallResults, files: dict[str, str], rev: str, dirty: list[str],
                 baseline: Path, rounds: int, per_round: int) -> None:
    """Print section 2."""
    b, c = res["baseline"], res["current"]
    head = git(REPO, "rev-parse", "--short", "HEAD")
    print(f"2. small commits (100 steps x 3 metric columns + config), {rounds} alternating rounds "
          f"x {per_round} commits per side and mode (a fresh vault each), medians of all "
          f"{rounds * per_round}; ratios are medians of per-round ratios of medians")
    print(f"   baseline: {rev[:7]} in {baseline} (cas_vault from {files['baseline']})")
    changes = f" + uncommitted changes to {', '.join(dirty)}" if dirty else ""
    print(f"   current:  {head}{changes} in "
          f"{REPO} (cas_vault from {files['current']})")

    def line(key: str, label: str, target: bool) -> None:
        bs = [x for run in b[key] for x in run]
        cs = [x for run in c[key] for x in run]
        r = ratio([med(run) for run in c[key]], [med(run) for run in b[key]])
        tail = (f"[target current <= baseline: {verdict(r <= 1.0)}]" if target
                else f"(current <= baseline: {'yes' if r <= 1.0 else 'no'})")
        print(f"   {label:44} baseline {med(bs) * 1e3:6.2f} ms   current {med(cs) * 1e3:6.2f} ms"
              f"   = {r:.2f}x   {tail}")
        print(f"   {'':44} per-round medians, ms: baseline "
              f"{listed([med(run) for run in b[key]], 1e3, '.2f')}; current "
              f"{listed([med(run) for run in c[key]], 1e3, '.2f')}")

    line("batch_commit", "vault.commit in Vault.batch():", True)
    line("single_commit", "vault.commit one at a time (catalog each):", True)
    line("batch_specimen", "whole specimen (new+writes+commit), batch():", False)
    line("single_specimen", "whole specimen, one at a time:", False)
    cat_b = med(x for run in b["batch_catalog_s"] for x in run)
    cat_c = med(x for run in c["batch_catalog_s"] for x in run)
    print(f"   catalog update at the end of each batch() block ({per_round} commits): baseline "
          f"{cat_b * 1e3:.0f} ms, current {cat_c * 1e3:.0f} ms (not in the figures above)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="32 MiB file, 3 rounds; 60 small commits per side and mode")
    ap.add_argument("--size-mib", type=int, default=None, help="large file size (default 100)")
    ap.add_argument("--rounds", type=int, default=None, help="large-file rounds (default 5)")
    ap.add_argument("--commits", type=int, default=None,
                    help="small commits per side and mode, in all (default 300)")
    ap.add_argument("--small-rounds", type=int, default=None,
                    help="alternating rounds the small commits are split into (default 6)")
    ap.add_argument("--warm", type=int, default=5, help="untimed warm-up commits per vault")
    ap.add_argument("--baseline-rev", default="f85056e", help="baseline revision")
    ap.add_argument("--baseline-tree", type=Path, default=Path("/tmp/casv-baseline"),
                    help="its git worktree (created if missing)")
    ap.add_argument("--dir", default=None, help="scratch directory (default: system temp dir)")
    ap.add_argument("--skip-large", action="store_true", help="skip section 1")
    ap.add_argument("--skip-small", action="store_true", help="skip section 2")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--expect-root", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        res = worker(args.worker, args.commits, args.warm, args.expect_root)
        print(RESULT_MARK + json.dumps(res))
        return

    size = (args.size_mib or (32 if args.quick else 100)) * MIB
    rounds = args.rounds or (3 if args.quick else 5)
    small_rounds = args.small_rounds or (2 if args.quick else 6)
    per_round = max(1, (args.commits or (60 if args.quick else 300)) // small_rounds)
    rev = dirty = None
    if not args.skip_small:
        rev = ensure_baseline(args.baseline_tree, args.baseline_rev)
        # Others may be editing this checkout: what "current" measured is named in the report.
        status = git(REPO, "status", "--porcelain", "--", "cas_vault")
        dirty = [ln[3:] for ln in status.splitlines()]

    scratch = Path(tempfile.mkdtemp(prefix="bench_seal_", dir=args.dir))
    try:
        large = None if args.skip_large else bench_large(scratch / "large", size, rounds)
        hash_s = 0.0
        if large is not None:
            shutil.rmtree(scratch / "large")
            hash_s = blake3_alone(np.random.default_rng(1).bytes(size))
        small = None
        if not args.skip_small:
            (scratch / "small").mkdir()
            small = bench_small(scratch / "small", args.baseline_tree, small_rounds, per_round,
                                args.warm)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    if large is not None:
        report_large(large, size, rounds, hash_s)
    if small is not None:
        assert rev is not None and dirty is not None
        report_small(*small, rev, dirty, args.baseline_tree, small_rounds, per_round)


if __name__ == "__main__":
    main()
