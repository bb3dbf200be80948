"""Runs in the vault: a protocol written against the original's runs-era API, run again and
again with commits in between, and the same mapping for runs brought in by ``import-legacy``."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import numpy as np
import polars as pl
import pytest
import zarr
from click.testing import CliRunner

from cas_vault import SpecimenStorage, Vault, VaultQuery
from cas_vault.cli import cli
from cas_vault.errors import ImmutableError, NotFoundError

SID = "2025_01_02_sweep"
RUNS = ("20250102_090000", "20250102_100000", "20250103_080000")


def protocol(specimen_dir: Path, run_id: str, lr: float) -> None:
    """A protocol as the original's are written: one storage per execution, a new run each."""
    storage = SpecimenStorage(specimen_dir, run_id=run_id)
    storage.write_manifest({"config": {"lr": lr}, "model": "tiny"})
    steps = np.arange(20)
    storage.write_metrics({"step": steps, "loss": np.exp(-lr * steps)})
    storage.write_tensors("weights", np.full((30, 8), lr, dtype=np.float32), chunks=(10, 8))


def _run_three_times(vault: Vault) -> list[str]:
    """Run the protocol three times, committing after each; return the commit digests."""
    wd = vault.new(SID, domain="training", method="fine_tuning", tags=["sweep"])
    digests = []
    for i, run_id in enumerate(RUNS):
        protocol(wd, run_id, lr=0.1 * (i + 1))
        digests.append(vault.commit(SID, message=f"lr {0.1 * (i + 1):.1f}").digest)
    return digests


def test_each_commit_seals_the_new_run_with_the_previous_one_as_parent(vault: Vault) -> None:
    digests = _run_three_times(vault)
    own = vault.resolve(SID)
    run_ids = [f"{SID}.run_{r}" for r in RUNS]
    assert [vault.resolve(r) for r in run_ids] == digests
    # Lineage: specimen <- run 1 <- run 2 <- run 3.
    assert [vault.get(r).parents for r in run_ids] == [(own,), (digests[0],), (digests[1],)]
    assert vault.runs(SID) == list(reversed(RUNS))          # newest first, like list_runs()
    assert vault.latest(SID) == digests[-1]
    # The specimen's own commit holds no run; each run's commit holds its run only, under
    # strata/, with the shared protocol and notes and a manifest of its own.
    assert not any(p.startswith(("runs/", "strata/")) for p in vault.get(SID).tree)
    for run, rid in zip(RUNS, run_ids):
        c = vault.get(rid)
        assert c.manifest.run == (SID, run)
        assert {"protocol.py", "field_notes.md", "manifest.msgpack", "strata/metrics.parquet",
                "strata/manifest.msgpack"} <= set(c.tree)
        assert not any(p.startswith("runs/") for p in c.tree)
        manifest = msgpack.unpackb(vault.specimen(rid).read_bytes("manifest.msgpack"))
        assert (manifest["specimen_id"], manifest["parents"]) == (rid, [SID])
    assert vault.verify().ok


def test_runs_read_back_run_by_run(vault: Vault) -> None:
    _run_three_times(vault)
    wd = vault.specimen_dir(SID)
    for i, run in enumerate(RUNS):
        lr = 0.1 * (i + 1)
        sealed = vault.specimen(f"{SID}.run_{run}")
        df = sealed.read_metrics()
        np.testing.assert_allclose(df["loss"].to_numpy(), np.exp(-lr * np.arange(20)), rtol=0)
        assert df["run_id"].unique().to_list() == [run]
        np.testing.assert_array_equal(sealed.tensor("weights")[...],
                                      np.full((30, 8), lr, dtype=np.float32))
        # The working directory answers the same through the original's API.
        assert SpecimenStorage(wd).read_metrics(run_id=run).equals(df)
    assert SpecimenStorage(wd).list_runs() == list(reversed(RUNS))
    q = VaultQuery(vault)
    runs = q.runs(SID)
    assert runs["run_id"].to_list() == list(reversed(RUNS))
    assert runs["specimen_id"].unique().to_list() == [SID]
    assert [json.loads(c)["lr"] for c in runs["config"]] == pytest.approx([0.3, 0.2, 0.1])
    assert runs["created"].to_list()[-1].isoformat() == "2025-01-02T09:00:00"  # the run id's time
    newest = q.run_metrics(SID)
    assert newest["run_id"].unique().to_list() == [RUNS[-1]]
    assert q.run_metrics(SID, RUNS[0])["run_id"].unique().to_list() == [RUNS[0]]
    every = q.search(f"SELECT run_id, count(*) AS n FROM exp_{SID} GROUP BY run_id ORDER BY run_id")
    assert every.rows() == [(r, 20) for r in RUNS]
    with pytest.raises(NotFoundError, match=RUNS[-1]):
        q.run_metrics(SID, "20990101_000000")


