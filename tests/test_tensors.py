"""Tensors as content-addressed Zarr: writing, committing, dedup, lazy reads, appends, memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from zarr.storage import LocalStore, WrapperStore

from cas_vault import SpecimenStorage, Vault
from cas_vault.atomic import FileLock
from cas_vault.cli import cli
from cas_vault.errors import (
    ChecksumMismatch,
    ImmutableError,
    IntegrityError,
    InvalidInputError,
    LockTimeoutError,
    NotFoundError,
)
from cas_vault.tensors import chunks_for_bytes, default_chunks
from cas_vault.workdir import WorkingIndex

NUMERIC = ["bool", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16",
           ">i4", ">f8", ">c16"]


@pytest.fixture
def storage(vault: Vault) -> SpecimenStorage:
    return SpecimenStorage(vault.new("spec_a", domain="training", method="fine_tuning"))


def new_storage(vault: Vault, sid: str) -> SpecimenStorage:
    return SpecimenStorage(vault.new(sid, domain="training", method="fine_tuning"))


def objects_bytes(vault: Vault) -> int:
    return sum(vault.objects.size(d) for d in vault.objects.iter_digests())


def tensor_files(storage: SpecimenStorage, name: str) -> dict[str, Path]:
    """Tree path -> the file holding its bytes: its object in a vault, else the Zarr file."""
    root = storage.vault_root()
    if root is not None:
        objects = Vault.open(root).objects
        prefix = f"strata/{name}.zarr/"
        return {k: objects.path(d) for k, d in WorkingIndex(storage.path).load().items()
                if k.startswith(prefix)}
    tree = storage.strata / f"{name}.zarr"
    return {p.relative_to(storage.path).as_posix(): p for p in tree.rglob("*") if p.is_file()}


def snapshot(storage: SpecimenStorage, vault: Vault) -> tuple:
    files = sorted(p.relative_to(storage.path).as_posix() for p in storage.path.rglob("*"))
    return files, sorted(vault.objects.iter_digests()), WorkingIndex(storage.path).load()


class CountingStore(WrapperStore):
    """Counts the bytes zarr reads through a store."""

    def __init__(self, store) -> None:
        super().__init__(store)
        self.bytes_read = 0
        self.keys_read: list[str] = []

    async def get(self, key, prototype=None, byte_range=None):
        buf = await self._store.get(key, prototype, byte_range)
        if buf is not None:
            self.bytes_read += len(buf)
            self.keys_read.append(key)
        return buf


# -- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", NUMERIC)
def test_every_numeric_dtype_round_trips_through_a_commit(vault, storage, dtype):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((7, 5)) * 50).astype(dtype)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * a
    storage.write_tensors("t", a, chunks=(3, 2))
    working = storage.read_tensor_lazy("t")
    assert working.dtype == (a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype)
    np.testing.assert_array_equal(working[...], a)
    vault.commit("spec_a")
    committed = vault.specimen("spec_a").tensor("t")
    np.testing.assert_array_equal(committed[...], a)
    np.testing.assert_array_equal(committed[2:5, 1], a[2:5, 1])


@pytest.mark.parametrize("array", [
    np.array(3.5, dtype="f4"), np.array(True), np.zeros((0,), "i8"), np.zeros((0, 5), "f4"),
    np.zeros((3, 0, 2), "u2"), np.arange(10, dtype="i2"), np.arange(60, dtype="f8").reshape(3, 4, 5),
], ids=["0d-float", "0d-bool", "empty-1d", "empty-2d", "empty-3d", "1d", "3d"])
def test_0d_empty_and_nd_arrays_round_trip(vault, storage, array):
    storage.write_tensors("t", array)
    vault.commit("spec_a")
    got = vault.specimen("spec_a").tensor("t")
    assert got.shape == array.shape and got.dtype == array.dtype
    np.testing.assert_array_equal(got[...], array)


@given(hnp.arrays(
    dtype=st.sampled_from([np.dtype(d) for d in ("bool", "i1", "u4", "i8", "f2", "f4", "f8", "c8")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9),
), st.integers(1, 6))
def test_property_write_then_read_lazy_is_identity(tmp_path_factory, array, chunk):
    vault = Vault.init(tmp_path_factory.mktemp("v") / "vault")
    s = new_storage(vault, "spec_p")
    s.write_tensors("t", array, chunks=chunk if array.ndim else None, compressor=None)
    got = s.read_tensor_lazy("t")[...]
    np.testing.assert_array_equal(got, array)
    # Rewriting under the same name replaces it, with no leftovers in the index.
    s.write_tensors("t", array[..., :1] if array.ndim else array)
    entries = {k for k in WorkingIndex(s.path).load() if k.startswith("strata/t.zarr/")}
    assert entries == set(tensor_files(s, "t"))


def test_plain_directory_outside_a_vault_is_plain_zarr(tmp_path):
    s = SpecimenStorage(tmp_path / "loose")
    s.path.mkdir()
    a = np.arange(12, dtype="f4").reshape(3, 4)
    path = s.write_tensors("t", a, chunks=(2, 2))
    np.testing.assert_array_equal(zarr.open_array(LocalStore(path), mode="r")[...], a)
    np.testing.assert_array_equal(s.read_tensor_lazy("t")[...], a)
    assert not (s.path / ".cas").exists()


# -- refusals --------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    np.array(["a", "b"]), np.array([b"a"]), np.array([object(), 1], dtype=object),
    np.array(["2024-01-01"], dtype="M8[D]"), np.zeros(2, dtype=[("a", "i4")]),
    np.zeros(2, dtype=np.longdouble), [1.0, 2.0],
], ids=["str", "bytes", "object", "datetime", "structured", "longdouble", "list"])
def test_non_numeric_arrays_are_refused_before_anything_is_written(vault, storage, bad):
    if isinstance(bad, np.ndarray) and bad.dtype == np.longdouble and bad.dtype.itemsize == 8:
        pytest.skip("longdouble is float64 on this platform")
    before = snapshot(storage, vault)
    with pytest.raises(InvalidInputError):
        storage.write_tensors("t", bad)
    assert snapshot(storage, vault) == before


@pytest.mark.parametrize("kwargs", [
    {"chunks": (0, 2)}, {"chunks": (2,)}, {"chunks": "ab"}, {"compressor": "blosc"},
    {"chunks": (2, 2), "chunk_bytes": 100}, {"chunk_bytes": 0},
])
def test_bad_chunks_or_compressor_are_refused_and_nothing_is_written(vault, storage, kwargs):
    before = snapshot(storage, vault)
    with pytest.raises(InvalidInputError):
        storage.write_tensors("t", np.zeros((4, 4), "f4"), **kwargs)
    assert snapshot(storage, vault) == before


def test_bad_tensor_name_is_refused(storage):
    with pytest.raises(InvalidInputError):
        storage.write_tensors("../escape", np.zeros(3))


def test_committed_specimen_refuses_tensor_writes(vault, storage):
    storage.write_tensors("t", np.zeros(3))
    vault.commit("spec_a")
    with pytest.raises(ImmutableError):
        storage.write_tensors("t", np.ones(3))
    with pytest.raises(ImmutableError):
        storage.tensor_writer("u", "f4", (2,))


# -- chunking --------------------------------------------------------------------------------
def test_default_chunks_follow_the_seed_and_chunk_bytes_keeps_rows_whole(storage):
    assert default_chunks((5000, 3000, 7)) == (1000, 1000, 7)
    assert default_chunks((10, 0)) == (10, 1)
    assert default_chunks((1024, 4096)) == (512, 820)  # equal pieces: little edge padding
    assert chunks_for_bytes((262144, 1024), 4, 4 << 20) == (1024, 1024)
    assert chunks_for_bytes((10, 4096, 4096), 4, 4 << 20) == (1, 256, 4096)
    storage.write_tensors("t", np.zeros((2500, 20, 3), "f4"))
    z = storage.read_tensor_lazy("t")
    assert z.chunks == (834, 20, 3)
    storage.write_tensors("u", np.zeros((64, 256), "f4"), chunk_bytes=8192)
    z = storage.read_tensor_lazy("u")
    assert z.chunks == (8, 256)
    # Chunks larger than the array are cut to it (no padded bytes stored).
    storage.write_tensors("v", np.zeros((5, 3)), chunks=100)
    z = storage.read_tensor_lazy("v")
    assert z.chunks == (5, 3)


def test_metadata_records_the_codec(storage):
    storage.write_tensors("z", np.zeros(4), compressor="zstd")
    meta = json.loads(tensor_files(storage, "z")["strata/z.zarr/zarr.json"].read_text())
    assert {"name": "zstd", "configuration": {"level": 3, "checksum": False}} in meta["codecs"]
    storage.write_tensors("raw", np.zeros(4), compressor=None)
    meta = json.loads(tensor_files(storage, "raw")["strata/raw.zarr/zarr.json"].read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes"]


# -- objects, links, index, commit -----------------------------------------------------------
def test_chunks_are_objects_that_no_working_path_leads_to(vault, storage, tmp_path):
    a = np.random.default_rng(1).standard_normal((40, 30)).astype("f4")
    storage.write_tensors("t", a, chunks=(10, 30))
    files = tensor_files(storage, "t")
    assert len(files) == 5  # zarr.json + 4 chunks, listed by the working index
    for path in files.values():
        # The object's name in objects/ is its only one: nothing written through a working
        # path, or a file descriptor opened there, can reach it.
        assert path.stat().st_nlink == 1
        assert oct(path.stat().st_mode & 0o777) == "0o444"
    inodes = {p.stat().st_ino for p in files.values()}
    assert not inodes & {p.stat().st_ino for p in storage.path.rglob("*") if p.is_file()}
    # Nothing in strata/ (no copy, no temp directory) and nothing left in the vault's tmp/.
    assert list(storage.strata.iterdir()) == []
    assert list((vault.root / "tmp").iterdir()) == []
    np.testing.assert_array_equal(storage.read_tensor_lazy("t")[...], a)
    assert storage.list_tensors() == ["t"]
    # A checkout is a plain Zarr directory, separate copies of the objects.
    vault.commit("spec_a")
    out = vault.checkout("spec_a", tmp_path / "out")
    np.testing.assert_array_equal(zarr.open_array(LocalStore(out / "strata" / "t.zarr"), mode="r")[...], a)
    assert not inodes & {p.stat().st_ino for p in out.rglob("*") if p.is_file()}


def test_commit_neither_hashes_nor_copies_tensor_bytes(vault, storage, monkeypatch):
    import cas_vault.objects as objects_mod

    storage.write_tensors("t", np.random.default_rng(2).standard_normal((64, 64)), chunks=(8, 64))
    storage.write_metrics({"step": [0, 1], "loss": [1.0, 0.5]})
    index = WorkingIndex(storage.path).load()
    before = objects_bytes(vault)
    hashed: list[str] = []
    real = objects_mod.ObjectBatch.add_file
    monkeypatch.setattr(objects_mod.ObjectBatch, "add_file",
                        lambda self, p: (hashed.append(str(p)), real(self, p))[1])
    commit = vault.commit("spec_a")
    assert hashed and not [p for p in hashed if ".zarr" in p]
    for rel, entry in commit.tree.items():
        if rel.startswith("strata/t.zarr/"):
            assert entry.digest == index[rel] and entry.kind == "zarr"
    # Only the non-tensor files and the commit object were added.
    non_tensor = sum(e.size for p, e in commit.tree.items() if ".zarr/" not in p)
    assert objects_bytes(vault) - before <= non_tensor + len(commit.to_bytes())


def test_identical_data_gives_identical_digests_in_another_process_and_vault(vault, storage, tmp_path):
    a = np.random.default_rng(3).standard_normal((50, 40)).astype("f4")
    storage.write_tensors("t", a, chunks=(16, 16))
    mine = {k: v for k, v in WorkingIndex(storage.path).load().items() if ".zarr/" in k}
    script = f"""
