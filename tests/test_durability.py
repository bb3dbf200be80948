"""Durable write ordering: each write path makes bytes, then names, durable in the spec's order.

A SIGKILL (tests/test_crash.py) cannot catch a missing fsync: the page cache outlives the
process. These tests record the real sequence of fsync, link, rename, replace, unlink, create,
write and flock calls (the ``fs_log`` fixture of conftest.py; nothing is mocked, every call still
happens) and check it against the ordering rules of docs/format.md. Removing any one fsync that
the rules need makes at least one of them fail.

An fsync is recorded once it has returned and names the path it was called on, so "X is fsynced
before Y" below means an fsync of X's path returned before Y was called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pytest

from cas_vault import SpecimenStorage, Vault
from cas_vault import catalog as catalog_mod
from cas_vault import zarrstore
from cas_vault.atomic import (
    append_durable,
    fsync_dir,
    fsync_path,
    link_if_absent,
    put_if_absent,
    write_durable,
    write_replace,
)
from cas_vault.digest import hash_bytes
from cas_vault.objects import ObjectBatch
from cas_vault.refs import RefStore
from cas_vault.workdir import WorkingIndex

if TYPE_CHECKING:
    from conftest import FsLog

TMP = ".*.tmp"  # every temp file and directory name matches this (docs/format.md, Temp entries)


# -- rules shared by several write paths -------------------------------------------------------
def parent(path: str) -> str:
    """The directory of a recorded path (``.`` for entries of the root)."""
    head = path.rpartition("/")[0]
    return head or "."


def fsynced_between(log: FsLog, path: str, after: int, before: int) -> bool:
    """Whether an fsync of exactly ``path`` returned strictly between two event indices."""
    return any(after < i < before for i in log.where("fsync", path))


def assert_fsynced_between(log: FsLog, path: str, after: int, before: int, why: str) -> None:
    assert fsynced_between(log, path, after, before), (
        f"{path} is not fsynced between events {after} and {before} ({why}):\n{log.dump()}"
    )


def assert_replace_protocol(log: FsLog, dest: str, *, sync_dir: bool = True) -> int:
    """Replace (section 8): temp in the same directory, fsync, rename, fsync the directory.

    Returns:
        The index of the rename (``replace``) event.
    """
    i = log.last("replace", f"{parent(dest)}/{TMP}" if "/" in dest else TMP, dest)
    tmp = log.events[i].path
    assert_fsynced_between(log, tmp, log.first("create", tmp), i, "bytes before the name")
    if sync_dir:
        assert_fsynced_between(log, parent(dest), i, len(log.events), "the new name")
    return i


def assert_objects_named_after_their_bytes(log: FsLog) -> dict[str, int]:
    """Put-if-absent (section 8): an object name is only ever given to fsynced bytes.

    Every link that creates ``objects/<aa>/<digest>`` must come from a file whose fsync returned
    before it: a temp file in ``tmp/``, a working file a commit seals, or a tensor staging file.

    Returns:
        object path -> index of the link that created it.
    """
    named: dict[str, int] = {}
    for i in log.where("link", dest="objects/*"):
        e = log.events[i]
        assert fsynced_between(log, e.path, -1, i), (
            f"{e.dest} was linked from {e.path} before that file was fsynced:\n{log.dump()}"
        )
        named[e.dest] = i
    return named


def object_path(digest: str) -> str:
    return f"objects/{digest[:2]}/{digest}"


def tip_written(log: FsLog) -> int:
    """Index of the event that puts the tip record's bytes at ``journal.tip`` (section 5.3):
    a write to it in place, or the rename of a new one over it."""
    found = log.where("write", "journal.tip") + log.where("replace", dest="journal.tip")
    assert found, f"journal.tip is not written:\n{log.dump()}"
    return min(found)


@pytest.fixture
def catalog_marks(monkeypatch: pytest.MonkeyPatch, fs_log: FsLog) -> FsLog:
    """Mark in ``fs_log`` when the catalog reads the journal and when its transaction committed.

    DuckDB writes (and fsyncs) its files itself, out of sight of ``os``; these marks place the
    catalog's work in the sequence of the vault's own calls.
    """
    real_pending, real_write = catalog_mod.CatalogWriter._pending, catalog_mod.CatalogWriter._write

    def pending(self: catalog_mod.CatalogWriter, *args: object, **kwargs: object) -> object:
        fs_log.mark("catalog_read_journal")
        return real_pending(self, *args, **kwargs)

    def write(self: catalog_mod.CatalogWriter, *args: object, **kwargs: object) -> object:
        out = real_write(self, *args, **kwargs)
        fs_log.mark("catalog_committed")
        return out

    monkeypatch.setattr(catalog_mod.CatalogWriter, "_pending", pending)
    monkeypatch.setattr(catalog_mod.CatalogWriter, "_write", write)
    return fs_log


def read_state(vault: Vault) -> tuple[int, int, str]:
    """The catalog's ``_state``: ``(journal_lines, journal_offset, tip)``."""
    catalog_mod.release_writer(vault.root)
    with duckdb.connect(str(vault.catalog_path), read_only=True) as conn:
        rows = conn.execute("SELECT journal_lines, journal_offset, tip FROM _state").fetchall()
    assert len(rows) == 1
    return int(rows[0][0]), int(rows[0][1]), str(rows[0][2])


