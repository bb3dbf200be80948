"""Hostile trees, damaged objects and hostile text: a clear message and the right exit code.

Each test drives the real CLI (``CliRunner`` or a subprocess) and asserts what a user sees:
exit 2 for bad input, 1 where a check found damage, 130 for Ctrl-C, never 70 (a bug) and never
a traceback, and nothing written when something is refused.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cas_vault import SpecimenStorage, Vault
from cas_vault.atomic import remove_tree
from cas_vault.cli import cli
from cas_vault.errors import IntegrityError, InvalidInputError
from cas_vault.workdir import MAX_TREE_DEPTH, iter_files


def run(vault: Vault, *args: str, color: bool = False):
    return CliRunner().invoke(cli, ["--vault", str(vault.root), *args], color=color)


def run_process(vault: Vault, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, as from a terminal (stdout strictly UTF-8 unless overridden)."""
    environ = {**os.environ, "PYTHONIOENCODING": "utf-8", **env}
    environ.pop("CAS_VAULT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "cas_vault", "--vault", str(vault.root), *args],
                          capture_output=True, text=True, errors="surrogateescape", env=environ,
                          timeout=300)


def assert_clean_error(output: str) -> None:
    assert "internal error" not in output and "Traceback" not in output, output


def state(vault: Vault) -> tuple[list[str], list[str], bytes]:
    """What a refused command must leave unchanged: refs, objects and the journal."""
    objects = sorted(p.name for p in vault.objects.root.rglob("*") if p.is_file())
    journal = vault.refs.journal.read_bytes() if vault.refs.journal.exists() else b""
    return sorted(vault.refs.all()), objects, journal


def nest(top: Path, levels: int, name: str = "d") -> Path:
    """``top/d/d/.../d`` (``levels`` directories), made without recursion."""
    path = top
    for _ in range(levels):
        path = path / name
        os.mkdir(path)
    return path


@pytest.fixture
def deep_vault(vault: Vault):
    """The vault, removed without recursion afterwards: pytest's own cleanup of old temp
    directories would fail on its 1,000-deep trees (RecursionError) in a later session."""
    yield vault
    if vault.root.exists():
        remove_tree(vault.root)


def flip_byte(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)  # objects are read-only; damage comes from outside cas-vault
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def committed(vault: Vault, sid: str, **kwargs) -> str:
    path = vault.new(sid, domain="training", method="fine_tuning", **kwargs)
    SpecimenStorage(path).write_metrics({"step": list(range(20)),
                                         "loss": [1.0 / (i + 1) for i in range(20)]})
    return vault.commit(sid, message=f"sealed {sid}").digest


# -- 1. deep working directories ---------------------------------------------------------------
def test_a_1000_deep_working_directory_breaks_neither_verify_nor_gc_and_is_refused_by_commit(
    deep_vault: Vault,
) -> None:
    vault = deep_vault
    committed(vault, "2024_01_01_ok")
    deep_wd = vault.new("2024_01_01_deep", domain="training", method="fine_tuning")
    (nest(deep_wd / "strata", 1000) / "x.bin").write_bytes(b"x")
    # The same depth after sealing, and in a temp directory an interrupted write left an hour
    # ago, which gc removes.
    nest(vault.specimen_dir("2024_01_01_ok") / "strata", 1000)
    temp = vault.specimens_dir / ".scaffold.1.0123456789abcdef0123456789abcdef.tmp"
    temp.mkdir()
    (nest(temp, 1000) / "y.bin").write_bytes(b"y")
    os.utime(temp, (1_000_000_000, 1_000_000_000))

    verified = run(vault, "verify")
    assert verified.exit_code == 0, verified.output
    assert "OK" in verified.output and "temp_file" in verified.output
    assert "more than 256 directory levels" in verified.output  # the sealed one, as information

    before = state(vault)
    refused = run(vault, "commit", "2024_01_01_deep")
    assert refused.exit_code == 2, refused.output
    assert_clean_error(refused.output)
    assert f"more than {MAX_TREE_DEPTH} directory levels" in refused.output
    assert "flatten the tree" in refused.output
    assert state(vault) == before

    dry = run(vault, "gc", "--dry-run", "--grace", "0")
    assert dry.exit_code == 0, dry.output
    assert "1 temp file(s)" in dry.output and temp.exists()
    done = run(vault, "gc", "--grace", "0")
    assert done.exit_code == 0, done.output
    assert not temp.exists()
    assert run(vault, "verify").exit_code == 0


def test_the_depth_bound_is_exact(deep_vault: Vault) -> None:
    top = deep_vault.root
    for name, levels in (("ok", MAX_TREE_DEPTH), ("deep", MAX_TREE_DEPTH + 1)):
        (top / name).mkdir()
        (nest(top / name, levels) / "f").write_bytes(b"")
    assert list(iter_files(top / "ok")) == ["/".join(["d"] * MAX_TREE_DEPTH + ["f"])]
    with pytest.raises(InvalidInputError, match="directory levels"):
        list(iter_files(top / "deep"))


