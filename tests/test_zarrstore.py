"""The zarr stores over the object store, exercised directly (without the tensor layer)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype

from cas_vault.errors import IntegrityError
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


def test_write_store_puts_chunks_as_objects_and_keeps_metadata_until_finish(vault, tmp_path):
    store = ObjectWriteStore(vault.objects, tmp_path / "stage", threads=2)
    z = zarr.create_array(store=store, shape=(6,), chunks=(2,), dtype="i4", compressors=None)
    assert not (tmp_path / "stage" / "zarr.json").exists()  # metadata waits for finish
    z[...] = np.arange(6, dtype="i4")
    z.resize((4,))  # shrinking deletes the chunk now outside
    np.testing.assert_array_equal(z[...], np.arange(4))
    entries = store.finish()
    assert sorted(entries) == ["c/0", "c/1", "zarr.json"]
    assert not (tmp_path / "stage" / "c" / "2").exists()
    for key, digest in entries.items():
        assert (tmp_path / "stage" / key).samefile(vault.objects.path(digest))
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
