"""`vault import-legacy`: a realistic seed checkout with real Parquet and Zarr v2/v3 stores."""

from __future__ import annotations

import json
import os
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


# -- links and special files: never followed, never copied, each one reported ------------------
SECRET = b"TOP-SECRET-" + bytes.fromhex("5ec12e7c0ffee0ddba11")
DIR_SECRET = b"OUTSIDE-DIR-SECRET-" + bytes.fromhex("a11ce5b0b5ec12e7")
FIELD_SECRET = "field-secret-from-outside-9f3c"


def _seed_specimen(path: Path, **extra: object) -> None:
    _manifest(path / "manifest.msgpack", {"domain": "training", "method": "fine_tuning", **extra})
    (path / "protocol.py").write_text(f"print({path.name!r})\n")
    (path / "strata").mkdir(exist_ok=True)
    (path / "strata" / "notes.txt").write_text("fine\n")


@pytest.fixture
def hostile_checkout(tmp_path: Path) -> dict[str, Path]:
    """A seed checkout whose specimens hold links (out of and inside the tree) and a FIFO."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "private").mkdir()
    (outside / "private" / "key.bin").write_bytes(DIR_SECRET)
    _manifest(outside / "manifest.msgpack", {"domain": "training", "method": "fine_tuning",
                                             "stolen": FIELD_SECRET})
    _seed_specimen(outside / "elsewhere")
    (outside / "elsewhere" / "strata" / "loot.txt").write_bytes(SECRET)
    sp = tmp_path / "experiments" / "specimens"
    p: dict[str, Path] = {"root": tmp_path / "experiments", "outside": outside}
    _seed_specimen(sp / "2024_01_01_clean")
    a = sp / "2024_01_02_file_link"
    _seed_specimen(a)
    (a / "strata" / "secret.txt").symlink_to(outside / "secret.txt")
    p["file_link"] = a / "strata" / "secret.txt"
    b = sp / "2024_01_03_dir_link"
    _seed_specimen(b)
    (b / "strata" / "private").symlink_to(outside / "private", target_is_directory=True)
    p["dir_link"] = b / "strata" / "private"
    c = sp / "2024_01_04_fifo"
    _seed_specimen(c)
    (c / "strata" / "deep").mkdir()
    os.mkfifo(c / "strata" / "deep" / "pipe")
    p["fifo"] = c / "strata" / "deep" / "pipe"
    d = sp / "2024_01_05_inner_link"  # a link that stays inside the tree: not followed either
    _seed_specimen(d)
    (d / "strata" / "again.txt").symlink_to("notes.txt")
    p["inner_link"] = d / "strata" / "again.txt"
    e = sp / "2024_01_06_manifest_link"  # its fields would come from outside
    e.mkdir(parents=True)
    (e / "manifest.msgpack").symlink_to(outside / "manifest.msgpack")
    (e / "protocol.py").write_text("x = 1\n")
    f = sp / "2024_01_07_runs"  # the specimen is clean; one of its runs is not
    _seed_specimen(f)
    _metrics(f / "runs" / "20240101_000000" / "metrics.parquet", 5, 1)
    bad_run = f / "runs" / "20240102_000000"
    _metrics(bad_run / "metrics.parquet", 5, 2)
    (bad_run / "secret.txt").symlink_to(outside / "secret.txt")
    p["run_link"] = bad_run / "secret.txt"
    (sp / "2024_01_08_linked_specimen").symlink_to(outside / "elsewhere", target_is_directory=True)
    p["specimen_link"] = sp / "2024_01_08_linked_specimen"
    g = sp / "2024_01_09_runs_link"  # the specimen is clean; its runs/ leads outside
    _seed_specimen(g)
    (outside / "runs" / "20240101_000000").mkdir(parents=True)
    (outside / "runs" / "20240101_000000" / "secret.txt").write_bytes(SECRET)
    (g / "runs").symlink_to(outside / "runs", target_is_directory=True)
    p["runs_link"] = g / "runs"
    return p


def _all_vault_bytes(root: Path) -> list[bytes]:
    out = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = Path(dirpath, name)
            if full.is_file() and not full.is_symlink():
                out.append(full.read_bytes())
    return out


def test_links_and_special_files_are_never_followed_and_each_is_reported(
        vault: Vault, hostile_checkout: dict[str, Path]) -> None:
    p = hostile_checkout
    report = vault.import_legacy(p["root"])
    assert sorted(i.specimen_id for i in report.imported) == [
        "2024_01_01_clean", "2024_01_07_runs", "2024_01_07_runs.run_20240101_000000",
        "2024_01_09_runs_link"]
    refused = {Path(r.path): r for r in report.refused}
    assert set(refused) == {p["file_link"], p["dir_link"], p["fifo"], p["inner_link"],
                            p["run_link"], p["specimen_link"], p["runs_link"]}
    assert str(p["outside"] / "secret.txt") in refused[p["file_link"]].reason
    assert "symbolic link" in refused[p["dir_link"]].reason
    assert "FIFO" in refused[p["fifo"]].reason
    assert "symbolic link to 'notes.txt'" in refused[p["inner_link"]].reason
    assert refused[p["run_link"]].specimen_id == "2024_01_07_runs.run_20240102_000000"
    assert refused[p["fifo"]].specimen_id == "2024_01_04_fifo"
    assert refused[p["runs_link"]].specimen_id is None  # it keeps out every run behind it
    problems = {Path(q.source).name: q.message for q in report.problems}
    for name in ("2024_01_02_file_link", "2024_01_03_dir_link", "2024_01_04_fifo",
                 "2024_01_05_inner_link", "20240102_000000", "2024_01_08_linked_specimen",
                 "runs"):
        assert "symbolic links or special files" in problems[name], problems
    assert "symbolic link" in problems["2024_01_06_manifest_link"]
    # Not imported means nothing of it: no ref, no working directory, no half-copied files.
    for sid in ("2024_01_02_file_link", "2024_01_03_dir_link", "2024_01_04_fifo",
                "2024_01_05_inner_link", "2024_01_06_manifest_link",
                "2024_01_07_runs.run_20240102_000000", "2024_01_08_linked_specimen"):
        assert vault.refs.get(sid) is None and not vault.specimen_dir(sid).exists(), sid
    # Nothing from outside the tree reached the vault, in objects/ or anywhere else.
    stored = _all_vault_bytes(vault.root)
    assert stored and not any(SECRET in b or DIR_SECRET in b or FIELD_SECRET.encode() in b
                              for b in stored)
    assert vault.verify().ok
    # The JSON report and the CLI name every refused path and why; problems exit 1.
    data = report.to_dict()
    assert {r["path"] for r in data["refused"]} == {str(x) for x in refused}
    r = CliRunner().invoke(cli, ["--vault", str(vault.root), "import-legacy", str(p["root"])])
    assert r.exit_code == 1, r.output
    for path in refused:
        assert f"refused   {path}: " in r.output
    assert "7 path(s) refused" in r.output and "Traceback" not in r.output


def test_a_linked_specimens_directory_is_not_followed(vault: Vault, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    _seed_specimen(elsewhere / "2024_03_01_a")
    (elsewhere / "2024_03_01_a" / "strata" / "data.bin").write_bytes(SECRET)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "specimens").symlink_to(elsewhere, target_is_directory=True)
    report = vault.import_legacy(tmp_path / "experiments")
    assert report.imported == [] and not report.ok
    assert [(r.path, r.specimen_id) for r in report.refused] == [
        (str(tmp_path / "experiments" / "specimens"), None)]
    assert not any(SECRET in b for b in _all_vault_bytes(vault.root))


def test_a_file_swapped_after_the_check_is_not_followed(
        vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Both files are regular when the tree is scanned and when the copy looks at them; just
    # before each is opened, one becomes a link to a secret and the other a FIFO (the race a
    # hostile tree could win). The open itself (O_NOFOLLOW, then fstat) must refuse them.
    from cas_vault import legacy

    (tmp_path / "secret.txt").write_bytes(SECRET)
    sp = tmp_path / "experiments" / "specimens"
    for sid in ("2024_02_01_swapped_link", "2024_02_02_swapped_fifo"):
        _seed_specimen(sp / sid)
        (sp / sid / "strata" / "data.txt").write_text("regular for now\n")
    real_open = legacy._open_file

    def swap_then_open(dir_fd: int, name: str, path: Path) -> int:
        if name == "data.txt" and path.is_file():
            path.unlink()
            if "link" in str(path):
                path.symlink_to(tmp_path / "secret.txt")
            else:
                os.mkfifo(path)  # a blocking open would hang here: the open is non-blocking
        return real_open(dir_fd, name, path)

    monkeypatch.setattr(legacy, "_open_file", swap_then_open)
    report = vault.import_legacy(tmp_path / "experiments")
    assert report.imported == []
    problems = {Path(q.source).name: q.message for q in report.problems}
    assert "symbolic link" in problems["2024_02_01_swapped_link"], problems
    assert "FIFO" in problems["2024_02_02_swapped_fifo"], problems
    for sid in ("2024_02_01_swapped_link", "2024_02_02_swapped_fifo"):
        assert vault.refs.get(sid) is None and not vault.specimen_dir(sid).exists()
    assert not any(SECRET in b for b in _all_vault_bytes(vault.root))


def test_a_manifest_nested_too_deep_is_a_problem_not_a_crash(vault: Vault, tmp_path: Path) -> None:
    sp = tmp_path / "experiments" / "specimens"
    deep: object = "bottom"
    for _ in range(1000):  # msgpack decodes up to 1024 levels; a commit holds at most 256
        deep = {"k": deep}
    _seed_specimen(sp / "2024_04_01_deep", notes=deep)
    _seed_specimen(sp / "2024_04_02_fine")
    report = vault.import_legacy(tmp_path / "experiments")
    assert [i.specimen_id for i in report.imported] == ["2024_04_02_fine"]
    assert [Path(q.source).name for q in report.problems] == ["2024_04_01_deep"]
    assert "deeper than 252 levels" in report.problems[0].message
    assert not vault.specimen_dir("2024_04_01_deep").exists()
