"""A vault's own taxonomy: pairs added and removed by journaled events, checked everywhere a
pair is checked, never re-checked against what is sealed."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner

from cas_vault import Vault
from cas_vault.cli import cli
from cas_vault.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    TaxonomyError,
)
from cas_vault.events import record
from cas_vault.journal import decodable
from cas_vault.retirement import retire
from cas_vault.taxonomies import TaxonomyChange, replay, seed_pairs, vault_taxonomy
from cas_vault.taxonomy import TAXONOMY

SEED = {(d, m) for d, methods in TAXONOMY.items() for m in methods}


def _cli(vault: Vault, *args: str):
    return CliRunner().invoke(cli, ["--vault", str(vault.root), *args])


def _pairs(vault: Vault) -> set[tuple[str, str]]:
    return {(p.domain, p.method) for p in vault_taxonomy(vault).pairs}


def _state(vault: Vault) -> tuple[bytes, set[str]]:
    """What a refused change must leave as it was: the journal and the objects."""
    try:
        journal = vault.refs.journal.read_bytes()
    except FileNotFoundError:
        journal = b""
    return journal, set(vault.objects.iter_digests())


def _sealed(vault: Vault, sid: str, domain: str = "training", method: str = "fine_tuning") -> None:
    vault.new(sid, domain=domain, method=method)
    vault.storage(sid).write_metrics({"step": [0], "loss": [1.0]})
    vault.commit(sid)


def test_a_new_vault_has_the_seeds_table(vault: Vault) -> None:
    assert _pairs(vault) == SEED
    assert vault_taxonomy(vault).table == dict(TAXONOMY)
    r = _cli(vault, "taxonomy")
    assert r.exit_code == 0, r.output
    assert "interpretability" in r.output and "sae_analysis" in r.output


def test_an_added_pair_is_journaled_and_vault_new_accepts_it(vault: Vault, monkeypatch) -> None:
    monkeypatch.setenv("CAS_VAULT_AUTHOR", "ada")
    with pytest.raises(TaxonomyError, match="unknown domain 'vision'"):
        vault.new("2024_12_19_seg", domain="vision", method="segmentation")
    r = _cli(vault, "taxonomy", "add", "vision", "segmentation", "--description",
             "Per-pixel labelling")
    assert r.exit_code == 0, r.output
    # One taxonomy event line about the vault, naming an event object with the fields.
    (line,) = [e for e in decodable(vault.refs.journal.read_bytes()) if not e.is_ref]
    assert (line.kind, line.specimen_id) == ("taxonomy", "")
    event = msgpack.unpackb(vault.objects.get(line.commit))
    assert {k: event[k] for k in ("op", "domain", "method", "description", "author", "subject")} \
        == {"op": "add", "domain": "vision", "method": "segmentation",
            "description": "Per-pixel labelling", "author": "ada", "subject": ""}
    # `vault new` and commit take it; the seed's pairs are still there.
    vault.new("2024_12_19_seg", domain="vision", method="segmentation")
    vault.storage("2024_12_19_seg").write_metrics({"step": [0], "loss": [1.0]})
    assert vault.commit("2024_12_19_seg").manifest.domain == "vision"
    assert _pairs(vault) == SEED | {("vision", "segmentation")}
    # A method new to an existing domain, described by the seed when it is one of its methods.
    vault.taxonomy_add("benchmarking", "fine_tuning")
    assert vault.taxonomy().get("benchmarking", "fine_tuning").description.startswith("Continued")
    vault.new("2024_12_19_bench", domain="benchmarking", method="fine_tuning")
    # Shown with who added it and when; JSON with the history.
    r = _cli(vault, "taxonomy", "--history")
    assert r.exit_code == 0 and "added by ada" in r.output and "+ vision/segmentation" in r.output
    shown = json.loads(_cli(vault, "taxonomy", "--json", "--history").output)
    vision = {"domain": "vision", "description": None, "methods": ["segmentation"]}
    assert vision in shown["domains"]
    added = [p for p in shown["pairs"] if p["domain"] == "vision"]
    assert added[0]["added_by"] == "ada" and added[0]["description"] == "Per-pixel labelling"
    assert [(c["op"], c["domain"], c["method"]) for c in shown["history"]] == [
        ("add", "vision", "segmentation"), ("add", "benchmarking", "fine_tuning")]
    assert vault.verify().ok


def test_adding_a_pair_it_has_is_refused_and_changes_nothing(vault: Vault) -> None:
    vault.taxonomy_add("vision", "segmentation")
    before = _state(vault)
    for domain, method in [("vision", "segmentation"), ("training", "fine_tuning")]:
        r = _cli(vault, "taxonomy", "add", domain, method)
        assert r.exit_code == 2 and "already" in r.output, r.output
        with pytest.raises(AlreadyExistsError, match="nothing changed"):
            vault.taxonomy_add(domain, method)
    assert _state(vault) == before


@pytest.mark.parametrize("domain,method", [
    ("Vision", "segmentation"), ("vision", "Seg"), ("1vision", "x"), ("vi-sion", "x"),
    ("vision", "seg mentation"), ("", "x"), ("x", ""), ("x" * 65, "y"), ("visión", "x"),
    ("../x", "y"), ("_x", "y"), ("x", "y\n"),
])
def test_bad_names_exit_2_with_the_rule_and_write_nothing(vault: Vault, domain: str,
                                                          method: str) -> None:
    _sealed(vault, "2024_12_19_a")
    vault.taxonomy_add("vision", "segmentation")
    before = _state(vault)
    r = _cli(vault, "taxonomy", "add", domain, method)
    assert r.exit_code == 2, r.output
    assert "lowercase letters (a-z), digits and underscores" in r.output
    assert "Traceback" not in r.output
    r = _cli(vault, "taxonomy", "remove", domain, method)
    assert r.exit_code == 2, r.output
    assert _state(vault) == before


def test_a_bad_description_exits_2_and_writes_nothing(vault: Vault) -> None:
    _sealed(vault, "2024_12_19_a")
    before = _state(vault)
    for bad in ("two\nlines", "\x1b[2J", "x" * 1025):
        r = _cli(vault, "taxonomy", "add", "vision", "segmentation", "--description", bad)
        assert r.exit_code == 2 and "description" in r.output, r.output
    assert _state(vault) == before


def test_removing_a_pair_in_use_is_refused_until_nothing_live_uses_it(vault: Vault) -> None:
    vault.taxonomy_add("vision", "segmentation")
    vault.new("2024_12_19_seg", domain="vision", method="segmentation")
    before = _state(vault)
    # In use by a working directory.
    r = _cli(vault, "taxonomy", "remove", "vision", "segmentation")
    assert r.exit_code == 2 and "2024_12_19_seg (working directory)" in r.output, r.output
    assert _state(vault) == before
    # In use by a live committed specimen.
    vault.storage("2024_12_19_seg").write_metrics({"step": [0], "loss": [1.0]})
    vault.commit("2024_12_19_seg")
    with pytest.raises(InvalidInputError, match=r"in use by 1 specimen\(s\): 2024_12_19_seg "
                                                r"\(committed\)"):
        vault.taxonomy_remove("vision", "segmentation")
    # Retired, it counts no more (nor does its leftover working directory).
    retire(vault, "2024_12_19_seg", "wrong labels")
    assert vault.specimen_dir("2024_12_19_seg").is_dir()
    r = _cli(vault, "taxonomy", "remove", "vision", "segmentation")
    assert r.exit_code == 0, r.output
    assert ("vision", "segmentation") not in _pairs(vault)
    # Only what uses this very pair counts: other specimens of the domain do not.
    vault.new("2024_12_19_ft", domain="training", method="fine_tuning")
    vault.taxonomy_remove("training", "ablation_study")
    assert vault.verify().ok


def test_removing_an_unused_pair_makes_vault_new_refuse_it_with_the_vaults_list(
        vault: Vault, monkeypatch) -> None:
    monkeypatch.setenv("CAS_VAULT_AUTHOR", "bob")
    r = _cli(vault, "taxonomy", "remove", "benchmarking", "ablation_study")
    assert r.exit_code == 0, r.output
    before = _state(vault)
    r = _cli(vault, "new", "x", "--domain", "benchmarking", "--method", "ablation_study")
    assert r.exit_code == 2
    assert "was removed from this vault's taxonomy" in r.output and "by bob" in r.output
    assert "valid domains: interpretability, training, alignment." in r.output
    assert "training: fine_tuning, ablation_study" in r.output
    assert not vault.specimen_dir("x").exists() and _state(vault) == before
    # A method removed from a domain that keeps others: the domain's remaining methods.
    vault.taxonomy_remove("training", "ablation_study")
    with pytest.raises(TaxonomyError, match="valid methods for training: fine_tuning "):
        vault.new("x", domain="training", method="ablation_study")
    # Removing a pair it does not have says which it has.
    with pytest.raises(NotFoundError, match="alignment: fine_tuning, probe_training"):
        vault.taxonomy_remove("benchmarking", "ablation_study")
    # A commit checks its manifest against the vault's table too.
    wd = vault.new("2024_12_19_edited", domain="training", method="fine_tuning")
    raw = msgpack.unpackb((wd / "manifest.msgpack").read_bytes())
    (wd / "manifest.msgpack").write_bytes(msgpack.packb({**raw, "method": "ablation_study"}))
    with pytest.raises(TaxonomyError, match="valid methods for training: fine_tuning "):
        vault.commit("2024_12_19_edited")
    assert vault.refs.get("2024_12_19_edited") is None
    # Added back, it is valid again.
    vault.taxonomy_add("training", "ablation_study")
    assert vault.commit("2024_12_19_edited").manifest.method == "ablation_study"


def test_a_sealed_specimen_whose_pair_was_removed_still_verifies_and_shows(
        vault: Vault, monkeypatch) -> None:
    """Removal is refused while a live specimen uses the pair, but a `vault new` and commit
    racing the removal's check can seal one anyway: nothing sealed is checked again."""
    vault.taxonomy_add("vision", "segmentation")
    sid = "2024_12_19_seg"
    vault.new(sid, domain="vision", method="segmentation", layout="runs")
    vault.storage(sid).write_metrics({"step": [0], "loss": [1.0]})
    vault.commit(sid, message="first run")
    import cas_vault.taxonomies as taxonomies

    monkeypatch.setattr(taxonomies, "pair_users", lambda *a: {})  # the race
    vault.taxonomy_remove("vision", "segmentation")
    monkeypatch.undo()
    assert ("vision", "segmentation") not in _pairs(vault)
    report = vault.verify()
    assert report.ok, report.problems
    r = _cli(vault, "show", sid)
    assert r.exit_code == 0 and "vision" in r.output and "segmentation" in r.output, r.output
    assert _cli(vault, "verify", sid).exit_code == 0
    assert [e.specimen_id for e in vault.log()] == [f"{sid}.run_{vault.runs(sid)[0]}", sid]
    vault.index(rebuild=True)
    assert vault.query("SELECT domain FROM catalog WHERE specimen_id = ?", [sid]).item() == "vision"
    # The sealed specimen takes new runs: their manifest is its sealed one.
    vault.storage(sid).write_metrics({"step": [0], "loss": [0.5]})
    run_commit = vault.commit(sid, message="second run")
    assert run_commit.manifest.run is not None
    assert (run_commit.manifest.domain, run_commit.manifest.method) == ("vision", "segmentation")
    # A new specimen with it is refused.
    with pytest.raises(TaxonomyError, match="was removed"):
        vault.new("2024_12_19_seg2", domain="vision", method="segmentation")
    assert vault.verify().ok


