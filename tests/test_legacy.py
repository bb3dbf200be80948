"""`vault import-legacy`: a realistic seed checkout with real Parquet and Zarr v2/v3 stores."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import numpy as np
import polars as pl
import pytest
import zarr
from click.testing import CliRunner

from cas_vault import Vault
from cas_vault.cli import cli
from cas_vault.errors import NotFoundError

CREATED = "2024-12-19T10:00:00.123456+00:00"


def _manifest(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgpack.packb(value))


def _metrics(path: Path, n: int, seed: int) -> pl.DataFrame:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    df = pl.DataFrame({"step": np.arange(n), "loss": rng.random(n), "run_id": ["r"] * n})
    df.write_parquet(path)
    return df


def _zarr(path: Path, fmt: int, seed: int) -> np.ndarray:
    data = np.random.default_rng(seed).standard_normal((40, 16)).astype(np.float32)
    z = zarr.create_array(store=str(path), shape=data.shape, dtype=data.dtype, chunks=(10, 16),
                          zarr_format=fmt)
    z[...] = data
    return data


@pytest.fixture
def seed_checkout(tmp_path: Path) -> dict[str, object]:
    """A seed repository in both layouts, plus broken specimens."""
    root = tmp_path / "experiments"
    sp = root / "specimens"
    out: dict[str, object] = {"root": root}
    # 1. The original layout: strata/ with metrics and a Zarr v3 tensor; scaffold manifest.
    a = sp / "2024_12_19_sae_probe"
    _manifest(a / "manifest.msgpack", {
        "specimen_id": a.name, "created": CREATED,
        "taxonomy": {"domain": "interpretability", "method": "sae_analysis"},
        "status": "active", "artifacts": {"activations": "strata/activations.zarr"},
        "tags": ["gpt2", "layer_12"],
    })
    (a / "protocol.py").write_text("print('sae probe')\n")
    (a / "field_notes.md").write_text("# Field Notes: sae probe\n\nobservations\n")
    out["a_metrics"] = _metrics(a / "strata" / "metrics.parquet", 30, 1)
    out["a_tensor"] = _zarr(a / "strata" / "activations.zarr", 3, 2)
    # 2. The runs layout: two runs (one with a Zarr v2 tensor), no strata/, an extra file.
    b = sp / "2025_12_22_vn_extended_metrics"
    _manifest(b / "manifest.msgpack", {
        "specimen_id": b.name, "created": CREATED, "domain": "training", "method": "fine_tuning",
        "model": "gemma-2-2b", "tags": "vn,extended", "dependencies": ["torch==2.1"],
    })
    (b / "protocol.py").write_text("print('runs')\n")
    (b / "field_notes.md").write_text("shared notes\n")
    (b / "README.md").write_text("readme\n")
    r1 = b / "runs" / "20251222_203041"
    out["r1_metrics"] = _metrics(r1 / "metrics.parquet", 12, 3)
    _manifest(r1 / "manifest.msgpack", {"run_id": r1.name, "run_timestamp": "2025-12-22T20:30:41",
                                        "tags": ["vn", "run1"], "lr": 0.001})
    out["r1_tensor"] = _zarr(r1 / "acts.zarr", 2, 4)
    r2 = b / "runs" / "20251222_203349"
    out["r2_metrics"] = _metrics(r2 / "metrics.parquet", 15, 5)
    _manifest(r2 / "manifest.msgpack", {"run_id": r2.name, "lr": 0.0003})
    # A run whose manifest is corrupt: imported with its specimen's fields, and reported.
    r3 = b / "runs" / "20251223_143022"
    _metrics(r3 / "metrics.parquet", 5, 6)
    (r3 / "manifest.msgpack").write_bytes(b"\xc1\xc1 not msgpack")
    # 3. Manifest only inside strata/ (as some seed specimens have it).
    c = sp / "2025_12_20_hallucination_biopsy"
    _manifest(c / "strata" / "manifest.msgpack", {
        "domain": "alignment", "method": "probe_training", "created": CREATED})
    _metrics(c / "strata" / "metrics.parquet", 8, 7)
    # 4. Broken ones: no manifest, corrupt manifest, outside the taxonomy.
    (sp / "2024_12_20_vn_convergence_velocity").mkdir(parents=True)
    (sp / "2024_12_20_vn_convergence_velocity" / "protocol.py").write_text("x = 1\n")
    d = sp / "2024_12_20_corrupt"
    d.mkdir()
    (d / "manifest.msgpack").write_bytes(b"\x85\xa3abc")  # truncated map
    _manifest(sp / "2024_12_21_astrology" / "manifest.msgpack",
              {"taxonomy": {"domain": "astrology", "method": "sae_analysis"}})
    return out


def test_import_maps_layouts_runs_fields_and_files(vault: Vault, seed_checkout, tmp_path) -> None:
    report = vault.import_legacy(seed_checkout["root"])
    ids = sorted(i.specimen_id for i in report.imported)
    b = "2025_12_22_vn_extended_metrics"
    assert ids == sorted([
        "2024_12_19_sae_probe", "2025_12_20_hallucination_biopsy", b,
        f"{b}.run_20251222_203041", f"{b}.run_20251222_203349", f"{b}.run_20251223_143022",
    ])
    # Specimen from strata/: fields mapped, unknown fields kept, files copied byte for byte.
    a = vault.get("2024_12_19_sae_probe")
    assert (a.manifest.domain, a.manifest.method) == ("interpretability", "sae_analysis")
    assert a.manifest.tags == ("gpt2", "layer_12")
    legacy = a.manifest.metadata["legacy"]
    assert legacy["created"] == CREATED and legacy["layout"] == "specimen"
    assert legacy["fields"] == {"status": "active",
                                "artifacts": {"activations": "strata/activations.zarr"}}
    assert vault.specimen("2024_12_19_sae_probe").read_metrics().equals(seed_checkout["a_metrics"])
    assert vault.specimen("2024_12_19_sae_probe").read_bytes("protocol.py") == b"print('sae probe')\n"
    out = vault.checkout("2024_12_19_sae_probe", tmp_path / "co_a")
    np.testing.assert_array_equal(zarr.open_array(str(out / "strata" / "activations.zarr"))[...],
                                  seed_checkout["a_tensor"])
    assert any(k.startswith("strata/activations.zarr/") and e.kind == "zarr" for k, e in a.tree.items())
    # The runs layout: base specimen + one child specimen per run, parent = base.
    base = vault.get(b)
    assert base.manifest.model == "gemma-2-2b" and base.manifest.tags == ("vn", "extended")
    assert base.manifest.metadata["legacy"]["fields"] == {"dependencies": ["torch==2.1"]}
    assert "README.md" in base.tree and not any(p.startswith("runs/") for p in base.tree)
    run1 = vault.get(f"{b}.run_20251222_203041")
    assert run1.parents == (vault.resolve(b),)
    assert run1.manifest.tags == ("vn", "run1")           # the run's own fields win
    assert run1.manifest.model == "gemma-2-2b"             # inherited
    meta = run1.manifest.metadata["legacy"]
    assert meta["run"] == "20251222_203041" and meta["layout"] == "run"
    assert meta["fields"]["lr"] == 0.001 and meta["fields"]["dependencies"] == ["torch==2.1"]
    assert {"protocol.py", "field_notes.md", "strata/metrics.parquet",
            "strata/manifest.msgpack"} <= set(run1.tree)
    assert run1.tree["protocol.py"] == base.tree["protocol.py"]  # shared, deduplicated
    assert vault.specimen(f"{b}.run_20251222_203041").read_metrics().equals(seed_checkout["r1_metrics"])
    assert vault.specimen(f"{b}.run_20251222_203349").read_metrics().equals(seed_checkout["r2_metrics"])
    out = vault.checkout(f"{b}.run_20251222_203041", tmp_path / "co_r1")
    np.testing.assert_array_equal(zarr.open_array(str(out / "strata" / "acts.zarr"))[...],
                                  seed_checkout["r1_tensor"])
    assert (out / "strata" / "acts.zarr" / ".zarray").is_file()  # v2 store kept as it was
    # Manifest found in strata/.
    c = vault.get("2025_12_20_hallucination_biopsy")
    assert (c.manifest.domain, c.manifest.method) == ("alignment", "probe_training")
    # Problems: each named, with the reason; the rest imported.
    problems = {Path(p.source).name: p.message for p in report.problems}
    assert set(problems) == {"2024_12_20_vn_convergence_velocity", "2024_12_20_corrupt",
                             "2024_12_21_astrology", "20251223_143022"}
    assert "no manifest.msgpack" in problems["2024_12_20_vn_convergence_velocity"]
    assert "not valid msgpack" in problems["2024_12_20_corrupt"]
    assert "astrology" in problems["2024_12_21_astrology"]
    assert "specimen's fields" in problems["20251223_143022"]
    for broken in ("2024_12_20_vn_convergence_velocity", "2024_12_20_corrupt", "2024_12_21_astrology"):
        assert vault.refs.get(broken) is None and not vault.specimen_dir(broken).exists()


def test_import_twice_adds_nothing(vault: Vault, seed_checkout) -> None:
    first = vault.import_legacy(seed_checkout["root"])
    refs_before = vault.refs.all()
    journal = (vault.root / "journal").read_bytes()
    second = vault.import_legacy(seed_checkout["root"])
    assert second.imported == []
    assert sorted(second.already) == sorted(i.specimen_id for i in first.imported)
    assert vault.refs.all() == refs_before
    assert (vault.root / "journal").read_bytes() == journal
    # A run added later is imported on the next pass, and only it.
    b = seed_checkout["root"] / "specimens" / "2025_12_22_vn_extended_metrics"
    _metrics(b / "runs" / "20260101_000000" / "metrics.parquet", 4, 9)
    third = vault.import_legacy(seed_checkout["root"])
    assert [i.specimen_id for i in third.imported] == [
        "2025_12_22_vn_extended_metrics.run_20260101_000000"]


def test_interrupted_import_is_redone_and_foreign_specimens_are_left(vault: Vault, seed_checkout) -> None:
    src = seed_checkout["root"] / "specimens" / "2024_12_19_sae_probe"
    # A crash after Vault.new and before the commit left this working directory.
    vault.new(src.name, domain="interpretability", method="sae_analysis",
              metadata={"legacy": {"source": str(src.resolve())}})
    # A user's own committed specimen that happens to share a legacy id.
    vault.new("2025_12_20_hallucination_biopsy", domain="training", method="fine_tuning")
    vault.commit("2025_12_20_hallucination_biopsy")
    own = vault.resolve("2025_12_20_hallucination_biopsy")
    report = vault.import_legacy(seed_checkout["root"] / "specimens")
    assert "2024_12_19_sae_probe" in {i.specimen_id for i in report.imported}
    assert vault.resolve("2025_12_20_hallucination_biopsy") == own
    assert any("already exists" in p.message for p in report.problems)


def test_single_specimen_directory_and_missing_path(vault: Vault, seed_checkout, tmp_path) -> None:
    report = vault.import_legacy(seed_checkout["root"] / "specimens" / "2024_12_19_sae_probe")
    assert [i.specimen_id for i in report.imported] == ["2024_12_19_sae_probe"] and report.ok
    with pytest.raises(NotFoundError):
        vault.import_legacy(tmp_path / "nope")


def test_cli_import_legacy_reports_and_exit_codes(vault: Vault, seed_checkout) -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["--vault", str(vault.root), "import-legacy", str(seed_checkout["root"])])
    assert r.exit_code == 1, r.output  # problems were found, the rest was imported
    assert "imported  2024_12_19_sae_probe" in r.output
    assert "6 imported, 0 already there, 4 problem(s)" in r.output
    assert "2024_12_21_astrology" in r.output
    r = runner.invoke(cli, ["--vault", str(vault.root), "import-legacy", "--json",
                            str(seed_checkout["root"])])
    assert r.exit_code == 1, r.output
    data = json.loads(r.output)
    assert data["imported"] == [] and len(data["already_imported"]) == 6
    assert data["ok"] is False and len(data["problems"]) == 3  # the corrupt run is in already
    r = runner.invoke(cli, ["--vault", str(vault.root), "import-legacy", "/nonexistent/x"])
    assert r.exit_code == 2, r.output
