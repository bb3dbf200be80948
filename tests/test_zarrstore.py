"""The zarr stores over the object store, exercised directly (without the tensor layer)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype

from cas_vault.errors import IntegrityError, InvalidInputError
from cas_vault.zarrstore import ObjectTreeStore, ObjectWriteStore, is_metadata_key


def run(coro):
    return asyncio.run(coro)


async def collect(it) -> list[str]:
    return [k async for k in it]


def buf(data: bytes):
    return default_buffer_prototype().buffer.from_bytes(data)


@pytest.fixture
def tree_store(vault):
    entries = {
        "zarr.json": vault.objects.put_bytes(b'{"x": 1}'),
        "c/0/0": vault.objects.put_bytes(b"0123456789"),
        "c/0/1": vault.objects.put_bytes(b"abc"),
        "c/1/0": vault.objects.put_bytes(b"abc"),
    }
    return ObjectTreeStore(vault.objects, entries, where="test array")


def test_tree_store_reads_lists_and_ranges(tree_store):
    proto = default_buffer_prototype()
    assert run(tree_store.get("c/0/0", proto)).to_bytes() == b"0123456789"
    assert run(tree_store.get("c/0/0", proto, RangeByteRequest(2, 5))).to_bytes() == b"234"
    assert run(tree_store.get("c/0/0", proto, OffsetByteRequest(8))).to_bytes() == b"89"
    assert run(tree_store.get("c/0/0", proto, SuffixByteRequest(3))).to_bytes() == b"789"
    assert run(tree_store.get("c/9/9", proto)) is None
    assert run(tree_store.exists("c/0/1")) and not run(tree_store.exists("c/0"))
    assert run(collect(tree_store.list())) == ["c/0/0", "c/0/1", "c/1/0", "zarr.json"]
    assert run(collect(tree_store.list_prefix("c/0/"))) == ["c/0/0", "c/0/1"]
    assert run(collect(tree_store.list_dir(""))) == ["c", "zarr.json"]
    assert run(collect(tree_store.list_dir("c"))) == ["0", "1"]
    parts = run(tree_store.get_partial_values(proto, [("c/0/1", None), ("nope", None)]))
    assert parts[0].to_bytes() == b"abc" and parts[1] is None


def test_tree_store_is_read_only(tree_store):
    assert tree_store.read_only and not tree_store.supports_writes
    with pytest.raises(ValueError):
        run(tree_store.set("c/0/0", buf(b"x")))
    with pytest.raises(ValueError):
        tree_store.with_read_only(False)
    assert tree_store.with_read_only(True) == tree_store


def test_tree_store_missing_object_is_an_integrity_error(vault, tree_store):
    vault.objects.path(tree_store.entries["c/0/0"]).unlink()
    with pytest.raises(IntegrityError, match="c/0/0 .*missing"):
        run(tree_store.get("c/0/0", default_buffer_prototype()))


@pytest.mark.parametrize("sync_batch_bytes", [None, 0], ids=["rounds", "one-by-one"])
def test_write_store_puts_chunks_as_objects_and_keeps_metadata_until_finish(
        vault, tmp_path, sync_batch_bytes):
    store = ObjectWriteStore(vault.objects, tmp_path / "stage", threads=2,
                             sync_batch_bytes=sync_batch_bytes)
    z = zarr.create_array(store=store, shape=(6,), chunks=(2,), dtype="i4", compressors=None)
    assert not (tmp_path / "stage" / "zarr.json").exists()  # metadata waits for finish
    z[...] = np.arange(6, dtype="i4")
    z.resize((4,))  # shrinking deletes the chunk now outside
    np.testing.assert_array_equal(z[...], np.arange(4))
    entries = store.finish()
    assert sorted(entries) == ["c/0", "c/1", "zarr.json"]
    assert not (tmp_path / "stage").exists()  # staging names go: objects keep their only name
    for digest in entries.values():
        assert vault.objects.path(digest).stat().st_nlink == 1
    assert store.read_only
    reread = zarr.open_array(ObjectTreeStore(vault.objects, entries), mode="r")
    np.testing.assert_array_equal(reread[...], np.arange(4))


def test_write_store_abort_removes_the_staging_tree(vault, tmp_path):
    store = ObjectWriteStore(vault.objects, tmp_path / "stage")
    z = zarr.create_array(store=store, shape=(4,), chunks=(2,), dtype="f8")
    z[...] = 1.0
    store.abort()
    assert not (tmp_path / "stage").exists()


def test_metadata_keys():
    assert is_metadata_key("zarr.json") and is_metadata_key("a/zarr.json")
    assert not is_metadata_key("c/0/0") and not is_metadata_key("c")


def test_put_chunk_stores_caller_encoded_bytes_without_zarr(vault, tmp_path):
    from cas_vault.digest import hash_bytes

    store = ObjectWriteStore(vault.objects, tmp_path / "stage", threads=2, max_pending=1)
    store.put_chunk("c/0/0", memoryview(b"abcd"))
    store.put_chunk("c/1/0", memoryview(b"efgh"))
    store.put_chunk("c/0/0", memoryview(b"ijkl"))  # a chunk written again replaces the first
    with pytest.raises(ValueError, match="metadata"):
        store.put_chunk("zarr.json", memoryview(b"{}"))
    with pytest.raises(InvalidInputError):
        store.put_chunk("c/../../x", memoryview(b"x"))
    assert run(collect(store.list())) == ["c/0/0", "c/1/0"]
    entries = store.finish()
    assert entries == {"c/0/0": hash_bytes(b"ijkl"), "c/1/0": hash_bytes(b"efgh")}
    assert not (tmp_path / "stage").exists()
    assert vault.objects.get(entries["c/0/0"]) == b"ijkl"
    with pytest.raises(ValueError):  # finished: read-only
        store.put_chunk("c/2/0", memoryview(b"x"))


def test_put_chunk_reports_a_workers_error_and_abort_cleans_up(vault, tmp_path, monkeypatch):
    import cas_vault.zarrstore as zs
    from cas_vault.digest import hash_bytes

    def failing_write(path, data, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zs, "write_durable", failing_write)
    store = ObjectWriteStore(vault.objects, tmp_path / "stage", threads=1, max_pending=1)
    store.put_chunk("c/0", memoryview(b"new bytes"))
    # The only slot frees when the first put has failed: the next call raises its error.
    with pytest.raises(OSError, match="No space"):
        store.put_chunk("c/1", memoryview(b"more new bytes"))
    with pytest.raises(OSError, match="No space"):
        store.finish()
    store.abort()
    assert not (tmp_path / "stage").exists()
    assert not vault.objects.has(hash_bytes(b"new bytes"))


def test_new_chunks_are_durable_before_they_get_their_object_names(vault, tmp_path, monkeypatch):
    import cas_vault.zarrstore as zs

    synced: set[str] = set()
    rounds: list[int] = []
    named: list[str] = []
    real_fsync_many, real_link = zs.fsync_many, zs.link_if_absent

    def fsync_many(paths):
        paths = [str(p) for p in paths]
        real_fsync_many(paths)
        synced.update(paths)
        rounds.append(len(paths))

    def link_if_absent(src, dest, sync_dir=True):
        if str(dest).startswith(str(vault.objects.root)):
            assert str(src) in synced, f"{src} got an object name before it was fsynced"
            named.append(str(src))
        return real_link(src, dest, sync_dir=sync_dir)

    monkeypatch.setattr(zs, "fsync_many", fsync_many)
    monkeypatch.setattr(zs, "link_if_absent", link_if_absent)
    store = ObjectWriteStore(vault.objects, tmp_path / "stage", threads=4, sync_batch_bytes=3000)
    for i in range(10):
        store.put_chunk(f"c/{i}", memoryview(bytes([i]) * 1000))
    entries = store.finish()
    assert sorted(rounds) == [1, 3, 3, 3]  # rounds of 3000 bytes; the rest at finish
    assert len(named) == 10 and len(entries) == 10
    for key, digest in entries.items():
        assert vault.objects.get(digest) == bytes([int(key[2:])]) * 1000
    assert not (tmp_path / "stage").exists()


def test_the_same_chunk_twice_in_one_write_is_written_once(vault, tmp_path, monkeypatch):
    import cas_vault.zarrstore as zs

    written: list[str] = []
    real_write = zs.write_durable

    def write_durable(path, data, *args, **kwargs):
        real_write(path, data, *args, **kwargs)
        written.append(str(path))

    monkeypatch.setattr(zs, "write_durable", write_durable)
    store = ObjectWriteStore(vault.objects, tmp_path / "stage", threads=1)
    zeros = memoryview(bytes(4096))
    for i in range(4):
        store.put_chunk(f"c/{i}", zeros)  # in one round: none of them is an object yet
    entries = store.finish()
    assert len(written) == 1 and len(set(entries.values())) == 1
    assert vault.objects.path(entries["c/0"]).stat().st_nlink == 1


def test_a_chunk_rewritten_before_its_round_is_synced_is_never_named(vault, tmp_path):
    from cas_vault.digest import hash_bytes

    store = ObjectWriteStore(vault.objects, tmp_path / "stage", threads=1)
    store.put_chunk("c/0", memoryview(b"first version"))
    store.put_chunk("c/1", memoryview(b"first version"))  # shares the first one's file
    store.put_chunk("c/0", memoryview(b"second version"))
    entries = store.finish()
    assert entries == {"c/0": hash_bytes(b"second version"), "c/1": hash_bytes(b"first version")}
    assert vault.objects.get(entries["c/0"]) == b"second version"
    assert vault.objects.get(entries["c/1"]) == b"first version"


def test_rewriting_a_chunk_whose_round_is_being_synced_waits_for_it(vault, tmp_path, monkeypatch):
    import threading

    import cas_vault.zarrstore as zs
    from cas_vault.digest import hash_bytes

    gate, syncing = threading.Event(), threading.Event()
    real_fsync_many = zs.fsync_many

    def slow_fsync_many(paths):
        syncing.set()
        assert gate.wait(10)
        real_fsync_many(paths)

    monkeypatch.setattr(zs, "fsync_many", slow_fsync_many)
    store = ObjectWriteStore(vault.objects, tmp_path / "stage", threads=2, sync_batch_bytes=8)
    store.put_chunk("c/0", memoryview(b"0000"))
    store.put_chunk("c/1", memoryview(b"1111"))  # fills the round: a worker syncs c/0 and c/1
    assert syncing.wait(10)
    rewrite = threading.Thread(target=store.put_chunk, args=("c/0", memoryview(b"new!")))
    rewrite.start()
    rewrite.join(0.3)
    assert rewrite.is_alive()  # it waits: the round must not name a file changed under it
    gate.set()
    rewrite.join(10)
    entries = store.finish()
    assert entries["c/0"] == hash_bytes(b"new!")
    assert vault.objects.get(hash_bytes(b"0000")) == b"0000"  # named with the bytes it had
    assert vault.objects.get(entries["c/0"]) == b"new!"
