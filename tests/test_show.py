"""`vault show` and `vault diff` on real-sized specimens: metadata values, tensors, file summaries.

Arrange with the Python API, act with the CLI, assert on both: what a reader sees must be
readable (values, not only keys; a summary, not 500 lines) and safe (no raw control character).
"""

from __future__ import annotations

import json
import math

import click
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from cas_vault import SpecimenStorage, Vault
from cas_vault.cli import cli
from cas_vault.diff import field_changes, flatten
from cas_vault.tensors import summarize_tree_tensors


def run(vault: Vault, *args: str):
    # color=True: as on a terminal, click strips no escape sequence from what we print.
    result = CliRunner().invoke(cli, ["--vault", str(vault.root), *args], color=True)
    assert result.exit_code == 0, result.output
    return result.output


def new(vault: Vault, sid: str, **metadata) -> SpecimenStorage:
    return SpecimenStorage(vault.new(sid, domain="training", method="fine_tuning",
                                     metadata=metadata or None))


def file_lines(output: str) -> list[str]:
    """The lines of `vault show` after its `files` header."""
    lines = output.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("files "))
    return [ln for ln in lines[start + 1:] if ln.startswith("  ")]


# -- metadata ----------------------------------------------------------------------------------
def test_show_prints_metadata_values_field_by_field_and_escaped(vault: Vault) -> None:
    new(vault, "spec", note="ok \x1b[31mred\r over\x07", optim={"lr": 0.0003, "betas": [0.9, 0.95]},
        provenance={"python": {"version": "3.11.4"}, "git": {"commit": "ab" * 20, "dirty": True},
                    "seeds": [{"seed": 42, "where": "torch"}]})
    vault.commit("spec")
    out = run(vault, "show", "spec")
    assert "optim.lr: 0.0003" in out and "optim.betas: [0.9, 0.95]" in out
    assert "provenance.python.version: 3.11.4" in out
    assert f"provenance.git.commit: {'ab' * 20}" in out and "provenance.git.dirty: True" in out
    assert "provenance.seeds[0].seed: 42" in out
    # The user's escape sequence is shown, never obeyed; our own colours are not in play here.
    assert "\x1b[31m" not in out and "\r" not in out and "\x07" not in out
    assert "note: ok \\x1b[31mred\\r over\\x07" in out
    # JSON stays exact.
    shown = json.loads(run(vault, "show", "spec", "--json"))
    assert shown["manifest"]["metadata"]["note"] == "ok \x1b[31mred\r over\x07"


def test_show_cuts_long_lists_strings_and_maps_with_an_explicit_marker(vault: Vault) -> None:
    new(vault, "spec", layers=list(range(500)), desc="x" * 1000,
        packages={f"pkg{i:03}": "1.0" for i in range(150)})
    vault.commit("spec")
    out = run(vault, "show", "spec")
    layers = next(ln for ln in out.splitlines() if ln.strip().startswith("layers:"))
    assert layers.strip().startswith("layers: [0, 1, 2, ") and "499" not in layers
    *items, marker = layers[layers.index("[") + 1:-1].split(", ")
    assert items == [str(i) for i in range(len(items))]
    assert marker == f"… ({500 - len(items)} more)", layers
    assert len(layers) < 140
    desc = next(ln for ln in out.splitlines() if ln.strip().startswith("desc:"))
    assert "x" * 100 in desc and "x" * 101 not in desc and desc.endswith("… (900 more chars)")
    assert "packages.pkg000: 1.0" in out and "packages.pkg149" not in out
    assert "packages: … (140 more)" in out
    assert len(out.splitlines()) < 40


