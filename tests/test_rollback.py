"""A rolled-back journal tail is detected while any witness survives, and never rebuilt over.

The attack: remove the last journal line together with the ref it created. The chain of the
remaining lines is intact, so only a record of how far the journal once reached can tell.
Witnesses: the tip record beside the journal (written by every commit), the catalog's recorded
tip, and a tip kept outside the vault (``vault verify --witness``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from cas_vault import SpecimenStorage, Vault, VaultQuery
from cas_vault.cli import cli
from cas_vault.errors import JournalRolledBackError
from cas_vault.refs import JournalTip


def _vault(tmp_path: Path) -> Vault:
    v = Vault.init(tmp_path / "v")
    for sid in ("a", "b", "c"):
        SpecimenStorage(v.new(sid, domain="training", method="fine_tuning")).write_metrics(
            {"step": [0, 1], "loss": [1.0, 0.5]})
        v.commit(sid)
    return v


def _roll_back_last(v: Vault) -> None:
    lines = v.refs.journal.read_bytes().split(b"\n")[:-1]
    v.refs.journal.write_bytes(b"\n".join(lines[:-1]) + b"\n")
    (v.refs.refs_dir / "c").unlink()


def _rolled_back(v: Vault, **kw) -> list[str]:
    return [p.message for p in v.verify(**kw).problems if p.kind == "journal_rolled_back"]


def test_the_tip_record_alone_witnesses_a_rollback(tmp_path: Path) -> None:
    v = _vault(tmp_path)
    v.catalog_path.unlink()  # no catalog: the record beside the journal is the witness left
    assert v.verify().ok
    _roll_back_last(v)
    found = _rolled_back(v)
    assert found and "journal line 3" in found[0] and "has 2 line(s)" in found[0]


def test_the_catalog_witnesses_it_and_is_not_rebuilt_over_it(tmp_path: Path) -> None:
    v = _vault(tmp_path)
    _roll_back_last(v)
    v.refs.tip_path.unlink()  # the attacker removed the record too; the catalog remains
    found = _rolled_back(v)
    assert found and "catalog" in found[0]
    # The advice that used to erase the witness now refuses, and says why.
    for args in (["index"], ["index", "--rebuild"]):
        r = CliRunner().invoke(cli, ["--vault", str(v.root), *args])
        assert r.exit_code == 1 and "rolled back" in r.output and "Traceback" not in r.output, r.output
    with pytest.raises(JournalRolledBackError):
        v.index()
    # A query answers from the catalog as it is (the lost specimen still listed) and says so.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = VaultQuery(v).search("SELECT specimen_id FROM catalog ORDER BY 1")
    assert got["specimen_id"].to_list() == ["a", "b", "c"]
    assert any("rolled back" in str(w.message) for w in caught)
    assert _rolled_back(v)  # still witnessed after all of the above
    # Only an explicit acceptance rebuilds.
    r = CliRunner().invoke(cli, ["--vault", str(v.root), "index", "--rebuild", "--accept-rollback"])
    assert r.exit_code == 0, r.output
    assert VaultQuery(v).search("SELECT specimen_id FROM catalog ORDER BY 1")[
        "specimen_id"].to_list() == ["a", "b"]


def test_a_tip_kept_outside_the_vault_catches_what_the_vault_cannot(tmp_path: Path) -> None:
    v = _vault(tmp_path)
    r = CliRunner().invoke(cli, ["--vault", str(v.root), "verify", "--json"])
    import json

    kept = json.loads(r.output)["journal_tip"]
    assert kept.startswith("3:")
    # A thorough attacker removes the line and its ref, rewrites the tip record and deletes the
    # catalog: nothing in the vault remembers (docs/integrity.md says so) ...
    _roll_back_last(v)
    lines = v.refs.journal.read_bytes().split(b"\n")[:-1]
    from cas_vault.digest import hash_bytes

    v.refs.tip_path.write_bytes(JournalTip(len(lines), hash_bytes(lines[-1])).encode())
    v.catalog_path.unlink()
    assert v.verify().ok
    # ... but the copy kept elsewhere does.
    r = CliRunner().invoke(cli, ["--vault", str(v.root), "verify", "--witness", kept])
    assert r.exit_code == 1 and "journal_rolled_back" in r.output, r.output
    r = CliRunner().invoke(cli, ["--vault", str(v.root), "verify", "--witness", "3:xyz"])
    assert r.exit_code == 2 and "LINES:DIGEST" in r.output


def test_a_tip_record_that_lags_after_a_crash_is_no_alarm(tmp_path: Path) -> None:
    # A power cut may lose the record's last update (it is written after the journal line,
    # without an fsync): it then names an earlier line, which the journal still holds.
    v = _vault(tmp_path)
    lines = v.refs.journal.read_bytes().split(b"\n")[:-1]
    from cas_vault.digest import hash_bytes

    v.refs.tip_path.write_bytes(JournalTip(2, hash_bytes(lines[1])).encode())
    assert v.verify().ok
    v.refs.tip_path.write_bytes(b"")  # cut short: no witness, no alarm
    assert v.verify().ok
    v.index(rebuild=True)
    SpecimenStorage(v.new("d", domain="training", method="fine_tuning")).write_metrics({"x": [1]})
    v.commit("d")
    assert v.refs.read_tip() == JournalTip(4, hash_bytes(
        v.refs.journal.read_bytes().split(b"\n")[3]))
