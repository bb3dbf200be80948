"""``vault demo``: a complete first run for a new user, offline and in a few seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import VaultError
from .examples import example_dir
from .vault import Vault

__all__ = ["DEMO_ID", "DemoResult", "run_demo", "run_protocol"]

DEMO_ID = "example_synthetic_demo"


@dataclass
class DemoResult:
    """What the demo did.

    Attributes:
        vault: the demo vault.
        committed: specimen id -> commit digest, for the specimens the demo sealed this time.
        existing: specimens that were already committed (a second run of the demo).
    """

    vault: Vault
    committed: dict[str, str] = field(default_factory=dict)
    existing: list[str] = field(default_factory=list)

    def report(self) -> list[str]:
        """Lines that tell the user what happened and what to try next."""
        root = self.vault.root
        arg = f"--vault {os.path.relpath(root) if not os.path.relpath(root).startswith('..') else root}"
        lines = [f"Demo vault: {root}"]
        for sid, digest in self.committed.items():
            info = self.vault.show(sid)
            lines.append(
                f"  committed {sid}  {digest[:16]}  ({len(info.commit.tree)} files, "
                f"{info.logical_bytes:,} bytes)"
            )
        for sid in self.existing:
            lines.append(f"  already committed: {sid}  (committed specimens never change)")
        lines += [
            "",
            "Try next:",
            f"  vault {arg} log",
            f"  vault {arg} show {DEMO_ID}",
            f"  vault {arg} checkout {DEMO_ID} /tmp/{DEMO_ID}",
        ]
        return lines


def run_protocol(specimen_dir: Path, timeout: float = 600.0) -> None:
    """Run ``specimen_dir/protocol.py`` in a fresh interpreter.

    Raises:
        VaultError: if it fails, with the tail of its output.
    """
    proc = subprocess.run(
        [sys.executable, "protocol.py"], cwd=specimen_dir, capture_output=True, text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise VaultError(
            f"{specimen_dir / 'protocol.py'} exited with status {proc.returncode}; "
            f"nothing was committed. Its last output:\n{tail}"
        )


def run_demo(path: Path) -> DemoResult:
    """Create (or reuse) a vault at ``path``, run the example specimen and commit it.

    Args:
        path: the demo vault directory.

    Returns:
        What was done.

    Raises:
        VaultError: if the example fails.
    """
    vault = Vault.open_or_init(path)
    result = DemoResult(vault)
    if vault.refs.get(DEMO_ID) is not None:
        result.existing.append(DEMO_ID)
        return result
    wd = vault.specimen_dir(DEMO_ID)
    if not wd.exists():
        vault.new(DEMO_ID, domain="training", method="fine_tuning", tags=["synthetic", "demo"],
                  model="synthetic-mlp", metadata={"source": "cas-vault demo"})
        src = example_dir(DEMO_ID)
        for name in ("protocol.py", "field_notes.md"):
            shutil.copyfile(src / name, wd / name)
    run_protocol(wd)
    commit = vault.commit(DEMO_ID, message="Synthetic training curves and activations (demo)")
    result.committed[DEMO_ID] = commit.digest
    return result