# -- 2. file names that are not UTF-8 ----------------------------------------------------------
def _write_bytes_path(path: bytes, data: bytes = b"x") -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_non_utf8_file_names_are_refused_at_commit_and_reported_by_verify_and_gc(
    vault: Vault,
) -> None:
    committed(vault, "2024_01_01_ok")
    bad_wd = vault.new("2024_01_01_bad", domain="training", method="fine_tuning")
    _write_bytes_path(os.fsencode(bad_wd) + b"/strata/\xff.bin")

    before = state(vault)
    refused = run_process(vault, "commit", "2024_01_01_bad")
    assert refused.returncode == 2, refused.stderr
    assert_clean_error(refused.stderr)
    assert "strata/\\xff.bin" in refused.stderr and "not valid UTF-8" in refused.stderr
    assert state(vault) == before

    # Verify and gc meet such names everywhere: in a sealed working directory, as a temp file,
    # as a directory under specimens/.
    _write_bytes_path(os.fsencode(vault.specimen_dir("2024_01_01_ok")) + b"/strata/\xfe.bin")
    _write_bytes_path(os.fsencode(bad_wd) + b"/.\xfd.tmp")
    os.mkdir(os.fsencode(vault.specimens_dir) + b"/\xfc")
    verified = run_process(vault, "verify")
    assert verified.returncode == 0, verified.stderr
    assert_clean_error(verified.stderr)
    assert "strata/\\xfe.bin" in verified.stdout and ".\\xfd.tmp" in verified.stdout
    as_json = run_process(vault, "verify", "--json")
    assert as_json.returncode == 0, as_json.stderr
    files = {i["file"] for i in json.loads(as_json.stdout)["info"]}
    assert os.fsdecode(b"specimens/2024_01_01_bad/.\xfd.tmp") in files  # the exact name
    os.utime(os.fsencode(bad_wd) + b"/.\xfd.tmp", (1_000_000_000, 1_000_000_000))  # abandoned
    collected = run_process(vault, "gc", "--grace", "0", "--json")
    assert collected.returncode == 0, collected.stderr
    assert json.loads(collected.stdout)["removed"] == [
        os.fsdecode(b"specimens/2024_01_01_bad/.\xfd.tmp")]


# -- 3. SAE files that are not SAEs ------------------------------------------------------------
def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _sae(d: int = 8, d_sae: int = 16) -> dict[str, np.ndarray]:
    return {"W_enc": np.ones((d, d_sae), np.float32), "b_enc": np.zeros(d_sae, np.float32),
            "W_dec": np.ones((d_sae, d), np.float32), "b_dec": np.zeros(d, np.float32)}


def _zip(**members: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _huge_header() -> bytes:
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 100000), }"
    header = header.ljust(117) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def _bad_crc() -> bytes:
    data = bytearray(_npz(**_sae()))
    data[200] ^= 0xFF  # inside W_enc's data: the zip's CRC no longer matches
    return bytes(data)


_RANDOM = np.random.default_rng(7).bytes(4096)
GARBAGE_SAE_FILES = {
    "random.npz": (_RANDOM, "not a readable .npz file"),
    "random.safetensors": (_RANDOM, "not a readable safetensors file"),
    "empty.npz": (b"", "not a readable .npz file"),
    "zip_magic.npz": (b"PK\x03\x04" + _RANDOM, "not a readable .npz file"),
    "not_an_npz.npz": (_zip(**{"hello.txt": b"hi"}), "holds no SAE tensor"),
    "truncated.npz": (_npz(**_sae())[:700], "not a readable .npz file"),
    "bad_crc.npz": (_bad_crc(), "cannot be read"),
    "huge_header.npz": (_zip(**{"W_enc.npy": _huge_header()}), "truncated or damaged"),
    "pickled.npz": (_zip(**{"W_enc.npy": _npz(x=np.zeros(1))}), "cannot be read"),
    "missing_keys.npz": (_npz(W_enc=np.ones((8, 16), np.float32)), "lacks tensor(s) b_enc"),
    "wrong_shapes.npz": (_npz(**{**_sae(), "b_enc": np.zeros(3, np.float32)}), "has shape (3,)"),
}


@pytest.fixture
def activations(vault: Vault) -> Vault:
    wd = vault.new("acts", domain="interpretability", method="sae_analysis")
    x = np.random.default_rng(1).standard_normal((6, 4, 8)).astype(np.float32)
    SpecimenStorage(wd).write_tensors("activations", x)
    vault.commit("acts", message="activations")
    return vault


