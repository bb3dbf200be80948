"""Bad input corpus: every case gives a clear error (exit 2 on the CLI), writes nothing, and
leaves ``vault verify`` clean.

Cases: hostile and look-alike specimen ids; malformed, truncated, oversized and mistyped msgpack
manifests; ragged, empty and untypeable metric columns; object and string dtype tensors; and
objects whose bytes do not match the digest they arrive with.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import blake3
import msgpack
import numpy as np
import pytest
from click.testing import CliRunner

from cas_vault import SpecimenStorage, Vault
from cas_vault.canonical import MAX_DOCUMENT_BYTES
from cas_vault.catalog import release_writer
from cas_vault.cli import cli
from cas_vault.errors import ChecksumMismatch, InvalidIdError, InvalidInputError, VaultError
from cas_vault.workdir import WorkingIndex

BAD_IDS = {
    "parent_dir": "../escape",
    "nested_parent": "a/../../b",
    "slash": "a/b",
    "absolute": "/etc/passwd",
    "nul": "abc\x00def",
    "long": "x" * 10_000,
    "fullwidth_s": "\uff53pecimen",  # 'ｓpecimen'
    "cyrillic_a": "sp\u0435cimen_\u0430",  # Cyrillic 'е' and 'а'
    "empty": "",
    "dot": ".",
    "dotdot": "..",
    "hidden": ".hidden",
    "option": "-rf",
    "space": "my specimen",
    "newline": "a\nb",
    "backslash": "a\\b",
}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under the vault (lock files aside): path -> (size, mtime_ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            if rel.startswith("locks/") and rel.endswith(".lock"):
                continue  # flock files are created on first use and hold nothing
            st = p.lstat()
            out[rel] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


@pytest.fixture
def v(tmp_path: Path) -> Vault:
    vault = Vault.init(tmp_path / "vault")
    s = SpecimenStorage(vault.new("good", domain="training", method="fine_tuning"))
    s.write_metrics({"step": [0, 1, 2], "loss": [0.3, 0.2, 0.1]})
    vault.commit("good", message="baseline")
    # Close the catalog writer now, not on its idle timer in the middle of a snapshot.
    release_writer(vault.root)
    return vault


def invoke(v: Vault, *args: str):
    return CliRunner().invoke(cli, ["--vault", str(v.root), *args])


def assert_clean(v: Vault) -> None:
    report = v.verify()
    assert report.ok, [p.message for p in report.problems]
    assert report.specimens == ("good",)


# -- ids ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(BAD_IDS))
def test_bad_ids_are_refused_everywhere(v: Vault, case: str) -> None:
    bad = BAD_IDS[case]
    before = snapshot(v.root)
    calls = [
        lambda: v.new(bad, domain="training", method="fine_tuning"),
        lambda: v.commit(bad),
        lambda: v.show(bad),
        lambda: v.checkout(bad, v.root.parent / "out"),
        lambda: v.verify([bad]),
        lambda: v.new("child", domain="training", method="fine_tuning", parents=[bad]),
    ]
    for call in calls:
        with pytest.raises(InvalidIdError) as info:
            call()
        assert "specimen id" in str(info.value)
    assert snapshot(v.root) == before
    cli_calls = [
        ["new", bad, "--domain", "training", "--method", "fine_tuning"],
        ["commit", bad, "-m", "x"],
        ["show", bad],
        ["log", bad],
        ["verify", bad],
        ["checkout", bad, str(v.root.parent / "out")],
        ["new", "child", "--domain", "training", "--method", "fine_tuning", "--parent", bad],
    ]
    for args in cli_calls:
        result = invoke(v, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "error" in result.output.lower() and "Traceback" not in result.output
    assert snapshot(v.root) == before
    assert not (v.root.parent / "out").exists()
    assert_clean(v)


# -- manifests ---------------------------------------------------------------------------------
def _manifest(**over) -> dict:
    m = {"specimen_id": "wip", "domain": "training", "method": "fine_tuning", "model": None,
         "tags": [], "parents": [], "created": "2024-12-19T10:00:00.000000Z", "metadata": {}}
    m.update(over)
    return m


MANIFESTS = {
    "garbage": b"\xc1\xc1\xc1 not msgpack",
    "empty_file": b"",
    "truncated": msgpack.packb(_manifest())[:-5],
    "trailing_data": msgpack.packb(_manifest()) + b"\x00",
    "not_a_map": msgpack.packb([1, 2, 3]),
    "int_keys": msgpack.packb({1: "training"}),
    "missing_domain": msgpack.packb({k: v for k, v in _manifest().items() if k != "domain"}),
    "bad_taxonomy": msgpack.packb(_manifest(domain="astrology", method="tarot")),
    "tags_not_list": msgpack.packb(_manifest(tags=5)),
    "parents_not_list": msgpack.packb(_manifest(parents="good")),
    "parent_escape": msgpack.packb(_manifest(parents=["../good"])),
    "metadata_not_map": msgpack.packb(_manifest(metadata=[1])),
    "model_not_string": msgpack.packb(_manifest(model=42)),
    "ext_type": msgpack.packb(_manifest(metadata={"x": msgpack.ExtType(5, b"zz")})),
    "deep_nesting": b"\x91" * 100_000 + b"\xc0",
}


@pytest.mark.parametrize("case", [*sorted(MANIFESTS), "oversized"])
def test_bad_manifest_is_refused_and_nothing_is_written(v: Vault, case: str) -> None:
    wd = v.new("wip", domain="training", method="fine_tuning")
    SpecimenStorage(wd).write_metrics({"x": [1.0, 2.0]})
    manifest = wd / "manifest.msgpack"
    if case == "oversized":
        # A bin document just over the limit (metadata, not data, belongs in manifests).
        with open(manifest, "wb") as f:
            f.write(b"\xc6" + (MAX_DOCUMENT_BYTES + 1).to_bytes(4, "big"))
            f.truncate(MAX_DOCUMENT_BYTES + 6)
    else:
        manifest.write_bytes(MANIFESTS[case])
    before = snapshot(v.root)
    with pytest.raises(VaultError) as info:
        v.commit("wip", message="should not seal")
    assert isinstance(info.value, InvalidInputError) and info.value.exit_code == 2
    assert str(info.value)
    result = invoke(v, "commit", "wip", "-m", "should not seal")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert snapshot(v.root) == before
    assert v.refs.get("wip") is None
    assert_clean(v)


# -- metrics -----------------------------------------------------------------------------------
BAD_METRICS = {
    "ragged": {"step": [0, 1, 2], "loss": [0.5, 0.4]},
    "ragged_numpy": {"step": np.arange(5), "loss": np.zeros(4)},
    "no_columns": {},
    "scalar_column": {"loss": 0.5},
    "non_string_name": {1: [1, 2]},
    "objects": {"x": [object(), object()]},
    "not_a_table": [1, 2, 3],
}


@pytest.mark.parametrize("case", sorted(BAD_METRICS))
def test_bad_metrics_are_refused_before_writing(v: Vault, case: str) -> None:
    wd = v.new("wip", domain="training", method="fine_tuning")
    before = snapshot(v.root)
    with pytest.raises(InvalidInputError):
        SpecimenStorage(wd).write_metrics(BAD_METRICS[case])  # type: ignore[arg-type]
    assert snapshot(v.root) == before
    assert not (wd / "strata" / "metrics.parquet").exists()
    assert_clean(v)


def test_nan_and_inf_metrics_are_kept_as_values(v: Vault) -> None:
    wd = v.new("wip", domain="training", method="fine_tuning")
    values = [float("nan"), float("inf"), float("-inf"), 1.5]
    SpecimenStorage(wd).write_metrics({"step": [0, 1, 2, 3], "loss": values})
    v.commit("wip", message="non-finite values")
    got = v.specimen("wip").read_metrics()["loss"].to_list()
    assert math.isnan(got[0]) and got[1:] == values[1:]
    report = v.verify()
    assert report.ok and report.specimens == ("good", "wip")


# -- tensors -----------------------------------------------------------------------------------
BAD_TENSORS = {
    "object_dtype": np.array([{"a": 1}, None], dtype=object),
    "string_dtype": np.array(["a", "bc"]),
    "bytes_dtype": np.array([b"a", b"bc"]),
    "datetime": np.array(["2024-01-01"], dtype="datetime64[D]"),
    "not_an_array": [[1, 2], [3, 4]],
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_bad_tensors_are_refused_before_writing(v: Vault, case: str) -> None:
    wd = v.new("wip", domain="training", method="fine_tuning")
    before = snapshot(v.root)
    with pytest.raises(InvalidInputError) as info:
        SpecimenStorage(wd).write_tensors("acts", BAD_TENSORS[case])  # type: ignore[arg-type]
    assert "tensor" in str(info.value) or "dtype" in str(info.value)
    assert snapshot(v.root) == before
    assert_clean(v)


# -- objects whose bytes do not match their name ------------------------------------------------
def test_put_bytes_with_wrong_expected_digest_writes_nothing(v: Vault) -> None:
    data = b"the bytes that arrive"
    wrong = blake3.blake3(b"what the sender claimed").hexdigest()
    before = snapshot(v.root)
    with pytest.raises(ChecksumMismatch) as info:
        v.objects.put_bytes(data, expected=wrong)
    assert info.value.expected == wrong
    assert info.value.got == blake3.blake3(data).hexdigest()
    # Nothing stored is damaged, so the message does not send the user to `vault verify`.
    assert "nothing was stored" in str(info.value) and "vault verify" not in str(info.value)
    assert snapshot(v.root) == before
    assert not v.objects.has(wrong) and not v.objects.has(info.value.got)
    with pytest.raises(InvalidInputError):
        v.objects.put_bytes(data, expected="not-a-digest")
    assert snapshot(v.root) == before
    assert_clean(v)


def test_a_lying_working_index_cannot_name_an_object(v: Vault) -> None:
    # The working index claims metrics.parquet is an object while the working directory holds
    # another file of that name: which one is the result? The commit refuses to guess.
    wd = v.new("wip", domain="training", method="fine_tuning")
    SpecimenStorage(wd).write_metrics({"x": [1.0, 2.0]})
    existing = v.get("good").tree["strata/metrics.parquet"].digest
    WorkingIndex(wd).update({"strata/metrics.parquet": existing})
    with pytest.raises(InvalidInputError, match="strata/metrics.parquet .*remove"):
        v.commit("wip")
    assert v.refs.get("wip") is None
    WorkingIndex(wd).update({}, remove_prefix="strata/metrics.parquet")
    v.commit("wip")
    entry = v.get("wip").tree["strata/metrics.parquet"]
    real = blake3.blake3((wd / "strata" / "metrics.parquet").read_bytes()).hexdigest()
    assert entry.digest == real != existing
    assert v.verify().ok


def test_put_file_stores_a_copy_under_the_true_digest(v: Vault, tmp_path: Path) -> None:
    src = v.root / "tmp" / "incoming.bin"
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(b"incoming file")
    digest, size = v.objects.put_file(src)
    assert digest == blake3.blake3(b"incoming file").hexdigest() and size == 13
    assert src.read_bytes() == b"incoming file"  # the caller's file stays
    src.unlink()
    report = v.verify()
    assert report.ok
    assert [i.count for i in report.info if i.kind == "unreferenced_objects"] == [1]


def test_a_non_commit_object_is_refused_as_a_parent(v: Vault) -> None:
    # Every object has a digest; only a commit may be named as a parent (else the vault would
    # hold a commit whose parent verify cannot decode, and gc would refuse to run).
    wd = v.new("wip", domain="training", method="fine_tuning")
    SpecimenStorage(wd).write_config({"k": 1})
    not_a_commit = v.get("good").tree["strata/metrics.parquet"].digest
    before = snapshot(v.root)
    with pytest.raises(InvalidInputError, match="not a commit"):
        v.commit("wip", parents=[not_a_commit])
    result = invoke(v, "commit", "wip", "--parent", not_a_commit)
    assert result.exit_code == 2, result.output
    assert snapshot(v.root) == before
    assert_clean(v)


# -- nesting: values that contain themselves, and documents nested too deep ----------------------
#: docs/format.md 4.1: arrays and maps nest at most this many levels.
MAX_LEVELS = 256


def _nested(levels: int) -> object:
    value: object = 0
    for _ in range(levels):
        value = {"k": value}
    return value


def _self_referencing() -> dict:
    config: dict = {"lr": 3e-4, "layers": [1, 2]}
    config["self"] = config
    return config


def _cycle_through_a_list() -> dict:
    config: dict = {"lr": 3e-4, "children": []}
    config["children"].append({"parent": config})
    return config


NESTED = {
    "self_reference": (_self_referencing, "contains itself"),
    "cycle_through_a_list": (_cycle_through_a_list, "contains itself"),
    "5000_deep": (lambda: _nested(5000), f"deeper than {MAX_LEVELS}"),
    "one_too_deep": (lambda: _nested(MAX_LEVELS + 1), f"deeper than {MAX_LEVELS}"),
}


@pytest.mark.parametrize("case", sorted(NESTED))
def test_recursive_and_too_deep_values_are_refused_and_nothing_is_written(v: Vault, case: str) -> None:
    make, says = NESTED[case]
    wd = v.new("wip", domain="training", method="fine_tuning")
    SpecimenStorage(wd).write_metrics({"x": [1.0, 2.0]})
    before = snapshot(v.root)
    calls = {
        "write_config": lambda: SpecimenStorage(wd).write_config(make()),
        "new_metadata": lambda: v.new("other", domain="training", method="fine_tuning",
                                      metadata={"config": make()}),
        "commit_extra_metadata": lambda: v.commit("wip", extra_metadata={"config": make()}),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidInputError) as info:
            call()
        assert says in str(info.value), (name, str(info.value))
        assert len(str(info.value)) < 400  # the path is elided, not 5,000 keys long
    assert snapshot(v.root) == before
    assert v.refs.get("wip") is None and not v.specimen_dir("other").exists()
    assert_clean(v)


def test_a_value_at_the_depth_bound_is_stored_and_read_back(v: Vault) -> None:
    wd = v.new("wip", domain="training", method="fine_tuning")
    SpecimenStorage(wd).write_config(_nested(MAX_LEVELS))
    assert SpecimenStorage(wd).read_config() == _nested(MAX_LEVELS)


def test_documents_nested_deeper_than_the_bound_are_refused_when_read(v: Vault) -> None:
    from cas_vault import canonical

    # msgpack itself decodes up to 1024 levels; the bound is the format's, checked after it.
    assert canonical.unpackb(b"\x91" * MAX_LEVELS + b"\xc0", strict=True) is not None
    for data in (b"\x91" * (MAX_LEVELS + 1) + b"\xc0", b"\x81\xa1k" * 600 + b"\xc0"):
        for strict in (False, True):
            with pytest.raises(InvalidInputError, match=f"deeper than {MAX_LEVELS}"):
                canonical.unpackb(data, strict=strict)
    # A working manifest whose metadata nests 300 deep: the commit is refused, nothing written.
    wd = v.new("wip", domain="training", method="fine_tuning")
    SpecimenStorage(wd).write_metrics({"x": [1.0, 2.0]})
    manifest = msgpack.unpackb((wd / "manifest.msgpack").read_bytes())
    manifest["metadata"] = _nested(300)
    (wd / "manifest.msgpack").write_bytes(msgpack.packb(manifest))
    before = snapshot(v.root)
    with pytest.raises(InvalidInputError, match=f"deeper than {MAX_LEVELS}"):
        v.commit("wip")
    result = invoke(v, "commit", "wip", "-m", "too deep")
    assert result.exit_code == 2, result.output
    assert "deeper than" in result.output and "Traceback" not in result.output
    assert snapshot(v.root) == before
    assert_clean(v)


# -- vault demo never pours examples into a vault it did not make --------------------------------
def test_demo_refuses_a_real_vault_or_a_non_empty_directory_and_writes_nothing(
        v: Vault, tmp_path: Path) -> None:
    from cas_vault.demo import run_demo

    before = snapshot(v.root)
    for args in (["demo", "--vault", str(v.root)], ["--vault", str(v.root), "demo"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert "did not create" in result.output and "--vault DIR" in result.output
        assert "Traceback" not in result.output
    with pytest.raises(InvalidInputError, match="did not create"):
        run_demo(v.root)
    assert snapshot(v.root) == before
    assert_clean(v)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me\n")
    result = CliRunner().invoke(cli, ["demo", "--vault", str(notes)])
    assert result.exit_code == 2 and "not empty" in result.output, result.output
    assert os.listdir(notes) == ["todo.txt"]
    result = CliRunner().invoke(cli, ["demo", "--vault", str(notes / "todo.txt")])
    assert result.exit_code == 2, result.output  # click refuses a file before the library sees it
    with pytest.raises(InvalidInputError, match="not a directory"):
        run_demo(notes / "todo.txt")
    assert (notes / "todo.txt").read_text() == "keep me\n"


def test_demo_marks_its_vault_and_accepts_missing_empty_and_demo_targets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cas_vault import demo

    # The examples themselves are exercised by test_cli's demo test; here only the target rules.
    monkeypatch.setattr(demo, "EXAMPLES", ())
    monkeypatch.setattr(demo, "_run_spectroscopy", lambda vault, result: None)
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (tmp_path / "missing" / "demo-vault", empty):
        demo.run_demo(target)
        assert (target / demo.DEMO_MARKER).is_file() and (target / "vault.msgpack").is_file()
        demo.run_demo(target)  # its own vault: accepted again
    # A demo interrupted before `init` finished left only its marker: still a demo vault.
    half = tmp_path / "half"
    half.mkdir()
    (half / demo.DEMO_MARKER).write_text("x")
    demo.run_demo(half)
    assert Vault.open(half).root == half.resolve()
