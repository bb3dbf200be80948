"""The contract every object store backend passes (cas_vault.store.ObjectBackend).

:class:`ObjectBackendContract` holds the tests; a backend joins by subclassing it as
``Test<Backend>`` with a ``backend`` fixture (its factory) and, where it can, the hooks that
look at stored objects directly (mtimes, corruption, leftovers). Expected digests come from the
``blake3`` package itself, not from cas-vault's helpers, so the suite stays an independent oracle.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from cas_vault.errors import ChecksumMismatch, InvalidInputError, NotFoundError
from cas_vault.objects import ObjectStore
from cas_vault.store import ObjectBackend

PUT_KINDS = ["bytes", "file", "stream"]
BAD_DIGESTS = ["", "../" + "a" * 61, "A" * 64, "a" * 63, "a" * 65, "g" * 64, "aa/" + "a" * 61]


def b3(data: bytes) -> str:
    """The expected name of ``data``, computed without cas-vault."""
    return blake3.blake3(data).hexdigest()


def blocks_of(data: bytes, n: int = 7) -> Iterator[bytes | bytearray | memoryview]:
    """``data`` as a stream of small blocks of mixed buffer types, with an empty one."""
    yield b""
    for i, start in enumerate(range(0, len(data), n)):
        block = data[start:start + n]
        yield (block, bytearray(block), memoryview(block))[i % 3]


class ObjectBackendContract:
    """Tests every backend must pass. Subclasses provide the ``backend`` fixture."""

    # -- hooks a backend overrides where it can -----------------------------------------------
    def mtime(self, backend: ObjectBackend, digest: str) -> float | None:
        """The object's mtime, or None when the backend keeps none."""
        return None

    def age(self, backend: ObjectBackend, digest: str, seconds: float) -> None:
        """Make the object's mtime ``seconds`` old (only called when :meth:`mtime` works)."""
        raise NotImplementedError

    def corrupt(self, backend: ObjectBackend, digest: str) -> None:
        """Change the stored bytes behind the backend's back; skip where that is impossible."""
        pytest.skip("this backend cannot be corrupted from a test")

    def assert_no_leftovers(self, backend: ObjectBackend) -> None:
        """Fail if a put left anything behind besides its object (temp files, uploads)."""

    def assert_read_only(self, backend: ObjectBackend, digest: str) -> None:
        """Fail if the stored object could be written to."""
        with backend.open(digest) as f:
            assert not f.writable()

    # -- helpers ------------------------------------------------------------------------------
    @pytest.fixture
    def put(self, backend: ObjectBackend, tmp_path: Path):
        """``put(kind, data, expected=None) -> digest`` through put_bytes/put_file/put_stream."""
        counter = iter(range(1_000_000))

        def do(kind: str, data: bytes, expected: str | None = None) -> str:
            if kind == "bytes":
                return backend.put_bytes(data, expected=expected)
            if kind == "file":
                src = tmp_path / "sources" / f"f{next(counter)}"
                src.parent.mkdir(exist_ok=True)
                src.write_bytes(data)
                digest, size = backend.put_file(src, expected=expected)
                assert size == len(data)
                assert src.read_bytes() == data  # the caller's file is left as it was
                return digest
            digest, size = backend.put_stream(blocks_of(data), expected=expected)
            assert size == len(data)
            return digest

        return do

    # -- the contract -------------------------------------------------------------------------
    def test_backend_provides_the_protocol(self, backend: ObjectBackend) -> None:
        assert isinstance(backend, ObjectBackend)

    @pytest.mark.parametrize("kind", PUT_KINDS)
    @pytest.mark.parametrize("data", [b"", b"x", b"hello object store\n" * 100, bytes(range(256)) * 300])
    def test_put_returns_the_blake3_digest_and_stores_the_bytes(
        self, backend: ObjectBackend, put, kind: str, data: bytes
    ) -> None:
        digest = put(kind, data)
        assert digest == b3(data)
        assert backend.has(digest)
        assert backend.size(digest) == len(data)
        assert backend.get(digest) == data
        self.assert_no_leftovers(backend)

    def test_every_put_kind_names_the_same_bytes_the_same_object(
        self, backend: ObjectBackend, put
    ) -> None:
        data = b"same bytes, three ways" * 50
        assert {put(kind, data) for kind in PUT_KINDS} == {b3(data)}
        assert list(backend.iter_digests()) == [b3(data)]
        self.assert_no_leftovers(backend)

    @pytest.mark.parametrize("kind", PUT_KINDS)
    def test_put_is_idempotent_and_refreshes_the_mtime(
        self, backend: ObjectBackend, put, kind: str
    ) -> None:
        data = b"put twice"
        digest = put(kind, data)
        if self.mtime(backend, digest) is not None:
            self.age(backend, digest, 3600)
            old = self.mtime(backend, digest)
            assert old is not None and old < time.time() - 3000
        assert put(kind, data) == digest
        assert list(backend.iter_digests()) == [digest]
        assert backend.get(digest) == data
        new = self.mtime(backend, digest)
        if new is not None:  # a concurrent gc's grace period starts again
            assert new > time.time() - 600
        self.assert_no_leftovers(backend)

    @pytest.mark.parametrize("kind", PUT_KINDS)
    def test_a_right_claimed_digest_is_accepted(self, backend: ObjectBackend, put, kind: str) -> None:
        data = b"claimed correctly"
        assert put(kind, data, expected=b3(data)) == b3(data)
        assert backend.get(b3(data)) == data

    @pytest.mark.parametrize("present", [False, True], ids=["absent", "present"])
    @pytest.mark.parametrize("kind", PUT_KINDS)
    def test_a_wrong_claimed_digest_is_refused_and_stores_nothing(
        self, backend: ObjectBackend, put, kind: str, present: bool
    ) -> None:
        data, other = b"the bytes offered", b"the bytes claimed"
        if present:  # the claimed object exists already: still refused, still untouched
            put("bytes", other)
        with pytest.raises(ChecksumMismatch) as info:
            put(kind, data, expected=b3(other))
        assert (info.value.expected, info.value.got, info.value.incoming) == (
            b3(other), b3(data), True)
        assert not backend.has(b3(data))
        assert list(backend.iter_digests()) == ([b3(other)] if present else [])
        if present:
            assert backend.get(b3(other)) == other
        self.assert_no_leftovers(backend)

    @pytest.mark.parametrize("kind", PUT_KINDS)
    def test_a_malformed_claim_is_invalid_input(self, backend: ObjectBackend, put, kind: str) -> None:
        with pytest.raises(InvalidInputError):
            put(kind, b"data", expected="not-a-digest")
        assert list(backend.iter_digests()) == []
        self.assert_no_leftovers(backend)

    @pytest.mark.parametrize("bad", BAD_DIGESTS)
    def test_a_malformed_digest_is_refused_before_it_is_used_as_a_name(
        self, backend: ObjectBackend, bad: str
    ) -> None:
        calls = [backend.key, backend.has, backend.size, backend.get, backend.open,
                 lambda d: backend.read_range(d, 0, 1), backend.delete]
        for call in calls:
            with pytest.raises(InvalidInputError):
                call(bad)

    def test_names_are_path_free_keys(self, backend: ObjectBackend) -> None:
        d = b3(b"k")
        assert backend.key(d) == f"{d[:2]}/{d}"

    def test_a_missing_object_raises_not_found(self, backend: ObjectBackend) -> None:
        backend.put_bytes(b"another object")
        missing = b3(b"never stored")
        assert not backend.has(missing)
        for call in (backend.size, backend.get, backend.open,
                     lambda d: backend.read_range(d, 0, 1)):
            with pytest.raises(NotFoundError) as info:
                call(missing)
            assert isinstance(info.value, KeyError)

    def test_open_reads_the_stored_bytes(self, backend: ObjectBackend) -> None:
        data = bytes(range(256)) * 4
        digest = backend.put_bytes(data)
        with backend.open(digest) as f:
            assert f.read() == data

    @pytest.mark.parametrize(
        ("offset", "length", "want"),
        [(0, None, slice(0, None)), (0, 10, slice(0, 10)), (5, 10, slice(5, 15)),
         (0, 0, slice(0, 0)), (990, 50, slice(990, 1000)), (999, None, slice(999, None)),
         (1000, 1, slice(0, 0)), (1000, None, slice(0, 0)), (5000, 10, slice(0, 0)),
         (10, 10**9, slice(10, None))],
    )
    def test_read_range(
        self, backend: ObjectBackend, offset: int, length: int | None, want: slice
    ) -> None:
        data = bytes(i % 251 for i in range(1000))
        digest = backend.put_bytes(data)
        assert backend.read_range(digest, offset, length) == data[want]

    @pytest.mark.parametrize(("offset", "length"), [(-1, 1), (0, -1), (-5, None)])
    def test_read_range_refuses_negative_ranges(
        self, backend: ObjectBackend, offset: int, length: int | None
    ) -> None:
        digest = backend.put_bytes(b"0123456789")
        with pytest.raises(InvalidInputError):
            backend.read_range(digest, offset, length)

    def test_get_refuses_altered_bytes_unless_told_not_to_verify(self, backend: ObjectBackend) -> None:
        digest = backend.put_bytes(b"original bytes")
        self.corrupt(backend, digest)
        with pytest.raises(ChecksumMismatch):
            backend.get(digest)
        assert backend.get(digest, verify=False) != b"original bytes"

    def test_iter_digests_lists_exactly_what_was_put(self, backend: ObjectBackend, put) -> None:
        assert list(backend.iter_digests()) == []
        datas = [f"object {i}".encode() * (i + 1) for i in range(20)]
        for i, data in enumerate(datas):
            put(PUT_KINDS[i % 3], data)
        put("bytes", datas[0])  # a duplicate is listed once
        listed = list(backend.iter_digests())
        assert sorted(listed) == sorted({b3(d) for d in datas})
        assert len(listed) == len(datas)

    def test_delete_removes_the_object_and_is_idempotent(self, backend: ObjectBackend) -> None:
        keep = backend.put_bytes(b"keep me")
        gone = backend.put_bytes(b"delete me")
        assert backend.delete(gone) is True
        assert not backend.has(gone)
        with pytest.raises(NotFoundError):
            backend.size(gone)
        assert backend.delete(gone) is False
        assert backend.delete(b3(b"never stored")) is False
        assert list(backend.iter_digests()) == [keep]
        assert backend.get(keep) == b"keep me"
        assert backend.put_bytes(b"delete me") == gone  # a deleted object can be stored again
        assert backend.get(gone) == b"delete me"

    def test_objects_are_read_only(self, backend: ObjectBackend, put) -> None:
        for kind in PUT_KINDS:
            digest = put(kind, f"read only via {kind}".encode())
            self.assert_read_only(backend, digest)

    def test_concurrent_puts_of_the_same_bytes_end_with_one_intact_object(
        self, backend: ObjectBackend, put
    ) -> None:
        data = os.urandom(1 << 18)
        n = 8
        barrier = threading.Barrier(n)
        results: list[str] = []
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                barrier.wait()
                results.append(put(PUT_KINDS[i % 3], data))
            except BaseException as exc:  # reported below, with the thread's own traceback
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert results == [b3(data)] * n
        assert list(backend.iter_digests()) == [b3(data)]
        assert backend.get(b3(data)) == data
        self.assert_read_only(backend, b3(data))
        self.assert_no_leftovers(backend)


