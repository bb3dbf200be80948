"""The core CLI: outputs and exit codes (0 ok, 1 problems found, 2 bad input or usage)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from cas_vault import Vault
from cas_vault.repository import Repository
from cas_vault.cli import cli


def run(*args: str, **kw):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, **kw)


def test_every_command_has_help() -> None:
    for name, cmd in cli.commands.items():
        result = run(name, "--help")
        assert result.exit_code == 0, result.output
        assert cmd.help and "Usage" in result.output


def test_init_new_commit_log_show(tmp_path: Path) -> None:
    v = str(tmp_path / "v")
    r = run("init", v)
    assert r.exit_code == 0, r.output
    r = run("--vault", v, "new", "2024_12_19_a", "--domain", "interpretability",
            "--method", "sae_analysis", "--tags", "gpt2,layer_12", "--model", "gpt2")
    assert r.exit_code == 0, r.output
    r = run("commit", "2024_12_19_a", "-m", "first", "--vault", v)
    assert r.exit_code == 0, r.output
    digest = r.output.strip()
    assert Vault.open(v).resolve("2024_12_19_a") == digest
    r = run("--vault", v, "log", "--json")
    assert r.exit_code == 0, r.output
    entries = json.loads(r.output)
    assert entries[0]["commit"] == digest and entries[0]["tags"] == ["gpt2", "layer_12"]
    r = run("--vault", v, "show", "2024_12_19_a", "--json")
    shown = json.loads(r.output)
    assert shown["commit"] == digest and shown["manifest"]["domain"] == "interpretability"
    assert {f["path"] for f in shown["files"]} >= {"protocol.py", "manifest.msgpack"}
    r = run("--vault", v, "show", "2024_12_19_a")
    assert digest in r.output and "protocol.py" in r.output
    r = run("--vault", v, "log")
    assert "2024_12_19_a" in r.output and "first" in r.output


def test_errors_exit_2_with_a_message_and_no_traceback(tmp_path: Path) -> None:
    v = str(tmp_path / "v")
    run("init", v)
    cases = [
        ["--vault", v, "new", "../x", "--domain", "training", "--method", "fine_tuning"],
        ["--vault", v, "new", "x", "--domain", "benchmarking", "--method", "fine_tuning"],
        ["--vault", v, "commit", "missing"],
        ["--vault", v, "show", "missing"],
        ["--vault", str(tmp_path / "nope"), "log"],
        ["init", v],
        ["new", "x"],  # usage error: missing options
    ]
    for args in cases:
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output
        assert "error" in r.output.lower() or "Error" in r.output


def test_taxonomy_error_lists_valid_methods(tmp_path: Path) -> None:
    v = str(tmp_path / "v")
    run("init", v)
    r = CliRunner().invoke(cli, ["--vault", v, "new", "x", "--domain", "training", "--method", "sae_analysis"])
    assert r.exit_code == 2
    assert "fine_tuning, ablation_study" in r.output


def test_second_commit_names_existing_commit(tmp_path: Path) -> None:
    v = str(tmp_path / "v")
    run("init", v)
    run("--vault", v, "new", "a", "--domain", "training", "--method", "fine_tuning")
    digest = run("--vault", v, "commit", "a").output.strip()
    r = CliRunner().invoke(cli, ["--vault", v, "commit", "a"])
    assert r.exit_code == 2 and digest in r.output


def test_checkout(tmp_path: Path) -> None:
    v = str(tmp_path / "v")
    run("init", v)
    run("--vault", v, "new", "a", "--domain", "training", "--method", "fine_tuning")
    run("--vault", v, "commit", "a")
    r = run("--vault", v, "checkout", "a", str(tmp_path / "co"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "co" / "protocol.py").is_file()


def test_demo_end_to_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = run("demo")
    assert r.exit_code == 0, r.output
    assert "example_synthetic_demo" in r.output and "vault" in r.output
    vault = Vault.open(tmp_path / "demo-vault")
    spec = vault.specimen("example_synthetic_demo")
    df = spec.read_metrics()
    assert df.columns == ["step", "loss", "accuracy", "entropy"] and df.height == 100
    # Running it again changes nothing and says so.
    r = run("demo")
    assert r.exit_code == 0 and "already committed" in r.output


def test_module_entry_point_and_second_name() -> None:
    out = subprocess.run([sys.executable, "-m", "cas_vault", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage" in out.stdout


def test_help_does_not_import_heavy_libraries() -> None:
    code = ("import sys; from cas_vault.cli import cli\n"
            "heavy = [m for m in ('numpy','polars','duckdb','zarr','pyarrow') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_an_internal_error_exits_70_not_1(tmp_path: Path, monkeypatch) -> None:
    # Exit 1 means "a check found problems"; a bug must not be mistaken for a verify finding.
    v = str(tmp_path / "v")
    run("init", v)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(Repository, "log", broken)  # the CLI opens the core repository
    monkeypatch.delenv("CAS_VAULT_DEBUG", raising=False)
    r = CliRunner().invoke(cli, ["--vault", v, "log"])
    assert r.exit_code == 70, r.output
    assert "internal error: RuntimeError: boom" in r.output
    assert "Traceback" not in r.output


def test_a_closed_pipe_ends_quietly_as_unix_tools_do(tmp_path: Path) -> None:
    # `vault log | head -1`: the reader leaves; no message, the status a SIGPIPE death gives.
    v = Vault.init(tmp_path / "v")
    for i in range(3):
        v.new(f"2024_01_0{i}_x", domain="training", method="fine_tuning")
        v.commit(f"2024_01_0{i}_x", message="m")
    proc = subprocess.Popen([sys.executable, "-m", "cas_vault", "--vault", str(v.root), "log"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # closed before the first write: every write meets EPIPE
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err == b""