def test_the_catalog_table_follows_the_events_and_survives_a_rebuild(vault: Vault,
                                                                     monkeypatch) -> None:
    monkeypatch.setenv("CAS_VAULT_AUTHOR", "ada")
    vault.index()
    sql = "SELECT domain, method, description, added_by FROM taxonomy"

    def rows() -> set[tuple]:
        return set(vault.query(sql).rows())

    seed = {(p.domain, p.method, p.description, None) for p in seed_pairs()}
    assert rows() == seed
    vault.taxonomy_add("vision", "segmentation", "Per-pixel labelling")
    vault.taxonomy_remove("benchmarking", "ablation_study")
    expected = (seed - {("benchmarking", "ablation_study", "Removing components to measure impact",
                         None)}) | {("vision", "segmentation", "Per-pixel labelling", "ada")}
    assert rows() == expected  # incremental
    vault.taxonomy_remove("vision", "segmentation")
    vault.taxonomy_add("vision", "segmentation", "again")
    expected = (expected - {("vision", "segmentation", "Per-pixel labelling", "ada")}) | {
        ("vision", "segmentation", "again", "ada")}
    assert rows() == expected
    added_at = vault.query("SELECT added_at FROM taxonomy WHERE domain = 'vision'").item()
    assert added_at is not None
    vault.index(rebuild=True)
    assert rows() == expected
    assert vault.query("SELECT added_at FROM taxonomy WHERE domain = 'vision'").item() == added_at
    (vault.root / "vault.duckdb").unlink()
    vault.index()
    assert rows() == expected
    assert {(d, m) for d, m, *_ in expected} == _pairs(vault)