@pytest.mark.parametrize("name", sorted(GARBAGE_SAE_FILES))
def test_a_garbage_sae_file_is_refused_with_a_clear_message(
    activations: Vault, tmp_path: Path, name: str,
) -> None:
    data, message = GARBAGE_SAE_FILES[name]
    path = tmp_path / name
    path.write_bytes(data)
    before = state(activations)
    result = run(activations, "spectroscopy", "acts", "--sae-file", str(path))
    assert result.exit_code == 2, result.output
    assert_clean_error(result.output)
    assert message in result.output
    assert state(activations) == before
    assert not [p for p in activations.specimens_dir.iterdir() if p.name != "acts"]


def test_a_valid_sae_file_still_loads(activations: Vault, tmp_path: Path) -> None:
    path = tmp_path / "sae.npz"
    path.write_bytes(_npz(**_sae()))
    result = run(activations, "spectroscopy", "acts", "--sae-file", str(path), "--id", "spectro")
    assert result.exit_code == 0, result.output
    assert activations.refs.get("spectro") is not None


# -- 4. random pairs ---------------------------------------------------------------------------
@pytest.mark.parametrize("pairs, message", [
    ("100000000", "above the limit of 1,000,000"),
    ("31", "6 inputs make only 30 distinct ordered pairs"),
])
def test_random_pairs_beyond_what_the_analysis_needs_are_refused_before_any_work(
    activations: Vault, tmp_path: Path, pairs: str, message: str,
) -> None:
    path = tmp_path / "sae.npz"
    path.write_bytes(_npz(**_sae()))
    before = state(activations)
    result = run(activations, "spectroscopy", "acts", "--sae-file", str(path),
                 "--random-pairs", pairs)
    assert result.exit_code == 2, result.output
    assert_clean_error(result.output)
    assert message in result.output
    assert state(activations) == before
    # The largest count allowed is still accepted.
    done = run(activations, "spectroscopy", "acts", "--sae-file", str(path), "--random-pairs",
               "30", "--id", "pairs30")
    assert done.exit_code == 0, done.output
    assert activations.specimen("pairs30").read_metrics("drift").height == 30


# -- 5. plots over damaged objects -------------------------------------------------------------
def test_plot_over_an_altered_metrics_object_reports_the_damage(
    vault: Vault, tmp_path: Path,
) -> None:
    committed(vault, "2024_01_01_m")
    entry = vault.get("2024_01_01_m").tree["strata/metrics.parquet"]
    flip_byte(vault.objects.path(entry.digest), 4)  # Parquet's footer no longer parses
    out = tmp_path / "loss.png"
    result = run(vault, "plot", "loss", "2024_01_01_m", "-o", str(out))
    assert result.exit_code == 1, result.output
    assert_clean_error(result.output)
    for part in ("2024_01_01_m", "strata/metrics.parquet", entry.digest, "`vault verify"):
        assert part in result.output
    assert not out.exists()


# -- 6. Ctrl-C after the ref exists ------------------------------------------------------------
_INTERRUPTING_DRIVER = """
import importlib
import sys
from cas_vault.cli.main import main

module, _, owner = {where!r}.partition(":")
target = importlib.import_module(module)
if owner:
    target = getattr(target, owner)

def interrupted(*args, **kwargs):
    raise KeyboardInterrupt  # what Ctrl-C raises, at a known point of the commit

setattr(target, {name!r}, interrupted)
main(sys.argv[1:])
"""


def _interrupted_commit(vault: Vault, sid: str, where: str, name: str):
    driver = _INTERRUPTING_DRIVER.format(where=where, name=name)
    return subprocess.run([sys.executable, "-c", driver, "--vault", str(vault.root), "commit", sid],
                          capture_output=True, text=True, timeout=300)


def test_ctrl_c_after_the_ref_exists_says_the_specimen_is_sealed(vault: Vault) -> None:
    vault.new("2024_01_01_c", domain="training", method="fine_tuning")
    # The catalog update runs once the ref exists: interrupt it there.
    proc = _interrupted_commit(vault, "2024_01_01_c", "cas_vault.catalog", "after_commit")
    assert proc.returncode == 130, proc.stderr
    digest = vault.refs.get("2024_01_01_c")
    assert digest is not None
    assert f"interrupted after 2024_01_01_c was sealed as {digest}" in proc.stderr
    assert "`vault index` catches up" in proc.stderr
    assert "nothing half-written" not in proc.stderr
    assert run(vault, "verify", "2024_01_01_c").exit_code == 0


def test_ctrl_c_before_the_ref_exists_says_nothing_was_kept(vault: Vault) -> None:
    vault.new("2024_01_01_c", domain="training", method="fine_tuning")
    proc = _interrupted_commit(vault, "2024_01_01_c", "cas_vault.refs:RefStore", "create")
    assert proc.returncode == 130, proc.stderr
    assert "interrupted; nothing half-written was kept" in proc.stderr
    assert vault.refs.get("2024_01_01_c") is None


