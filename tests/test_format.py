"""Format stability: BLAKE3 known answers, canonical msgpack, golden commit digests.

If any of these fail, the on-disk format changed: bump the format version and update
docs/format.md, never the expected values alone.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cas_vault import canonical
from cas_vault.commit import Commit, Manifest, TreeEntry, check_tree_path, kind_of
from cas_vault.digest import EMPTY_DIGEST, hash_bytes, hash_file
from cas_vault.errors import InvalidInputError

# Official BLAKE3 test vectors use the input pattern i % 251; these hashes are its default
# 32-byte outputs (from the BLAKE3 repository's test_vectors.json).
BLAKE3_VECTORS = {
    0: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    1: "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
    1023: "10108970eeda3eb932baac1428c7a2163b0e924c9a9e25b35bba72b28f70bd11",
    1024: "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7",
    1025: "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
    102400: "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085",
}

GOLDEN_CONFIG = {"lr": 0.001}
GOLDEN_CONFIG_HEX = "81a26c72cb3f50624dd2f1a9fc"
GOLDEN_COMMIT_DIGEST = "3ef4eb8215b4991efc162b621f6944949bd136db5b6f701ced63f083f73e4c67"


def golden_commit() -> Commit:
    cfg = canonical.packb(GOLDEN_CONFIG)
    return Commit(
        specimen_id="2024_12_19_golden", created="2024-12-19T10:00:00.000000Z", author="tester",
        message="golden", manifest=Manifest("training", "fine_tuning", None, ("a",), {}),
        parents=(), tree={"strata/config.msgpack": TreeEntry(hash_bytes(cfg), len(cfg), "msgpack")},
    )


@pytest.mark.parametrize("n,expected", sorted(BLAKE3_VECTORS.items()))
def test_blake3_known_answers(n: int, expected: str, tmp_path) -> None:
    data = bytes(i % 251 for i in range(n))
    assert hash_bytes(data) == expected
    f = tmp_path / "f"
    f.write_bytes(data)
    assert hash_file(f) == (expected, n)


def test_blake3_large_file_uses_same_digest_as_bytes(tmp_path) -> None:
    # Large files go through the mmap + multithreaded path: it must agree with the simple one.
    data = bytes(i % 251 for i in range(9 * 1024 * 1024 + 7))
    f = tmp_path / "big"
    f.write_bytes(data)
    assert hash_file(f)[0] == hash_bytes(data)
    assert hash_bytes(b"") == EMPTY_DIGEST
    assert hash_bytes(b"abc") == "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"


def test_golden_config_bytes() -> None:
    assert canonical.packb(GOLDEN_CONFIG).hex() == GOLDEN_CONFIG_HEX


def test_golden_commit_digest_and_roundtrip() -> None:
    c = golden_commit()
    assert c.digest == GOLDEN_COMMIT_DIGEST
    again = Commit.from_bytes(c.to_bytes())
    assert again == c
    assert again.to_bytes() == c.to_bytes()


def test_canonical_sorts_keys_regardless_of_insertion_order() -> None:
    a = canonical.packb({"b": 1, "a": {"y": [1, 2.0], "x": None}})
    b = canonical.packb({"a": {"x": None, "y": (1, 2.0)}, "b": 1})
    assert a == b


def test_canonical_floats_are_float64_and_nan_survives() -> None:
    data = canonical.packb({"x": 0.5, "nan": math.nan, "inf": math.inf})
    back = canonical.unpackb(data)
    assert back["x"] == 0.5 and math.isnan(back["nan"]) and back["inf"] == math.inf
    assert b"\xcb" in data and b"\xca" not in data


def test_noncanonical_commit_bytes_are_refused() -> None:
    import msgpack

    m = golden_commit().to_map()
    # Same content, keys in reverse order: valid msgpack, not canonical.
    data = msgpack.packb(dict(reversed(list(m.items()))), use_bin_type=True)
    with pytest.raises(InvalidInputError, match="canonical"):
        Commit.from_bytes(data)


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x81\xa1a", b"\x93\x01", b"\x01\x02"])
def test_malformed_msgpack_is_a_clear_error(data: bytes) -> None:
    with pytest.raises(InvalidInputError):
        Commit.from_bytes(data)


def test_commit_from_a_newer_format_is_refused() -> None:
    m = golden_commit().to_map()
    m["version"] = 99
    with pytest.raises(InvalidInputError, match="upgrade"):
        Commit.from_bytes(canonical.packb(m))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_roundtrip_is_stable(value) -> None:
    data = canonical.packb(value)
    back = canonical.unpackb(data, strict=True)
    assert canonical.packb(back) == data


@pytest.mark.parametrize("path,kind", [
    ("strata/metrics.parquet", "parquet"), ("strata/a.zarr/zarr.json", "zarr"),
    ("strata/a.zarr/c/0/0", "zarr"), ("manifest.msgpack", "msgpack"), ("protocol.py", "text"),
    ("field_notes.md", "text"), ("weights.bin", "other"), ("strata/x.zarr", "other"),
])
def test_kind_of(path: str, kind: str) -> None:
    assert kind_of(path) == kind


def _tree_path_ok_by_definition(path: str) -> bool:
    """docs/format.md: relative, '/'-separated, no empty, '.', '..' or control-char component."""
    if not path or path.startswith("/") or "\\" in path:
        return False
    return all(part not in ("", ".", "..") and all(ord(c) >= 32 and ord(c) != 127 for c in part)
               for part in path.split("/"))


@pytest.mark.parametrize("path", ["a/b", "strata/x.zarr/c/0/0", ".a", "a..b", "...", "a/.b/c"])
def test_tree_paths_accepted(path: str) -> None:
    assert check_tree_path(path) == path


@pytest.mark.parametrize("path", ["", "a//b", "./a", "a/.", "a/..", "../x", "a/b/", "/a", "a\\b",
                                  "a\x01b", "x/\x7f", "a/\nb"])
def test_tree_paths_refused(path: str) -> None:
    with pytest.raises(InvalidInputError):
        check_tree_path(path)


@given(st.text(alphabet=st.sampled_from(list("ab./\\\x00\x1f\x7f")), max_size=12))
def test_tree_path_check_matches_its_definition(path: str) -> None:
    try:
        check_tree_path(path)
        ok = True
    except InvalidInputError:
        ok = False
    assert ok == _tree_path_ok_by_definition(path)
