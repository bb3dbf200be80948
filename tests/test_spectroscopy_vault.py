"""The spectroscopy engine in a real vault: derived specimens, lineage, CLI, dask, demo.

Numbers computed by two runs are compared within the engine's stated tolerance
(``numerics.RTOL``): bit identity is promised only for the same analysis id, and even then these
tests do not lean on it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from cas_vault import SpecimenStorage, Vault
from cas_vault.cli import cli
from cas_vault.engines.spectroscopy import ENGINE_VERSION, numerics
from cas_vault.engines.spectroscopy.encode import default_chunk_rows
from cas_vault.engines.spectroscopy.analysis import SpectroscopyOptions, analyse
from cas_vault.engines.spectroscopy.numerics import RTOL, numeric_environment
from spectro_tolerance import assert_tables_close
from cas_vault.engines.spectroscopy.sae import SAE
from cas_vault.errors import AlreadyExistsError, ImmutableError, InvalidInputError, NotFoundError

N, T, D, D_SAE = 6, 9, 16, 64


def sae_arrays(seed: int = 0, d: int = D) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((D_SAE, d)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return {"W_enc": np.ascontiguousarray(w.T), "b_enc": np.zeros(D_SAE, np.float32), "W_dec": w,
            "b_dec": np.zeros(d, np.float32), "threshold": np.full(D_SAE, 0.8, np.float32)}


def activations(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    x[:, 0] *= 30
    return x


@pytest.fixture
def setup(vault: Vault):
    """A vault with committed activations (layer 0) and SAE specimens."""
    x = activations()
    wd = vault.new("acts", domain="interpretability", method="sae_analysis", model="toy",
                   metadata={"layer": 0})
    SpecimenStorage(wd).write_tensors("activations", x, chunks=(2, 4, D))
    vault.commit("acts", message="activations")
    wd = vault.new("sae", domain="interpretability", method="sae_analysis")
    s = SpecimenStorage(wd)
    for name, arr in sae_arrays().items():
        s.write_tensors(name, arr)
    vault.commit("sae", message="sae")
    return vault, x


def snapshot(vault: Vault) -> tuple[list[str], dict[str, str]]:
    return sorted(p.name for p in vault.specimens_dir.iterdir()), vault.refs.all()


# Tolerance: see tests/spectro_tolerance.py.
def test_fixture_is_clear_of_decision_boundaries() -> None:
    """No pre-activation of the fixture lies within the tolerance of the JumpReLU threshold.

    That is what lets the integer columns (n_features, l0, n_active, feature ids) be compared
    exactly between runs that may round differently: the bound is RTOL times the magnitude of
    the terms each entry sums, which a rounding difference cannot exceed.
    """
    sae = SAE.from_arrays(sae_arrays())
    x = activations().reshape(-1, D).astype(np.float64)
    w = sae.W_enc.astype(np.float64)
    pre = (x - sae.b_dec) @ w + sae.b_enc
    scale = np.abs(x) @ np.abs(w) + np.abs(sae.b_dec) @ np.abs(w) + np.abs(sae.b_enc)
    assert (np.abs(pre - sae.threshold) > RTOL * scale).all()
    # the absorption cut-offs of the pairs used below are as clear (relative to the line)
    a = analyse(activations(), sae)
    lines = {int(n): dict(zip(g["feature"].to_list(), g["intensity_per_token"].to_list()))
             for (n,), g in a.spectra.group_by(["input"])}
    for i, j in [(0, 1), (2, 2), (3, 4), (5, 0), (1, 2)]:
        cut = 0.1 * max(lines[i].values())
        for f, v in lines[i].items():
            assert abs(v - cut) > 100 * RTOL * v
            if v >= cut:
                assert abs(lines[j].get(f, 0.0) - 0.5 * v) > 100 * RTOL * v


def test_derived_specimen_links_parents_and_records_everything(setup) -> None:
    vault, x = setup
    result = vault.spectroscopy("acts", sae="sae", pairs=np.array([[0, 1], [2, 2]]))
    sid = result.specimen_id
    assert sid.startswith("acts__spectro_") and len(sid) == len("acts__spectro_") + 10
    commit = vault.get(sid)
    assert commit.parents == (vault.resolve("acts"), vault.resolve("sae"))
    assert (commit.manifest.domain, commit.manifest.method, commit.manifest.model) == (
        "interpretability", "sae_analysis", "toy")
    meta = commit.manifest.metadata
    assert meta["engine"]["version"] == ENGINE_VERSION
    assert meta["sae"]["digest"] == SAE.from_arrays(sae_arrays()).digest
    assert meta["sae"]["commit"] == vault.resolve("sae") and meta["sae"]["activation"] == "jumprelu"
    assert meta["bos"] == "excluded" and meta["first_position"] == 1
    assert meta["thresholds"]["min_activation"] == 1e-6 and meta["thresholds"]["absorption_rel"] == 0.1
    assert meta["dtypes"] == {"activations": "float32", "compute": "float32", "accumulate": "float64",
                              "spectra": "float32"}
    assert meta["seed"] == 0 and meta["layer"] == 0  # layer 0 stays 0 (the seed turned it into -1)
    assert "layer_0" in commit.manifest.tags
    assert meta["activations"]["shape"] == [N, T, D] and meta["versions"]["numpy"]
    assert meta["numerics"] == {"executor": "local", "environments": [numeric_environment()]}
    assert meta["chunk_tokens"] == default_chunk_rows(D_SAE, D)
    files = set(commit.tree)
    for name in ("metrics", "spectra", "tokens", "drift", "absorption"):
        assert f"strata/{name}.parquet" in files
    spec = vault.specimen(sid)
    metrics = spec.read_metrics()
    for col in ("input", "n_tokens", "l0_mean", "l1_mean", "sse_mean", "fvu", "purity", "topk_10",
                "topk_50", "topk_100", "topk_500", "n_features"):
        assert col in metrics.columns
    # the vault path reads the lazy zarr tensor and gives what the in-memory analysis gives
    direct = analyse(x, SAE.from_arrays(sae_arrays()), pairs=np.array([[0, 1], [2, 2]]))
    assert_tables_close(metrics, direct.metrics, "metrics")
    assert_tables_close(spec.read_metrics("spectra"), direct.spectra, "spectra")
    assert_tables_close(spec.read_metrics("drift"), direct.drift, "drift")
    # its protocol.py re-runs the same analysis into a new id, with the same numbers
    proc = subprocess.run([sys.executable, "protocol.py"], cwd=vault.specimen_dir(sid),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rerun = vault.get(f"{sid}_rerun")
    assert rerun.parents == commit.parents
    assert rerun.manifest.metadata["chunk_tokens"] == meta["chunk_tokens"]  # the same blocking
    assert_tables_close(vault.specimen(f"{sid}_rerun").read_metrics(), metrics, "rerun metrics")
    assert_tables_close(vault.specimen(f"{sid}_rerun").read_metrics("drift"), direct.drift, "rerun drift")


def test_same_analysis_twice_is_refused_and_options_change_the_id(setup) -> None:
    vault, _ = setup
    first = vault.spectroscopy("acts", sae="sae")
    before = snapshot(vault)
    with pytest.raises(AlreadyExistsError, match="already committed.*same numbers"):
        vault.spectroscopy("acts", sae="sae")
    # the default chunk_tokens named explicitly computes the same blocks: the same analysis
    default_rows = SpectroscopyOptions(chunk_tokens=default_chunk_rows(D_SAE, D))
    with pytest.raises(ImmutableError, match=first.specimen_id):
        vault.spectroscopy("acts", sae="sae", options=default_rows)
    # an explicit id that exists is refused without claiming it holds this analysis
    with pytest.raises(ImmutableError, match="pass another --id") as refused:
        vault.spectroscopy("acts", sae="sae", new_id=first.specimen_id, options=SpectroscopyOptions(keep_bos=True))
    assert "same numbers" not in str(refused.value)
    assert snapshot(vault) == before
    kept = vault.spectroscopy("acts", sae="sae", options=SpectroscopyOptions(keep_bos=True))
    assert kept.specimen_id != first.specimen_id
    assert vault.get(kept.specimen_id).manifest.metadata["bos"] == "kept"
    assert (kept.metrics["n_tokens"] == T).all() and (first.metrics["n_tokens"] == T - 1).all()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sae": "acts"}, InvalidInputError, "not an SAE"),
    ({"sae": "nope"}, NotFoundError, "no specimen nope"),
    ({"sae": "sae", "tensor": "missing"}, NotFoundError, "no tensor"),
    ({"sae": "sae", "pairs": np.array([[0, N]])}, InvalidInputError, "outside"),
    ({"sae": "sae", "new_id": "../evil"}, InvalidInputError, "specimen id"),
    ({"sae": "sae", "options": SpectroscopyOptions(min_activation=-1.0)}, InvalidInputError, "min_activation"),
])
def test_bad_input_writes_nothing(setup, kwargs, error, match) -> None:
    vault, _ = setup
    before = snapshot(vault)
    with pytest.raises(error, match=match):
        vault.spectroscopy("acts", **kwargs)
    assert snapshot(vault) == before


def test_sae_width_mismatch_writes_nothing(setup, tmp_path) -> None:
    vault, _ = setup
    np.savez(tmp_path / "wide.npz", **sae_arrays(d=D + 1))
    before = snapshot(vault)
    with pytest.raises(InvalidInputError, match="expects d=17"):
        vault.spectroscopy("acts", sae=tmp_path / "wide.npz")
    assert snapshot(vault) == before


def test_sae_from_file_has_only_the_activations_as_parent(setup, tmp_path) -> None:
    vault, _ = setup
    np.savez(tmp_path / "params.npz", **sae_arrays())
    result = vault.spectroscopy("acts", sae=tmp_path / "params.npz", new_id="from_file")
    commit = vault.get("from_file")
    assert commit.parents == (vault.resolve("acts"),)
    meta = commit.manifest.metadata["sae"]
    assert meta["file"] == "params.npz" and meta["digest"] == SAE.from_arrays(sae_arrays()).digest
    assert result.specimen_id == "from_file"


def test_reads_activations_block_by_block(setup) -> None:
    """Memory is bounded: no read larger than a block, whatever the tensor's size."""
    vault, x = setup
    tensor = vault.specimen("acts").tensor("activations")
    reads: list[tuple[int, ...]] = []

    class Spy:
        shape, dtype = tensor.shape, tensor.dtype

        def __getitem__(self, key):
            out = tensor[key]
            reads.append(out.shape)
            return out

    a = analyse(Spy(), SAE.from_arrays(sae_arrays()), SpectroscopyOptions(chunk_tokens=8))
    assert len(reads) > 1 and max(r[0] * r[1] for r in reads) <= 8
    whole = analyse(x, SAE.from_arrays(sae_arrays()), SpectroscopyOptions(chunk_tokens=8))
    assert_tables_close(a.metrics, whole.metrics, "metrics")