# -- 7. one damaged commit in the log ----------------------------------------------------------
@pytest.mark.parametrize("damage, kind", [("altered", "corrupt_object"),
                                          ("deleted", "missing_commit")])
def test_one_damaged_commit_does_not_hide_the_others_from_log(
    vault: Vault, damage: str, kind: str,
) -> None:
    ids = ("2024_01_01_a", "2024_01_01_b", "2024_01_01_c")
    digests = {sid: committed(vault, sid) for sid in ids}
    bad = digests["2024_01_01_b"]
    path = vault.objects.path(bad)
    if damage == "altered":
        flip_byte(path, 10)
    else:
        path.unlink()

    plain = run(vault, "log")
    assert plain.exit_code == 1, plain.output
    assert_clean_error(plain.output)
    assert "Specimen: 2024_01_01_a" in plain.output and "Specimen: 2024_01_01_c" in plain.output
    assert f"commit {bad}  DAMAGED ({kind})" in plain.output
    assert "`vault verify 2024_01_01_b`" in plain.output

    as_json = run(vault, "log", "--json")
    assert as_json.exit_code == 1, as_json.output
    entries = json.loads(as_json.stdout)
    assert [e["specimen_id"] for e in entries] == ["2024_01_01_c", "2024_01_01_a", "2024_01_01_b"]
    assert [e["error"] is None for e in entries] == [True, True, False]
    damaged = entries[-1]
    assert damaged["commit"] == bad and damaged["error_kind"] == kind
    assert damaged["created"] is None and "vault verify" in damaged["error"]
    assert "could not be read" in as_json.stderr

    found = []
    assert [e.specimen_id for e in vault.log(on_damage=found.append)] == ["2024_01_01_c",
                                                                          "2024_01_01_a"]
    assert [(f.kind, f.specimen, f.digest) for f in found] == [(kind, "2024_01_01_b", bad)]
    with pytest.raises(IntegrityError, match="2024_01_01_b"):
        vault.log()


# -- 8. control characters in user text --------------------------------------------------------
HOSTILE = "ok \x1b[31mred\r over\x07 bell \x9b2J"


def test_control_characters_in_user_text_are_escaped_in_human_output(vault: Vault) -> None:
    for sid, note in (("2024_01_01_a", "plain"), ("2024_01_01_b", HOSTILE)):
        wd = vault.new(sid, domain="training", method="fine_tuning", model=f"m{note}",
                       metadata={"note": note, f"key{note}": 1})
        SpecimenStorage(wd).write_metrics({"step": [0, 1], f"loss{note}": [1.0, 0.5]})
        vault.commit(sid, message=f"message {note}")

    for args in (["log"], ["show", "2024_01_01_b"], ["diff", "2024_01_01_a", "2024_01_01_b"],
                 ["log", "--graph"]):
        result = run(vault, *args, color=True)  # as on a terminal: click strips nothing
        assert result.exit_code == 0, result.output
        out = result.output  # cas-vault's own colours stay; the user's escapes must not
        assert "\x1b[31mred" not in out and "\r" not in out and "\x07" not in out, (args, out)
        assert "\x9b" not in out, args
        assert "\\x1b[31mred\\r over\\x07 bell \\x9b2J" in out, (args, out)

    # JSON stays exact.
    shown = json.loads(run(vault, "show", "2024_01_01_b", "--json").output)
    assert shown["message"] == f"message {HOSTILE}"
    assert shown["manifest"]["metadata"]["note"] == HOSTILE


# -- 9. a deleted ref ----------------------------------------------------------------------------
def test_show_of_a_deleted_ref_gives_the_repair_not_commit(vault: Vault) -> None:
    digest = committed(vault, "2024_01_01_r")
    ref = vault.refs.refs_dir / "2024_01_01_r"
    ref.unlink()

    for args in (["show", "2024_01_01_r"], ["log", "2024_01_01_r"]):
        result = run(vault, *args)
        assert result.exit_code == 1, result.output
        assert_clean_error(result.output)
        assert "refs/2024_01_01_r is missing" in result.output
        assert digest in result.output and "chmod 0444" in result.output
        assert "seal it with" not in result.output
    listed = run(vault, "log")
    assert listed.exit_code == 1 and "DAMAGED (missing_ref)" in listed.output

    # The repair the message (and docs/integrity.md) gives makes the vault whole again.
    ref.write_text(f"{digest}\n")
    os.chmod(ref, 0o444)
    assert run(vault, "verify").exit_code == 0
    assert run(vault, "show", "2024_01_01_r").exit_code == 0
