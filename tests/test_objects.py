"""The object store's batch path (what a commit uses) and the concurrent fsync helper."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from cas_vault import Vault
from cas_vault.atomic import fsync_many
from cas_vault.digest import hash_bytes, hash_file
from cas_vault.errors import FileChangedError, InvalidInputError
from cas_vault.objects import ObjectStore


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    (tmp_path / "objects").mkdir()
    return ObjectStore(tmp_path / "objects", tmp_path / "tmp")


def test_fsync_many_covers_files_and_directories(tmp_path: Path, fs_log) -> None:
    fs_log.root = tmp_path.resolve()
    files = []
    for i in range(20):
        p = tmp_path / f"f{i}"
        p.write_bytes(b"x" * i)
        files.append(p)
    with fs_log.recording():
        fsync_many([*files, tmp_path, files[0]])
    # Every path, files and the directory alike, exactly once (duplicates are fsynced once).
    assert sorted(e.path for e in fs_log.events if e.op == "fsync") == sorted(
        [*(f"f{i}" for i in range(20)), "."])
    with fs_log.recording():
        fsync_many([files[3]])  # one path: no pool
        fsync_many([])
    assert [str(e) for e in fs_log.events] == ["fsync f3"]


@pytest.mark.parametrize("failing", ["in-caller", "in-pool"])
def test_fsync_many_raises_after_the_others_finish(
    tmp_path: Path, fs_log, monkeypatch: pytest.MonkeyPatch, failing: str,
) -> None:
    fs_log.root = tmp_path.resolve()
    for name in ("bad", "slow", "a", "b"):
        (tmp_path / name).write_bytes(b"x")
    failed = threading.Event()
    recorded = os.fsync  # fs_log's: records an fsync once it has returned

    def fsync(fd: int) -> None:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name == "bad":
            failed.set()
            raise OSError(errno.EIO, "injected fsync failure")
        if name == "slow":
            # Returns only after the failure: fsync_many must wait for it all the same.
            assert failed.wait(timeout=60)
        recorded(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    # The first path is fsynced in the calling thread, the others in the pool; the one that
    # waits is never queued behind the failing one, whatever the pool's size.
    names = ["bad", "slow", "a", "b", "."]
    if failing == "in-pool":
        names = ["slow", "a", "bad", "b", "."]
    with fs_log.recording():
        with pytest.raises(OSError) as raised:
            fsync_many([tmp_path / n for n in names])
        synced = sorted(e.path for e in fs_log.events if e.op == "fsync")
    assert raised.value.errno == errno.EIO
    assert synced == [".", "a", "b", "slow"]
    with pytest.raises(FileNotFoundError):
        fsync_many([tmp_path / "missing"])


def test_batch_names_objects_by_digest_copies_files_and_cleans_temps(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "result.bin"
    src.write_bytes(b"measurements")
    mode = src.stat().st_mode
    batch = store.batch()
    d_file, size = batch.add_file(src)
    d_blob = batch.add_bytes(b"commit bytes")
    # Nothing is visible under an object name before publish.
    assert not store.has(d_file) and not store.has(d_blob)
    batch.publish()
    assert (d_file, size) == hash_file(src)
    assert d_blob == hash_bytes(b"commit bytes")
    assert store.get(d_blob) == b"commit bytes"
    # The object is a copy with one name; the working file is the caller's, untouched.
    assert os.stat(store.path(d_file)).st_ino != os.stat(src).st_ino
    assert os.stat(store.path(d_file)).st_nlink == 1
    assert os.stat(store.path(d_file)).st_mode & 0o222 == 0
    assert src.stat().st_mode == mode and src.stat().st_nlink == 1
    assert os.stat(store.path(d_blob)).st_mode & 0o222 == 0
    assert not any(store.tmp_dir.iterdir())
    with pytest.raises(RuntimeError):
        batch.publish()


def test_batch_keeps_existing_objects_and_refreshes_their_mtime(store: ObjectStore, tmp_path: Path) -> None:
    digest = store.put_bytes(b"same")
    old = time.time() - 3600
    os.utime(store.path(digest), (old, old))
    ino = os.stat(store.path(digest)).st_ino
    src = tmp_path / "copy"
    src.write_bytes(b"same")
    batch = store.batch()
    assert batch.add_file(src)[0] == digest
    assert batch.add_bytes(b"same") == digest
    batch.publish()
    st = os.stat(store.path(digest))
    assert st.st_ino == ino  # not replaced
    assert st.st_mtime > old + 3000  # gc's grace period protects it again
    assert os.stat(src).st_ino != ino  # an existing object is not relinked


def test_batch_dedups_within_itself(store: ObjectStore, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"twin")
    b.write_bytes(b"twin")
    batch = store.batch()
    assert batch.add_file(a)[0] == batch.add_file(b)[0]
    batch.publish()
    assert len(list(store.iter_digests())) == 1


def test_a_file_hard_linked_from_outside_is_copied_never_adopted(store: ObjectStore, tmp_path: Path) -> None:
    # The user's own file, linked into a specimen: sealing must neither chmod it nor make it
    # share fate with the store.
    outside = tmp_path / "outside.csv"
    outside.write_bytes(b"my own data")
    outside.chmod(0o640)
    inside = tmp_path / "specimen.csv"
    os.link(outside, inside)
    digest, size = store.put_file(inside)
    assert outside.stat().st_mode & 0o777 == 0o640 and outside.stat().st_nlink == 2
    assert store.path(digest).stat().st_ino != outside.stat().st_ino
    outside.write_bytes(b"edited later")
    assert store.get(digest) == b"my own data"


def test_symlinks_and_special_files_are_refused(store: ObjectStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for the vault")
    (tmp_path / "link").symlink_to(secret)
    os.mkfifo(tmp_path / "fifo")
    for name in ("link", "fifo"):
        with pytest.raises(InvalidInputError):
            store.batch().add_file(tmp_path / name)
    assert not list(store.iter_digests()) and not list(store.tmp_dir.glob("*"))


@pytest.mark.parametrize("size", ["small", "large"])  # read whole / copied in blocks
@pytest.mark.parametrize("change", ["append", "rewrite", "replace"])
def test_batch_refuses_a_file_that_changes_while_copied(
    store: ObjectStore, tmp_path: Path, monkeypatch, change: str, size: str,
) -> None:
    import cas_vault.objects as objects_mod

    n = 100 if size == "small" else objects_mod.SMALL_FILE + 1
    src = tmp_path / "growing"
    src.write_bytes(b"a" * n)
    os.utime(src, ns=(0, 0))  # any write from now on moves the mtime, however coarse the clock

    def change_it() -> None:
        if change == "append":
            with open(src, "ab") as f:
                f.write(b"more")
        elif change == "rewrite":  # same size, new bytes: only the mtime tells
            with open(src, "r+b") as f:
                f.write(b"b" * n)
        else:  # a new file renamed over the old one (np.save, polars, editors do this)
            (tmp_path / "new").write_bytes(b"a" * n)
            os.replace(tmp_path / "new", src)

    # The change lands right after the bytes were read, before the identity is checked.
    name = "_read_all" if size == "small" else "_copy_hashing"
    real = getattr(objects_mod, name)
    monkeypatch.setattr(objects_mod, name, lambda *a: (real(*a), change_it())[0])
    batch = store.batch()
    with pytest.raises(FileChangedError, match="changed while"):
        batch.add_file(src)
    batch.publish()
    assert not list(store.iter_digests()) and not list(store.tmp_dir.glob("*"))


def test_commit_leaves_no_intent_and_a_single_read_only_ref(vault: Vault, make_specimen) -> None:
    make_specimen("2024_12_19_a")
    c = vault.commit("2024_12_19_a")
    ref = vault.refs.refs_dir / "2024_12_19_a"
    st = os.stat(ref)
    assert ref.read_text("ascii") == c.digest + "\n"
    assert st.st_nlink == 1  # the intent file it was linked from is gone
    assert st.st_mode & 0o222 == 0
    pending = vault.refs.pending_dir
    assert not pending.exists() or not any(pending.iterdir())
    assert not any(vault.objects.tmp_dir.iterdir())


def test_batch_puts_companion_files_in_place_without_replacing(store: ObjectStore, tmp_path: Path) -> None:
    side = tmp_path / "side"
    side.mkdir()
    (side / "taken").write_bytes(b"old")
    fresh, clash = side / ".w1.tmp", side / ".w2.tmp"
    fresh.write_bytes(b"new")
    clash.write_bytes(b"new")
    batch = store.batch()
    batch.add_bytes(b"blob")
    batch.add_move(fresh, side / "intent")
    batch.add_move(clash, side / "taken")
    batch.publish()
    assert (side / "intent").read_bytes() == b"new"
    assert (side / "taken").read_bytes() == b"old"  # checked later, under the caller's lock
    assert not fresh.exists() and not clash.exists()


def test_a_commit_uses_its_own_intent_and_reads_only_the_journal_tail(
    vault: Vault, make_specimen, monkeypatch
) -> None:
    """The intent made durable with the objects is used as is: no rewrite, no journal scan."""
    import cas_vault.refs as refs_mod

    for i in range(3):
        make_specimen(f"s{i}")
        vault.commit(f"s{i}")
    make_specimen("s3")
    calls: list[str] = []
    real_write_replace = refs_mod.write_replace

    def write_replace(path, *args, **kwargs):
        if path != vault.refs.tip_path:  # the tip record is written by every commit
            calls.append("write_replace")
        return real_write_replace(path, *args, **kwargs)

    monkeypatch.setattr(refs_mod, "write_replace", write_replace)
    monkeypatch.setattr(refs_mod.RefStore, "_journaled_ids", lambda self: calls.append("scan") or set())
    vault.commit("s3")
    assert calls == []
    assert [e.specimen_id for e in vault.refs.entries()] == ["s0", "s1", "s2", "s3"]


def test_create_rewrites_an_intent_removed_by_another_writers_recovery(
    vault: Vault, make_specimen, monkeypatch
) -> None:
    from cas_vault.errors import ImmutableError
    from cas_vault.objects import ObjectBatch

    make_specimen("2024_12_19_a")
    make_specimen("2024_12_19_b")
    # The commit's intent reaches locks/pending/ with its objects; then another writer's
    # recovery (which sees an intent without a ref) removes it before this commit takes the lock.
    real_publish = ObjectBatch.publish

    def publish_then_recover(self: ObjectBatch) -> None:
        real_publish(self)
        vault.refs.recover()

    monkeypatch.setattr(ObjectBatch, "publish", publish_then_recover)
    c = vault.commit("2024_12_19_a")
    monkeypatch.undo()
    assert vault.resolve("2024_12_19_a") == c.digest
    assert [e.specimen_id for e in vault.refs.entries()] == ["2024_12_19_a"]
    assert not [p for p in vault.refs.pending_dir.iterdir() if not p.name.startswith(".")]
    # A refused ref creation (id taken concurrently) leaves no intent of its own behind.
    c2 = vault.commit("2024_12_19_b")
    tmp, intent = vault.refs.intent_temp("2024_12_19_b", c.digest)
    tmp.rename(intent)
    with pytest.raises(ImmutableError, match="already committed"):
        vault.refs.create("2024_12_19_b", c.digest, "2026-01-01T00:00:00.000000Z")
    assert not intent.exists() and vault.resolve("2024_12_19_b") == c2.digest