def test_chunk_tokens_enter_the_id_and_results_agree_within_tolerance(setup) -> None:
    """Another blocking may round differently, so it is another analysis, with equal numbers within RTOL."""
    vault, _ = setup
    pairs = np.array([[0, 1], [3, 4]])
    small = vault.spectroscopy("acts", sae="sae", pairs=pairs, options=SpectroscopyOptions(chunk_tokens=8))
    large = vault.spectroscopy("acts", sae="sae", pairs=pairs, options=SpectroscopyOptions(chunk_tokens=32))
    assert small.specimen_id != large.specimen_id
    assert small.analysis.n_blocks > large.analysis.n_blocks > 1
    for result, rows in ((small, 8), (large, 32)):
        spec = vault.specimen(result.specimen_id)
        assert spec.commit.manifest.metadata["chunk_tokens"] == rows
        assert spec.read_config()["chunk_tokens"] == rows
    for name in ("metrics", "spectra", "tokens", "drift", "absorption"):
        assert_tables_close(getattr(small.analysis, name), getattr(large.analysis, name), name)


def test_numeric_environment_enters_the_id_and_the_manifest(setup, monkeypatch) -> None:
    """Another BLAS, CPU kernel or thread count may round differently: another analysis id."""
    vault, _ = setup
    here = vault.spectroscopy("acts", sae="sae")
    real = numeric_environment()
    elsewhere = {**real, "blas": [{**b, "architecture": "Zen", "num_threads": 64} for b in real["blas"]]}
    monkeypatch.setattr(numerics, "numeric_environment", lambda: elsewhere)
    there = vault.spectroscopy("acts", sae="sae")
    assert there.specimen_id != here.specimen_id
    meta = vault.get(there.specimen_id).manifest.metadata
    assert meta["numerics"] == {"executor": "local", "environments": [elsewhere]}
    assert vault.get(here.specimen_id).manifest.metadata["numerics"]["environments"] == [real]
    assert_tables_close(there.metrics, here.metrics, "metrics")
    with pytest.raises(ImmutableError, match=there.specimen_id):  # the same environment again: same id
        vault.spectroscopy("acts", sae="sae")