def test_show_shows_the_newest_run_the_count_and_any_run(vault: Vault) -> None:
    _run_three_times(vault)
    info = vault.show(SID)
    assert (info.run, info.runs) == (RUNS[-1], tuple(reversed(RUNS)))
    assert info.specimen_id == f"{SID}.run_{RUNS[-1]}"
    assert vault.show(SID, run=RUNS[0]).digest == vault.resolve(f"{SID}.run_{RUNS[0]}")
    with pytest.raises(NotFoundError, match="newest first: " + RUNS[-1]):
        vault.show(SID, run="nope")
    runner = CliRunner()
    out = runner.invoke(cli, ["--vault", str(vault.root), "show", SID])
    assert out.exit_code == 0, out.output
    assert f"runs      3 (newest first): {RUNS[2]}, {RUNS[1]}, {RUNS[0]}" in out.output
    assert f"run       {RUNS[2]}  (the newest)" in out.output
    out = runner.invoke(cli, ["--vault", str(vault.root), "show", SID, "--run", RUNS[1], "--json"])
    shown = json.loads(out.output)
    assert (shown["run"], shown["runs"]) == (RUNS[1], list(reversed(RUNS)))
    out = runner.invoke(cli, ["--vault", str(vault.root), "show", SID, "--run", "nope"])
    assert out.exit_code == 2 and "newest first" in out.output


def test_earlier_runs_stay_sealed_and_unchanged(vault: Vault) -> None:
    wd = vault.new(SID, domain="training", method="fine_tuning")
    protocol(wd, RUNS[0], 0.1)
    vault.commit(SID)
    first = vault.resolve(f"{SID}.run_{RUNS[0]}")
    tree = dict(vault.get(f"{SID}.run_{RUNS[0]}").tree)
    # The sealed run refuses every write through the API, and nothing changes.
    old = SpecimenStorage(wd, run_id=RUNS[0])
    with pytest.raises(RuntimeError):
        old.write_metrics({"step": [0], "loss": [9.0]}, overwrite=True)
    with pytest.raises(RuntimeError):
        old.write_tensors("weights", np.zeros((2, 2), dtype=np.float32))
    # Nothing new: commit refuses, naming the commit and what to do.
    with pytest.raises(ImmutableError, match="run its protocol again"):
        vault.commit(SID)
    protocol(wd, RUNS[1], 0.2)
    result = CliRunner().invoke(cli, ["--vault", str(vault.root), "commit", SID, "-m", "two"])
    assert result.exit_code == 0, result.output
    assert f"sealed run {RUNS[1]} as {SID}.run_{RUNS[1]}" in result.output
    assert vault.resolve(f"{SID}.run_{RUNS[1]}") in result.output
    assert vault.resolve(f"{SID}.run_{RUNS[0]}") == first
    assert dict(vault.get(f"{SID}.run_{RUNS[0]}").tree) == tree
    assert vault.verify().ok


def test_several_new_runs_are_sealed_oldest_first_in_one_commit(vault: Vault) -> None:
    wd = vault.new(SID, domain="training", method="fine_tuning")
    for i, run in enumerate(reversed(RUNS)):  # written in any order
        protocol(wd, run, 0.1 * (i + 1))
    (wd / "runs" / "20250104_000000").mkdir()  # made but never written to: nothing to seal
    last = vault.commit(SID)
    assert last.specimen_id == f"{SID}.run_{RUNS[-1]}"
    parents = [vault.get(f"{SID}.run_{r}").parents[0] for r in RUNS]
    assert parents == [vault.resolve(SID), vault.resolve(f"{SID}.run_{RUNS[0]}"),
                       vault.resolve(f"{SID}.run_{RUNS[1]}")]
    assert vault.runs(SID) == list(reversed(RUNS))


