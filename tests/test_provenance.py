"""A dirty checkout's patch is kept with the commit, so a run from uncommitted code reproduces.

Every test builds a real git repository in ``tmp_path`` and runs real protocols through
``vault run`` (or the step-wise logger) with ``code_dir`` pointing at it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cas_vault import Vault, provenance
from cas_vault.digest import hash_bytes
from cas_vault.errors import RunFailedError

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

PROTOCOL = '''
from pathlib import Path
from cas_vault import SpecimenStorage
SpecimenStorage(Path(__file__).parent).write_config({"lr": 0.1})
print("done")
'''
FAILING = "print('about to fail')\nraise SystemExit(4)\n"
RUNS_PROTOCOL = '''
from pathlib import Path
from cas_vault import SpecimenStorage
SpecimenStorage(Path(__file__).parent).write_metrics({"step": [0, 1], "loss": [1.0, 0.5]})
'''

BINARY = bytes(range(256)) * 4


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-C", str(repo), *args],
        check=True, capture_output=True,
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one commit (a text and a binary file), then edited: both files
    modified and an untracked file added."""
    code = tmp_path / "code"
    code.mkdir()
    _git(code, "init", "-q")
    (code / "train.py").write_text("lr = 0.1\nepochs = 3\n")
    (code / "weights.bin").write_bytes(BINARY)
    _git(code, "add", ".")
    _git(code, "commit", "-qm", "init")
    (code / "train.py").write_text("lr = 0.3\nepochs = 3\nwarmup = True\n")
    (code / "weights.bin").write_bytes(BINARY[::-1])
    (code / "notes.txt").write_text("not tracked\n")
    return code


def _specimen(vault: Vault, sid: str, protocol: str = PROTOCOL, layout: str | None = None) -> Path:
    kwargs = {"layout": layout} if layout else {}
    wd = vault.new(sid, domain="training", method="fine_tuning", **kwargs)
    (wd / "protocol.py").write_text(protocol)
    return wd


def _patch_of(vault: Vault, sid: str, path: str = provenance.DIFF_PATH) -> bytes:
    return vault.objects.get(vault.get(sid).tree[path].digest)


def test_dirty_run_keeps_the_patch_and_git_apply_reproduces_the_code(
        vault: Vault, repo: Path, tmp_path: Path) -> None:
    expected = _git(repo, "diff", "--binary", "HEAD")
    _specimen(vault, "d1")
    vault.run("d1", code_dir=repo)
    commit = vault.get("d1")
    git = commit.manifest.metadata["provenance"]["git"]
    assert git["dirty"] is True and git["diff_kept"] is True
    assert git["diff_path"] == "provenance/git.diff"
    # The commit holds the patch as an object, live through its tree and verified on read.
    entry = commit.tree["provenance/git.diff"]
    stored = vault.objects.get(entry.digest)
    assert stored == expected and git["diff_bytes"] == entry.size == len(expected)
    # diff_digest: the patch's bytes, NUL, the untracked paths, which are named, not kept.
    assert git["untracked"] == 1 and git["untracked_files"] == ["notes.txt"]
    assert git["diff_digest"] == hash_bytes(stored + b"\0" + b"notes.txt")
    assert "notes.txt" not in stored.decode(errors="replace")
    # Recover it: check the specimen out, clone the code at the recorded commit, git apply.
    out = vault.checkout("d1", tmp_path / "out")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    _git(clone, "checkout", "-q", git["commit"])
    assert (clone / "train.py").read_bytes() != (repo / "train.py").read_bytes()
    _git(clone, "apply", str(out / "provenance" / "git.diff"))
    for name in ("train.py", "weights.bin"):
        assert (clone / name).read_bytes() == (repo / name).read_bytes(), name


def test_clean_tree_records_no_patch(vault: Vault, repo: Path) -> None:
    _git(repo, "add", "train.py", "weights.bin")
    _git(repo, "commit", "-qm", "edits")
    (repo / "notes.txt").unlink()
    _specimen(vault, "c1")
    vault.run("c1", code_dir=repo)
    commit = vault.get("c1")
    git = commit.manifest.metadata["provenance"]["git"]
    assert git["dirty"] is False and git["diff_digest"] is None
    assert git["diff_bytes"] == 0 and git["diff_kept"] is False and git["diff_path"] is None
    assert not any(p.startswith("provenance/") for p in commit.tree)
    assert not (vault.specimen_dir("c1") / "provenance").exists()


def test_untracked_files_alone_are_named_but_give_no_patch(vault: Vault, repo: Path) -> None:
    _git(repo, "checkout", "-q", "--", ".")
    _specimen(vault, "u1")
    vault.run("u1", code_dir=repo)
    commit = vault.get("u1")
    git = commit.manifest.metadata["provenance"]["git"]
    assert git["dirty"] is True and git["untracked_files"] == ["notes.txt"]
    assert git["diff_bytes"] == 0 and git["diff_kept"] is False
    assert "provenance/git.diff" not in commit.tree


