"""Format stability: BLAKE3 known answers, canonical msgpack, golden commit digests.

If any of these fail, the on-disk format changed: bump the format version and update
docs/format.md, never the expected values alone.
"""

from __future__ import annotations

import datetime
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


# -- strict commit decoding (docs/format.md 4.2) ----------------------------------------------
_digests = st.binary(min_size=1, max_size=8).map(hash_bytes)
_path_parts = st.text(alphabet=st.sampled_from(list("abz09_-.")), min_size=1, max_size=6).filter(
    lambda p: p not in (".", ".."))
_tree_paths = st.lists(_path_parts, min_size=1, max_size=4).map("/".join)
_texts = st.text(max_size=20)
_metadata = st.dictionaries(st.text(max_size=8), json_values, max_size=4)


@st.composite
def valid_commits(draw) -> Commit:
    """Commits as cas-vault could write them: every field within docs/format.md 4.2."""
    created = draw(st.datetimes(min_value=datetime.datetime(1970, 1, 1)))
    tree = {
        path: TreeEntry(draw(_digests), draw(st.integers(0, 2**63)), kind_of(path))
        for path in draw(st.lists(_tree_paths, max_size=6, unique=True))
    }
    return Commit(
        specimen_id=draw(st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_]{0,20}\Z")),
        created=created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        author=draw(_texts), message=draw(_texts),
        manifest=Manifest(draw(_texts.filter(bool)), draw(_texts.filter(bool)),
                          draw(st.none() | _texts), tuple(draw(st.lists(_texts, max_size=3))),
                          draw(_metadata)),
        parents=tuple(draw(st.lists(_digests, max_size=3, unique=True))),
        tree=tree,
    )


@given(valid_commits())
def test_decoding_a_commit_gives_back_its_bytes_and_its_name(c: Commit) -> None:
    data = c.to_bytes()
    name = hash_bytes(data)
    back = Commit.from_bytes(data)
    assert back.to_bytes() == data
    assert back.digest == name
    assert back == c


def _golden_map() -> dict:
    return golden_commit().to_map()


def _entry(m: dict) -> dict:
    return m["tree"]["strata/config.msgpack"]


# (how to break a valid commit map, text the refusal must contain)
BROKEN_COMMITS = {
    "extra_key": (lambda m: m.update(signature="x"), "'signature'"),
    "missing_key": (lambda m: m.pop("message"), "'message'"),
    "version_bool": (lambda m: m.update(version=True), "'version'"),
    "version_zero": (lambda m: m.update(version=0), "'version'"),
    "author_not_str": (lambda m: m.update(author=5), "'author'"),
    "created_not_str": (lambda m: m.update(created=1734602400), "'created'"),
    "created_malformed": (lambda m: m.update(created="2024-12-19 10:00"), "created"),
    "specimen_id_not_str": (lambda m: m.update(specimen_id=["a"]), "'specimen_id'"),
    "specimen_id_escape": (lambda m: m.update(specimen_id="../x"), "specimen id"),
    "parents_not_list": (lambda m: m.update(parents="abc"), "'parents'"),
    "parent_not_digest": (lambda m: m.update(parents=["ABC"]), "parent"),
    "parent_twice": (lambda m: m.update(parents=[EMPTY_DIGEST, EMPTY_DIGEST]), "twice"),
    "tree_not_map": (lambda m: m.update(tree=[]), "'tree'"),
    "tree_path_escape": (lambda m: m.update(tree={"../x": _entry(m)}), "tree path"),
    "manifest_not_map": (lambda m: m.update(manifest=[]), "manifest"),
    "manifest_extra_key": (lambda m: m["manifest"].update(status="active"), "'status'"),
    "manifest_missing_tags": (lambda m: m["manifest"].pop("tags"), "'tags'"),
    "manifest_missing_model": (lambda m: m["manifest"].pop("model"), "'model'"),
    "manifest_missing_metadata": (lambda m: m["manifest"].pop("metadata"), "'metadata'"),
    "manifest_domain_not_str": (lambda m: m["manifest"].update(domain=1), "'domain'"),
    "manifest_tags_not_strs": (lambda m: m["manifest"].update(tags=[1]), "'tags'"),
    "manifest_model_not_str": (lambda m: m["manifest"].update(model=1.5), "'model'"),
    "manifest_metadata_not_map": (lambda m: m["manifest"].update(metadata=[]), "'metadata'"),
    "entry_extra_key": (lambda m: _entry(m).update(mode=420), "'mode'"),
    "entry_missing_kind": (lambda m: _entry(m).pop("kind"), "'kind'"),
    "entry_size_bool": (lambda m: _entry(m).update(size=True), "size"),
    "entry_size_negative": (lambda m: _entry(m).update(size=-1), "size"),
    "entry_size_float": (lambda m: _entry(m).update(size=13.0), "size"),
    "entry_bad_kind": (lambda m: _entry(m).update(kind="exe"), "kind"),
    "entry_bad_digest": (lambda m: _entry(m).update(digest="0" * 63), "digest"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_COMMITS))
def test_a_commit_that_deviates_from_the_spec_is_refused(case: str) -> None:
    # Canonical bytes that decode to a map: only the commit rules can refuse them. A lenient
    # decoder would hand back a commit whose digest is not the name it was stored under.
    m = _golden_map()
    breaks, named = BROKEN_COMMITS[case]
    breaks(m)
    data = canonical.packb(m)
    with pytest.raises(InvalidInputError) as info:
        Commit.from_bytes(data)
    assert named in str(info.value)


def test_verify_reports_a_lenient_looking_commit_as_bad_commit(vault) -> None:
    from click.testing import CliRunner

    from cas_vault.cli import cli
    from cas_vault.commit import utc_now

    vault.new("real", domain="training", method="fine_tuning")
    good = vault.commit("real").to_map()
    # Stored under its own digest and named by a journaled ref: only the decoder can object.
    for sid, breaks in (("forged_extra", lambda m: m["manifest"].update(status="active")),
                        ("forged_missing", lambda m: m["manifest"].pop("tags"))):
        m = {**good, "specimen_id": sid, "manifest": dict(good["manifest"])}
        breaks(m)
        digest = vault.objects.put_bytes(canonical.packb(m))
        vault.refs.create(sid, digest, utc_now())
    report = vault.verify()
    bad = {(p.kind, p.specimen) for p in report.problems}
    assert {("bad_commit", "forged_extra"), ("bad_commit", "forged_missing")} <= bad, bad
    assert not any(p.specimen == "real" for p in report.problems)
    result = CliRunner().invoke(cli, ["--vault", str(vault.root), "verify"])
    assert result.exit_code == 1, result.output
    assert "bad_commit" in result.output and "Traceback" not in result.output