# -- files -------------------------------------------------------------------------------------
def test_show_summarizes_many_files_and_lists_them_all_with_files(vault: Vault) -> None:
    s = new(vault, "spec")
    (s.strata / "samples").mkdir()
    for i in range(500):
        (s.strata / "samples" / f"s{i:03}.txt").write_text(str(i))
    s.write_config({"lr": 0.1})
    vault.commit("spec")
    tree = vault.get("spec").tree
    assert len(tree) == 504

    out = run(vault, "show", "spec")
    lines = file_lines(out)
    assert len(lines) <= 20, out
    assert "--files lists every file" in out
    folded = next(ln for ln in lines if "strata/samples/" in ln)
    assert "500 files: text 500" in folded
    size = sum(e.size for p, e in tree.items() if p.startswith("strata/samples/"))
    assert f"{size:,}" in folded
    # The few files beside the crowded directory are still listed one by one.
    assert any("strata/config.msgpack" in ln for ln in lines)
    assert any("protocol.py" in ln for ln in lines)

    out = run(vault, "show", "spec", "--files")
    lines = file_lines(out)
    assert len(lines) == 504
    assert all(any(f"strata/samples/s{i:03}.txt" in ln for ln in lines) for i in (0, 250, 499))
    assert len(json.loads(run(vault, "show", "spec", "--json"))["files"]) == 504


def test_show_lists_few_files_one_by_one(vault: Vault) -> None:
    s = new(vault, "spec")
    s.write_config({"lr": 0.1})
    vault.commit("spec")
    out = run(vault, "show", "spec")
    assert "--files" not in out
    assert len(file_lines(out)) == len(vault.get("spec").tree)


# -- tensors -----------------------------------------------------------------------------------
def test_show_gives_each_tensor_its_logical_size_and_stored_bytes(vault: Vault) -> None:
    s = new(vault, "spec")
    s.write_tensors("acts", np.zeros((100, 768), "f4"))                     # one zstd chunk
    s.write_tensors("tiles", np.zeros((100, 768), "f4"), chunks=(10, 768), compressor=None)
    vault.commit("spec")

    acts, tiles = vault.show("spec").tensors
    assert (acts.path, acts.name, acts.dtype, acts.shape, acts.chunks) == (
        "strata/acts.zarr", "acts", "float32", (100, 768), (100, 768))
    assert acts.logical_bytes == 100 * 768 * 4 == 307_200
    assert 0 < acts.stored_bytes < 307_200 // 100      # zeros compress
    assert acts.codecs == ("zstd",) and (acts.chunk_files, acts.chunk_objects) == (1, 1)
    # Ten equal raw chunks: ten chunk files, one object, stored once.
    assert tiles.logical_bytes == 307_200 and tiles.codecs == ()
    assert (tiles.chunk_files, tiles.chunk_objects, tiles.grid_chunks) == (10, 1, 10)
    assert tiles.stored_bytes == 10 * 768 * 4
    assert vault.specimen("spec").tensor_summaries() == [acts, tiles]

    out = run(vault, "show", "spec")
    line = next(ln for ln in out.splitlines() if ln.startswith("  strata/acts.zarr "))
    assert "float32" in line and "(100, 768)" in line and "zstd" in line
    assert "logical 300.0 KiB (307,200 B)" in line and f"stored {acts.stored_bytes} B" in line
    assert "1 chunk in 1 object" in line
    line = next(ln for ln in out.splitlines() if ln.startswith("  strata/tiles.zarr "))
    assert "chunks (10, 768)" in line and "raw" in line and "10 chunks in 1 object" in line

    data = json.loads(run(vault, "show", "spec", "--json"))
    t = {x["name"]: x for x in data["tensors"]}
    assert t["acts"]["logical_bytes"] == 307_200 and t["acts"]["shape"] == [100, 768]
    assert t["acts"]["stored_bytes"] == acts.stored_bytes and t["acts"]["error"] is None
    assert t["tiles"]["chunk_objects"] == 1 and t["tiles"]["chunk_files"] == 10