def test_patch_over_the_cap_is_not_kept_and_the_run_still_commits(
        vault: Vault, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = len(_git(repo, "diff", "--binary", "HEAD"))
    monkeypatch.setattr(provenance, "DIFF_CAP", size - 1)
    _specimen(vault, "big")
    vault.run("big", code_dir=repo)
    commit = vault.get("big")
    git = commit.manifest.metadata["provenance"]["git"]
    assert git["diff_kept"] is False and git["diff_path"] is None
    assert git["diff_bytes"] == size and git["diff_digest"]  # still identified, just not kept
    assert "provenance/git.diff" not in commit.tree
    # At the cap exactly, it is kept.
    monkeypatch.setattr(provenance, "DIFF_CAP", size)
    _specimen(vault, "fits")
    vault.run("fits", code_dir=repo)
    assert vault.get("fits").tree["provenance/git.diff"].size == size


@pytest.mark.parametrize("then", ["other edits", "clean"])
def test_failed_run_then_successful_run_seals_only_the_new_patch(
        vault: Vault, repo: Path, then: str) -> None:
    wd = _specimen(vault, "f1", FAILING)
    first = _git(repo, "diff", "--binary", "HEAD")
    with pytest.raises(RunFailedError):
        vault.run("f1", code_dir=repo)
    # The failure keeps its patch beside its log, for `vault commit --partial`.
    assert (wd / "provenance" / "git.diff").read_bytes() == first
    if then == "clean":
        _git(repo, "checkout", "-q", "--", ".")
    else:
        (repo / "train.py").write_text("lr = 0.5\n")
    (wd / "protocol.py").write_text(PROTOCOL)
    vault.run("f1", code_dir=repo)
    commit = vault.get("f1")
    git = commit.manifest.metadata["provenance"]["git"]
    if then == "clean":
        assert "provenance/git.diff" not in commit.tree and git["diff_kept"] is False
        assert not (wd / "provenance").exists()
    else:
        second = _git(repo, "diff", "--binary", "HEAD")
        assert second != first and _patch_of(vault, "f1") == second
        assert git["diff_digest"] == hash_bytes(second + b"\0" + b"notes.txt")


def test_partial_commit_of_a_failed_run_seals_its_patch(vault: Vault, repo: Path) -> None:
    _specimen(vault, "p1", FAILING)
    expected = _git(repo, "diff", "--binary", "HEAD")
    with pytest.raises(RunFailedError):
        vault.run("p1", code_dir=repo)
    c = vault.commit("p1", partial=True)
    git = c.manifest.metadata["provenance"]["git"]
    assert c.manifest.metadata["provenance"]["exit_status"] == 4
    assert git["diff_kept"] is True and _patch_of(vault, "p1", git["diff_path"]) == expected


def test_interrupted_run_leaves_no_earlier_record_or_patch(vault: Vault, repo: Path) -> None:
    """A run that starts replaces what an earlier failed run left, before the protocol runs."""
    wd = _specimen(vault, "i1", FAILING)
    with pytest.raises(RunFailedError):
        vault.run("i1", code_dir=repo)
    assert (wd / ".cas" / "failed_run.msgpack").exists()
    _git(repo, "checkout", "-q", "--", ".")  # clean now
    # The protocol sees the working directory as the new run left it before starting it.
    (wd / "protocol.py").write_text(
        "from pathlib import Path\n"
        "here = Path(__file__).parent\n"
        "print(sorted(str(p.relative_to(here)) for p in here.rglob('*')))\n"
        "raise SystemExit(9 if (here / 'provenance').exists()"
        " or (here / '.cas' / 'failed_run.msgpack').exists() else 4)\n"
    )
    with pytest.raises(RunFailedError) as info:
        vault.run("i1", code_dir=repo)
    assert info.value.status == 4, Path(info.value.log_path).read_text()


def test_protocol_that_touches_the_patch_does_not_change_what_is_sealed(
        vault: Vault, repo: Path) -> None:
    expected = _git(repo, "diff", "--binary", "HEAD")
    _specimen(vault, "t1", PROTOCOL + "Path(__file__).with_name('provenance').joinpath("
                           "'git.diff').write_bytes(b'tampered')\n")
    vault.run("t1", code_dir=repo)
    assert _patch_of(vault, "t1") == expected


def test_runs_layout_keeps_the_patch_in_the_run(vault: Vault, repo: Path) -> None:
    wd = _specimen(vault, "rl", RUNS_PROTOCOL, layout="runs")
    expected = _git(repo, "diff", "--binary", "HEAD")
    first = vault.run("rl", code_dir=repo)
    run_sid = first.commit.specimen_id
    assert run_sid.startswith("rl.run_")
    git = first.commit.manifest.metadata["provenance"]["git"]
    assert git["diff_path"] == "strata/provenance/git.diff" and git["diff_kept"] is True
    assert _patch_of(vault, run_sid, git["diff_path"]) == expected
    assert not (wd / "provenance").exists()  # the working directory's root is the specimen's
    # A second run from other edits gets its own patch, in its own run.
    (repo / "train.py").write_text("lr = 0.9\n")
    second = vault.run("rl", code_dir=repo)
    assert _patch_of(vault, second.commit.specimen_id, "strata/provenance/git.diff") == _git(
        repo, "diff", "--binary", "HEAD")
    assert _patch_of(vault, run_sid, "strata/provenance/git.diff") == expected


def test_logger_commit_keeps_the_patch(vault: Vault, repo: Path) -> None:
    expected = _git(repo, "diff", "--binary", "HEAD")
    with vault.start_specimen("lg", domain="training", method="fine_tuning", code_dir=repo) as s:
        s.log({"loss": 1.0})
    commit = vault.get("lg")
    git = commit.manifest.metadata["provenance"]["git"]
    assert git["diff_kept"] is True and _patch_of(vault, "lg", git["diff_path"]) == expected


def test_patch_ignores_the_users_diff_configuration(vault: Vault, repo: Path,
                                                    tmp_path: Path) -> None:
    """Colour, no prefixes or an external diff in the user's config must not spoil the patch."""
    _git(repo, "config", "color.diff", "always")
    _git(repo, "config", "diff.noprefix", "true")
    _git(repo, "config", "diff.external", "false")
    _specimen(vault, "cfg")
    vault.run("cfg", code_dir=repo)
    out = vault.checkout("cfg", tmp_path / "out")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    _git(clone, "apply", str(out / "provenance" / "git.diff"))
    assert (clone / "train.py").read_bytes() == (repo / "train.py").read_bytes()
