"""The original's runs-era storage API (several runs per specimen), call by call.

The reference is the original's API as /work/shared/seed/runs-api.md describes it: protocols
written against it must run with only the import line changed. Runs are created with
explicit ids, or with a fake clock, so nothing here sleeps or depends on timing.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cas_vault import SpecimenStorage, Vault, canonical, storage, tensors
from cas_vault.commit import Commit, Manifest, TreeEntry, utc_now
from cas_vault.errors import (
    AlreadyExistsError,
    ImmutableError,
    InvalidInputError,
    NotFoundError,
    VaultError,
)
from cas_vault.storage import run_sort_key
from cas_vault.tensors import default_chunks, write_tensor
from cas_vault.workdir import COPIES_PATH, WorkingIndex, sealed_paths

BAD_RUN_IDS = ["../x", "a/b", "..", "", ".hidden", "-x", "a" * 129, "r\x00", 5]


def original_scaffold(path: Path) -> Path:
    """A specimen directory as the original's scaffold leaves it: files and an empty runs/."""
    path.mkdir(parents=True)
    (path / "protocol.py").write_text("# protocol\n")
    (path / "field_notes.md").write_text("# notes\n")
    (path / "manifest.msgpack").write_bytes(canonical.packb({"specimen_id": path.name}))
    (path / "runs").mkdir()
    return path


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    """A bare specimen directory (no vault) in the runs layout."""
    return original_scaffold(tmp_path / "2025_01_01_runs")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """A fake local clock: ``clock(n)`` moves it n seconds on; it stays put otherwise."""
    now = [datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))]
    monkeypatch.setattr(storage, "_now", lambda: now[0])

    def advance(seconds: int) -> None:
        now[0] += timedelta(seconds=seconds)

    return advance


