"""`vault verify` and `vault gc`: the corruption matrix, garbage handling and gc safety rules.

Each tampering case changes one thing on disk the way a user, a disk or a stray script could,
then asserts that verify names it (kind, specimen, digest or path) and that the CLI exits 1.
A clean vault must give exit 0 and no problem at all.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cas_vault import SpecimenStorage, Vault
from cas_vault.cli import cli
from cas_vault.digest import hash_bytes
from cas_vault.errors import IntegrityError, InvalidIdError, InvalidInputError, NotFoundError
from cas_vault.gc import parse_duration
from cas_vault.verify import INFO_KINDS, PROBLEM_KINDS


# -- a small vault with lineage, metrics, configs and a tensor -------------------------------
def _build(root: Path) -> Vault:
    v = Vault.init(root)
    for sid, parents, seed in (("a", (), 0), ("b", ("a",), 1), ("c", (), 2)):
        path = v.new(sid, domain="training", method="fine_tuning", parents=list(parents))
        s = SpecimenStorage(path)
        rng = np.random.default_rng(seed)
        s.write_metrics({"step": np.arange(20), "loss": rng.random(20)})
        s.write_config({"seed": seed})
        s.write_tensors("act", rng.standard_normal((16, 8)).astype(np.float32))
        v.commit(sid, message=f"commit {sid}")
    return v


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cas_vault.catalog import release_writer

    root = _build(tmp_path_factory.mktemp("template") / "vault").root
    # Close the catalog now: its idle timer would otherwise rewrite files during a copy.
    release_writer(root)
    return root


@pytest.fixture
def v(template: Path, tmp_path: Path) -> Vault:
    # cp -a keeps the hard links between working files and objects, which verify relies on.
    subprocess.run(["cp", "-a", str(template), str(tmp_path / "vault")], check=True)
    return Vault.open(tmp_path / "vault")


def obj(v: Vault, sid: str, rel: str) -> Path:
    return v.objects.path(v.get(sid).tree[rel].digest)


def writable(path: Path) -> Path:
    path.chmod(0o644)
    return path


def flip_byte(path: Path, offset: int = 0) -> None:
    writable(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def journal_lines(v: Vault) -> list[bytes]:
    return v.refs.journal.read_bytes().split(b"\n")[:-1]


def write_journal(v: Vault, lines: list[bytes]) -> None:
    v.refs.journal.write_bytes(b"".join(line + b"\n" for line in lines))


def problems(report) -> list[tuple[str, str | None, str | None]]:
    return [(p.kind, p.specimen, p.path) for p in report.problems]


# -- a clean vault -----------------------------------------------------------------------------
def test_clean_vault_has_no_problems_in_either_mode(v: Vault) -> None:
    for quick in (False, True):
        report = v.verify(quick=quick)
        assert report.ok, report.problems
        assert report.specimens == ("a", "b", "c")
        assert not [i for i in report.info if i.kind != "uncommitted_workdir"]
    full = v.verify()
    assert full.bytes_hashed > 0 and full.objects_checked >= 3 * 6
    assert v.verify(quick=True).bytes_hashed < full.bytes_hashed  # commits only


def test_clean_vault_cli_exit_0_and_json_schema(v: Vault) -> None:
    result = CliRunner().invoke(cli, ["--vault", str(v.root), "verify"])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output
    result = CliRunner().invoke(cli, ["verify", "--json", "--vault", str(v.root)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc) == {"ok", "mode", "specimens", "objects_checked", "bytes_hashed", "seconds",
                        "problems", "info", "journal_tip"}
    assert doc["ok"] is True and doc["problems"] == [] and doc["mode"] == "full"


# -- the corruption matrix ----------------------------------------------------------------------
def _flip_tree_object(v: Vault) -> None:
    flip_byte(obj(v, "a", "strata/config.msgpack"))


def _flip_tensor_chunk(v: Vault) -> None:
    rel = next(p for p in v.get("c").tree if "/c/" in p)
    flip_byte(obj(v, "c", rel))


def _truncate_object(v: Vault) -> None:
    p = writable(obj(v, "a", "strata/metrics.parquet"))
    os.truncate(p, p.stat().st_size - 7)


def _delete_object(v: Vault) -> None:
    obj(v, "a", "field_notes.md").unlink()


def _stray_non_digest(v: Vault) -> None:
    (v.objects.root / "ab" / "not-a-digest").write_bytes(b"hello")


def _stray_wrong_content(v: Vault) -> None:
    d = hash_bytes(b"the real content")
    v.objects.path(d).write_bytes(b"something else")


def _edit_commit(v: Vault) -> None:
    flip_byte(v.objects.path(v.resolve("c")), 40)


def _garbage_commit(v: Vault) -> None:
    # Replace a commit object with bytes that hash right but are not a commit: a hand-made ref.
    d = v.objects.put_bytes(b"\x93\x01\x02\x03")
    (v.root / "refs" / "c").write_text(d + "\n")


def _delete_commit(v: Vault) -> None:
    v.objects.path(v.resolve("c")).unlink()


def _delete_parent_commit(v: Vault) -> None:
    v.objects.path(v.resolve("a")).unlink()


def _edit_ref_other_commit(v: Vault) -> None:
    (v.root / "refs" / "a").write_text(v.resolve("c") + "\n")


def _edit_ref_garbage(v: Vault) -> None:
    (v.root / "refs" / "a").write_text("not a digest\n")


def _delete_ref(v: Vault) -> None:
    (v.root / "refs" / "b").unlink()


def _add_ref_by_hand(v: Vault) -> None:
    (v.root / "refs" / "d").write_text(v.resolve("c") + "\n")


def _edit_journal_time(v: Vault) -> None:
    lines = journal_lines(v)
    lines[0] = lines[0].replace(b'"time":"2', b'"time":"1')
    write_journal(v, lines)


def _edit_journal_spacing(v: Vault) -> None:
    lines = journal_lines(v)
    lines[1] = lines[1].replace(b'":', b'": ', 1)
    write_journal(v, lines)


def _edit_journal_last_commit(v: Vault) -> None:
    lines = journal_lines(v)
    lines[-1] = lines[-1].replace(v.resolve("c").encode(), v.resolve("a").encode())
    write_journal(v, lines)


def _delete_journal_middle(v: Vault) -> None:
    lines = journal_lines(v)
    del lines[1]
    write_journal(v, lines)


def _delete_journal_last(v: Vault) -> None:
    write_journal(v, journal_lines(v)[:-1])


def _reorder_journal(v: Vault) -> None:
    lines = journal_lines(v)
    lines[0], lines[1] = lines[1], lines[0]
    write_journal(v, lines)


def _edit_workdir_in_place(v: Vault) -> None:
    # An ordinary write into a committed working file (as root, modes stop nothing).
    flip_byte(v.specimen_dir("b") / "strata" / "config.msgpack")


def _replace_workdir_file_same_size(v: Vault) -> None:
    p = v.specimen_dir("b") / "field_notes.md"
    data = bytearray(p.read_bytes())
    data[0] ^= 0x20
    p.unlink()
    p.write_bytes(bytes(data))


def _replace_workdir_file_other_size(v: Vault) -> None:
    p = v.specimen_dir("b") / "protocol.py"
    data = p.read_bytes()
    p.unlink()
    p.write_bytes(data + b"# changed\n")


def _delete_workdir_file(v: Vault) -> None:
    (v.specimen_dir("b") / "strata" / "metrics.parquet").unlink()


def _add_workdir_file(v: Vault) -> None:
    (v.specimen_dir("b") / "strata" / "late.txt").write_text("added after sealing")


# (tamper, expected (kind, specimen, path) problems that must all be reported, full mode only)
CASES: dict[str, tuple[Callable[[Vault], None], set[tuple[str, str | None, str | None]], bool]] = {
    "flip_byte": (_flip_tree_object, {("corrupt_object", "a", "strata/config.msgpack")}, False),
    "flip_tensor_chunk": (_flip_tensor_chunk, {("corrupt_object", "c", None)}, False),
    "truncate": (_truncate_object, {("size_mismatch", "a", "strata/metrics.parquet")}, True),
    "delete_object": (_delete_object, {("missing_object", "a", "field_notes.md")}, True),
    "stray_non_digest": (_stray_non_digest, {("stray_object", None, None)}, True),
    "stray_wrong_content": (_stray_wrong_content, {("stray_object", None, None)}, False),
    "edit_commit": (_edit_commit, {("corrupt_object", "c", None), ("bad_commit", "c", None)},
                    True),
    "garbage_commit": (_garbage_commit, {("bad_commit", "c", None), ("ref_mismatch", "c", None)},
                       True),
    "delete_commit": (_delete_commit, {("missing_commit", "c", None)}, True),
    "delete_parent_commit": (_delete_parent_commit, {("missing_commit", "a", None),
                                                     ("missing_parent", "b", None)}, True),
    "edit_ref": (_edit_ref_other_commit, {("ref_mismatch", "a", None)}, True),
    "edit_ref_garbage": (_edit_ref_garbage, {("bad_ref", "a", None)}, True),
    "delete_ref": (_delete_ref, {("missing_ref", "b", None)}, True),
    "add_ref_by_hand": (_add_ref_by_hand, {("unjournaled_ref", "d", None),
                                           ("ref_mismatch", "d", None)}, True),
    "edit_journal_entry": (_edit_journal_time, {("journal_broken", "b", None)}, True),
    "edit_journal_noncanonical": (_edit_journal_spacing, {("journal_broken", None, None),
                                                          ("unjournaled_ref", "b", None)}, True),
    "edit_journal_last_commit": (_edit_journal_last_commit, {("ref_mismatch", "c", None)}, True),
    "delete_journal_middle": (_delete_journal_middle, {("journal_broken", "c", None),
                                                       ("unjournaled_ref", "b", None)}, True),
    # The chain of what is left is intact: the tip record and the catalog witness the loss.
    "delete_journal_last": (_delete_journal_last, {("unjournaled_ref", "c", None),
                                                   ("journal_rolled_back", None, None)}, True),
    "reorder_journal": (_reorder_journal, {("journal_broken", "b", None),
                                           ("journal_broken", "a", None)}, True),
}


def _matches(found: list[tuple[str, str | None, str | None]], want: tuple) -> bool:
    kind, sid, path = want
    return any(k == kind and (sid is None or s == sid) and (path is None or p == path)
               for k, s, p in found)


@pytest.mark.parametrize("case", sorted(CASES))
def test_corruption_is_detected_and_named(v: Vault, case: str) -> None:
    tamper, expected, quick_detects = CASES[case]
    tamper(v)
    report = v.verify()
    found = problems(report)
    assert not report.ok
    for want in expected:
        assert _matches(found, want), (want, found)
    # Problems only of the kinds this tampering explains: no false positives around it (a
    # tampered ref also leaves the catalog disagreeing with the refs, which is true).
    # Any edit of the journal's lines also breaks the witnesses of its end.
    allowed = {k for k, _, _ in expected} | {"catalog_stale", "journal_rolled_back"}
    assert {k for k, _, _ in found} <= allowed, found
    for p in report.problems:
        assert p.kind in PROBLEM_KINDS and p.message
    result = CliRunner().invoke(cli, ["--vault", str(v.root), "verify"])
    assert result.exit_code == 1, result.output
    for kind, _, _ in expected:
        assert kind in result.output
    quick = v.verify(quick=True)
    assert quick.ok is (not quick_detects), problems(quick)


def test_corrupt_object_names_digest_and_every_specimen_using_it(tmp_path: Path) -> None:
    # Two specimens share one object (same config bytes): both are named.
    v = Vault.init(tmp_path / "v")
    for sid in ("x1", "x2"):
        SpecimenStorage(v.new(sid, domain="training", method="fine_tuning")).write_config({"k": 1})
        v.commit(sid)
    d = v.get("x1").tree["strata/config.msgpack"].digest
    assert v.get("x2").tree["strata/config.msgpack"].digest == d
    flip_byte(v.objects.path(d))
    report = v.verify()
    hit = [p for p in report.problems if p.kind == "corrupt_object"]
    assert {p.specimen for p in hit} == {"x1", "x2"} and {p.digest for p in hit} == {d}
    assert all(p.file == f"objects/{d[:2]}/{d}" for p in hit)


# Changes to a committed working directory: the sealed bytes are elsewhere, so they are
# information about drift (exit 0), and the objects stay exactly as sealed.
WORKDIR_CASES = {
    "edit_workdir_in_place": (_edit_workdir_in_place, ("workdir_modified", "b", "strata/config.msgpack"), False),
    "replace_workdir_same_size": (_replace_workdir_file_same_size,
                                  ("workdir_modified", "b", "field_notes.md"), False),
    "replace_workdir_other_size": (_replace_workdir_file_other_size,
                                   ("workdir_modified", "b", "protocol.py"), True),
    "delete_workdir_file": (_delete_workdir_file, ("workdir_missing", "b", "strata/metrics.parquet"), True),
    "add_workdir_file": (_add_workdir_file, ("workdir_extra", "b", "strata/late.txt"), True),
}


@pytest.mark.parametrize("case", sorted(WORKDIR_CASES))
def test_working_directory_drift_is_information_and_the_seal_holds(v: Vault, case: str) -> None:
    tamper, want, quick_detects = WORKDIR_CASES[case]
    before = {p: p.read_bytes() for p in (v.root / "objects").rglob("*") if p.is_file()}
    tamper(v)
    report = v.verify()
    assert report.ok, report.problems
    assert _matches([(i.kind, i.specimen, i.path) for i in report.info], want), report.info
    assert {p: p.read_bytes() for p in (v.root / "objects").rglob("*") if p.is_file()} == before
    quick = v.verify(quick=True)
    assert _matches([(i.kind, i.specimen, i.path) for i in quick.info], want) is quick_detects
    result = CliRunner().invoke(cli, ["--vault", str(v.root), "verify"])
    assert result.exit_code == 0 and want[0] in result.output, result.output


def test_workdir_edit_in_place_never_reaches_a_reader(v: Vault) -> None:
    sealed = v.specimen("b").read_config()
    _edit_workdir_in_place(v)
    assert v.specimen("b").read_config() == sealed


# -- scope ------------------------------------------------------------------------------------
def test_verify_only_named_specimens(v: Vault) -> None:
    _flip_tree_object(v)
    assert v.verify(["c"]).ok
    bad = v.verify(["a", "c"])
    assert not bad.ok and bad.specimens == ("a", "c")
    assert {p.specimen for p in bad.problems} == {"a"}
    result = CliRunner().invoke(cli, ["--vault", str(v.root), "verify", "c"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["--vault", str(v.root), "verify", "a"])
    assert result.exit_code == 1, result.output


def test_verify_unknown_or_bad_id_exits_2(v: Vault) -> None:
    with pytest.raises(NotFoundError):
        v.verify(["nope"])
    with pytest.raises(InvalidIdError):
        v.verify(["../etc"])
    for arg in ("nope", "../etc"):
        result = CliRunner().invoke(cli, ["--vault", str(v.root), "verify", arg])
        assert result.exit_code == 2, result.output


# -- garbage and work in progress are information, not problems --------------------------------
def test_garbage_is_info_and_gc_frees_it(v: Vault) -> None:
    junk = v.objects.put_bytes(b"unreferenced garbage")
    (v.root / "tmp" / ".w.999999.0123456789abcdef0123456789abcdef.tmp").write_bytes(b"partial")
    tmpdir = v.specimens_dir / ".z.0123456789abcdef0123456789abcdef.tmp"
    tmpdir.mkdir()
    (tmpdir / "manifest.msgpack").write_bytes(b"x")
    v.new("wip", domain="training", method="fine_tuning")
    report = v.verify()
    assert report.ok, report.problems
    kinds = {i.kind for i in report.info}
    assert {"unreferenced_objects", "temp_file", "uncommitted_workdir"} <= kinds
    assert kinds <= set(INFO_KINDS)
    unref = next(i for i in report.info if i.kind == "unreferenced_objects")
    assert unref.count == 1 and unref.bytes == len(b"unreferenced garbage")
    result = CliRunner().invoke(cli, ["--vault", str(v.root), "verify"])
    assert result.exit_code == 0, result.output

    dry = v.gc(grace=0, dry_run=True)
    assert dry.removed_objects == 1 and v.objects.has(junk)
    # The dead-pid temp file goes at once; the pid-less temp directory is young: kept.
    done = v.gc(grace=0)
    assert done.removed_objects == 1 and done.removed_bytes == len(b"unreferenced garbage")
    assert not v.objects.has(junk)
    assert done.removed_temp == 1 and done.kept_temp == 1 and tmpdir.exists()
    assert v.gc(grace=0, temp_age=0).removed_temp == 1 and not tmpdir.exists()
    after = v.verify()
    assert after.ok and not {"unreferenced_objects", "temp_file"} & {i.kind for i in after.info}
    assert v.verify().specimens == ("a", "b", "c")


def test_gc_grace_period_uses_mtime(v: Vault) -> None:
    junk = v.objects.put_bytes(b"young garbage")
    r = v.gc()  # default two weeks
    assert r.removed_objects == 0 and r.recent_objects == 1 and v.objects.has(junk)
    old = time.time() - 15 * 86400
    os.utime(v.objects.path(junk), (old, old))
    assert v.gc(grace="14d").removed_objects == 1 and not v.objects.has(junk)


def test_gc_keeps_everything_live(v: Vault) -> None:
    before = {d for d in v.objects.iter_digests()}
    report = v.gc(grace=0)
    assert report.removed_objects == 0
    assert set(v.objects.iter_digests()) == before
    assert v.verify().ok


def test_gc_keeps_objects_listed_in_working_indexes(v: Vault) -> None:
    from cas_vault.workdir import WorkingIndex

    wd = v.new("wip", domain="training", method="fine_tuning")
    d = v.objects.put_bytes(b"a tensor chunk written before commit")
    WorkingIndex(wd).update({"strata/t.zarr/c/0": d})
    assert v.gc(grace=0).removed_objects == 0 and v.objects.has(d)
    unref = [i for i in v.verify().info if i.kind == "unreferenced_objects"]
    assert unref == []


def test_gc_keeps_commits_named_only_by_the_journal(v: Vault) -> None:
    d = v.resolve("c")
    _delete_ref(v)  # ref b gone; its commit is still reachable from the journal
    b = v.get("a")  # noqa: F841 (a still readable)
    journal_commit = next(e.commit for e in v.refs.entries() if e.specimen_id == "b")
    v.gc(grace=0)
    assert v.objects.has(journal_commit) and v.objects.has(d)


def test_gc_refuses_to_delete_when_commits_are_damaged(v: Vault) -> None:
    junk = v.objects.put_bytes(b"garbage")
    _delete_commit(v)
    with pytest.raises(IntegrityError, match="deleted nothing"):
        v.gc(grace=0)
    assert v.objects.has(junk)
    result = CliRunner().invoke(cli, ["--vault", str(v.root), "gc", "--grace", "0"])
    assert result.exit_code == 1, result.output
    assert "vault verify" in result.output


def test_gc_cli_reports_and_dry_run(v: Vault) -> None:
    junk = v.objects.put_bytes(b"garbage for the cli")
    result = CliRunner().invoke(cli, ["--vault", str(v.root), "gc", "--dry-run", "--grace", "0"])
    assert result.exit_code == 0, result.output
    assert "Would remove 1 unreachable object" in result.output and v.objects.has(junk)
    result = CliRunner().invoke(cli, ["--vault", str(v.root), "gc", "--grace", "0", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["removed_objects"] == 1 and doc["removed"] == [f"objects/{junk[:2]}/{junk}"]
    result = CliRunner().invoke(cli, ["--vault", str(v.root), "gc", "--grace", "soon"])
    assert result.exit_code == 2, result.output


def test_interrupted_commit_is_recovered_and_reported_as_info(v: Vault) -> None:
    # A crash between creating the ref and journaling it: ref + intent file, no journal line.
    # Nothing that comes after the line (its tip record, the catalog's update) happened.
    from cas_vault.digest import hash_bytes
    from cas_vault.refs import JournalTip

    write_journal(v, journal_lines(v)[:-1])
    v.refs.tip_path.write_bytes(JournalTip(2, hash_bytes(journal_lines(v)[-1])).encode())
    v.catalog_path.unlink()
    d = v.resolve("c")
    (v.refs.pending_dir).mkdir(parents=True, exist_ok=True)
    (v.refs.pending_dir / "c").write_text(d + "\n")
    report = v.verify()
    assert report.ok, report.problems
    assert [i.specimen for i in report.info if i.kind == "recovered_journal_entry"] == ["c"]
    assert [e.specimen_id for e in v.refs.entries()] == ["a", "b", "c"]
    assert not (v.refs.pending_dir / "c").exists()


def test_parse_duration() -> None:
    assert parse_duration("0") == 0
    assert parse_duration("90s") == 90
    assert parse_duration("1.5h") == 5400
    assert parse_duration("14d") == parse_duration("2w") == 14 * 86400
    for bad in ("", "-1d", "2 weeks", "1y"):
        with pytest.raises(InvalidInputError):
            parse_duration(bad)


# -- the catalog --------------------------------------------------------------------------------
def test_stale_catalog_is_a_problem_until_reindexed(v: Vault) -> None:
    import duckdb

    from cas_vault.catalog import release_writer

    assert v.catalog_path.exists()
    release_writer(v.root)
    with duckdb.connect(str(v.catalog_path)) as conn:
        conn.execute("UPDATE catalog SET commit = ? WHERE specimen_id = 'b'", [v.resolve("a")])
    report = v.verify()
    assert [(p.kind, p.count) for p in report.problems] == [("catalog_stale", 1)]
    assert "run vault index" in report.problems[0].message
    result = CliRunner().invoke(cli, ["--vault", str(v.root), "verify"])
    assert result.exit_code == 1, result.output
    v.index(rebuild=True)
    assert v.verify().ok


def test_catalog_behind_the_refs_is_information(v: Vault) -> None:
    import duckdb

    from cas_vault.catalog import release_writer

    release_writer(v.root)
    with duckdb.connect(str(v.catalog_path)) as conn:
        conn.execute("DELETE FROM catalog WHERE specimen_id = 'c'")
    report = v.verify()
    assert report.ok, report.problems
    assert [(i.kind, i.count) for i in report.info if i.kind.startswith("catalog")] == [
        ("catalog_behind", 1)]


def test_missing_catalog_is_not_a_problem(v: Vault) -> None:
    from cas_vault.catalog import release_writer

    release_writer(v.root)
    v.catalog_path.unlink()
    for wal in v.root.glob("vault.duckdb*"):
        wal.unlink()
    assert v.verify().ok


def test_unreadable_object_is_a_problem_not_a_pass(v: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    # File modes stop nobody running as root (CI does), so the read failure is injected where
    # every reader of a small object ends up: opening it.
    import builtins

    p = obj(v, "a", "strata/config.msgpack")
    real_open = builtins.open

    def failing_open(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(p):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(p))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)
    report = v.verify()
    assert ("corrupt_object", "a", "strata/config.msgpack") in problems(report)
    assert not report.ok


def test_gc_ignores_temp_files_of_intent_writes(v: Vault) -> None:
    # A commit killed while writing its intent file leaves `locks/pending/.w.<pid>.<uuid>.tmp`
    # holding a digest: that is not an intent, and must not keep the commit's objects alive.
    junk = v.objects.put_bytes(b"objects of a commit killed before its ref")
    pending = v.refs.pending_dir
    pending.mkdir(parents=True, exist_ok=True)
    (pending / ".w.999999.0123456789abcdef0123456789abcdef.tmp").write_text(junk + "\n")
    report = v.gc(grace=0)
    assert report.removed_objects == 1 and not v.objects.has(junk)
    assert not list(pending.iterdir())


_VERIFY_RO = (
    "import sys; from cas_vault import Vault; r = Vault.open(sys.argv[1]).verify(); "
    "print('ok' if r.ok else [p.message for p in r.problems])"
)


def test_verify_works_on_a_read_only_mount(v: Vault, tmp_path: Path) -> None:
    # A backup on read-only media: verify must check it without writing (no locks, no recovery).
    # A real read-only bind mount, in a private mount namespace so nothing outlives the test.
    ro = tmp_path / "ro"
    ro.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {v.root} {ro}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here ({probe.stderr.strip()}); "
                    "test_verify_works_on_an_injected_read_only_filesystem covers it")
    script = (f"mount --bind {v.root} {ro} && mount -o remount,ro,bind {ro} && "
              f"! touch {ro}/probe 2>/dev/null && exec {sys.executable} -c \"$0\" {ro}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, _VERIFY_RO],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.stdout, done.stderr)
    assert not (v.root / "probe").exists()


def test_verify_works_on_an_injected_read_only_filesystem(
    v: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same, where mounts are not allowed: every write Python makes under the copy fails
    # with EROFS, as it would on read-only media.
    import builtins

    ro = tmp_path / "ro"
    subprocess.run(["cp", "-a", str(v.root), str(ro)], check=True)
    before = {p: p.stat().st_mtime_ns for p in ro.rglob("*")}
    inside = str(ro) + os.sep

    def under(path: object) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(
            os.path.abspath(os.fspath(path))).startswith(inside)

    def erofs(path: object) -> OSError:
        return OSError(errno.EROFS, "Read-only file system", os.fspath(path))  # type: ignore[arg-type]

    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_os_open, real_open = os.open, builtins.open

    def os_open(path, flags, *args, **kwargs):
        if flags & writes and under(path):
            raise erofs(path)
        return real_os_open(path, flags, *args, **kwargs)

    def py_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and under(file):
            raise erofs(file)
        return real_open(file, mode, *args, **kwargs)

    def refuse(real):
        def call(*args, **kwargs):
            for a in args[:2]:
                if under(a):
                    raise erofs(a)
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", py_open)
    for name in ("mkdir", "link", "rename", "replace", "unlink", "rmdir", "chmod", "utime",
                 "symlink", "truncate"):
        monkeypatch.setattr(os, name, refuse(getattr(os, name)))
    report = Vault.open(ro).verify()
    assert report.ok, report.problems
    monkeypatch.undo()
    assert {p: p.stat().st_mtime_ns for p in ro.rglob("*")} == before  # nothing written


def test_gc_keeps_young_temp_files_of_live_writers(v: Vault) -> None:
    writer = subprocess.Popen(["sleep", "30"])
    try:
        tmp = v.root / "tmp" / f".w.{writer.pid}.0123456789abcdef0123456789abcdef.tmp"
        tmp.parent.mkdir(exist_ok=True)
        tmp.write_bytes(b"being written")
        report = v.gc(grace=0)
        assert report.kept_temp == 1 and report.removed_temp == 0 and tmp.exists()
    finally:
        writer.kill()
        writer.wait()
    report = v.gc(grace=0)  # its writer is gone: garbage at once
    assert report.removed_temp == 1 and not tmp.exists()
    old = time.time() - 2 * 3600
    stale = v.root / "specimens" / ".x.0123456789abcdef0123456789abcdef.tmp"
    stale.mkdir()
    os.utime(stale, (old, old))
    assert v.gc(grace=0).removed_temp == 1 and not stale.exists()  # an hour old: garbage


def test_catalog_problems_are_information(vault):
    """A specimen whose metric column does not fit the catalog's (text where others wrote
    numbers) is reported, named, and does not fail verify: the catalog is derived data."""
    for sid, metrics in (("good", {"step": [0, 1], "loss": [1.0, 0.5]}), ("bad", {"step": [0], "loss": ["x"]})):
        SpecimenStorage(vault.new(sid, domain="training", method="fine_tuning")).write_metrics(metrics)
        vault.commit(sid)
    report = vault.verify()
    assert report.ok
    found = [f for f in report.info if f.kind == "catalog_problem"]
    assert [(f.specimen, f.path, f.file) for f in found] == [("bad", "strata/metrics.parquet", "vault.duckdb")]
    assert "loss" in found[0].message and "VARCHAR" in found[0].message