def test_verify_checks_taxonomy_event_fields_and_readers_skip_bad_ones(vault: Vault) -> None:
    vault.taxonomy_add("vision", "segmentation")
    assert vault.verify().ok
    record(vault, "taxonomy", "", {"op": "rename", "domain": "vision", "method": "x",
                                   "description": ""})
    record(vault, "taxonomy", "", {"op": "add", "domain": 5, "method": "x", "description": ""})
    bad = [p for p in vault.verify().problems if p.kind == "bad_event"]
    assert len(bad) == 2
    assert any("op must be one of add, remove" in p.message for p in bad)
    assert any("domain and method must be strings" in p.message for p in bad)
    assert _pairs(vault) == SEED | {("vision", "segmentation")}
    vault.index(rebuild=True)
    assert vault.query("SELECT count(*) FROM taxonomy").item() == len(SEED) + 1


def test_import_legacy_uses_the_vaults_pairs(vault: Vault, tmp_path: Path) -> None:
    sp = tmp_path / "legacy" / "specimens"
    a = sp / "2024_12_19_masks"
    a.mkdir(parents=True)
    (a / "manifest.msgpack").write_bytes(msgpack.packb(
        {"specimen_id": a.name, "taxonomy": {"domain": "vision", "method": "segmentation"}}))
    (a / "protocol.py").write_text("print('masks')\n")
    # No manifest: the method is inferred from the words of the id, among the vault's pairs.
    b = sp / "2024_12_20_panoptic_segmentation_sweep"
    (b / "runs" / "20241220_120000").mkdir(parents=True)
    (b / "runs" / "20241220_120000" / "metrics.parquet").write_bytes(b"")
    report = vault.import_legacy(tmp_path / "legacy")
    assert not report.imported
    assert any("unknown domain 'vision'" in p.message for p in report.problems)
    vault.taxonomy_add("vision", "segmentation")
    report = vault.import_legacy(tmp_path / "legacy")
    assert {i.specimen_id for i in report.imported} >= {a.name, b.name}, report.problems
    assert (vault.get(a.name).manifest.domain, vault.get(a.name).manifest.method) == (
        "vision", "segmentation")
    (inferred,) = report.inferred
    assert (inferred.specimen_id, inferred.domain, inferred.method, inferred.source) == (
        b.name, "vision", "segmentation", "the specimen id")