def test_dask_on_local_cluster_equals_single_process(setup) -> None:
    distributed = pytest.importorskip("distributed")
    vault, _ = setup
    pairs = np.array([[0, 1], [3, 4], [5, 0]])
    opts = SpectroscopyOptions(chunk_tokens=10)  # several blocks, several tasks
    single = vault.spectroscopy("acts", sae="sae", pairs=pairs, options=opts, new_id="single")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        dist = vault.spectroscopy("acts", sae="sae", pairs=pairs, options=opts, new_id="dist",
                                  scheduler=client)
    meta = vault.get("dist").manifest.metadata
    assert meta["engine"]["executor"] == "dask"
    # the in-process worker shares this process's BLAS; the executor still enters the id
    assert meta["numerics"] == {"executor": "dask", "environments": [numeric_environment()]}
    a, b = single.analysis, dist.analysis
    assert b.n_blocks == a.n_blocks > 1
    for name in ("metrics", "spectra", "tokens", "drift", "absorption"):
        assert_tables_close(getattr(b, name), getattr(a, name), name)


def test_cli_dask_scheduler_address_with_worker_process(setup) -> None:
    """A worker in another process reads the tensor's chunks from the vault by itself."""
    distributed = pytest.importorskip("distributed")
    vault, _ = setup
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        result = run(vault, "spectroscopy", "acts", "--sae", "sae", "--id", "remote",
                     "--chunk-tokens", "16", "--dask-scheduler", cluster.scheduler_address)
    assert result.exit_code == 0, result.output
    local = analyse(activations(), SAE.from_arrays(sae_arrays()), SpectroscopyOptions(chunk_tokens=16))
    remote = vault.specimen("remote").read_metrics()
    assert_tables_close(remote, local.metrics, "metrics")
    # the worker process's environment is recorded (dask may start it with other BLAS threads)
    numeric = vault.get("remote").manifest.metadata["numerics"]
    assert numeric["executor"] == "dask" and len(numeric["environments"]) == 1
    assert numeric["environments"][0]["numpy"] == np.__version__
    bad = run(vault, "spectroscopy", "acts", "--sae", "sae", "--dask-scheduler", "nonsense")
    assert bad.exit_code == 2 and "scheduler address" in bad.output