import numpy as np, json
from cas_vault import Vault, SpecimenStorage
v = Vault.init({str(tmp_path / 'other')!r})
s = SpecimenStorage(v.new("spec_b", domain="training", method="fine_tuning"))
a = np.random.default_rng(3).standard_normal((50, 40)).astype("f4")
s.write_tensors("t", a, chunks=(16, 16))
c = v.commit("spec_b")
print(json.dumps({{p: e.digest for p, e in c.tree.items() if ".zarr/" in p}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == mine


def test_identical_tensor_adds_only_metadata_and_shared_chunks_add_only_the_difference(vault):
    a = np.random.default_rng(4).standard_normal((400, 256)).astype("f4")  # 400 KB
    first = new_storage(vault, "first")
    first.write_tensors("t", a, chunks=(50, 256), compressor=None)  # 8 chunks of 51,200 bytes
    vault.commit("first")

    before = objects_bytes(vault)
    same = new_storage(vault, "same")
    same.write_tensors("t", a.copy(), chunks=(50, 256), compressor=None)
    vault.commit("same")
    assert objects_bytes(vault) - before < 8192
    info = vault.show("same")
    assert info.logical_bytes >= a.nbytes
    assert info.unique_bytes < 8192

    b = a.copy()
    b[123, 7] += 1.0  # changes chunk 2 only
    before = objects_bytes(vault)
    near = new_storage(vault, "near")
    near.write_tensors("t", b, chunks=(50, 256), compressor=None)
    vault.commit("near")
    added = objects_bytes(vault) - before
    assert 50 * 256 * 4 <= added < 50 * 256 * 4 + 8192
    assert 50 * 256 * 4 <= vault.show("near").unique_bytes < 50 * 256 * 4 + 8192
    # The first specimen's accounting is unchanged by later commits.
    assert vault.show("first").unique_bytes >= a.nbytes


def test_cli_show_reports_logical_and_new_unique_bytes_with_dedup(vault):
    a = np.random.default_rng(5).standard_normal((256, 1024)).astype("f4")  # 1 MiB
    for sid in ("one", "two"):
        new_storage(vault, sid).write_tensors("t", a, compressor=None)
        vault.commit(sid)
    result = CliRunner().invoke(cli, ["--vault", str(vault.root), "show", "two"])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("bytes"))
    assert "1.0 MiB logical" in line and "MiB new unique" not in line
    result = CliRunner().invoke(cli, ["--vault", str(vault.root), "show", "two", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["unique_bytes"] == vault.show("two").unique_bytes < 8192


def test_rewriting_a_tensor_replaces_it_and_its_index_entries(vault, storage):
    storage.write_tensors("t", np.arange(100, dtype="i4"), chunks=10)
    old = set(tensor_files(storage, "t"))
    storage.write_tensors("t", np.arange(5, dtype="i4"), chunks=10)
    new = set(tensor_files(storage, "t"))
    assert len(old) == 11 and new == {"strata/t.zarr/zarr.json", "strata/t.zarr/c/0"}
    assert {k for k in WorkingIndex(storage.path).load() if k.startswith("strata/t.zarr")} == new
    np.testing.assert_array_equal(storage.read_tensor_lazy("t")[...], np.arange(5))
    vault.commit("spec_a")
    assert {p for p in vault.get("spec_a").tree if ".zarr/" in p} == new


def test_two_tensors_written_at_once_both_land_in_the_index(storage):
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            storage.write_tensors(name, np.full((30, 4), len(name), "f4"), chunks=(5, 4))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in ("a", "bb", "ccc")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    index = WorkingIndex(storage.path).load()
    for name in ("a", "bb", "ccc"):
        assert set(tensor_files(storage, name)) == {k for k in index if k.startswith(f"strata/{name}.zarr/")}


def test_chunks_stored_before_get_no_second_name(vault, storage, monkeypatch):
    # An identical tensor of another specimen: its objects are reused as they are, without a
    # link anywhere (a link would be a second path to a sealed inode).
    a = np.arange(20, dtype="i8")
    new_storage(vault, "spec_b").write_tensors("t", a, chunks=5)
    vault.commit("spec_b")
    links: list[tuple[str, str]] = []
    real_link = os.link
    monkeypatch.setattr(os, "link", lambda s, d, *a, **k: (links.append((str(s), str(d))),
                                                           real_link(s, d, *a, **k))[1])
    storage.write_tensors("t", a, chunks=5)
    commit = vault.commit("spec_a")
    sealed = {str(vault.objects.path(e.digest)) for e in vault.get("spec_b").tree.values()}
    assert not [pair for pair in links if pair[0] in sealed or pair[1] in sealed]
    assert all(vault.objects.path(e.digest).stat().st_nlink == 1 for e in commit.tree.values())
    np.testing.assert_array_equal(vault.specimen("spec_a").tensor("t")[...], a)


# -- raw chunks: straight to the object store, written once --------------------------------
@pytest.mark.parametrize("dtype", NUMERIC)
def test_raw_chunks_skip_zarr_and_are_byte_identical_to_zarrs_encoding(
        vault, storage, tmp_path, monkeypatch, dtype):
    from cas_vault.zarrstore import ObjectWriteStore

    rng = np.random.default_rng(11)
    a = (rng.standard_normal((23, 12)) * 50).astype(dtype)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * a
    via_zarr: list[str] = []
    real_set = ObjectWriteStore.set

    async def counting_set(self, key, value):
        via_zarr.append(key)
        await real_set(self, key, value)

    monkeypatch.setattr(ObjectWriteStore, "set", counting_set)
    plain = SpecimenStorage(tmp_path / "plain")  # outside a vault: zarr encodes every chunk
    plain.path.mkdir()
    # Row chunks are views of the source (or a byte-swapped copy); column tiles are gathered;
    # the last chunk row is cut by the edge (zarr pads it) and must still go through zarr.
    for name, chunks, edge in [("rows", (5, 12), ["c/4/0"]),
                               ("tiles", (5, 4), ["c/4/0", "c/4/1", "c/4/2"])]:
        via_zarr.clear()
        storage.write_tensors(name, a, chunks=chunks, compressor=None)
        assert sorted(k for k in via_zarr if k != "zarr.json") == edge
        plain.write_tensors(name, a, chunks=chunks, compressor=None)
        mine = {k.split(".zarr/")[1]: p for k, p in tensor_files(storage, name).items()}
        theirs = {k.split(".zarr/")[1]: p for k, p in tensor_files(plain, name).items()}
        assert sorted(mine) == sorted(theirs)
        for key, path in mine.items():
            assert path.read_bytes() == theirs[key].read_bytes(), (name, key)
        np.testing.assert_array_equal(storage.read_tensor_lazy(name)[...], a)


def test_whole_c_contiguous_chunks_are_hashed_and_written_from_the_source_itself(
        storage, monkeypatch):
    from cas_vault.zarrstore import ObjectWriteStore

    a = np.random.default_rng(12).standard_normal((64, 256)).astype("f4")
    shared: list[bool] = []
    real_put = ObjectWriteStore.put_chunk

    def put_chunk(self, key, data):
        shared.append(np.shares_memory(np.frombuffer(data, np.uint8), a))
        real_put(self, key, data)

    monkeypatch.setattr(ObjectWriteStore, "put_chunk", put_chunk)
    storage.write_tensors("t", a, chunks=(16, 256), compressor=None)
    assert shared == [True] * 4  # no copy of any chunk on the way to the hash and the disk
    np.testing.assert_array_equal(storage.read_tensor_lazy("t")[...], a)


def test_new_chunks_are_written_once_and_identical_chunks_not_at_all(vault, monkeypatch):
    import cas_vault.zarrstore as zs

    written: list[int] = []
    temp_puts: list[str] = []
    real_write, real_put = zs.write_durable, zs.put_if_absent

    def write_durable(path, data, *args, **kwargs):
        real_write(path, data, *args, **kwargs)
        written.append(memoryview(data).nbytes)  # counted once written (not a failed open)

    def put_if_absent(path, data, *args, **kwargs):
        temp_puts.append(str(path))
        return real_put(path, data, *args, **kwargs)

    monkeypatch.setattr(zs, "write_durable", write_durable)
    monkeypatch.setattr(zs, "put_if_absent", put_if_absent)
    a = np.random.default_rng(13).standard_normal((64, 256)).astype("f4")
    first = new_storage(vault, "first")
    first.write_tensors("t", a, chunks=(16, 256), compressor=None)
    # Each new chunk is written once, as a staging file that then becomes the object: no
    # temp file per chunk (only zarr.json goes through one), no copy in the working directory.
    assert written == [16 * 256 * 4] * 4 and len(temp_puts) == 1
    index = WorkingIndex(first.path).load()
    for path in tensor_files(first, "t").values():
        assert path.stat().st_nlink == 1 and oct(path.stat().st_mode & 0o777) == "0o444"
    assert not [p for p in (vault.root / "tmp").iterdir()]  # no temp leftovers
    vault.commit("first")

    chunk_objects = [vault.objects.path(d) for k, d in index.items() if "/c/" in k]
    for obj in chunk_objects:
        os.utime(obj, (1_000_000, 1_000_000))  # as if stored long ago
    written.clear()
    temp_puts.clear()
    same = new_storage(vault, "same")
    same.write_tensors("t", a.copy(), chunks=(16, 256), compressor=None)
    assert written == [] and temp_puts == []  # an identical copy writes no bytes at all
    for obj in chunk_objects:  # ... but refreshes the objects for gc's grace period
        assert obj.stat().st_mtime > 1_000_000
    commit = vault.commit("same")
    assert {p: e.digest for p, e in commit.tree.items() if ".zarr/" in p} == {
        p: e.digest for p, e in vault.get("first").tree.items() if ".zarr/" in p}


def test_a_chunk_stored_meanwhile_by_another_writer_becomes_that_object(vault, storage,
                                                                         monkeypatch):
    from cas_vault.zarrstore import ObjectWriteStore

    a = np.arange(40, dtype="i8")
    other = new_storage(vault, "spec_b")
    other.write_tensors("t", a, chunks=10, compressor=None)
    real_find = ObjectWriteStore._find

    def find_as_if_absent(self, data):
        digest, path, _exists = real_find(self, data)
        return digest, path, False  # it was absent when looked for, and appears before linking

    monkeypatch.setattr(ObjectWriteStore, "_find", find_as_if_absent)
    storage.write_tensors("t", a, chunks=10, compressor=None)
    theirs = tensor_files(other, "t")
    assert tensor_files(storage, "t") == theirs  # the same objects, each with its one name
    commit = vault.commit("spec_a")
    np.testing.assert_array_equal(vault.specimen("spec_a").tensor("t")[...], a)
    theirs_index = WorkingIndex(other.path).load()
    assert commit.tree["strata/t.zarr/c/0"].digest == theirs_index["strata/t.zarr/c/0"]


# -- lazy reads ------------------------------------------------------------------------------
def test_reading_one_row_reads_one_chunk(vault, storage):
    a = np.random.default_rng(6).standard_normal((4096, 256)).astype("f4")  # 4 MiB
    storage.write_tensors("t", a, chunks=(256, 256), compressor=None)  # 16 chunks of 256 KiB
    vault.commit("spec_a")
    lazy = vault.specimen("spec_a").tensor("t")
    counting = CountingStore(lazy.store)
    z = zarr.open_array(counting, mode="r")
    meta = counting.bytes_read
    np.testing.assert_array_equal(z[1000], a[1000])
    assert counting.keys_read[-1] == "c/3/0"
    assert counting.bytes_read - meta == 256 * 256 * 4
    assert meta < 2048


def test_missing_chunk_object_raises_and_altered_chunk_is_detected(vault, storage):
    storage.write_tensors("t", np.arange(40, dtype="f8"), chunks=10, compressor=None)
    vault.commit("spec_a")
    tree = vault.get("spec_a").tree
    obj = vault.objects.path(tree["strata/t.zarr/c/1"].digest)
    os.chmod(obj, 0o644)
    obj.write_bytes(b"\0" * 80)
    with pytest.raises(ChecksumMismatch):
        vault.specimen("spec_a").tensor("t")[15]
    np.testing.assert_array_equal(vault.specimen("spec_a").tensor("t")[5], 5.0)
    obj.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        vault.specimen("spec_a").tensor("t")[15]
    with pytest.raises(IntegrityError):
        storage.read_tensor_lazy("t")[...]


def test_chunks_the_tree_does_not_list_read_as_fill_value(vault, storage):
    # The appending writer never writes chunks past the last row; a resize that grows the
    # array would read those as the fill value, like any never-written chunk.
    storage.write_tensors("t", np.ones(10, dtype="i4"), chunks=5)
    vault.commit("spec_a")
    spec = vault.specimen("spec_a")
    from cas_vault.zarrstore import ObjectTreeStore

    entries = {k: e for k, e in ((p.split(".zarr/", 1)[1], e.digest) for p, e in spec.files.items()
                                 if ".zarr/" in p) if k != "c/1"}
    z = zarr.open_array(ObjectTreeStore(vault.objects, entries), mode="r")
    np.testing.assert_array_equal(z[...], [1] * 5 + [0] * 5)


def test_committed_tensor_api_lists_and_names_missing_tensors(vault, storage):
    storage.write_tensors("acts", np.zeros(3))
    storage.write_tensors("weights", np.zeros(3))
    vault.commit("spec_a")
    spec = vault.specimen("spec_a")
    assert spec.tensors() == ["acts", "weights"]
    assert vault.tensor("spec_a", "acts").shape == (3,)
    with pytest.raises(NotFoundError, match="'acts', 'weights'"):
        spec.tensor("nope")
    with pytest.raises(NotFoundError):
        storage.read_tensor_lazy("nope")
    z = spec.tensor("acts")
    with pytest.raises(Exception):
        z[0] = 1.0  # read-only


# -- appending writer, memmaps, memory -------------------------------------------------------
def test_appending_writer_builds_the_same_tensor_from_uneven_blocks(vault, storage):
    a = np.random.default_rng(7).standard_normal((1037, 6)).astype("f4")
    with storage.tensor_writer("t", "float32", (6,), chunks=(100, 6)) as w:
        w.append(a[:1])
        w.append(a[1])  # one row, given as shape (6,)
        w.append(a[2:450])  # several chunk rows at once
        for i in range(450, 1037, 37):
            a[i:i + 37] = a[i:i + 37].astype("f2")  # float16 blocks are cast up safely
            w.append(a[i:i + 37].astype("f2"))
    assert w.rows == 1037
    got = storage.read_tensor_lazy("t")
    assert got.shape == (1037, 6) and got.chunks == (100, 6)
    np.testing.assert_array_equal(got[...], a)
    vault.commit("spec_a")
    np.testing.assert_array_equal(vault.specimen("spec_a").tensor("t")[...], a)
    # Appending the same rows as one write_tensors call gives the same chunk objects.
    other = new_storage(vault, "spec_b")
    other.write_tensors("t", a, chunks=(100, 6))
    index_a = {k: v for k, v in WorkingIndex(storage.path).load().items() if ".zarr/" in k}
    index_b = {k: v for k, v in WorkingIndex(other.path).load().items() if ".zarr/" in k}
    assert index_a == index_b


def test_appending_writer_with_no_rows_and_1d_rows(storage):
    with storage.tensor_writer("empty", "i8", (3,)):
        pass
    assert storage.read_tensor_lazy("empty").shape == (0, 3)
    with storage.tensor_writer("steps", "i8") as w:
        for i in range(2500):
            w.append(np.int64(i))
    np.testing.assert_array_equal(storage.read_tensor_lazy("steps")[...], np.arange(2500))
    assert storage.read_tensor_lazy("steps").chunks == (1000,)


def test_appending_writer_refuses_bad_blocks_and_an_error_changes_nothing(vault, storage):
    storage.write_tensors("t", np.arange(6, dtype="i4"))
    before = snapshot(storage, vault)
    with pytest.raises(InvalidInputError):
        storage.tensor_writer("t", "U3", (2,))
    with pytest.raises(InvalidInputError):
        storage.tensor_writer("t", "i4", (-1,))
    with pytest.raises(RuntimeError), storage.tensor_writer("t", "i4", (2,), chunks=(2, 2)) as w:
        w.append(np.ones((5, 2), "i4"))
        with pytest.raises(InvalidInputError, match="shape"):
            w.append(np.ones((5, 3), "i4"))
        with pytest.raises(InvalidInputError, match="cast"):
            w.append(np.ones((5, 2), "f8"))
        raise RuntimeError("training crashed")
    after = snapshot(storage, vault)
    assert after[0] == before[0] and after[2] == before[2]  # working dir and index unchanged
    np.testing.assert_array_equal(storage.read_tensor_lazy("t")[...], np.arange(6))
    with pytest.raises(InvalidInputError, match="not open"):
        w.append(np.ones((1, 2), "i4"))


def test_an_open_writer_holds_the_gc_lock_shared(vault, storage):
    gc_lock = vault.root / "locks" / "gc.lock"
    with storage.tensor_writer("t", "f4", (4,)) as w:
        w.append(np.zeros((3, 4), "f4"))
        with FileLock(gc_lock, shared=True, timeout=0.1):
            pass  # other writers and commits proceed
        with pytest.raises(LockTimeoutError):
            with FileLock(gc_lock, timeout=0.1):
                pass  # gc waits
    with FileLock(gc_lock, timeout=0.1):
        pass


def _peak_traced(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_memmap_larger_than_the_chunk_budget_streams_with_bounded_memory(
        vault, storage, tmp_path, compressor):
    rows, cols = 2048, 2048  # 16 MiB of float32, 64 chunks of 256 KiB
    mm = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype="f4", shape=(rows, cols))
    for i in range(0, rows, 256):
        mm[i:i + 256] = np.random.default_rng(i).standard_normal((256, cols), dtype="f4")
    mm.flush()
    chunk = 32 * cols * 4
    src = np.load(tmp_path / "big.npy", mmap_mode="r")
    # Chunks of 32 x 2048 hold whole rows; chunks of 256 x 256 need a gathered copy each.
    peak = _peak_traced(lambda: storage.write_tensors("t", src, chunks=(32, cols),
                                                      compressor=compressor))
    assert peak < 24 * chunk, peak  # << 16 MiB: a few chunks in flight, never the whole array
    peak = _peak_traced(lambda: storage.write_tensors("u", src, chunks=(256, 256),
                                                      compressor=compressor))
    assert peak < 24 * chunk, peak

    def append() -> None:
        with storage.tensor_writer("v", "f4", (cols,), chunks=(32, cols),
                                   compressor=compressor) as w:
            for i in range(0, rows, 100):
                w.append(src[i:i + 100])

    peak = _peak_traced(append)
    assert peak < 24 * chunk, peak
    for name in ("t", "u", "v"):
        z = storage.read_tensor_lazy(name)
        np.testing.assert_array_equal(z[1500], src[1500])
        np.testing.assert_array_equal(z[-3:, :5], src[-3:, :5])


def test_no_progress_bar_off_a_terminal(storage, capsys):
    from cas_vault.tensors import _progress_bar

    storage.write_tensors("t", np.zeros((100, 100)))
    assert capsys.readouterr().err == ""
    assert _progress_bar(10, "t", None) is None  # stderr is not a terminal under pytest
    bar = _progress_bar(10, "t", True)
    assert bar is not None and bar.delay >= 1.0  # fast writes never draw it
    bar.close()


def test_zarr_v2_arrays_of_imported_specimens_open_too(vault, storage):
    a = np.arange(30, dtype="f4").reshape(5, 6)
    z = zarr.create_array(store=str(storage.strata / "old.zarr"), shape=a.shape, dtype=a.dtype,
                          chunks=(2, 6), zarr_format=2)
    z[...] = a
    assert storage.list_tensors() == ["old"]
    np.testing.assert_array_equal(storage.read_tensor_lazy("old")[...], a)
    vault.commit("spec_a")
    assert vault.specimen("spec_a").tensors() == ["old"]
    np.testing.assert_array_equal(vault.specimen("spec_a").tensor("old")[4], a[4])


def test_cli_show_lists_a_large_tensor_as_one_line(vault, storage):
    storage.write_tensors("big", np.zeros((100, 4), "f4"), chunks=(10, 4))  # 10 equal chunks
    storage.write_tensors("small", np.ones(3))
    vault.commit("spec_a")
    result = CliRunner().invoke(cli, ["--vault", str(vault.root), "show", "spec_a"])
    assert result.exit_code == 0, result.output
    assert "strata/big.zarr/  " in result.output and "11 files, 2 distinct" in result.output
    assert "strata/big.zarr/c/" not in result.output
    assert "strata/small.zarr/zarr.json" in result.output and "strata/small.zarr/c/0" in result.output


def test_gc_keeps_chunks_of_uncommitted_tensors_and_prunes_replaced_ones(vault, storage):
    a = np.arange(100, dtype="f8")
    storage.write_tensors("t", a, chunks=10, compressor=None)
    first = set(WorkingIndex(storage.path).load().values())
    vault.gc(grace=0)
    assert all(vault.objects.has(d) for d in first)
    np.testing.assert_array_equal(storage.read_tensor_lazy("t")[...], a)
    storage.write_tensors("t", a + 1, chunks=10, compressor=None)
    vault.gc(grace=0)
    now = set(WorkingIndex(storage.path).load().values())
    assert all(vault.objects.has(d) for d in now)
    assert not any(vault.objects.has(d) for d in first - now)
    vault.commit("spec_a")
    np.testing.assert_array_equal(vault.specimen("spec_a").tensor("t")[...], a + 1)


def test_commit_refuses_a_tensor_it_cannot_list_or_find(tmp_path) -> None:
    """The working index is the only record of a tensor in objects/: a damaged index, or an
    object it names gone missing, must refuse the commit (sealing would silently drop data or
    seal fill values), and name the way out."""
    import numpy as np
    import pytest as _pytest

    from cas_vault import SpecimenStorage, Vault
    from cas_vault.errors import IntegrityError

    v = Vault.init(tmp_path / "v")
    wd = v.new("t", domain="training", method="fine_tuning")
    s = SpecimenStorage(wd)
    s.write_tensors("x", np.arange(4000, dtype=np.float32).reshape(2000, 2))
    index = WorkingIndex(wd)
    chunk = next(d for k, d in index.load().items() if "/c/" in k)
    good = index.path.read_bytes()
    index.path.write_bytes(good[: len(good) // 2])
    with _pytest.raises(IntegrityError, match="working index .* is damaged"):
        v.commit("t")
    assert v.refs.get("t") is None
    index.path.write_bytes(good)
    v.objects.path(chunk).unlink()
    with _pytest.raises(IntegrityError, match="write that tensor again"):
        v.commit("t")
    assert v.refs.get("t") is None
    s.write_tensors("x", np.arange(4000, dtype=np.float32).reshape(2000, 2))
    v.commit("t")
    np.testing.assert_array_equal(v.specimen("t").tensor("x")[1999], [3998, 3999])