class TestLocalObjectStore(ObjectBackendContract):
    """The local directory backend, ``objects/<2 hex>/<64 hex>`` (docs/format.md section 3)."""

    @pytest.fixture
    def backend(self, tmp_path: Path) -> ObjectStore:
        (tmp_path / "vault" / "objects").mkdir(parents=True)
        return ObjectStore(tmp_path / "vault" / "objects", tmp_path / "vault" / "tmp")

    def mtime(self, backend: ObjectBackend, digest: str) -> float | None:
        assert isinstance(backend, ObjectStore)
        return backend.path(digest).stat().st_mtime

    def age(self, backend: ObjectBackend, digest: str, seconds: float) -> None:
        assert isinstance(backend, ObjectStore)
        then = time.time() - seconds
        os.utime(backend.path(digest), (then, then))

    def corrupt(self, backend: ObjectBackend, digest: str) -> None:
        assert isinstance(backend, ObjectStore)
        path = backend.path(digest)
        path.chmod(0o644)
        path.write_bytes(b"altered")

    def assert_no_leftovers(self, backend: ObjectBackend) -> None:
        assert isinstance(backend, ObjectStore)
        if backend.tmp_dir.exists():
            assert list(backend.tmp_dir.iterdir()) == []
        fans = [p for p in backend.root.iterdir()]
        for fan in fans:
            for entry in fan.iterdir():
                assert entry.name.startswith(fan.name) and len(entry.name) == 64, entry

    def assert_read_only(self, backend: ObjectBackend, digest: str) -> None:
        super().assert_read_only(backend, digest)
        assert isinstance(backend, ObjectStore)
        st = backend.path(digest).stat()
        assert stat.S_IMODE(st.st_mode) == 0o444
        assert st.st_nlink == 1  # no other name can write to it (docs/format.md section 3)

    # -- local extras: the write order of docs/format.md section 8 -----------------------------
    def test_put_stream_fsyncs_the_bytes_before_linking_and_the_directory_after(
        self, backend: ObjectStore, fs_log
    ) -> None:
        fs_log.root = backend.root.parent.resolve()
        data = b"streamed and durable"
        d = b3(data)
        with fs_log.recording():
            backend.put_stream(blocks_of(data))
        link = fs_log.first("link", "tmp/*.tmp", f"objects/{d[:2]}/{d}")
        assert fs_log.last("fsync", "tmp/*.tmp") < link
        assert fs_log.first("fsync", f"objects/{d[:2]}") > link
        assert fs_log.first("unlink", "tmp/*.tmp") > link

    def test_a_put_stream_of_a_present_object_writes_no_name(
        self, backend: ObjectStore, fs_log
    ) -> None:
        fs_log.root = backend.root.parent.resolve()
        backend.put_bytes(b"present")
        with fs_log.recording():
            backend.put_stream([b"pre", b"sent"])
        assert fs_log.where("link") == []
        assert fs_log.where("fsync") == []

    def test_delete_fsyncs_the_fan_out_directory(self, backend: ObjectStore, fs_log) -> None:
        fs_log.root = backend.root.parent.resolve()
        d = backend.put_bytes(b"to be deleted")
        with fs_log.recording():
            backend.delete(d)
        assert fs_log.first("unlink", f"objects/{d[:2]}/{d}") < fs_log.first(
            "fsync", f"objects/{d[:2]}")

    def test_a_refused_put_file_leaves_no_temp_file(self, backend: ObjectStore, tmp_path: Path) -> None:
        big = tmp_path / "big"
        big.write_bytes(os.urandom((1 << 20) + 1))  # copied to a temp file, not read whole
        with pytest.raises(ChecksumMismatch):
            backend.put_file(big, expected=b3(b"something else"))
        self.assert_no_leftovers(backend)
        assert list(backend.iter_digests()) == []