def test_zarr_v2_arrays_are_summarized_from_their_zarray(vault: Vault) -> None:
    s = new(vault, "spec")
    z = zarr.create_array(store=str(s.strata / "old.zarr"), shape=(5, 6), dtype="<i2",
                          chunks=(2, 6), zarr_format=2, compressors=None)
    z[...] = np.arange(30, dtype="i2").reshape(5, 6)
    vault.commit("spec")
    (old,) = vault.show("spec").tensors
    assert (old.zarr_format, old.dtype, old.shape, old.chunks) == (2, "int16", (5, 6), (2, 6))
    assert old.logical_bytes == 60 and old.grid_chunks == 3 and old.chunk_files == 3


def test_a_tensor_whose_metadata_is_lost_is_reported_not_fatal(vault: Vault) -> None:
    s = new(vault, "spec")
    s.write_tensors("acts", np.ones((4, 4), "f4"))
    vault.commit("spec")
    meta = vault.get("spec").tree["strata/acts.zarr/zarr.json"].digest
    vault.objects.path(meta).unlink()
    (t,) = vault.show("spec").tensors
    assert t.error and "missing" in t.error and t.logical_bytes is None
    assert "strata/acts.zarr  metadata unreadable: " in run(vault, "show", "spec")


def test_summaries_read_only_the_metadata_through_the_object_store(vault: Vault) -> None:
    s = new(vault, "spec")
    s.write_tensors("acts", np.ones((40, 4), "f4"), chunks=(10, 4), compressor=None)
    vault.commit("spec")
    tree = vault.get("spec").tree
    read = []

    class Recording:
        def get(self, digest, verify=True):
            read.append(digest)
            return vault.objects.get(digest, verify)

    (t,) = summarize_tree_tensors(Recording(), tree)  # type: ignore[arg-type]
    assert read == [tree["strata/acts.zarr/zarr.json"].digest]
    assert t.logical_bytes == 640 and t.chunk_files == 4


# -- diff --------------------------------------------------------------------------------------
PROV_A = {"python": {"version": "3.11.4", "executable": "/home/alice/envs/a/bin/python" + "x" * 60},
          "git": None, "packages": {"numpy": "1.26.4", "torch": "2.3.0"},
          "seeds": [{"seed": 1, "where": "torch"}], "command": ["protocol.py", "--lr", "0.1"]}
PROV_B = {"python": {"version": "3.12.1", "executable": "/home/alice/envs/b/bin/python" + "x" * 60},
          "git": {"commit": "9c1b" * 10, "dirty": True},
          "packages": {"numpy": "2.0.0", "torch": "2.3.0"},
          "seeds": [{"seed": 2, "where": "torch"}], "command": ["protocol.py", "--lr", "0.2"]}


