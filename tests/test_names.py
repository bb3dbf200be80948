"""Names people type: exact ids, commit digest prefixes, "did you mean", and shell completion.

Arrange with the Python API, act with the API or ``CliRunner``, assert exit codes and messages.
Completion is driven the way a shell drives it: ``_VAULT_COMPLETE=bash_complete`` with
``COMP_WORDS``/``COMP_CWORD`` in the environment, in-process and through ``python -m cas_vault``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cas_vault import SpecimenStorage, Vault
from cas_vault import names
from cas_vault.cli import cli
from cas_vault.cli.completion import SpecimenIdType
from cas_vault.digest import Digest
from cas_vault.errors import InvalidIdError, InvalidInputError, NotFoundError
from cas_vault.refs import RefStore

BASE = "2024_12_19_baseline"
PROBE = "2024_12_20_probe"
WIP = "2024_12_21_wip"


def run(v: Vault | None, *args: str, **kw):
    pre = ["--vault", str(v.root)] if v is not None else []
    return CliRunner().invoke(cli, [*pre, *args], **kw)


@pytest.fixture
def v(vault: Vault) -> Vault:
    """Two committed specimens and one working directory that is not committed."""
    for sid in (BASE, PROBE):
        SpecimenStorage(vault.new(sid, domain="training", method="fine_tuning")).write_metrics(
            {"step": [0, 1, 2], "loss": [0.3, 0.2, 0.1]})
        vault.commit(sid, message=sid)
    vault.new(WIP, domain="training", method="fine_tuning")
    return vault


def unique_prefix(v: Vault, sid: str, length: int = 8) -> str:
    """A prefix of ``sid``'s digest that no other ref's digest shares (computed, not assumed)."""
    d = v.resolve(sid)
    others = [x for s, x in v.refs.all().items() if s != sid]
    while any(o.startswith(d[:length]) for o in others):
        length += 1
    return d[:length]


# -- the rules -------------------------------------------------------------------------------
def test_exact_id(v: Vault) -> None:
    assert v.lookup(BASE) == BASE
    assert v.show(BASE).specimen_id == BASE


def test_exact_id_wins_over_a_digest_prefix(v: Vault) -> None:
    digest = v.resolve(BASE)
    hexid = digest[:6]  # a valid id that also begins BASE's digest
    v.new(hexid, domain="training", method="fine_tuning")
    v.commit(hexid)
    assert v.lookup(hexid) == hexid
    assert v.lookup(unique_prefix(v, BASE, 7)) == BASE


def test_exact_lookup_lists_nothing(v: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    # An exact id costs one read of its ref: no listing of refs/ or specimens/, no journal.
    def forbidden(*_a, **_k):
        raise AssertionError("an exact lookup listed or read more than its ref")

    monkeypatch.setattr(RefStore, "all", forbidden)
    monkeypatch.setattr(RefStore, "names", forbidden)
    monkeypatch.setattr(names, "decodable", forbidden)
    monkeypatch.setattr(os, "scandir", forbidden)
    monkeypatch.setattr(os, "listdir", forbidden)
    assert v.lookup(PROBE) == PROBE


def test_unique_prefix(v: Vault) -> None:
    digest = v.resolve(PROBE)
    for n in (len(unique_prefix(v, PROBE, 4)), 12, 64):
        assert v.lookup(digest[:n]) == PROBE
    assert v.show(digest[:12]).specimen_id == PROBE
    assert v.checkout(digest[:12], v.root.parent / "copy").is_dir()


def test_resolve_stays_exact(v: Vault) -> None:
    with pytest.raises(NotFoundError):
        v.resolve(v.resolve(PROBE)[:12])


def test_prefix_rules_hex_lowercase_and_at_least_4(v: Vault) -> None:
    digest = v.resolve(PROBE)
    with pytest.raises(NotFoundError):
        v.lookup(digest[:3])
    with pytest.raises(NotFoundError):
        v.lookup(digest[:12].upper())
    with pytest.raises(NotFoundError, match="no commit digest starting with it"):
        v.lookup("0" * 64 if not digest.startswith("0000") else "f" * 64)


def test_not_found_suggests_the_closest_ids(v: Vault) -> None:
    with pytest.raises(NotFoundError) as info:
        v.lookup("2024_12_19_baselin")
    msg = str(info.value)
    assert "no specimen 2024_12_19_baselin" in msg
    assert f"did you mean {BASE}" in msg
    assert "`vault log` lists committed specimens" in msg
    with pytest.raises(NotFoundError) as info:
        v.lookup("completely_unrelated_words")
    assert "did you mean" not in str(info.value)


def test_not_found_suggests_working_directories_too(v: Vault) -> None:
    with pytest.raises(NotFoundError, match=f"did you mean {WIP}"):
        v.lookup("2024_12_21_wop")


def test_uncommitted_advice_unchanged(v: Vault) -> None:
    with pytest.raises(NotFoundError) as info:
        v.show(WIP)
    assert str(info.value) == f"specimen {WIP} is not committed yet; seal it with `vault commit {WIP}`"
    r = run(v, "show", WIP)
    assert r.exit_code == 2, r.output
    assert f"`vault commit {WIP}`" in r.output and "did you mean" not in r.output


def test_invalid_text_is_refused_as_before(v: Vault) -> None:
    # Not special-cased: "@x" is no valid id, so it is refused like any other bad id.
    for bad in ("../x", "a b", ""):
        with pytest.raises(InvalidIdError):
            v.lookup(bad)


# -- ambiguous prefixes, with real commits -------------------------------------------------------
@pytest.fixture(scope="module")
def clash(tmp_path_factory: pytest.TempPathFactory) -> tuple[Vault, str, list[str]]:
    """A vault in which two commits' digests share their first 4 hex characters.

    Digests carry the commit time, so how many commits it takes differs from run to run
    (about 300 on average, 65,536 prefixes); it is found, never assumed.
    """
    v = Vault.init(tmp_path_factory.mktemp("clash") / "vault")
    seen: dict[str, str] = {}
    with v.batch():
        for n in range(5000):
            sid = f"s{n:04d}"
            v.new(sid, domain="training", method="fine_tuning")
            digest = v.commit(sid).digest
            if digest[:4] in seen:
                return v, digest[:4], sorted([seen[digest[:4]], sid])
            seen[digest[:4]] = sid
    pytest.fail("no two of 5,000 commits share 4 digest characters")


def test_ambiguous_prefix_lists_the_candidates(clash) -> None:
    v, prefix, ids = clash
    with pytest.raises(InvalidInputError) as info:
        v.lookup(prefix)
    msg = str(info.value)
    for sid in ids:
        assert f"{sid} ({v.resolve(sid)[:12]}" in msg
    assert "more characters" in msg
    for sid in ids:  # each is still reachable with enough characters
        assert v.lookup(unique_prefix(v, sid, 5)) == sid


def test_ambiguous_prefix_exits_2_on_the_cli(clash) -> None:
    v, prefix, ids = clash
    r = run(v, "show", prefix)
    assert r.exit_code == 2, r.output
    assert all(sid in r.output for sid in ids) and "Traceback" not in r.output


def test_an_ambiguous_list_stops_at_10() -> None:
    refs = {f"s{i:02d}": Digest(f"abcd{i:02d}" + "0" * 58) for i in range(12)}
    with pytest.raises(InvalidInputError) as info:
        names.digest_prefix_match("abcd", refs)
    msg = str(info.value)
    assert "s09 (abcd09" in msg and "s10" not in msg and "and 2 more" in msg
    assert names.digest_prefix_match("abcd05", refs) == "s05"
    assert names.digest_prefix_match("ffff", refs) is None


# -- every reading command takes a prefix --------------------------------------------------------
def test_cli_commands_take_a_prefix(v: Vault, tmp_path: Path) -> None:
    base, probe = unique_prefix(v, BASE), unique_prefix(v, PROBE)
    r = run(v, "show", probe)
    assert r.exit_code == 0, r.output
    assert f"specimen  {PROBE}" in r.output and v.resolve(PROBE) in r.output
    r = run(v, "show", probe, "--json")
    assert json.loads(r.output)["specimen_id"] == PROBE
    r = run(v, "log", probe, "--json")
    assert r.exit_code == 0, r.output
    assert [e["specimen_id"] for e in json.loads(r.output)] == [PROBE]
    r = run(v, "checkout", probe, str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    assert f"Checked out {PROBE}" in r.output
    r = run(v, "diff", base, probe, "--json")
    assert r.exit_code == 0, r.output
    r = run(v, "verify", probe, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["specimens"] == [PROBE]
    r = run(v, "plot", "loss", base, probe, "-o", str(tmp_path / "loss.png"))
    assert r.exit_code == 0, r.output
    assert BASE in r.output and PROBE in r.output


def test_parents_by_prefix(v: Vault) -> None:
    r = run(v, "new", "child", "--domain", "training", "--method", "fine_tuning",
            "--parent", unique_prefix(v, BASE))
    assert r.exit_code == 0, r.output
    r = run(v, "commit", "child", "--parent", unique_prefix(v, PROBE))
    assert r.exit_code == 0, r.output
    assert set(v.get("child").parents) == {v.resolve(BASE), v.resolve(PROBE)}


def test_cli_not_found_exits_2_with_a_suggestion(v: Vault) -> None:
    r = run(v, "show", "2024_12_20_prob")
    assert r.exit_code == 2, r.output
    assert f"did you mean {PROBE}" in r.output and "Traceback" not in r.output
    r = run(v, "checkout", "2024_12_20_prob", str(v.root.parent / "out"))
    assert r.exit_code == 2 and f"did you mean {PROBE}" in r.output


# -- shell completion ----------------------------------------------------------------------------
def complete(words: str, env: dict[str, str] | None = None, shell: str = "bash") -> list[str]:
    """What the ``vault`` program answers a shell asking to complete the last of ``words``."""
    parts = words.split(" ")
    r = CliRunner().invoke(cli, [], prog_name="vault", env={
        "_VAULT_COMPLETE": f"{shell}_complete", "COMP_WORDS": words,
        "COMP_CWORD": str(len(parts) - 1), **(env or {})})
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    return r.output.splitlines()


def values(lines: list[str]) -> list[str]:
    return [line.split(",", 1)[1] for line in lines if line.startswith("plain,")]


def test_completion_offers_committed_and_working_ids(v: Vault) -> None:
    root = str(v.root)
    assert values(complete(f"vault --vault {root} show 2024")) == [BASE, PROBE, WIP]
    assert values(complete(f"vault --vault {root} show 2024_12_2")) == [PROBE, WIP]
    assert values(complete(f"vault show --vault {root} 2024_12_19")) == [BASE]
    assert values(complete(f"vault --vault {root} diff {BASE} 2024_12_20")) == [PROBE]
    assert values(complete(f"vault --vault {root} new child --parent 2024_12_1")) == [BASE]
    assert values(complete(f"vault --vault {root} spectroscopy {BASE} --sae 2024_12_2")) == [
        PROBE, WIP]


def test_completion_says_which_ids_are_committed(v: Vault) -> None:
    lines = complete(f"vault --vault {v.root} show 2024", shell="zsh")
    triples = {lines[i + 1]: lines[i + 2] for i in range(0, len(lines) - 2, 3)}
    assert triples == {BASE: "committed", PROBE: "committed", WIP: "not committed"}


def test_completion_finds_the_vault_like_the_cli(v: Vault, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    assert values(complete("vault show 2024_12_19", env={"CAS_VAULT_DIR": str(v.root)})) == [BASE]
    monkeypatch.chdir(v.root / "specimens")
    assert values(complete("vault show 2024_12_19")) == [BASE]


def test_completion_without_a_vault_offers_nothing(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for words in ("vault show 2024", f"vault --vault {tmp_path / 'missing'} show 2024"):
        assert [line for line in complete(words) if line] == []


def test_completion_through_the_program(v: Vault, tmp_path: Path) -> None:
    # As a shell runs it: a new process, the program's own name and exit status.
    env = {k: val for k, val in os.environ.items() if k != "CAS_VAULT_DIR"}

    def ask(words: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cas_vault"], capture_output=True, text=True, cwd=tmp_path,
            env={**env, "_VAULT_COMPLETE": "bash_complete", "COMP_WORDS": words,
                 "COMP_CWORD": str(len(words.split(" ")) - 1), **extra}, timeout=120)

    found = ask("vault show 2024_12_2", CAS_VAULT_DIR=str(v.root))
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [f"plain,{PROBE}", f"plain,{WIP}"]
    nothing = ask("vault show 2024")  # tmp_path holds no vault
    assert nothing.returncode == 0 and nothing.stdout.strip() == "" and nothing.stderr == ""


def test_completion_source_script_binds_vault() -> None:
    r = CliRunner().invoke(cli, [], prog_name="vault", env={"_VAULT_COMPLETE": "bash_source"})
    assert r.exit_code == 0
    assert "_VAULT_COMPLETE=bash_complete" in r.output
    assert "complete -o nosort -F _vault_completion vault" in r.output


#: (command, parameter) pairs that name a specimen: each completes ids.
SPECIMEN_PARAMS = [
    ("show", "specimen_id"), ("log", "specimen_id"), ("checkout", "specimen_id"),
    ("commit", "specimen_id"), ("commit", "parents"), ("new", "parents"), ("diff", "a"),
    ("diff", "b"), ("verify", "specimen_ids"), ("plot", "specimen_ids"),
    ("spectroscopy", "activations_id"), ("spectroscopy", "sae_id"), ("spectrum", "specimen_id"),
    ("run", "specimen_id"), ("note", "specimen_id"),
]


@pytest.mark.parametrize(("command", "param"), SPECIMEN_PARAMS)
def test_specimen_parameters_complete_ids(command: str, param: str) -> None:
    cmd = cli.commands[command]
    assert isinstance(cmd, click.Command)
    [p] = [p for p in cmd.params if p.name == param]
    assert isinstance(p.type, SpecimenIdType)