def test_a_specimen_that_only_looks_like_a_run_is_not_one(vault: Vault) -> None:
    wd = vault.new(SID, domain="training", method="fine_tuning")
    protocol(wd, RUNS[0], 0.1)
    vault.commit(SID)
    vault.new(f"{SID}.run_19990101_000000", domain="training", method="fine_tuning")
    vault.commit(f"{SID}.run_19990101_000000")
    assert vault.runs(SID) == [RUNS[0]]


# -- import-legacy uses the same mapping ---------------------------------------------------------
def _zarr(path: Path, fmt: int, data: np.ndarray) -> None:
    z = zarr.create_array(store=str(path), shape=data.shape, dtype=data.dtype, chunks=(5, 4),
                          zarr_format=fmt)
    z[...] = data


@pytest.fixture
def runs_tree(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A legacy specimen in the runs layout: mixed Zarr v2/v3 tensors, run configs, no
    specimen-level created; and one without a manifest at all."""
    sp = tmp_path / "legacy" / "specimens"
    a = sp / "2025_03_01_probe_sweep"
    (a / "runs").mkdir(parents=True)
    (a / "manifest.msgpack").write_bytes(msgpack.packb(
        {"specimen_id": a.name, "domain": "interpretability", "method": "sae_analysis",
         "created": "2025-03-01T09:00:00+01:00"}))
    (a / "protocol.py").write_text("print('probe')\n")
    tensors = {}
    for i, (run, fmt, key) in enumerate([("20250301_101500", 2, "config"),
                                         ("20250301_113000", 3, "configuration"),
                                         ("20250302_090000", 2, None)]):
        r = a / "runs" / run
        r.mkdir()
        pl.DataFrame({"step": [0, 1, 2], "loss": [1.0, 0.5, 0.25 * (i + 1)],
                      "run_id": [run] * 3}).write_parquet(r / "metrics.parquet")
        manifest = {"run_id": run}
        if key:
            manifest[key] = {"layer": i}
        (r / "manifest.msgpack").write_bytes(msgpack.packb(manifest))
        data = np.arange(20 * 4, dtype=np.float32).reshape(20, 4) * (i + 1)
        _zarr(r / "acts.zarr", fmt, data)
        tensors[run] = data
    # No manifest: domain and method come from its newest run manifest that has them.
    b = sp / "2025_03_05_orphan"
    (b / "runs" / "20250305_120000").mkdir(parents=True)
    pl.DataFrame({"step": [0], "loss": [0.1]}).write_parquet(
        b / "runs" / "20250305_120000" / "metrics.parquet")
    (b / "runs" / "20250305_120000" / "manifest.msgpack").write_bytes(msgpack.packb(
        {"domain": "training", "method": "fine_tuning"}))
    # No manifest anywhere: the method comes from the id.
    c = sp / "2025_03_06_sae_analysis_layers"
    (c / "runs" / "20250306_120000").mkdir(parents=True)
    pl.DataFrame({"step": [0], "loss": [0.2]}).write_parquet(
        c / "runs" / "20250306_120000" / "metrics.parquet")
    return tmp_path / "legacy", tensors


def test_import_gives_runs_the_mapping_a_vault_gives_them(vault: Vault, runs_tree) -> None:
    root, tensors = runs_tree
    report = vault.import_legacy(root)
    assert report.ok, report.problems
    sid = "2025_03_01_probe_sweep"
    runs = sorted(tensors)
    assert vault.runs(sid) == list(reversed(runs))
    previous = vault.resolve(sid)
    for run in runs:
        c = vault.get(f"{sid}.run_{run}")
        assert c.manifest.run == (sid, run) and c.parents == (previous,)
        previous = vault.resolve(f"{sid}.run_{run}")
        # Zarr v2 and v3 tensors read back value by value, from the objects and a checkout.
        np.testing.assert_array_equal(vault.specimen(f"{sid}.run_{run}").tensor("acts")[...],
                                      tensors[run])
    # The same shape of commit as a run sealed in a vault.
    live = Vault.init(vault.root.parent / "live")
    wd = live.new(sid, domain="interpretability", method="sae_analysis")
    protocol(wd, runs[0], 0.1)
    live.commit(sid)
    imported, sealed = vault.get(f"{sid}.run_{runs[0]}"), live.get(f"{sid}.run_{runs[0]}")
    assert {p for p in imported.tree if "/" not in p or p.count("/") == 1} >= \
        {"protocol.py", "manifest.msgpack", "strata/metrics.parquet", "strata/manifest.msgpack"}
    assert {p.split("/")[0] for p in sealed.tree} <= {p.split("/")[0] for p in imported.tree} | \
        {"field_notes.md"}
    assert sealed.manifest.run == imported.manifest.run
    q = VaultQuery(vault).runs(sid)
    assert q["run_id"].to_list() == list(reversed(runs))
    # The experiment's own dates, not the import's; the import's time is kept as committed.
    assert [t.isoformat() for t in q["created"]] == [
        "2025-03-02T09:00:00", "2025-03-01T11:30:00", "2025-03-01T10:15:00"]
    assert all(t.year > 2025 for t in q["committed"])
    own = vault.query("SELECT created, committed FROM catalog WHERE specimen_id = ?", [sid])
    assert own["created"][0].isoformat() == "2025-03-01T08:00:00"  # its manifest's, in UTC
    assert own["committed"][0].year > 2025
    # Run configs fill the config column, under either name.
    assert [json.loads(c) if c else None for c in q["config"]] == [None, {"layer": 1},
                                                                    {"layer": 0}]
    # exp_<id> is every run's metrics, each row with its run_id.
    every = vault.query(f"SELECT run_id, max(loss) AS l FROM exp_{sid} GROUP BY run_id ORDER BY 1")
    assert every.rows() == [(runs[0], 1.0), (runs[1], 1.0), (runs[2], 1.0)]


def test_import_infers_domain_and_method_and_says_so(vault: Vault, runs_tree) -> None:
    root, _ = runs_tree
    report = vault.import_legacy(root)
    inferred = {i.specimen_id: (i.domain, i.method, i.source) for i in report.inferred}
    assert inferred["2025_03_05_orphan"][:2] == ("training", "fine_tuning")
    assert inferred["2025_03_05_orphan"][2].endswith("runs/20250305_120000/manifest.msgpack")
    assert inferred["2025_03_06_sae_analysis_layers"] == ("interpretability", "sae_analysis",
                                                          "the specimen id")
    c = vault.get("2025_03_05_orphan")
    assert (c.manifest.domain, c.manifest.method) == ("training", "fine_tuning")
    assert c.manifest.metadata["legacy"]["inferred"]["from"].endswith("manifest.msgpack")
    assert vault.runs("2025_03_05_orphan") == ["20250305_120000"]
    assert report.to_dict()["inferred"][0]["specimen_id"] in inferred


def test_the_runs_template_protocol_run_twice_from_the_command_line(vault: Vault) -> None:
    """`vault new --layout runs`, then the scaffolded protocol run as a script, commit, again."""
    import subprocess
    import sys

    runner = CliRunner()
    sid = "2025_02_01_template"
    r = runner.invoke(cli, ["--vault", str(vault.root), "new", sid, "--domain", "training",
                            "--method", "fine_tuning", "--layout", "runs"])
    assert r.exit_code == 0, r.output
    wd = vault.specimen_dir(sid)
    assert (wd / "runs").is_dir() and not (wd / "strata").exists()
    sealed = []
    for _ in range(2):
        subprocess.run([sys.executable, "protocol.py"], cwd=wd, check=True, timeout=300)
        r = runner.invoke(cli, ["--vault", str(vault.root), "commit", sid])
        assert r.exit_code == 0, r.output
        sealed = vault.runs(sid)
    assert len(sealed) == 2 and sealed == SpecimenStorage(wd).list_runs()
    for run in sealed:
        df = vault.specimen(f"{sid}.run_{run}").read_metrics()
        assert df.height == 100 and df["run_id"].unique().to_list() == [run]
        assert vault.specimen(f"{sid}.run_{run}").tensor("activations").shape == (100, 768)
    bad = runner.invoke(cli, ["--vault", str(vault.root), "new", "x_y", "--domain", "training",
                              "--method", "fine_tuning", "--layout", "columns"])
    assert bad.exit_code == 2 and "columns" in bad.output and not vault.specimen_dir("x_y").exists()


RUNS_PROTOCOL = '''
import sys
from pathlib import Path

import numpy as np

from cas_vault import SpecimenStorage

storage = SpecimenStorage(Path(__file__).parent)
storage.write_metrics({"step": [0, 1], "loss": [1.0, float(sys.argv[1])]})
storage.write_tensors("w", np.full((4, 4), float(sys.argv[1]), dtype=np.float32))
print("loss", sys.argv[1])
if sys.argv[1] == "fail":
    raise SystemExit(3)
'''


def test_vault_run_adds_a_run_to_a_committed_specimen_and_sets_failures_aside(vault: Vault) -> None:
    from cas_vault.errors import RunFailedError

    wd = vault.new(SID, domain="training", method="fine_tuning", layout="runs")
    (wd / "protocol.py").write_text(RUNS_PROTOCOL)
    first = vault.run(SID, ["0.5"])
    assert first.commit.manifest.run is not None
    (run1,) = vault.runs(SID)
    second = vault.run(SID, ["0.25"])  # committed already: a new run, sealed on its own
    run2 = second.commit.manifest.run[1]
    assert vault.runs(SID) == [run2, run1] and run2 != run1
    # The log is the run's, and so is the provenance.
    sealed = vault.specimen(f"{SID}.run_{run2}")
    assert b"loss 0.25" in sealed.read_bytes("strata/run.log")
    prov = sealed.commit.manifest.metadata["provenance"]
    assert prov["log"] == "strata/run.log" and prov["command"] == ["protocol.py", "0.25"]
    assert vault.get(f"{SID}.run_{run2}").parents == (vault.resolve(f"{SID}.run_{run1}"),)
    # A failed execution: nothing sealed, its run set aside, the next commit has nothing new.
    (wd / "protocol.py").write_text(RUNS_PROTOCOL.replace('float(sys.argv[1])', '0.0'))
    with pytest.raises(RunFailedError) as failed:
        vault.run(SID, ["fail"])
    assert "failed_runs" in str(failed.value)
    assert sorted(p.name for p in (wd / "runs").iterdir()) == sorted([run1, run2])
    index = msgpack.unpackb((wd / ".cas" / "index.msgpack").read_bytes())
    assert {k.split("/")[1] for k in index if k.startswith("runs/")} == {run1, run2}
    with pytest.raises(ImmutableError):
        vault.commit(SID)
    assert vault.runs(SID) == [run2, run1]
    assert vault.verify().ok


def test_verify_checks_each_run_against_its_own_commit(vault: Vault) -> None:
    wd = vault.new(SID, domain="training", method="fine_tuning")
    protocol(wd, RUNS[0], 0.1)
    vault.commit(SID)
    report = vault.verify()
    assert report.ok and report.info == ()  # sealed runs are not "added" files nor workdir-less
    # Written behind the API's back: verify names the run's commit and what to do.
    metrics = wd / "runs" / RUNS[0] / "metrics.parquet"
    metrics.chmod(0o644)
    metrics.write_bytes(metrics.read_bytes()[:-8] + b"tampered")
    SpecimenStorage(wd, run_id=RUNS[1]).write_metrics({"step": [0], "loss": [1.0]})
    report = vault.verify()
    assert report.ok  # the sealed bytes are in objects/, intact
    kinds = {(i.kind, i.specimen) for i in report.info}
    assert ("workdir_modified", f"{SID}.run_{RUNS[0]}") in kinds
    assert ("unsealed_run", SID) in kinds and len(kinds) == 2
    (unsealed,) = [i for i in report.info if i.kind == "unsealed_run"]
    assert f"runs/{RUNS[1]}" in unsealed.message and f"vault commit {SID}" in unsealed.message