# -- the primitives of docs/format.md section 8 ------------------------------------------------
@pytest.mark.parametrize("sync_dir", [True, False], ids=["durable-name", "working-file"])
def test_write_replace_fsyncs_the_temp_before_the_rename_and_the_directory_after(
    tmp_path: Path, fs_log: FsLog, sync_dir: bool,
) -> None:
    fs_log.root = tmp_path.resolve()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"old")
    with fs_log.recording():
        write_replace(tmp_path / "d" / "f", b"new", sync_dir=sync_dir)
    i = assert_replace_protocol(fs_log, "d/f", sync_dir=sync_dir)
    assert fs_log.events[i].path.startswith("d/.")  # same directory: the rename is atomic
    assert (tmp_path / "d" / "f").read_bytes() == b"new"
    if not sync_dir:  # a working file's name is made durable by the commit that seals it
        assert fs_log.where("fsync", "d") == []


def test_write_durable_fsyncs_the_new_file_before_returning(tmp_path: Path, fs_log: FsLog) -> None:
    fs_log.root = tmp_path.resolve()
    with fs_log.recording():
        write_durable(tmp_path / "a", b"bytes")
        write_durable(tmp_path / "b", b"bytes", sync=False)  # the caller fsyncs it in a round
    assert [str(e) for e in fs_log.events] == [
        "create a", "write a", "fsync a", "create b", "write b",
    ]


def test_append_durable_writes_once_then_fsyncs(tmp_path: Path, fs_log: FsLog) -> None:
    fs_log.root = tmp_path.resolve()
    (tmp_path / "log").write_bytes(b"line 0\n")
    with fs_log.recording():
        append_durable(tmp_path / "log", b"line 1\n")
    assert [str(e) for e in fs_log.events] == ["write log", "fsync log"]
    assert (tmp_path / "log").read_bytes() == b"line 0\nline 1\n"


@pytest.mark.parametrize("sync_dir", [True, False])
def test_put_if_absent_names_fsynced_bytes_then_fsyncs_the_directory(
    tmp_path: Path, fs_log: FsLog, sync_dir: bool,
) -> None:
    fs_log.root = tmp_path.resolve()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "d").mkdir()
    with fs_log.recording():
        assert put_if_absent(tmp_path / "d" / "f", b"data", tmp_path / "tmp", sync_dir=sync_dir)
        assert not put_if_absent(tmp_path / "d" / "f", b"other", tmp_path / "tmp")
    link = fs_log.first("link", f"tmp/{TMP}", "d/f")
    tmp = fs_log.events[link].path
    assert_fsynced_between(fs_log, tmp, fs_log.first("create", tmp), link, "bytes before the name")
    if sync_dir:
        assert_fsynced_between(fs_log, "d", link, len(fs_log.events), "the new name")
    assert fs_log.where("link") == [link]  # an existing name is never replaced
    assert fs_log.last("unlink", tmp) > link and not any((tmp_path / "tmp").iterdir())
    assert (tmp_path / "d" / "f").read_bytes() == b"data"


def test_link_if_absent_fsyncs_the_directory_of_the_new_name(tmp_path: Path, fs_log: FsLog) -> None:
    fs_log.root = tmp_path.resolve()
    (tmp_path / "src").write_bytes(b"x")
    (tmp_path / "d").mkdir()
    with fs_log.recording():
        assert link_if_absent(tmp_path / "src", tmp_path / "d" / "n")
        assert not link_if_absent(tmp_path / "src", tmp_path / "d" / "n")
    assert [str(e) for e in fs_log.events] == ["link src -> d/n", "fsync d"]