def files_under(path: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file below ``path`` (for "nothing changed" checks)."""
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


# -- the error classes the original's callers catch --------------------------------------------
def test_missing_is_a_file_not_found_error_and_a_refused_write_a_runtime_error() -> None:
    missing = NotFoundError("specimens/x/runs/r/metrics.parquet does not exist")
    assert isinstance(missing, (FileNotFoundError, KeyError, VaultError))
    # Printed as written: neither KeyError's quotes nor OSError's "[Errno ...]".
    assert str(missing) == "specimens/x/runs/r/metrics.parquet does not exist"
    assert missing.errno is None and missing.filename is None
    for refused in (AlreadyExistsError("exists"), ImmutableError("sealed")):
        assert isinstance(refused, (RuntimeError, VaultError))
        assert not isinstance(refused, OSError)
    assert issubclass(InvalidInputError, ValueError)
    for exc in (missing, ImmutableError("sealed")):
        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is type(exc) and str(again) == str(exc)


# -- construction and the mode rule ------------------------------------------------------------
def test_creating_an_instance_creates_nothing_and_has_the_original_attributes(
        spec: Path, clock: Callable[[int], None]) -> None:
    before = sorted(p.relative_to(spec) for p in spec.rglob("*"))
    s = SpecimenStorage(spec)
    assert sorted(p.relative_to(spec) for p in spec.rglob("*")) == before
    assert s.layout == "runs"
    assert s.run_id == "20250304_050607"
    assert s.specimen_path == spec.resolve()
    assert s.runs_path == spec.resolve() / "runs"
    assert s.run_path == s.strata_path == spec.resolve() / "runs" / "20250304_050607"
    assert not s.run_path.exists()
    assert SpecimenStorage(specimen_path=spec, run_id="given").run_path.name == "given"
    # Nothing is created for a missing specimen either; writing to it is FileNotFoundError.
    ghost = SpecimenStorage(spec.parent / "ghost", run_id=None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ghost.write_metrics({"x": [1]})
    assert not (spec.parent / "ghost").exists()


def test_mode_runs_when_run_id_is_passed_or_the_specimen_has_the_runs_layout(
        tmp_path: Path, clock: Callable[[int], None]) -> None:
    plain = tmp_path / "plain"
    (plain / "strata").mkdir(parents=True)
    assert SpecimenStorage(plain).layout == "strata"
    # An explicit run_id=None counts: it starts a new run.
    assert SpecimenStorage(plain, run_id=None).layout == "runs"
    assert SpecimenStorage(plain, run_id=None).run_id == "20250304_050607"
    assert SpecimenStorage(plain, run_id="r1").layout == "runs"
    # The layout is read from the specimen: a runs/ directory ...
    with_dir = tmp_path / "with_dir"
    (with_dir / "runs").mkdir(parents=True)
    assert SpecimenStorage(with_dir).layout == "runs"
    # ... or "layout": "runs" in its manifest.
    marked = tmp_path / "marked"
    marked.mkdir()
    (marked / "manifest.msgpack").write_bytes(canonical.packb({"layout": "runs"}))
    assert SpecimenStorage(marked).layout == "runs"
    (marked / "manifest.msgpack").write_bytes(canonical.packb({"layout": "strata"}))
    assert SpecimenStorage(marked).layout == "strata"
    (marked / "manifest.msgpack").write_bytes(b"\xc1 not msgpack")
    assert SpecimenStorage(marked).layout == "strata"


@pytest.mark.parametrize("bad", BAD_RUN_IDS, ids=repr)
def test_a_run_id_that_could_escape_runs_is_refused_before_anything_is_written(
        spec: Path, bad: Any) -> None:
    before = files_under(spec.parent)
    with pytest.raises(ValueError, match="run id"):
        SpecimenStorage(spec, run_id=bad)
    s = SpecimenStorage(spec, run_id="ok")
    with pytest.raises(InvalidInputError, match="run id"):
        s.read_metrics(run_id=bad)
    if isinstance(bad, str):
        with pytest.raises(InvalidInputError, match="run id"):
            s.read_metrics(bad)
    with pytest.raises(InvalidInputError, match="run id"):
        s.read_tensor_lazy("t", run_id=bad)
    assert files_under(spec.parent) == before


# -- write_manifest ----------------------------------------------------------------------------
def test_write_manifest_stores_canonical_msgpack_with_run_id_and_timestamp(
        spec: Path, clock: Callable[[int], None]) -> None:
    s = SpecimenStorage(spec)
    path = s.write_manifest({"lr": 3e-4, "seed": 0, "layers": [1, 2], "run_id": "ignored"})
    assert path == s.run_path / "manifest.msgpack"
    data = path.read_bytes()
    value = canonical.unpackb(data)
    assert canonical.packb(value) == data  # canonical form
    assert value == {"lr": 3e-4, "seed": 0, "layers": [1, 2], "run_id": "20250304_050607",
                     "run_timestamp": "2025-03-04T05:06:07+02:00"}
    stamp = datetime.fromisoformat(value["run_timestamp"])
    assert stamp.utcoffset() is not None  # local time with its offset
    assert s.read_manifest() == value

    with pytest.raises(RuntimeError, match="overwrite=True"):
        s.write_manifest({"lr": 1.0})
    assert path.read_bytes() == data
    s.write_manifest({"lr": 1.0}, overwrite=True)
    assert s.read_manifest()["lr"] == 1.0

    with pytest.raises(InvalidInputError, match="dict"):
        s.write_manifest([("k", 1)])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SpecimenStorage(spec, run_id="other").write_manifest({"f": object()})
    assert not (s.runs_path / "other").exists()  # a refused manifest claims no run


# -- write_metrics / read_metrics --------------------------------------------------------------
def test_write_metrics_adds_a_constant_run_id_column_and_refuses_to_overwrite(spec: Path) -> None:
    s = SpecimenStorage(spec, run_id="20250101_000000")
    path = s.write_metrics({"step": [0, 1, 2], "loss": [0.5, 0.3, 0.2]})
    assert path == spec.resolve() / "runs" / "20250101_000000" / "metrics.parquet"
    df = pl.read_parquet(path)
    assert df.columns == ["step", "loss", "run_id"]
    assert df["run_id"].to_list() == ["20250101_000000"] * 3
    assert df["run_id"].dtype == pl.String

    data = path.read_bytes()
    with pytest.raises(RuntimeError, match="exists already"):
        s.write_metrics({"step": [9]})
    with pytest.raises(AlreadyExistsError):
        s.write_metrics({"step": [9]}, overwrite=False)
    assert path.read_bytes() == data
    s.write_metrics(pl.DataFrame({"step": [9], "run_id": ["spoofed"]}), overwrite=True)
    assert s.read_metrics().to_dicts() == [{"step": 9, "run_id": "20250101_000000"}]


def test_read_metrics_given_run_else_current_run_else_latest(spec: Path) -> None:
    SpecimenStorage(spec, run_id="20250101_000000").write_metrics({"v": [1]})
    SpecimenStorage(spec, run_id="20250102_000000").write_metrics({"v": [2]})
    # Given run, positionally (the original's signature) or by keyword.
    reader = SpecimenStorage(spec, run_id="20250101_000000")
    assert reader.read_metrics("20250102_000000")["v"].to_list() == [2]
    assert reader.read_metrics(run_id="20250102_000000")["v"].to_list() == [2]
    # The current run when it has metrics, though it is not the latest ...
    assert reader.read_metrics()["v"].to_list() == [1]
    # ... else the latest run.
    assert SpecimenStorage(spec, run_id="20240101_000000").read_metrics()["v"].to_list() == [2]
    assert SpecimenStorage(spec).read_metrics()["v"].to_list() == [2]
    with pytest.raises(FileNotFoundError, match="20250103_000000"):
        reader.read_metrics("20250103_000000")
    with pytest.raises(InvalidInputError, match="twice"):
        reader.read_metrics("20250101_000000", run_id="20250102_000000")


def test_read_metrics_raises_file_not_found_when_there_is_no_run(spec: Path) -> None:
    s = SpecimenStorage(spec)
    with pytest.raises(FileNotFoundError, match="no run"):
        s.read_metrics()
    with pytest.raises(FileNotFoundError):
        s.read_all_runs()
    assert s.list_runs() == [] and s.get_latest_run() is None


def test_named_tables_in_a_run_keep_the_seed_keyword_and_positional_name(spec: Path) -> None:
    s = SpecimenStorage(spec, run_id="r1")
    s.write_metrics({"a": [1]}, name="losses")
    s.write_metrics({"b": [2]}, "spectra")  # the seed's positional name
    assert s.read_metrics(name="losses")["a"].to_list() == [1]
    assert s.read_metrics("r1", name="spectra")["run_id"].to_list() == ["r1"]
    assert (s.run_path / "losses.parquet").is_file() and (s.run_path / "spectra.parquet").is_file()
    # A run is listed by its metrics.parquet only.
    assert s.list_runs() == []


# -- list_runs / get_latest_run / read_all_runs ------------------------------------------------
def test_list_runs_is_newest_first_and_counts_only_runs_with_metrics(spec: Path) -> None:
    for run in ["20250101_000000", "20250301_000000", "20250201_000000",
                "20250301_000000_2", "20250301_000000_10"]:
        SpecimenStorage(spec, run_id=run).write_metrics({"x": [1]})
    SpecimenStorage(spec, run_id="20251231_000000").write_manifest({})  # no metrics: not listed
    (spec / "runs" / "stray.txt").write_text("not a run")
    s = SpecimenStorage(spec)
    assert s.list_runs() == ["20250301_000000_10", "20250301_000000_2", "20250301_000000",
                             "20250201_000000", "20250101_000000"]
    assert s.get_latest_run() == "20250301_000000_10"


@given(st.lists(st.tuples(st.datetimes(min_value=datetime(2000, 1, 1),
                                       max_value=datetime(2099, 12, 31)),
                          st.integers(min_value=1, max_value=200)), unique=True))
def test_run_sort_key_orders_runs_as_they_were_started(starts: list[tuple[datetime, int]]) -> None:
    # An independent oracle: the (start second, n-th run in that second) each id encodes.
    starts = list({(t.replace(microsecond=0), n) for t, n in starts})
    def name(t: datetime, n: int) -> str:
        base = t.strftime("%Y%m%d_%H%M%S")
        return base if n == 1 else f"{base}_{n}"
    ids = [name(t, n) for t, n in starts]
    assert sorted(ids, key=run_sort_key) == [name(t, n) for t, n in sorted(starts)]


def test_read_all_runs_concatenates_newest_first_each_with_its_run_id(spec: Path) -> None:
    SpecimenStorage(spec, run_id="20250101_000000").write_metrics({"step": [0, 1], "loss": [1, 2]})
    SpecimenStorage(spec, run_id="20250102_000000").write_metrics(
        {"step": [0], "loss": [0.5], "acc": [0.9]})
    SpecimenStorage(spec, run_id="20250103_000000").write_metrics({"step": [0], "note": ["x"]})
    all_runs = SpecimenStorage(spec).read_all_runs()
    assert all_runs["run_id"].to_list() == [
        "20250103_000000", "20250102_000000", "20250101_000000", "20250101_000000"]
    # Columns a run lacks are null there; int and float losses combine as float.
    assert set(all_runs.columns) == {"step", "loss", "acc", "note", "run_id"}
    assert all_runs["loss"].dtype == pl.Float64
    assert all_runs["loss"].to_list() == [None, 0.5, 1.0, 2.0]
    assert all_runs["acc"].to_list() == [None, 0.9, None, None]
    assert all_runs["note"].to_list() == ["x", None, None, None]


def test_read_all_runs_names_a_run_whose_file_lacks_the_run_id_column(spec: Path) -> None:
    run = spec / "runs" / "20250101_000000"
    run.mkdir()
    pl.DataFrame({"x": [1, 2]}).write_parquet(run / "metrics.parquet")  # written by other means
    assert SpecimenStorage(spec).read_all_runs()["run_id"].to_list() == ["20250101_000000"] * 2


# -- new runs: the clock and same-second suffixes ----------------------------------------------
def test_two_runs_in_one_second_get_a_suffix_instead_of_sharing(
        spec: Path, clock: Callable[[int], None]) -> None:
    first = SpecimenStorage(spec, run_id=None)
    first.write_metrics({"v": [1]})
    second = SpecimenStorage(spec, run_id=None)
    assert second.run_id == "20250304_050607_2"
    second.write_metrics({"v": [2]})
    # Two instances made before either writes: the first write claims the name, the other
    # moves to the next free suffix at its own first write.
    a, b = SpecimenStorage(spec), SpecimenStorage(spec)
    assert a.run_id == b.run_id == "20250304_050607_3"
    b.write_manifest({"who": "b"})
    a.write_manifest({"who": "a"})
    assert (b.run_id, a.run_id) == ("20250304_050607_3", "20250304_050607_4")
    assert a.read_manifest()["who"] == "a" and b.read_manifest()["who"] == "b"
    assert a.read_manifest()["run_id"] == a.run_id
    clock(1)
    assert SpecimenStorage(spec).run_id == "20250304_050608"
    reader = SpecimenStorage(spec)
    assert [reader.read_metrics(r)["v"].item() for r in reader.list_runs()] == [2, 1]


# -- tensors -----------------------------------------------------------------------------------
def test_tensors_go_into_the_run_with_the_default_chunks(spec: Path) -> None:
    s = SpecimenStorage(spec, run_id="r1")
    acts = np.arange(2500 * 1200 * 2, dtype="f4").reshape(2500, 1200, 2)
    path = s.write_tensors("acts", acts)
    assert path == s.run_path / "acts.zarr"
    lazy = s.read_tensor_lazy("acts")
    assert lazy.chunks == default_chunks(acts.shape) == (834, 600, 2)
    np.testing.assert_array_equal(lazy[100:102, 5:7], acts[100:102, 5:7])
    assert s.list_tensors() == ["acts"]
    s.write_tensors("small", np.ones((3, 4)), chunks=(2, 2))
    assert s.read_tensor_lazy("small").chunks == (2, 2)
    with s.tensor_writer("grown", "i4", (2,)) as w:
        w.append(np.ones((5, 2), "i4"))
    assert (s.run_path / "grown.zarr").is_dir() and not (spec / "strata").exists()


def test_read_tensor_lazy_current_run_else_the_newest_run_that_has_it(spec: Path) -> None:
    SpecimenStorage(spec, run_id="20250101_000000").write_tensors("t", np.full(3, 1))
    SpecimenStorage(spec, run_id="20250102_000000").write_tensors("t", np.full(3, 2))
    SpecimenStorage(spec, run_id="20250103_000000").write_tensors("other", np.full(3, 3))
    assert SpecimenStorage(spec, run_id="20250101_000000").read_tensor_lazy("t")[0] == 1
    # A run without it (the newest) falls back to the newest run that has it.
    assert SpecimenStorage(spec, run_id="20250103_000000").read_tensor_lazy("t")[0] == 2
    assert SpecimenStorage(spec).read_tensor_lazy("t")[0] == 2
    assert SpecimenStorage(spec).read_tensor_lazy("t", run_id="20250101_000000")[0] == 1
    with pytest.raises(FileNotFoundError, match="'missing'"):
        SpecimenStorage(spec).read_tensor_lazy("missing")
    with pytest.raises(FileNotFoundError):
        SpecimenStorage(spec).read_tensor_lazy("t", run_id="20250103_000000")


# -- a protocol written against the runs-era API -----------------------------------------------
def runs_protocol(specimen_dir: str, seed: int) -> None:
    """What the original's protocols do: one new run per execution."""
    store = SpecimenStorage(Path(specimen_dir))
    rng = np.random.default_rng(seed)
    store.write_manifest({"seed": seed, "model": "toy"})
    store.write_metrics({"step": [0, 1, 2], "loss": (rng.random(3) + seed).tolist()})
    store.write_tensors("activations", rng.standard_normal((10, 4)).astype("f4"))


def check_protocol_runs(specimen_dir: Path) -> None:
    """Read three executions of :func:`runs_protocol` back, run by run."""
    s = SpecimenStorage(specimen_dir)
    runs = s.list_runs()
    assert runs == ["20250304_050609", "20250304_050608", "20250304_050607"]
    assert s.get_latest_run() == runs[0]
    for run, seed in zip(runs, [2, 1, 0]):
        rng = np.random.default_rng(seed)
        metrics = s.read_metrics(run)
        assert metrics["loss"].to_list() == (rng.random(3) + seed).tolist()
        assert metrics["run_id"].unique().to_list() == [run]
        opened = SpecimenStorage(specimen_dir, run_id=run)
        assert opened.read_manifest()["seed"] == seed
        np.testing.assert_array_equal(opened.read_tensor_lazy("activations")[:],
                                      rng.standard_normal((10, 4)).astype("f4"))
    assert s.read_all_runs()["run_id"].to_list() == [r for r in runs for _ in range(3)]


def test_a_runs_era_protocol_three_times_in_a_bare_specimen(
        spec: Path, clock: Callable[[int], None]) -> None:
    for seed in range(3):
        runs_protocol(str(spec), seed)
        clock(1)
    check_protocol_runs(spec)
    assert not (spec / "strata").exists()


def test_a_runs_era_protocol_three_times_in_a_vault(
        tmp_path: Path, clock: Callable[[int], None], monkeypatch: pytest.MonkeyPatch) -> None:
    vault = Vault.init(tmp_path / "v")
    wd = vault.new("2025_03_04_runs", domain="training", method="fine_tuning")
    (wd / "runs").mkdir()
    locked: list[str] = []

    def recording(module: Any) -> None:
        real = module.writing

        def writing(specimen_dir: Path, *args: Any, **kwargs: Any) -> Any:
            locked.append(module.__name__)
            return real(specimen_dir, *args, **kwargs)

        monkeypatch.setattr(module, "writing", writing)

    recording(storage)
    recording(tensors)
    for seed in range(3):
        runs_protocol(str(wd), seed)
        clock(1)
    # Every write held the working directory's writer lock: manifest, metrics, tensor.
    assert sorted(locked) == ["cas_vault.storage"] * 6 + ["cas_vault.tensors"] * 3
    check_protocol_runs(wd)
    # Tensors went into objects/ and the working index, none into the working directory.
    index = WorkingIndex(wd).load()
    for run in SpecimenStorage(wd).list_runs():
        assert f"runs/{run}/activations.zarr/zarr.json" in index
        assert not (wd / "runs" / run / "activations.zarr").exists()
    # Small results were stored as objects when written, as strata-era ones are.
    copies = canonical.unpackb((wd / COPIES_PATH).read_bytes())
    assert "runs/20250304_050607/metrics.parquet" in copies
    assert "runs/20250304_050607/manifest.msgpack" in copies
    vault.commit("2025_03_04_runs", message="three runs")
    # Once committed, every one of the runs is sealed; the protocol may still run again.
    for run in SpecimenStorage(wd).list_runs():
        with pytest.raises(RuntimeError, match="sealed"):
            SpecimenStorage(wd, run_id=run).write_metrics({"x": [1]}, overwrite=True)
    runs_protocol(str(wd), 3)
    assert SpecimenStorage(wd).list_runs()[0] == "20250304_050610"


# -- strata mode: the seed's API, unchanged ----------------------------------------------------
def test_strata_mode_writes_strata_and_keeps_the_runs_era_names(tmp_path: Path) -> None:
    wd = tmp_path / "seed_specimen"
    (wd / "strata").mkdir(parents=True)
    s = SpecimenStorage(wd)
    assert s.layout == "strata" and s.run_id is None
    assert s.run_path == s.strata_path == s.strata == wd.resolve() / "strata"
    assert s.specimen_path == wd.resolve() and s.runs_path == wd.resolve() / "runs"
    path = s.write_metrics({"step": [0, 1]})
    assert path == wd.resolve() / "strata" / "metrics.parquet"
    assert pl.read_parquet(path).columns == ["step"]  # no run_id column in strata/
    s.write_metrics({"step": [5]})  # the seed's API replaces
    s.write_metrics({"a": [1]}, "spectra")
    assert s.read_metrics()["step"].to_list() == [5]
    assert s.read_metrics("spectra")["a"].to_list() == [1]  # positional name, as in the seed
    assert s.read_metrics(name="spectra")["a"].to_list() == [1]
    with pytest.raises(RuntimeError):
        s.write_metrics({"step": [6]}, overwrite=False)
    s.write_tensors("t", np.arange(4))
    assert s.read_tensor_lazy("t")[3] == 3
    assert s.list_runs() == [] and s.get_latest_run() is None
    with pytest.raises(FileNotFoundError):
        s.read_all_runs()
    with pytest.raises(FileNotFoundError):
        s.read_metrics(run_id="20250101_000000")
    assert not (wd / "runs").exists()


# -- in a vault: sealed runs never change, new runs may follow --------------------------------
def test_after_commit_a_new_run_is_written_but_a_sealed_run_never_changes(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "v")
    wd = vault.new("2025_01_01_sealed", domain="training", method="fine_tuning")
    assert sealed_paths(wd) is None
    first = SpecimenStorage(wd, run_id="20250101_000000")
    first.write_manifest({"seed": 0})
    first.write_metrics({"loss": [0.5]})
    first.write_tensors("acts", np.arange(12, dtype="f4").reshape(3, 4))
    vault.commit("2025_01_01_sealed", message="first run")
    assert sealed_paths(wd) == frozenset(vault.get("2025_01_01_sealed").tree)
    before = files_under(wd)
    index_before = WorkingIndex(wd).load()

    sealed = SpecimenStorage(wd, run_id="20250101_000000")
    for write in (lambda: sealed.write_metrics({"loss": [9.0]}, overwrite=True),
                  lambda: sealed.write_manifest({"seed": 9}, overwrite=True),
                  lambda: sealed.write_metrics({"x": [1]}, name="extra"),  # a file it lacked
                  lambda: sealed.write_config({"k": 1}),
                  lambda: sealed.write_tensors("acts", np.zeros((3, 4), "f4")),
                  lambda: sealed.tensor_writer("grown", "f4", (2,)).open()):
        with pytest.raises(ImmutableError, match="sealed") as refused:
            write()
        assert isinstance(refused.value, RuntimeError)
        assert "SpecimenStorage(path)" in str(refused.value)
    # The tensor writers ask the same rule under the writer lock, whoever calls them.
    with pytest.raises(ImmutableError, match="sealed"):
        write_tensor(wd, vault.root, "acts", np.zeros(3), results_dir="runs/20250101_000000")
    assert files_under(wd) == before
    assert WorkingIndex(wd).load() == index_before
    assert sealed.read_metrics()["loss"].to_list() == [0.5]

    # A new run of the committed specimen is written as usual.
    second = SpecimenStorage(wd, run_id="20250102_000000")
    second.write_metrics({"loss": [0.25]})
    second.write_tensors("acts", np.ones((3, 4), "f4"))
    assert SpecimenStorage(wd).list_runs() == ["20250102_000000", "20250101_000000"]
    assert SpecimenStorage(wd).read_tensor_lazy("acts")[0, 0] == 1.0
    assert SpecimenStorage(wd).read_tensor_lazy("acts", run_id="20250101_000000")[0, 1] == 1.0
    assert SpecimenStorage(wd).read_all_runs()["loss"].to_list() == [0.25, 0.5]


def test_a_run_inside_the_specimens_own_sealed_tree_is_sealed_too(tmp_path: Path) -> None:
    # A specimen whose own commit holds a run's files (as a commit of the whole working
    # directory, by an older cas-vault, does): that run is sealed, other runs are not.
    vault = Vault.init(tmp_path / "v")
    sid = "2025_01_01_whole"
    wd = vault.new(sid, domain="training", method="fine_tuning")
    SpecimenStorage(wd, run_id="r1").write_metrics({"x": [1]})
    data = (wd / "runs" / "r1" / "metrics.parquet").read_bytes()
    commit = Commit(
        specimen_id=sid, created=utc_now(), author="tester", message="whole directory",
        manifest=Manifest("training", "fine_tuning"), parents=(),
        tree={"runs/r1/metrics.parquet": TreeEntry(vault.objects.put_bytes(data), len(data),
                                                   "parquet")})
    vault.objects.put_bytes(commit.to_bytes())
    vault.refs.create(sid, commit.digest, utc_now())
    assert sealed_paths(wd) == {"runs/r1/metrics.parquet"}
    with pytest.raises(ImmutableError, match="run r1 .* is sealed"):
        SpecimenStorage(wd, run_id="r1").write_metrics({"y": [2]}, name="other")
    with pytest.raises(ImmutableError, match="run r1 .* is sealed"):
        SpecimenStorage(wd, run_id="r1").write_tensors("t", np.zeros(2))
    SpecimenStorage(wd, run_id="r2").write_metrics({"x": [2]})
    assert (wd / "runs" / "r1" / "metrics.parquet").read_bytes() == data


def test_after_commit_strata_era_writes_are_still_refused(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "v")
    wd = vault.new("2025_01_01_strata", domain="training", method="fine_tuning")
    SpecimenStorage(wd).write_metrics({"loss": [0.5]})
    vault.commit("2025_01_01_strata", message="strata")
    before = files_under(wd)
    s = SpecimenStorage(wd)
    assert s.layout == "strata"
    for write in (lambda: s.write_metrics({"loss": [1.0]}),
                  lambda: s.write_config({"k": 1}),
                  lambda: s.write_manifest({"k": 1}),
                  lambda: s.write_tensors("t", np.zeros(3))):
        with pytest.raises(ImmutableError, match="committed"):
            write()
    assert files_under(wd) == before


def test_a_damaged_ref_refuses_run_writes_instead_of_guessing(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "v")
    wd = vault.new("2025_01_01_damaged", domain="training", method="fine_tuning")
    SpecimenStorage(wd, run_id="r1").write_metrics({"x": [1]})
    vault.commit("2025_01_01_damaged", message="m")
    obj = vault.objects.path(vault.refs.get("2025_01_01_damaged"))
    obj.chmod(0o644)
    obj.unlink()
    with pytest.raises(VaultError, match="vault verify") as refused:
        SpecimenStorage(wd, run_id="r2").write_metrics({"x": [2]})
    assert not isinstance(refused.value, FileNotFoundError)