def test_dask_path_on_plain_and_two_dimensional_arrays() -> None:
    pytest.importorskip("dask")
    from cas_vault.engines.spectroscopy.distributed import analyse_dask

    sae = SAE.from_arrays(sae_arrays())
    x = activations()
    for arr in (x, x[2]):
        opts = SpectroscopyOptions(chunk_tokens=5)
        a, b = analyse(arr, sae, opts), analyse_dask(arr, sae, opts)
        assert_tables_close(b.metrics, a.metrics, "metrics")
    with pytest.raises(InvalidInputError, match="scheduler"):
        analyse_dask(x, sae, scheduler="threads")


def test_dask_default_scheduler(setup) -> None:
    pytest.importorskip("dask")
    vault, _ = setup
    a = vault.spectroscopy("acts", sae="sae", scheduler="dask")
    b = vault.spectroscopy("acts", sae="sae")
    assert a.specimen_id != b.specimen_id  # dask's threads call BLAS concurrently: another executor
    assert_tables_close(a.metrics, b.metrics, "metrics")


# -- CLI -----------------------------------------------------------------------------------------
def run(vault: Vault, *args: str):
    return CliRunner().invoke(cli, ["--vault", str(vault.root), *args])


def test_cli_spectroscopy_prints_the_new_id(setup, tmp_path) -> None:
    vault, _ = setup
    (tmp_path / "pairs.csv").write_text("a,b\n0,1\n1,2\n")
    result = run(vault, "spectroscopy", "acts", "--sae", "sae", "--pairs", str(tmp_path / "pairs.csv"),
                 "--min-activation-rel", "0.1", "--layer", "0")
    assert result.exit_code == 0, result.output
    sid = result.output.strip()
    spec = vault.specimen(sid)
    assert spec.read_metrics("drift").height == 2
    meta = spec.commit.manifest.metadata
    assert meta["thresholds"]["min_activation_rel"] == 0.1 and meta["layer"] == 0
    assert meta["pairs"]["file"] == "pairs.csv"
    shown = run(vault, "spectrum", sid, "--input", "1", "--top", "3")
    assert shown.exit_code == 0, shown.output
    assert f"{sid} input 1" in shown.output and "rank" in shown.output