def test_fsync_path_and_fsync_dir_fsync_what_they_name(tmp_path: Path, fs_log: FsLog) -> None:
    fs_log.root = tmp_path.resolve()
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "d").mkdir()
    with fs_log.recording():
        fsync_path(tmp_path / "f")
        fsync_path(tmp_path / "d")
        fsync_dir(tmp_path / "d")
    assert [str(e) for e in fs_log.events] == ["fsync f", "fsync d", "fsync d"]


def test_put_bytes_names_fsynced_bytes_then_fsyncs_the_fan_out(vault: Vault, fs_log: FsLog) -> None:
    with fs_log.recording():
        digest = vault.objects.put_bytes(b"a blob")
    named = assert_objects_named_after_their_bytes(fs_log)
    link = named[object_path(digest)]
    assert_fsynced_between(fs_log, f"objects/{digest[:2]}", link, len(fs_log.events), "the name")


# -- vault init and new (sections 1 and 6) -----------------------------------------------------
def test_init_makes_the_layout_durable_then_writes_the_marker_last(
    tmp_path: Path, fs_log: FsLog,
) -> None:
    fs_log.root = (tmp_path / "v").resolve()
    with fs_log.recording():
        Vault.init(tmp_path / "v")
    marker = assert_replace_protocol(fs_log, "vault.msgpack")
    # The 256 fan-out directories are named durably before the directory becomes a vault.
    assert len(fs_log.where("mkdir", "objects/??")) == 256
    assert_fsynced_between(fs_log, "objects", fs_log.last("mkdir", "objects/??"), marker,
                           "fan-out directories before the marker")
    for sub in ("objects", "refs", "specimens", "tmp", "locks"):
        assert fs_log.first("mkdir", sub) < marker
    # The root's fsync after the marker also makes refs/, tmp/, ... durable; the parent's, the
    # vault directory itself.
    root_sync = fs_log.last("fsync", ".")
    assert root_sync > marker
    assert fs_log.last("fsync", str(tmp_path.resolve())) > root_sync


def test_new_makes_the_scaffold_durable_before_renaming_it_into_place(
    vault: Vault, fs_log: FsLog,
) -> None:
    with fs_log.recording():
        vault.new("s1", domain="training", method="fine_tuning")
    rename = fs_log.first("rename", f"specimens/{TMP}", "specimens/s1")
    tmp = fs_log.events[rename].path
    for name in ("manifest.msgpack", "protocol.py", "field_notes.md"):
        created = fs_log.first("create", f"{tmp}/{name}")
        assert_fsynced_between(fs_log, f"{tmp}/{name}", created, rename, "file before rename")
    last_entry = max(fs_log.where("create", f"{tmp}/*") + fs_log.where("mkdir", f"{tmp}/*"))
    assert_fsynced_between(fs_log, tmp, last_entry, rename, "its entries before the rename")


def test_working_files_are_fsynced_before_they_replace_the_old_ones(
    vault: Vault, make_specimen, fs_log: FsLog,
) -> None:
    wd = make_specimen("s1")
    storage = SpecimenStorage(wd)
    with fs_log.recording():
        storage.write_metrics({"step": [0, 1], "loss": [0.5, 0.25]})
        storage.write_config({"lr": 0.1})
    # Section 6: atomic, but the directory is not fsynced (the commit names the file durably).
    assert_replace_protocol(fs_log, "specimens/s1/strata/metrics.parquet", sync_dir=False)
    assert_replace_protocol(fs_log, "specimens/s1/strata/config.msgpack", sync_dir=False)