def test_diff_compares_provenance_field_by_field(vault: Vault) -> None:
    for sid, prov, lr in (("a", PROV_A, 0.1), ("b", PROV_B, 0.2)):
        new(vault, sid).write_config({"lr": lr, "opt": {"name": "adam", "betas": [0.9, 0.99]}})
        vault.commit(sid, extra_metadata={"provenance": prov})
    d = vault.diff("a", "b")
    fields = {c.key: c for c in d.manifest_fields}
    assert set(fields) == {
        "metadata.provenance.python.version", "metadata.provenance.python.executable",
        "metadata.provenance.git", "metadata.provenance.git.commit",
        "metadata.provenance.git.dirty", "metadata.provenance.packages.numpy",
        "metadata.provenance.seeds[0].seed", "metadata.provenance.command",
    }
    assert (fields["metadata.provenance.git.commit"].only_in,
            fields["metadata.provenance.git.commit"].b) == ("b", "9c1b" * 10)
    assert fields["metadata.provenance.git"].only_in == "a"
    # The coarse form stays: a subtree on one side only is one change.
    assert {c.key for c in d.manifest} >= {"metadata.provenance.git"}
    assert [(c.key, c.a, c.b) for c in d.config_fields] == [("lr", 0.1, 0.2)]

    out = run(vault, "diff", "a", "b")
    assert "~ metadata.provenance.python.version: 3.11.4 -> 3.12.1" in out
    assert "~ metadata.provenance.packages.numpy: 1.26.4 -> 2.0.0" in out
    assert f"+ metadata.provenance.git.commit: {'9c1b' * 10}" in out
    assert "+ metadata.provenance.git.dirty: True" in out
    assert "- metadata.provenance.git: None" in out
    assert "~ metadata.provenance.seeds[0].seed: 1 -> 2" in out
    assert ("~ metadata.provenance.command: [protocol.py, --lr, 0.1] -> [protocol.py, --lr, 0.2]"
            in out)
    # A long value is shown whole, A's above B's, not cut in the middle.
    plain = click.unstyle(out)
    assert "~ metadata.provenance.python.executable:\n" in plain
    assert f"- {PROV_A['python']['executable']}\n" in plain
    assert f"+ {PROV_B['python']['executable']}\n" in plain
    assert "{" not in manifest_section(out)   # field by field: never a map
    assert "torch" not in manifest_section(out)  # equal values are not differences
    assert "~ lr: 0.1 -> 0.2" in out

    data = json.loads(run(vault, "diff", "a", "b", "--json"))
    keys = {c["key"] for c in data["manifest_fields"]}
    assert "metadata.provenance.git.commit" in keys and data["config_fields"][0]["key"] == "lr"
    assert {"manifest", "config", "files", "metrics", "identical"} <= set(data)


def manifest_section(out: str) -> str:
    text = click.unstyle(out)
    return text[text.index("manifest:"):text.index("config:")]


@pytest.mark.parametrize(("a", "b", "expected"), [
    ({"x": {"y": 1}}, {"x": {"y": 2}}, [("x.y", 1, 2, None)]),
    ({"x": None}, {"x": {"y": 1, "z": [1]}},
     [("x", None, None, "a"), ("x.y", None, 1, "b"), ("x.z", None, [1], "b")]),
    ({"s": [{"v": 1}] * 2}, {"s": [{"v": 1}] * 11},
     [(f"s[{i}].v", None, 1, "b") for i in range(2, 11)]),   # indexes in numeric order
    ({"n": math.nan}, {"n": math.nan}, []),
    ({"t": [1, 2]}, {"t": [1, 2]}, []),
])
def test_field_changes_go_down_to_every_leaf(a, b, expected) -> None:
    assert [(c.key, c.a, c.b, c.only_in) for c in field_changes(a, b)] == expected


def test_flatten_walks_maps_and_lists_of_maps() -> None:
    assert flatten({"a": {"b": 1, "c": []}, "s": [{"x": 1}], "t": [1, 2], "e": {}}) == [
        ("a.b", 1), ("a.c", []), ("s[0].x", 1), ("t", [1, 2]), ("e", {})]
    assert flatten({}) == []


def test_show_describes_a_retired_specimen_only_when_asked(vault, make_specimen) -> None:
    from cas_vault.errors import NotFoundError
    from cas_vault.retirement import retire

    make_specimen("base")
    vault.commit("base", message="m")
    make_specimen("kept", parents=["base"])
    vault.commit("kept", message="m")
    retire(vault, "base", "wrong data", purge=True)
    with pytest.raises(NotFoundError, match="retired"):
        vault.show("base")
    info = vault.show("base", retired=True, unique_bytes=False)
    assert info.specimen_id == "base" and info.unique_bytes is None
    assert vault.show("kept").parent_ids == ("base",)  # a retired parent keeps its name
    make_specimen("alone")
    vault.commit("alone", message="m")
    retire(vault, "alone", "a secret", purge=True)
    vault.gc(grace=0)
    # A live child keeps its retired parent's commit; nothing keeps a lone one's.
    assert vault.show("base", retired=True).specimen_id == "base"
    with pytest.raises(NotFoundError, match="reclaimed: nothing of it is left"):
        vault.show("alone", retired=True)
