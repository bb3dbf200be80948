"""Events after sealing: labels that move, annotations of sealed specimens, both journaled."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner

from cas_vault import Vault
from cas_vault.annotations import annotate, annotations
from cas_vault.cli import cli
from cas_vault.errors import InvalidInputError, NotFoundError
from cas_vault.journal import decodable
from cas_vault.labels import label_history, labels, set_label


def _sealed(vault: Vault, sid: str, loss: float = 0.5) -> str:
    wd = vault.new(sid, domain="training", method="fine_tuning")
    vault.storage(sid).write_metrics({"step": [0, 1], "loss": [1.0, loss]})
    return vault.commit(sid).digest


def _run(vault: Vault, *args: str) -> object:
    return CliRunner().invoke(cli, ["--vault", str(vault.root), *args])


def test_a_label_moves_and_every_move_is_journaled(vault: Vault, monkeypatch) -> None:
    a, b = _sealed(vault, "2024_12_19_a"), _sealed(vault, "2024_12_19_b", 0.3)
    monkeypatch.setenv("CAS_VAULT_AUTHOR", "ada")
    first = set_label(vault, "best", "2024_12_19_a")
    assert (first.specimen_id, first.commit, first.author) == ("2024_12_19_a", a, "ada")
    assert set_label(vault, "best", "2024_12_19_a") == first  # no move, nothing journaled
    moved = set_label(vault, "@best", "2024_12_19_b")
    assert labels(vault)["best"].specimen_id == "2024_12_19_b" and moved.commit == b
    assert [m.specimen_id for m in label_history(vault, "best")] == ["2024_12_19_a", "2024_12_19_b"]
    lines = [e for e in decodable(vault.refs.journal.read_bytes()) if not e.is_ref]
    assert [(e.kind, e.specimen_id) for e in lines] == [("label", "2024_12_19_a"),
                                                         ("label", "2024_12_19_b")]
    # Nothing sealed changed: the refs are as they were.
    assert vault.refs.all() == {"2024_12_19_a": a, "2024_12_19_b": b}
    # @best works wherever an id is read.
    assert vault.lookup("@best") == "2024_12_19_b"
    r = _run(vault, "show", "@best")
    assert r.exit_code == 0 and "2024_12_19_b" in r.output
    assert vault.show("2024_12_19_b").labels == ("best",)
    # Queryable; survives a rebuild from the journal.
    for rebuild in (False, True):
        vault.index(rebuild=rebuild)
        now = vault.query("SELECT name, specimen_id, author FROM labels")
        assert now.rows() == [("best", "2024_12_19_b", "ada")]
        assert vault.query("SELECT count(*) FROM label_moves").item() == 2
    assert vault.verify().ok


def test_label_errors_change_nothing(vault: Vault) -> None:
    _sealed(vault, "2024_12_19_a")
    vault.new("2024_12_19_wip", domain="training", method="fine_tuning")
    journal = vault.refs.journal.read_bytes()
    with pytest.raises(NotFoundError, match="not committed"):
        set_label(vault, "best", "2024_12_19_wip")
    with pytest.raises(InvalidInputError, match="label name"):
        set_label(vault, "no/slash", "2024_12_19_a")
    with pytest.raises(NotFoundError, match="did you mean @best"):
        set_label(vault, "best", "2024_12_19_a") and vault.lookup("@bset")
    assert len(vault.refs.journal.read_bytes()) > len(journal)  # only the one valid label
    r = _run(vault, "label", "x", "2024_12_19_wip")
    assert r.exit_code == 2 and "not committed" in r.output
    r = _run(vault, "show", "@nope")
    assert r.exit_code == 2 and "no label @nope" in r.output


def test_annotations_attach_to_a_sealed_specimen_without_changing_it(
        vault: Vault, tmp_path: Path) -> None:
    digest = _sealed(vault, "2024_12_19_a")
    tree = dict(vault.get("2024_12_19_a").tree)
    r = _run(vault, "note", "2024_12_19_a", "loss plateaus after step 40k")
    assert r.exit_code == 0 and "Annotated 2024_12_19_a" in r.output
    annotate(vault, "2024_12_19_a", "second thought: <b>warmup</b>")
    notes = annotations(vault, "2024_12_19_a")
    assert [n.text for n in notes] == ["loss plateaus after step 40k",
                                       "second thought: <b>warmup</b>"]
    assert all(n.commit == digest for n in notes)
    assert vault.resolve("2024_12_19_a") == digest and dict(vault.get("2024_12_19_a").tree) == tree
    info = vault.show("2024_12_19_a")
    assert [a.text for a in info.annotations] == [n.text for n in notes]
    assert json.loads(_run(vault, "show", "2024_12_19_a", "--json").output)["annotations"][1][
        "text"] == "second thought: <b>warmup</b>"
    # Included in checkout, beside the verified files.
    out = vault.checkout("2024_12_19_a", tmp_path / "co")
    text = (out / "annotations.md").read_text()
    assert "loss plateaus after step 40k" in text and "second thought" in text
    # Queryable, and the catalog rebuilt from the journal has them too.
    vault.index(rebuild=True)
    assert vault.query("SELECT text FROM notes ORDER BY seq")["text"].to_list() == \
        [n.text for n in notes]
    # An uncommitted specimen's notes still go to its field notes.
    vault.new("2024_12_19_wip", domain="training", method="fine_tuning")
    r = _run(vault, "note", "2024_12_19_wip", "early")
    assert r.exit_code == 0 and "field_notes.md" in r.output
    assert annotations(vault, "2024_12_19_wip") == []
    with pytest.raises(InvalidInputError):
        annotate(vault, "2024_12_19_a", "   ")
    assert vault.verify().ok


def test_event_objects_are_live_and_verified(vault: Vault) -> None:
    _sealed(vault, "2024_12_19_a")
    event = set_label(vault, "best", "2024_12_19_a")
    note = annotate(vault, "2024_12_19_a", "kept")
    assert vault.gc(grace=0).removed_objects == 0
    lines = [e for e in decodable(vault.refs.journal.read_bytes()) if not e.is_ref]
    assert all(vault.objects.has(e.commit) for e in lines)
    report = vault.verify()
    assert report.ok and not any(i.kind == "unreferenced_objects" for i in report.info)
    # An event object rewritten by hand as another valid event: bad_event.
    path = vault.objects.path(lines[0].commit)
    path.chmod(0o644)
    forged = msgpack.packb({"author": "x", "commit": event.commit, "kind": "note",
                            "subject": "2024_12_19_a", "text": "forged", "time": note.time})
    path.write_bytes(forged)
    kinds = {p.kind for p in vault.verify().problems}
    assert "corrupt_object" in kinds  # its bytes no longer hash to its name
    # One damaged event hides no other: the note is still read.
    assert [n.text for n in annotations(vault, "2024_12_19_a")] == ["kept"]
    path.unlink()
    assert "missing_object" in {p.kind for p in vault.verify().problems}


def test_retire_leaves_view_is_journaled_and_gc_reclaims_only_what_nothing_live_needs(
        vault: Vault) -> None:
    from cas_vault.errors import ImmutableError
    from cas_vault.retirement import retire, retirements

    keep = _sealed(vault, "2024_12_19_keep", 0.1)
    bad = _sealed(vault, "2024_12_19_bad", 0.9)
    bad_tree = {e.digest for e in vault.get("2024_12_19_bad").tree.values()}
    keep_tree = {e.digest for e in vault.get("2024_12_19_keep").tree.values()}
    r = _run(vault, "retire", "2024_12_19_bad", "--reason", "lr schedule bug")
    assert r.exit_code == 0 and "Retired 2024_12_19_bad" in r.output
    assert retirements(vault)["2024_12_19_bad"].reason == "lr schedule bug"
    # It leaves the log, the catalog and show; --all lists it with the reason.
    assert [e.specimen_id for e in vault.log()] == ["2024_12_19_keep"]
    assert vault.query("SELECT specimen_id FROM catalog")["specimen_id"].to_list() == \
        ["2024_12_19_keep"]
    assert vault.query("SELECT reason FROM retired").item() == "lr schedule bug"
    out = _run(vault, "log", "--all").output
    assert "retired 2024_12_19_bad" in out and "lr schedule bug" in out
    with pytest.raises(NotFoundError, match="retired"):
        vault.show("2024_12_19_bad")
    # Its id is never reused; retiring twice, deriving from it or labelling it is refused.
    with pytest.raises(ImmutableError):
        vault.commit("2024_12_19_bad")
    with pytest.raises(ImmutableError, match="retired already"):
        retire(vault, "2024_12_19_bad", "again")
    with pytest.raises(InvalidInputError, match="retired"):
        vault.new("2024_12_20_child", domain="training", method="fine_tuning",
                  parents=["2024_12_19_bad"])
    with pytest.raises(InvalidInputError, match="retired"):
        set_label(vault, "best", "2024_12_19_bad")
    assert _run(vault, "retire", "2024_12_19_keep", "--reason", " ").exit_code == 2
    # gc: kept for the grace period, then what only it held goes; shared bytes stay.
    assert vault.gc().removed_objects == 0
    vault.gc(grace=0)
    present = set(vault.objects.iter_digests())
    assert keep_tree <= present and vault.resolve("2024_12_19_keep") == keep
    assert not ((bad_tree - keep_tree) | {bad}) & present
    report = vault.verify()
    assert report.ok, report.problems  # retired, not lost
    assert [i.specimen for i in report.info if i.kind == "retired_specimen"] == ["2024_12_19_bad"]
    vault.index(rebuild=True)
    assert vault.query("SELECT count(*) FROM catalog").item() == 1


def test_purge_removes_at_once_but_never_what_a_live_specimen_holds(vault: Vault) -> None:
    from cas_vault.retirement import retire

    _sealed(vault, "2024_12_19_live", 0.5)
    secret = _sealed(vault, "2024_12_19_secret", 0.5)  # the same metrics bytes as the live one
    wd_tree = vault.get("2024_12_19_secret").tree
    shared = vault.get("2024_12_19_live").tree["strata/metrics.parquet"].digest
    assert wd_tree["strata/metrics.parquet"].digest == shared
    retire(vault, "2024_12_19_secret", "API key in config", purge=True)
    vault.gc()  # the default two-week grace: purged objects go anyway
    present = set(vault.objects.iter_digests())
    assert secret not in present and shared in present
    assert vault.specimen("2024_12_19_live").read_bytes("strata/metrics.parquet")
    assert vault.verify().ok
    out = _run(vault, "log", "--all", "--json").output
    gone = [e for e in json.loads(out) if e["specimen_id"] == "2024_12_19_secret"]
    assert gone[0]["retired"]["purge"] is True