# -- commit: objects, commit object, intent, ref, journal, catalog (sections 5.2 and 8) ------
def check_commit(log: FsLog, vault: Vault, sid: str, *, first_journal_line: bool) -> dict[str, int]:
    """Assert the whole ordering of one commit of ``sid`` recorded in ``log``.

    Returns:
        Named indices of the events that delimit the commit's steps.
    """
    ev = log.events
    digest = vault.resolve(sid)
    commit = vault.read_commit(digest)
    ref = log.first("link", f"locks/pending/{sid}", f"refs/{sid}")

    # Step 1 (bytes): every new object's source and the intent's temp file are fsynced, all of
    # them before any of them is linked (the fsyncs of a step run together; steps are ordered).
    intent = log.first("link", f"locks/pending/{TMP}", f"locks/pending/{sid}")
    object_links = log.where("link", dest="objects/*")
    first_link = min([intent, *object_links])
    sources = [ev[i].path for i in [intent, *object_links]]
    for src in sources:
        assert_fsynced_between(log, src, -1, first_link, "bytes before any name")
    named = assert_objects_named_after_their_bytes(log)
    assert object_path(digest) in named  # the commit object is new
    assert ev[named[object_path(digest)]].path.startswith("tmp/.")

    # Step 2 (names): the intent is in place before the objects get their names.
    assert intent < min(object_links)

    # Step 3 (directories): the fan-out of every object the tree or commit names, and
    # locks/pending/, after the last link, before the ref.
    last_link = max([intent, *object_links])
    for d in {e.digest for e in commit.tree.values()} | {digest}:
        assert_fsynced_between(log, f"objects/{d[:2]}", last_link, ref, f"name of {d}")
    assert_fsynced_between(log, "locks/pending", last_link, ref, "the intent's name")

    # Section 5.2 steps 3-5: ref, fsync refs/, one write to the journal, fsync it, then the
    # intent goes.
    refs_sync = log.first("fsync", "refs")
    assert ref < refs_sync
    writes = log.where("write", "journal")
    assert len(writes) == 1 and refs_sync < writes[0]
    journal_sync = log.last("fsync", "journal")
    assert writes[0] < journal_sync < log.first("unlink", f"locks/pending/{sid}")
    if first_journal_line:  # the journal file is new: its name too
        assert_fsynced_between(log, ".", journal_sync, log.first("unlink", f"locks/pending/{sid}"),
                               "the new journal's name")
    # Section 5.3: the tip record (not fsynced) is written only once the line it names is
    # durable, so after a power cut it may lag the journal but never lead it.
    tip = tip_written(log)
    assert journal_sync < tip

    # Locks: objects are created under gc.lock (shared) and stay protected until the ref and
    # its journal line exist; the ref and its line are made under refs.lock.
    gc_lock = log.first("lock", "locks/gc.lock")
    assert ev[gc_lock].shared
    assert gc_lock < log.first("create", f"tmp/{TMP}")
    assert journal_sync < log.last("unlock", "locks/gc.lock")
    refs_lock = log.first("lock", "locks/refs.lock")
    assert not ev[refs_lock].shared
    assert refs_lock < ref and tip < log.last("unlock", "locks/refs.lock")
    return {"ref": ref, "journal_sync": journal_sync}


def test_commit_makes_objects_then_ref_then_journal_durable(
    vault: Vault, make_specimen, catalog_marks: FsLog,
) -> None:
    fs_log = catalog_marks
    make_specimen("s1")
    with fs_log.recording():
        vault.commit("s1")
    steps = check_commit(fs_log, vault, "s1", first_journal_line=True)
    # Section 8: ... then the journal line, then the catalog.
    assert steps["journal_sync"] < fs_log.first("catalog_read_journal")
    assert fs_log.first("catalog_read_journal") < fs_log.first("catalog_committed")


def test_a_second_commit_follows_the_same_order(
    vault: Vault, make_specimen, fs_log: FsLog,
) -> None:
    make_specimen("s1")
    vault.commit("s1")
    make_specimen("s2", parents=["s1"])
    with fs_log.recording():
        vault.commit("s2")
    check_commit(fs_log, vault, "s2", first_journal_line=False)


def test_a_batch_names_existing_objects_durably_again(vault: Vault, fs_log: FsLog) -> None:
    """Existing objects get their fan-out fsynced too: their writer may have died before that."""
    digest = vault.objects.put_bytes(b"stored before")
    with fs_log.recording():
        batch = vault.objects.batch()
        assert batch.add_bytes(b"stored before") == digest
        batch.publish()
    assert fs_log.where("link") == []
    assert fs_log.where("fsync", f"objects/{digest[:2]}") != []


def test_create_writes_a_missing_intent_durably_before_the_ref(
    vault: Vault, make_specimen, monkeypatch: pytest.MonkeyPatch, fs_log: FsLog,
) -> None:
    """Section 5.2 step 2: an intent removed by another writer's recovery is written again."""
    make_specimen("s1")
    real_publish = ObjectBatch.publish

    def publish_then_recover(self: ObjectBatch) -> None:
        real_publish(self)
        vault.refs.recover()  # sees an intent without a ref: removes it

    monkeypatch.setattr(ObjectBatch, "publish", publish_then_recover)
    with fs_log.recording():
        vault.commit("s1")
    ref = fs_log.first("link", "locks/pending/s1", "refs/s1")
    rewrite = assert_replace_protocol(fs_log, "locks/pending/s1")
    assert_fsynced_between(fs_log, "locks/pending", rewrite, ref, "the intent's name")
    rewrite_tmp = fs_log.events[rewrite].path  # written under the lock, unlike the commit's own
    assert fs_log.first("lock", "locks/refs.lock") < fs_log.first("create", rewrite_tmp)
    assert rewrite < ref < fs_log.first("fsync", "refs")
    assert fs_log.first("fsync", "refs") < fs_log.first("write", "journal")
    assert fs_log.first("write", "journal") < fs_log.last("fsync", "journal")