def test_replay_adds_once_and_removes_what_is_there() -> None:
    def change(seq: int, op: str, d: str, m: str, desc: str = "") -> TaxonomyChange:
        return TaxonomyChange(op, d, m, desc, "ada", f"t{seq}", seq)

    pairs = replay([change(0, "add", "vision", "seg", "first"),
                    change(1, "add", "vision", "seg", "second"),     # a concurrent add: no-op
                    change(2, "remove", "vision", "depth"),          # not there: no-op
                    change(3, "remove", "training", "fine_tuning"),
                    change(4, "add", "training", "fine_tuning", "back")])
    keys = [(p.domain, p.method) for p in pairs]
    assert keys.count(("vision", "seg")) == 1 and keys[-1] == ("training", "fine_tuning")
    by_key = {(p.domain, p.method): p for p in pairs}
    assert by_key[("vision", "seg")].description == "first"
    assert (by_key[("training", "fine_tuning")].added_by, by_key[("training", "fine_tuning")].seq) \
        == ("ada", 4)
    assert replay([], start=[]) == []


def test_the_group_takes_vault_before_a_subcommand(vault: Vault, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["taxonomy", "--vault", str(vault.root), "add", "vision", "seg"])
    assert r.exit_code == 0, r.output
    assert ("vision", "seg") in _pairs(vault)
    r = CliRunner().invoke(cli, ["taxonomy", "--vault", str(vault.root), "--json", "add", "a", "b"])
    assert r.exit_code == 2 and ("a", "b") not in _pairs(vault)


def test_reading_one_kind_of_event_finds_what_a_full_parse_finds() -> None:
    """`journal.events(data, kind)` decodes only the lines that name the kind (a commit asks for
    the taxonomy every time): it must agree with decoding every line."""
    from cas_vault.journal import GENESIS, JournalEntry, decodable, events

    kinds = ["ref", "taxonomy", "ref", "label", "taxonomy", "note", "ref", "taxonomy"]
    lines = [JournalEntry.encode(i, "" if k == "taxonomy" else f"s{i}", "a" * 64,
                                 "2026-12-02T07:32:19.507784Z", GENESIS, k)
             for i, k in enumerate(kinds)]
    lines[4] = lines[4].replace(b'"kind":"taxonomy"', b'"kind": "taxonomy"')  # not canonical
    lines[7] = b'{"kind":"taxonomy"'  # damaged
    data = b"\n".join(lines) + b"\n" + lines[1]  # and an unfinished last line
    for kind in ("taxonomy", "label", "note", "retire"):
        assert [e.line for e in events(data, kind)] == \
            [e.line for e in decodable(data) if e.kind == kind]
    assert [e.seq for e in events(data, "taxonomy")] == [1]
    assert events(b"", "taxonomy") == [] and events(data[:-len(lines[1])], "retire") == []