def test_cli_keep_bos_and_json_pairs(setup, tmp_path) -> None:
    vault, _ = setup
    (tmp_path / "pairs.json").write_text(json.dumps([[0, 5]]))
    result = run(vault, "spectroscopy", "acts", "--sae", "sae", "--keep-bos", "--id", "with_bos",
                 "--pairs", str(tmp_path / "pairs.json"))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "with_bos"
    assert vault.get("with_bos").manifest.metadata["bos"] == "kept"


@pytest.mark.parametrize("args, message", [
    (["--sae", "sae", "--sae-file", "x.npz"], "exactly one"),
    ([], "exactly one"),
    (["--sae", "missing"], "no specimen missing"),
    (["--sae", "sae", "--tensor", "nope"], "no tensor"),
    (["--sae", "sae", "--pairs", "/nonexistent/pairs.csv"], "does not exist"),
])
def test_cli_bad_input_exit_2(setup, args, message) -> None:
    vault, _ = setup
    before = snapshot(vault)
    result = run(vault, "spectroscopy", "acts", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert snapshot(vault) == before


def test_cli_prints_an_empty_spectrum(vault: Vault) -> None:
    wd = vault.new("quiet", domain="interpretability", method="sae_analysis")
    SpecimenStorage(wd).write_tensors("activations", np.zeros((2, 4, D), np.float32))
    vault.commit("quiet")
    arrays = sae_arrays()
    arrays["b_enc"] = np.full(D_SAE, -10.0, np.float32)  # nothing ever fires
    wd = vault.new("dead_sae", domain="interpretability", method="sae_analysis")
    for name, arr in arrays.items():
        SpecimenStorage(wd).write_tensors(name, arr)
    vault.commit("dead_sae")
    result = run(vault, "spectroscopy", "quiet", "--sae", "dead_sae", "--id", "empty_result")
    assert result.exit_code == 0, result.output
    assert vault.get("empty_result").message.endswith("2 empty spectra")
    shown = run(vault, "spectrum", "empty_result", "--input", "0")
    assert shown.exit_code == 0, shown.output
    assert "0 features" in shown.output and "empty" in shown.output
    missing = run(vault, "spectrum", "empty_result", "--input", "7")
    assert missing.exit_code == 2 and "no input 7" in missing.output
    not_spectro = run(vault, "spectrum", "quiet")
    assert not_spectro.exit_code == 2 and "not a spectroscopy result" in not_spectro.output


# -- demo ----------------------------------------------------------------------------------------
def test_demo_runs_the_three_node_lineage(tmp_path) -> None:
    from cas_vault.demo import SAE_ACTS_ID, SAE_WEIGHTS_ID, SPECTRO_ID, run_demo

    result = run_demo(tmp_path / "demo")
    vault = result.vault
    assert {SAE_ACTS_ID, SAE_WEIGHTS_ID, SPECTRO_ID} <= set(result.committed)
    commit = vault.get(SPECTRO_ID)
    assert commit.parents == (vault.resolve(SAE_ACTS_ID), vault.resolve(SAE_WEIGHTS_ID))
    metrics = vault.specimen(SPECTRO_ID).read_metrics()
    assert metrics.height == 12 and (metrics["n_tokens"] == 32).all()
    assert vault.specimen(SPECTRO_ID).read_metrics("drift").height == 16
    report = "\n".join(result.report())
    assert "log --graph" in report and "query" in report
    again = run_demo(tmp_path / "demo")
    assert not again.committed and SPECTRO_ID in again.existing
    if hasattr(vault, "query"):  # the catalog: the report's join must run as printed
        from cas_vault.demo import SPECTRO_QUERY

        rows = vault.query(SPECTRO_QUERY)
        frame = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows)
        assert frame.height == 6  # 3 inputs x 2 parents