def _crash_before_journal_line(vault: Vault, make_specimen, monkeypatch: pytest.MonkeyPatch,
                               sid: str) -> None:
    """Leave ``sid`` as a crash between section 5.2 steps 3 and 4 does: ref and intent, no line."""
    make_specimen(sid)

    def crash(self: RefStore, *args: object) -> None:
        raise KeyboardInterrupt  # the process stops here

    with monkeypatch.context() as m:
        m.setattr(RefStore, "_append_locked", crash)
        with pytest.raises(KeyboardInterrupt):
            vault.commit(sid)
    assert (vault.refs.pending_dir / sid).exists() and vault.refs.get(sid) is not None


def test_recovery_journals_an_interrupted_creation_durably(
    vault: Vault, make_specimen, monkeypatch: pytest.MonkeyPatch, fs_log: FsLog,
) -> None:
    """Section 5.2 recovery: the missing line is appended and fsynced before the intent goes.

    (The torn line's truncation needs no fsync of its own: the append's fsync covers the
    file's new size, and a truncation lost before that only brings back a line that the next
    writer truncates again.)
    """
    make_specimen("s0")
    vault.commit("s0")
    _crash_before_journal_line(vault, make_specimen, monkeypatch, "s1")
    with open(vault.refs.journal, "ab") as f:
        f.write(b'{"commit":"torn')  # and an append cut short, after the last complete line
    with fs_log.recording():
        assert vault.refs.recover() == ["s1"]
    writes = fs_log.where("write", "journal")
    assert len(writes) == 1
    assert_fsynced_between(fs_log, "journal", writes[0], fs_log.first("unlink", "locks/pending/s1"),
                           "the recovered line before its intent goes")
    assert fs_log.first("lock", "locks/refs.lock") < writes[0]
    assert fs_log.last("unlink", "locks/pending/s1") < fs_log.last("unlock", "locks/refs.lock")
    tip = tip_written(fs_log)  # section 5.3: after the durable line, under the lock
    assert fs_log.last("fsync", "journal") < tip < fs_log.last("unlock", "locks/refs.lock")
    assert [e.specimen_id for e in vault.refs.entries()] == ["s0", "s1"]


# -- the catalog (docs/format.md "Catalog") ----------------------------------------------------
def test_the_catalog_indexes_only_durable_journal_lines_and_records_their_tip(
    vault: Vault, make_specimen, catalog_marks: FsLog,
) -> None:
    fs_log = catalog_marks
    make_specimen("s1")
    (vault.root / catalog_mod.STALE_MARKER).write_text("an earlier update failed\n")
    with fs_log.recording():
        vault.commit("s1")
    lock = fs_log.first("lock", "locks/catalog.lock")
    unmark = fs_log.first("unlink", catalog_mod.STALE_MARKER)
    read = fs_log.first("catalog_read_journal")
    committed = fs_log.first("catalog_committed")
    # The marker goes under the lock, before the journal is read; the journal line read is
    # durable already; the transaction (rows and _state together) commits under the lock.
    assert fs_log.last("fsync", "journal") < lock < unmark < read < committed
    assert committed < fs_log.last("unlock", "locks/catalog.lock")
    journal = vault.refs.journal.read_bytes()
    line = journal.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    assert read_state(vault) == (1, len(journal), hash_bytes(line))


def test_a_batch_indexes_once_after_every_journal_line_is_durable(
    vault: Vault, make_specimen, catalog_marks: FsLog,
) -> None:
    fs_log = catalog_marks
    make_specimen("s1")
    make_specimen("s2")
    with fs_log.recording():
        with vault.batch():
            vault.commit("s1")
            vault.commit("s2")
    assert len(fs_log.where("catalog_committed")) == 1
    assert fs_log.last("fsync", "journal") < fs_log.first("catalog_read_journal")
    assert read_state(vault)[0] == 2


