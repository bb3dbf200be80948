"""The Vault API: init/open, new, commit, log, show, checkout and the immutability rules."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cas_vault import SpecimenStorage, Vault
from cas_vault.digest import hash_bytes, hash_file
from cas_vault.errors import (
    AlreadyExistsError,
    ImmutableError,
    InvalidIdError,
    InvalidInputError,
    NotFoundError,
    TaxonomyError,
)


def tree_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_init_creates_layout_and_refuses_twice(tmp_path: Path) -> None:
    v = Vault.init(tmp_path / "v")
    for sub in ("objects", "refs", "specimens", "tmp", "locks"):
        assert (v.root / sub).is_dir()
    assert (v.root / "vault.msgpack").is_file()
    with pytest.raises(AlreadyExistsError):
        Vault.init(tmp_path / "v")


def test_open_walks_up_and_honours_env(tmp_path: Path, monkeypatch) -> None:
    v = Vault.init(tmp_path / "v")
    deep = v.root / "specimens"
    monkeypatch.chdir(deep)
    assert Vault.open().root == v.root
    other = Vault.init(tmp_path / "w")
    monkeypatch.setenv("CAS_VAULT_DIR", str(other.root))
    assert Vault.open().root == other.root
    assert Vault.open(v.root).root == v.root


def test_open_outside_a_vault_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotFoundError, match="vault init"):
        Vault.open()
    with pytest.raises(NotFoundError, match="not a vault"):
        Vault.open(tmp_path)


def test_reader_construction_creates_nothing(tmp_path: Path) -> None:
    v = Vault.init(tmp_path / "v")
    before = tree_files(v.root)
    Vault.open(v.root)
    s = SpecimenStorage(v.root / "specimens" / "nothing_here")
    assert s.list_tensors() == []
    with pytest.raises(NotFoundError):
        s.read_metrics()
    assert tree_files(v.root) == before
    assert not (v.root / "specimens" / "nothing_here").exists()


def test_new_scaffolds_like_the_seed(vault: Vault) -> None:
    path = vault.new("2024_12_19_my_experiment", domain="interpretability",
                     method="sae_analysis", tags=["gpt2", "layer_12"], model="gpt2-small")
    # .cas/ holds the record of the manifest's object, stored at once (docs/format.md 6).
    assert {p.name for p in path.iterdir()} == {"manifest.msgpack", "protocol.py", "field_notes.md",
                                              "strata", ".cas"}
    from cas_vault.workdir import read_manifest

    m = read_manifest(path)
    assert m["domain"] == "interpretability" and m["tags"] == ["gpt2", "layer_12"]
    assert m["model"] == "gpt2-small"
    with pytest.raises(AlreadyExistsError, match="already exists"):
        vault.new("2024_12_19_my_experiment", domain="interpretability", method="sae_analysis")


def test_taxonomy_is_enforced_with_the_valid_choices(vault: Vault) -> None:
    with pytest.raises(TaxonomyError, match="valid methods for benchmarking: ablation_study"):
        vault.new("x", domain="benchmarking", method="fine_tuning")
    with pytest.raises(TaxonomyError, match="valid domains"):
        vault.new("x", domain="astrology", method="fine_tuning")
    assert not vault.specimen_dir("x").exists()


@pytest.mark.parametrize("bad", ["../escape", "a/b", "a\x00b", "x" * 129, "", ".hidden", "-rf",
                                 "a..b", "spécimen", "а", "tab\tid", "semi;colon", "quote'"])
def test_bad_ids_are_refused_before_writing(vault: Vault, bad: str) -> None:
    before = tree_files(vault.root)
    with pytest.raises(InvalidIdError):
        vault.new(bad, domain="training", method="fine_tuning")
    with pytest.raises(InvalidIdError):
        vault.commit(bad)
    assert tree_files(vault.root) == before


def test_commit_roundtrip_and_separate_inodes(vault: Vault, make_specimen) -> None:
    wd = make_specimen("2024_12_19_a")
    modes = {p: p.stat().st_mode for p in wd.rglob("*") if p.is_file()}
    c = vault.commit("2024_12_19_a", message="first")
    assert vault.resolve("2024_12_19_a") == c.digest
    assert set(c.tree) == {"field_notes.md", "manifest.msgpack", "protocol.py",
                           "strata/config.msgpack", "strata/metrics.parquet"}
    for rel, entry in c.tree.items():
        obj = vault.objects.path(entry.digest)
        assert hash_file(obj) == (entry.digest, entry.size)
        # Sealing copied the working file: the object's inode has no other name, so no write
        # through the working directory can reach it, and the working file is left as it was.
        assert os.stat(obj).st_ino != os.stat(wd / rel).st_ino
        assert os.stat(obj).st_nlink == 1
        assert os.stat(obj).st_mode & 0o222 == 0
        assert (wd / rel).stat().st_mode == modes[wd / rel]
    assert hash_bytes(vault.objects.get(c.digest)) == c.digest
    assert vault.read_commit(c.digest) == c
    df = vault.specimen("2024_12_19_a").read_metrics()
    assert df.equals(SpecimenStorage(wd).read_metrics())


def test_second_commit_is_refused_naming_the_commit(vault: Vault, make_specimen) -> None:
    make_specimen("a")
    c = vault.commit("a")
    with pytest.raises(ImmutableError, match=c.digest):
        vault.commit("a")
    with pytest.raises(ImmutableError):
        SpecimenStorage(vault.specimen_dir("a")).write_metrics({"x": [1]})
    with pytest.raises(ImmutableError):
        vault.new("a", domain="training", method="fine_tuning")
    assert vault.resolve("a") == c.digest


def test_identical_content_is_stored_once(vault: Vault, make_specimen) -> None:
    make_specimen("a", seed=1)
    make_specimen("b", seed=1)
    ca, cb = vault.commit("a"), vault.commit("b")
    da = ca.tree["strata/metrics.parquet"].digest
    assert da == cb.tree["strata/metrics.parquet"].digest
    assert len(list(vault.objects.root.glob(f"{da[:2]}/{da}"))) == 1
    info = vault.show("b")
    assert info.unique_bytes < info.logical_bytes


def test_parents_log_and_show(vault: Vault, make_specimen) -> None:
    make_specimen("base")
    base = vault.commit("base")
    make_specimen("other")
    other = vault.commit("other")
    make_specimen("child", parents=["base"])
    child = vault.commit("child", parents=["other"], message="derived")
    assert child.parents == (base.digest, other.digest)
    assert [e.specimen_id for e in vault.log("child")][0] == "child"
    assert {e.specimen_id for e in vault.log("child")} == {"child", "base", "other"}
    assert {e.specimen_id for e in vault.log()} == {"child", "base", "other"}
    info = vault.show("child")
    assert info.parent_ids == ("base", "other")
    d = info.to_dict()
    assert d["parents"][0] == {"commit": base.digest, "specimen_id": "base"}
    assert {f["path"] for f in d["files"]} == set(child.tree)


def test_parent_must_be_committed(vault: Vault, make_specimen) -> None:
    make_specimen("draft")
    with pytest.raises(NotFoundError, match="not committed yet"):
        vault.new("child", domain="training", method="fine_tuning", parents=["draft"])
    with pytest.raises(NotFoundError):
        vault.commit("draft", parents=["nope"])
    assert vault.refs.get("draft") is None


def test_checkout_verifies_and_refuses_nonempty(vault: Vault, make_specimen, tmp_path: Path) -> None:
    wd = make_specimen("a")
    c = vault.commit("a")
    out = vault.checkout("a", tmp_path / "co")
    for rel in c.tree:
        assert (out / rel).read_bytes() == (wd / rel).read_bytes()
    with pytest.raises(AlreadyExistsError):
        vault.checkout("a", tmp_path / "co")


def test_checkout_refuses_altered_object(vault: Vault, make_specimen, tmp_path: Path) -> None:
    make_specimen("a")
    c = vault.commit("a")
    obj = vault.objects.path(c.tree["strata/config.msgpack"].digest)
    os.chmod(obj, 0o644)
    obj.write_bytes(b"tampered")
    from cas_vault.errors import ChecksumMismatch

    with pytest.raises(ChecksumMismatch):
        vault.checkout("a", tmp_path / "co")
    assert not (tmp_path / "co").exists()


def test_metrics_validation(vault: Vault) -> None:
    s = SpecimenStorage(vault.new("m", domain="training", method="fine_tuning"))
    with pytest.raises(InvalidInputError, match="different lengths"):
        s.write_metrics({"step": [0, 1, 2], "loss": [0.1]})
    with pytest.raises(InvalidInputError):
        s.write_metrics([1, 2, 3])  # type: ignore[arg-type]
    assert not (s.strata / "metrics.parquet").exists()
    s.write_metrics(pl.DataFrame({"step": [0, 1], "loss": [float("nan"), float("inf")]}))
    df = s.read_metrics()
    assert np.isnan(df["loss"][0]) and np.isinf(df["loss"][1])


def test_symlinks_are_refused_at_commit(vault: Vault, make_specimen, tmp_path: Path) -> None:
    wd = make_specimen("s")
    (tmp_path / "outside").write_text("secret")
    (wd / "strata" / "link.txt").symlink_to(tmp_path / "outside")
    with pytest.raises(InvalidInputError, match="symlink"):
        vault.commit("s")
    assert vault.refs.get("s") is None


def test_commit_without_manifest_says_to_use_new(vault: Vault) -> None:
    (vault.specimens_dir / "handmade").mkdir()
    with pytest.raises(NotFoundError, match="vault new"):
        vault.commit("handmade")


def test_corrupt_manifest_is_a_clear_error(vault: Vault, make_specimen) -> None:
    wd = make_specimen("c")
    (wd / "manifest.msgpack").write_bytes(b"\x85\xa1a")  # truncated map
    with pytest.raises(InvalidInputError, match="corrupt or truncated"):
        vault.commit("c")
    assert vault.refs.get("c") is None


def test_tensors_roundtrip_lazily(vault: Vault) -> None:
    s = SpecimenStorage(vault.new("t", domain="training", method="fine_tuning"))
    a = np.random.default_rng(0).standard_normal((100, 512)).astype(np.float32)
    s.write_tensors("activations", a)
    np.testing.assert_array_equal(s.read_tensor_lazy("activations")[3], a[3])
    assert s.list_tensors() == ["activations"]
    with pytest.raises(InvalidInputError, match="not numeric"):
        s.write_tensors("bad", np.array(["a", "b"], dtype=object))
    vault.commit("t")
