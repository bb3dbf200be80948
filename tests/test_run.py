"""`vault run`: real protocol subprocesses, provenance, failed runs, partial commits, notes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cas_vault import Vault
from cas_vault.cli import cli
from cas_vault.errors import ImmutableError, InvalidInputError, NotFoundError, RunFailedError
from cas_vault.provenance import git_state, installed_packages

PROTOCOL_OK = '''
import random, sys
from pathlib import Path
import numpy as np
from cas_vault import SpecimenStorage, seed_everything

seed_everything(int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 7)
print("args:", sys.argv[1:])
print("on stderr", file=sys.stderr)
s = SpecimenStorage(Path(__file__).parent)
s.write_metrics({"step": np.arange(20), "loss": np.random.rand(20), "r": [random.random()] * 20})
s.write_config({"lr": 0.1})
'''

PROTOCOL_FAIL = '''
from pathlib import Path
from cas_vault import SpecimenStorage
SpecimenStorage(Path(__file__).parent).write_config({"half": "done"})
print("about to fail")
raise SystemExit(5)
'''


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _specimen(vault: Vault, sid: str, protocol: str) -> Path:
    wd = vault.new(sid, domain="training", method="fine_tuning")
    (wd / "protocol.py").write_text(protocol)
    return wd


def test_run_commits_with_provenance_log_and_seeds(vault: Vault, tmp_path: Path) -> None:
    _specimen(vault, "r1", PROTOCOL_OK)
    chunks: list[bytes] = []
    result = vault.run("r1", ["--seed", "123"], output=chunks.append, code_dir=tmp_path)
    streamed = b"".join(chunks)
    assert b"args: ['--seed', '123']" in streamed and b"on stderr" in streamed
    commit = vault.get("r1")
    assert commit.digest == result.commit.digest
    # The log is a blob of the commit, identical to what was streamed.
    assert "run.log" in commit.tree
    assert vault.specimen("r1").read_bytes("run.log") == streamed
    p = commit.manifest.metadata["provenance"]
    assert p["exit_status"] == 0 and p["wall_time_s"] > 0
    assert p["command"] == ["protocol.py", "--seed", "123"]
    assert p["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert p["packages"]["numpy"] == installed_packages()["numpy"]
    assert p["seeds"] == [{"seed": 123, "libraries": ["random", "numpy"]}]
    assert p["git"] is None  # tmp_path is not in a repository
    assert p["hostname"] and p["platform"]


def test_same_seed_gives_same_metrics(vault: Vault) -> None:
    _specimen(vault, "s1", PROTOCOL_OK)
    _specimen(vault, "s2", PROTOCOL_OK)
    vault.run("s1", ["--seed", "9"])
    vault.run("s2", ["--seed", "9"])
    a = vault.specimen("s1").read_metrics()
    b = vault.specimen("s2").read_metrics()
    assert a.equals(b)
    assert vault.get("s1").tree["strata/metrics.parquet"] == vault.get("s2").tree["strata/metrics.parquet"]


def test_git_state_records_commit_dirty_and_diff_digest(tmp_path: Path) -> None:
    repo = tmp_path / "code"
    repo.mkdir()
    env_git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "train.py").write_text("x = 1\n")
    subprocess.run([*env_git, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*env_git, "-C", str(repo), "commit", "-qm", "init"], check=True)
    clean = git_state(repo)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert clean is not None and clean["commit"] == head
    assert clean["dirty"] is False and clean["diff_digest"] is None
    (repo / "train.py").write_text("x = 2\n")
    dirty = git_state(repo)
    assert dirty["dirty"] is True and dirty["diff_digest"]
    (repo / "train.py").write_text("x = 3\n")
    assert git_state(repo)["diff_digest"] != dirty["diff_digest"]
    assert git_state(tmp_path / "nowhere") is None


def test_run_inside_git_repo_records_it(vault: Vault, tmp_path: Path) -> None:
    repo = tmp_path / "code"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    _specimen(vault, "g1", PROTOCOL_OK)
    vault.run("g1", code_dir=repo)
    git = vault.get("g1").manifest.metadata["provenance"]["git"]
    assert git["root"] == str(repo.resolve()) and git["commit"] is None


def test_failed_run_is_not_committed_and_keeps_log(vault: Vault) -> None:
    wd = _specimen(vault, "f1", PROTOCOL_FAIL)
    with pytest.raises(RunFailedError) as info:
        vault.run("f1")
    err = info.value
    assert err.status == 5 and err.exit_code == 3
    assert err.log_path == str(wd / "run.log")
    assert "about to fail" in (wd / "run.log").read_text()
    assert "vault commit f1 --partial" in str(err) and "about to fail" in str(err)
    assert vault.refs.get("f1") is None
    # It can be sealed as partial, flagged in the manifest.
    c = vault.commit("f1", partial=True)
    assert c.manifest.metadata["partial"] is True
    # The failure is sealed with how it was made, its exit status included.
    p = c.manifest.metadata["provenance"]
    assert p["exit_status"] == 5 and p["log"] == "run.log" and "numpy" in p["packages"]
    assert "run.log" in c.tree and "strata/config.msgpack" in c.tree


def test_run_timeout_kills_and_fails(vault: Vault) -> None:
    _specimen(vault, "t1", "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n")
    with pytest.raises(RunFailedError) as info:
        vault.run("t1", timeout=1.0)
    assert info.value.status < 0
    assert "timeout" in Path(info.value.log_path).read_text()


def test_run_refuses_committed_missing_and_bad_args(vault: Vault) -> None:
    _specimen(vault, "c1", PROTOCOL_OK)
    vault.run("c1")
    with pytest.raises(ImmutableError, match="vault new NEW_ID --parent c1"):
        vault.run("c1")
    with pytest.raises(NotFoundError):
        vault.run("nope")
    wd = vault.new("np", domain="training", method="fine_tuning")
    (wd / "protocol.py").unlink()
    with pytest.raises(NotFoundError, match="protocol.py"):
        vault.run("np")
    with pytest.raises(InvalidInputError):
        vault.run("np", "--lr 3")  # one string, not a list
    with pytest.raises(InvalidInputError, match="timeout"):
        vault.run("np", timeout=0)


def test_cli_run_streams_passes_args_and_exit_codes(vault: Vault) -> None:
    _specimen(vault, "cli1", PROTOCOL_OK)
    r = invoke("--vault", str(vault.root), "run", "cli1", "--", "--seed", "5", "--flag")
    assert r.exit_code == 0, r.output
    assert "args: ['--seed', '5', '--flag']" in r.output
    assert "Committed cli1" in r.output and "seeds: 5" in r.output
    _specimen(vault, "cli2", PROTOCOL_FAIL)
    r = invoke("--vault", str(vault.root), "run", "cli2")
    assert r.exit_code == 3, r.output
    assert "about to fail" in r.output and "--partial" in r.output
    r = invoke("--vault", str(vault.root), "commit", "cli2", "--partial", "-m", "died")
    assert r.exit_code == 0, r.output
    assert vault.get("cli2").manifest.metadata["partial"] is True


def test_seed_everything_rejects_bad_seeds() -> None:
    from cas_vault import seed_everything

    for bad in (-1, 2**32, 1.5, "1", True):
        with pytest.raises(InvalidInputError):
            seed_everything(bad)  # type: ignore[arg-type]


# -- notes -------------------------------------------------------------------------------------
def test_note_appends_timestamped_entries_then_annotates_after_commit(vault: Vault) -> None:
    wd = vault.new("n1", domain="training", method="fine_tuning")
    before = (wd / "field_notes.md").read_text()
    r = invoke("--vault", str(vault.root), "note", "n1", "loss plateaus at 0.3")
    assert r.exit_code == 0, r.output
    vault.note("n1", "second entry")
    text = (wd / "field_notes.md").read_text()
    assert text.startswith(before)
    entries = text[len(before):]
    assert entries.index("loss plateaus at 0.3") < entries.index("second entry")
    assert entries.count("### ") == 2 and "Z\n" in entries
    vault.commit("n1")
    with pytest.raises(ImmutableError, match="annotate"):  # the sealed notebook stays sealed
        vault.note("n1", "too late")
    r = invoke("--vault", str(vault.root), "note", "n1", "too late")
    assert r.exit_code == 0 and "Annotated n1" in r.output  # an annotation instead
    assert "too late" not in vault.specimen("n1").read_bytes("field_notes.md").decode()
    assert [a.text for a in vault.show("n1").annotations] == ["too late"]
    r = invoke("--vault", str(vault.root), "note", "n1", "   ")
    assert r.exit_code == 2, r.output
    r = invoke("--vault", str(vault.root), "note", "missing", "text")
    assert r.exit_code == 2, r.output


def test_concurrent_run_of_same_specimen_is_refused(vault: Vault, tmp_path: Path) -> None:
    from cas_vault.errors import LockTimeoutError

    flag = tmp_path / "started"
    _specimen(vault, "busy", f"import pathlib, time\npathlib.Path({str(flag)!r}).touch()\ntime.sleep(3600)\n")
    first = subprocess.Popen([sys.executable, "-m", "cas_vault", "--vault", str(vault.root),
                              "run", "busy"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        import time

        deadline = time.monotonic() + 300  # only a bound on a hang: the flag says "started"
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flag.exists()
        with pytest.raises(LockTimeoutError, match="another `vault run`"):
            vault.run("busy")
    finally:
        import os
        import signal

        os.killpg(first.pid, signal.SIGKILL)  # the runner and its protocol child
        first.wait()


def test_run_failed_error_is_a_vault_error_that_pickles() -> None:
    import pickle

    from cas_vault.errors import VaultError

    err = RunFailedError("x", -9, "/v/specimens/x/run.log", "tail")
    assert isinstance(err, VaultError) and err.exit_code == 3
    back = pickle.loads(pickle.dumps(err))
    assert (back.specimen_id, back.status, back.log_path, str(back)) == (
        "x", -9, "/v/specimens/x/run.log", str(err))
    assert "killed by signal 9" in str(err)