# -- tensors (docs/format.md "Tensors", write protocol) ----------------------------------------
def check_tensor_write(log: FsLog, wd: str, name: str, start: int = 0) -> dict[str, int]:
    """Assert the tensor write protocol's order on the first write of ``name`` recorded in
    ``log`` from event ``start`` on (docs/format.md, Tensors, write protocol, steps 1-6).

    Returns:
        Named indices: ``index`` (the working index replaced).
    """
    ev = log.events
    index = next(i for i in log.where("replace", dest=f"{wd}/.cas/index.msgpack") if i >= start)
    gc_unlock = next(i for i in log.where("unlock", "locks/gc.lock") if i > index)
    gc_lock = max(i for i in log.where("lock", "locks/gc.lock") if i < index)
    assert ev[gc_lock].shared and gc_lock >= start

    # 2-3: an object name is only given to fsynced bytes (a chunk's staging file, fsynced in
    # its round, or the metadata document's temp file); 4: the fan-out of every object that
    # gained a name is fsynced before the index lists it.
    for i in log.where("link", dest="objects/*"):
        if start <= i < index:
            assert gc_lock < i
            assert_fsynced_between(log, ev[i].path, start - 1, i, "bytes before the object name")
            assert_fsynced_between(log, parent(ev[i].dest), i, index, f"name of {ev[i].dest}")

    # 5: the working index is replaced by the replace protocol, under .cas/index.lock, and is
    # durable before gc.lock lets gc in (step 6): until then only the lock keeps the objects.
    tmp = ev[index].path
    assert parent(tmp) == f"{wd}/.cas"
    assert_fsynced_between(log, tmp, log.first("create", tmp), index, "index bytes before its name")
    assert_fsynced_between(log, f"{wd}/.cas", index, gc_unlock, "the index's name")
    index_lock = max(i for i in log.where("lock", f"{wd}/.cas/index.lock") if i < index)
    assert index_lock >= start
    assert index < next(i for i in log.where("unlock", f"{wd}/.cas/index.lock") if i > index)

    # 5-6: a plain array of that name is moved aside under the lock and deleted last.
    for i in log.where("rename", f"{wd}/strata/{name}.zarr", f"{wd}/strata/{TMP}"):
        if start <= i < index:
            assert index_lock < i
            moved = ev[i].dest
            removals = log.where("unlink", moved + "/*") + log.where("rmdir", moved)
            assert removals and min(removals) > gc_unlock
    return {"index": index}


@pytest.fixture
def small_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sync new chunks in rounds of three 128-byte chunks, so one write makes several rounds."""
    monkeypatch.setattr(zarrstore, "SYNC_BATCH_BYTES", 384)


def _acts() -> np.ndarray:
    # 10 x 16 float32 in 4 x 8 chunks: 6 chunks, 2 of them edge chunks (rows 8-9), and two
    # all-zero whole chunks that share their bytes (the second links to the first's file).
    a = np.arange(160, dtype=np.float32).reshape(10, 16)
    a[4:8] = 0
    return a


@pytest.mark.parametrize("compressor", [None, "zstd"])
@pytest.mark.parametrize("rounds", ["small", "one-by-one", "default"])
def test_tensor_chunks_are_durable_before_their_names_and_the_names_before_the_index(
    vault: Vault, fs_log: FsLog, monkeypatch: pytest.MonkeyPatch, compressor: str | None,
    rounds: str,
) -> None:
    if rounds != "default":
        monkeypatch.setattr(zarrstore, "SYNC_BATCH_BYTES", 384 if rounds == "small" else 0)
    storage = SpecimenStorage(vault.new("t1", domain="training", method="fine_tuning"))
    with fs_log.recording():
        storage.write_tensors("acts", _acts(), chunks=(4, 8), compressor=compressor)
    check_tensor_write(fs_log, "specimens/t1", "acts")
    index = WorkingIndex(storage.path).load()
    assert len([k for k in index if k.startswith("strata/acts.zarr/c/")]) == 6
    # Every object the index lists was named by this write (the vault was empty).
    assert {fs_log.events[i].dest for i in fs_log.where("link", dest="objects/*")} == {
        object_path(d) for d in index.values()}


def test_an_appending_writer_follows_the_same_protocol(
    vault: Vault, fs_log: FsLog, small_rounds: None,
) -> None:
    storage = SpecimenStorage(vault.new("t1", domain="training", method="fine_tuning"))
    with fs_log.recording():
        with storage.tensor_writer("acts", "float32", (16,), chunks=(4, 8), compressor=None) as w:
            for block in np.array_split(_acts(), 4):
                w.append(block)
    check_tensor_write(fs_log, "specimens/t1", "acts")
    # The shape changes as it grows; only the last metadata document becomes an object.
    assert len(fs_log.where("link", f"tmp/{TMP}", "objects/*")) == 1


def test_rewriting_a_tensor_follows_the_same_protocol(
    vault: Vault, fs_log: FsLog, small_rounds: None,
) -> None:
    storage = SpecimenStorage(vault.new("t1", domain="training", method="fine_tuning"))
    storage.write_tensors("acts", _acts(), chunks=(4, 8), compressor=None)
    with fs_log.recording():
        storage.write_tensors("acts", _acts() + 1, chunks=(4, 8), compressor=None)
        mid = len(fs_log.events)
        storage.write_tensors("acts", _acts() + 1, chunks=(4, 8), compressor=None)  # all stored
    check_tensor_write(fs_log, "specimens/t1", "acts")
    check_tensor_write(fs_log, "specimens/t1", "acts", start=mid)
    assert [i for i in fs_log.where("link", dest="objects/*") if i >= mid] == []


def test_tensor_chunks_are_durable_before_the_commit_that_references_them(
    vault: Vault, fs_log: FsLog, small_rounds: None,
) -> None:
    storage = SpecimenStorage(vault.new("t1", domain="training", method="fine_tuning"))
    with fs_log.recording():
        storage.write_tensors("acts", _acts(), chunks=(4, 8), compressor=None)
        vault.commit("t1")
    steps = check_tensor_write(fs_log, "specimens/t1", "acts")
    named = assert_objects_named_after_their_bytes(fs_log)
    ref = fs_log.first("link", "locks/pending/t1", "refs/t1")
    tree = vault.read_commit(vault.resolve("t1")).tree
    chunks = {p: e.digest for p, e in tree.items() if p.startswith("strata/acts.zarr/")}
    assert len(chunks) == 7  # zarr.json and 6 chunks
    for path, digest in chunks.items():
        link = named[object_path(digest)]
        assert link < steps["index"], path  # named by the tensor write, not by the commit
        assert_fsynced_between(fs_log, f"objects/{digest[:2]}", link, steps["index"], path)
    assert steps["index"] < ref


def test_a_plain_array_is_moved_aside_durably_before_the_index_names_the_new_one(
    vault: Vault, fs_log: FsLog,
) -> None:
    """Tensors, write protocol step 5; the crash rule: readers see the old or the new array."""
    storage = SpecimenStorage(vault.new("t1", domain="training", method="fine_tuning"))
    plain = storage.strata / "acts.zarr"
    plain.mkdir()
    (plain / "zarr.json").write_text("{}")  # written by other means
    with fs_log.recording():
        storage.write_tensors("acts", _acts(), chunks=(4, 8), compressor=None)
    steps = check_tensor_write(fs_log, "specimens/t1", "acts")
    aside = fs_log.first("rename", "specimens/t1/strata/acts.zarr", f"specimens/t1/strata/{TMP}")
    assert_fsynced_between(fs_log, "specimens/t1/strata", aside, steps["index"],
                           "the old array's new name before the index names the new array")


def test_a_tensor_outside_a_vault_is_durable_before_it_is_renamed_into_place(
    tmp_path: Path, fs_log: FsLog,
) -> None:
    fs_log.root = tmp_path.resolve()
    (tmp_path / "plain").mkdir()
    storage = SpecimenStorage(tmp_path / "plain")
    with fs_log.recording():
        storage.write_tensors("acts", _acts(), chunks=(4, 8))
    swap = fs_log.first("rename", f"plain/strata/{TMP}", "plain/strata/acts.zarr")
    staging = fs_log.events[swap].path
    final = tmp_path / "plain" / "strata" / "acts.zarr"
    files = [p for p in final.rglob("*") if p.is_file()]
    dirs = [final, *(p for p in final.rglob("*") if p.is_dir())]
    assert len(files) == 7
    for p in files + dirs:  # every file's bytes and every directory's entries
        assert_fsynced_between(fs_log, f"{staging}/{p.relative_to(final)}".removesuffix("/."),
                               -1, swap, "before the rename")
    assert_fsynced_between(fs_log, "plain/strata", swap, len(fs_log.events), "the new name")


# -- gc, checkout, step-wise logs --------------------------------------------------------------
def test_gc_makes_its_removals_durable_before_letting_writers_in(
    vault: Vault, fs_log: FsLog,
) -> None:
    garbage = vault.objects.put_bytes(b"unreferenced")
    leftover = vault.root / "tmp" / ".w.1.00000000000000000000000000000000.tmp"
    leftover.write_bytes(b"crash leftover")
    with fs_log.recording():
        report = vault.gc(grace=0, temp_age=0)
    assert report.removed_objects == 1 and report.removed_temp == 1
    lock = fs_log.last("lock", "locks/gc.lock")
    unlock = fs_log.last("unlock", "locks/gc.lock")
    assert not fs_log.events[lock].shared
    for removed in (object_path(garbage), leftover.relative_to(vault.root).as_posix()):
        i = fs_log.first("unlink", removed)
        assert lock < i
        assert_fsynced_between(fs_log, parent(removed), i, unlock, f"removal of {removed}")


def test_gc_gives_a_shared_object_durable_bytes_before_its_name(
    vault: Vault, make_specimen, fs_log: FsLog, tmp_path: Path,
) -> None:
    """gc protocol step 4: an object that another path also names gets a copy of its own, put
    under its name like a replace (bytes fsynced first, its directory after), under gc.lock."""
    make_specimen("s1")
    digest = vault.commit("s1").tree["strata/config.msgpack"].digest
    obj = vault.objects.path(digest)
    os.link(obj, tmp_path / "second name")  # as a 0.1 vault's working file was
    with fs_log.recording():
        report = vault.gc()
    assert report.unshared_objects == 1
    i = fs_log.last("replace", f"tmp/{TMP}", object_path(digest))
    tmp = fs_log.events[i].path
    assert_fsynced_between(fs_log, tmp, fs_log.first("create", tmp), i, "copy before the name")
    unlock = fs_log.last("unlock", "locks/gc.lock")
    assert_fsynced_between(fs_log, f"objects/{digest[:2]}", i, unlock, "the object's new inode")
    lock = fs_log.last("lock", "locks/gc.lock")
    assert lock < i and not fs_log.events[lock].shared
    assert vault.objects.get(digest) and obj.stat().st_nlink == 1


def test_checkout_makes_every_file_durable_before_the_rename(
    vault: Vault, make_specimen, fs_log: FsLog, tmp_path: Path,
) -> None:
    make_specimen("s1")
    vault.commit("s1")
    fs_log.root = tmp_path.resolve()
    with fs_log.recording():
        out = vault.checkout("s1", tmp_path / "out")
    rename = fs_log.first("rename", TMP, "out")
    tmp = fs_log.events[rename].path
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert len(files) == 5
    for rel in files:
        assert_fsynced_between(fs_log, f"{tmp}/{rel}", -1, rename, "copy before the rename")
    for d in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        name = f"{tmp}/{d.relative_to(out).as_posix()}".removesuffix("/.")
        assert_fsynced_between(fs_log, name, -1, rename, "directory entries before the rename")
    assert_fsynced_between(fs_log, ".", rename, len(fs_log.events), "the new name")


def test_log_parts_are_durable_and_the_assembled_file_precedes_their_removal(
    vault: Vault, fs_log: FsLog, tmp_path: Path,
) -> None:
    with fs_log.recording():
        with vault.start_specimen("l1", domain="training", method="fine_tuning", commit=False,
                                  code_dir=tmp_path) as s:
            s.log({"loss": 1.0}, step=0)
            s.flush()
            s.log({"loss": 0.5}, step=1)
    logs = "specimens/l1/.cas/log/metrics"
    # Each flush: a complete, durable part (bytes, name).
    for n in (0, 1):
        assert_replace_protocol(fs_log, f"{logs}/part-{n:08d}.parquet")
    # Assembly: strata/metrics.parquet is durable (bytes and name) before any part goes, so a
    # crash in between leaves both (docs/format.md, step-wise logs).
    final = assert_replace_protocol(fs_log, "specimens/l1/strata/metrics.parquet")
    first_removal = fs_log.first("unlink", f"{logs}/part-*")
    assert_fsynced_between(fs_log, "specimens/l1/strata", final, first_removal, "assembled file")


# -- directories created on the way, and checkouts --
@pytest.mark.parametrize("created", ["locks/pending", "fan-outs"])
def test_directories_a_commit_creates_are_named_durably_before_the_ref(
    vault: Vault, make_specimen, fs_log: FsLog, created: str,
) -> None:
    if created == "fan-outs":
        make_specimen("s0")
        vault.commit("s0")  # creates locks/pending/
        for fan in (vault.root / "objects").iterdir():
            if not any(fan.iterdir()):
                fan.rmdir()  # writers must not rely on the fan-outs existing (section 1)
    make_specimen("s1")
    with fs_log.recording():
        vault.commit("s1")
    ref = fs_log.first("link", "locks/pending/s1", "refs/s1")
    # (Working directories are exempt: nothing durable depends on their names, section 6.)
    made = [fs_log.events[i].path for i in fs_log.where("mkdir")
            if i < ref and not fs_log.events[i].path.startswith("specimens/")]
    if created == "locks/pending":
        assert made == ["locks/pending"]
    else:
        assert made and all(m.startswith("objects/") for m in made)
    for new in made:
        assert_fsynced_between(fs_log, parent(new), fs_log.first("mkdir", new), ref,
                               f"entry of the new directory {new}")
