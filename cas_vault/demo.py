"""``vault demo``: a complete first run for a new user, offline and in a few seconds.

The demo pours four example specimens into its vault, and commits are never removed, so it
only ever writes into a missing or empty directory, or into a demo vault: one holding the
marker file :data:`DEMO_MARKER`, which the demo writes before anything else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_replace
from .errors import InvalidInputError, VaultError
from .examples import example_dir
from .vault import Vault

__all__ = [
    "DEMO_ID", "DEMO_MARKER", "DemoResult", "SAE_ACTS_ID", "SAE_WEIGHTS_ID", "SPECTRO_ID",
    "check_demo_target", "run_demo", "run_protocol",
]

#: File in the root of a vault made by ``vault demo`` (docs/format.md, layout).
DEMO_MARKER = "demo.txt"
_MARKER_TEXT = (
    "This vault was created by `vault demo` and holds its example specimens.\n"
    "`vault demo` adds its examples only to a missing or empty directory or to a vault holding "
    "this file.\n"
)

DEMO_ID = "example_synthetic_demo"
SAE_ACTS_ID = "example_sae_activations"
SAE_WEIGHTS_ID = "example_sae_weights"
SPECTRO_ID = "example_sae_spectroscopy"


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
            f"  vault {arg} ui --open         # browse, compare and query it in a web page",
        ]
        if self.vault.refs.get(SPECTRO_ID) is not None:
            lines += [
                "",
                "SAE spectroscopy (a derived specimen; its parents are the activations and the SAE):",
                f"  vault {arg} log --graph",
                f"  vault {arg} spectrum {SPECTRO_ID} --input 0",
                f"  vault {arg} query \"{SPECTRO_QUERY}\"",
            ]
        return lines


#: Joins the derived per-input metrics with the manifests of the specimen's parents.
SPECTRO_QUERY = (
    "SELECT m.input, m.n_tokens, m.n_features, round(m.purity, 3) AS purity, "
    "round(m.fvu, 3) AS fvu, l.parent, p.model, p.metadata->>'layer' AS layer "
    "FROM metrics m JOIN lineage l ON l.child = m.specimen_id "
    "JOIN catalog p ON p.specimen_id = l.parent "
    f"WHERE m.specimen_id = '{SPECTRO_ID}' AND m.file = 'metrics' AND m.input < 3 "
    "ORDER BY m.input, l.parent"
)


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
    """Create (or reuse) a vault at ``path``, run the example specimens and commit them.

    The examples: a synthetic training run, synthetic activations with a BOS outlier, a seeded
    JumpReLU SAE, and the SAE spectroscopy of the activations, a derived specimen whose parents
    are the other two. Specimens committed by an earlier run are left as they are.

    Args:
        path: the demo vault directory.

    Returns:
        What was done.

    Raises:
        InvalidInputError: if ``path`` is neither missing, nor an empty directory, nor a demo
            vault (see :func:`check_demo_target`); nothing is written then.
        VaultError: if an example fails.
    """
    root = Path(path)
    check_demo_target(root)
    if not (root / DEMO_MARKER).is_file():
        # First, so a demo interrupted before `init` finished is still recognised as one.
        root.mkdir(parents=True, exist_ok=True)
        write_replace(root / DEMO_MARKER, _MARKER_TEXT.encode())
    vault = Vault.open_or_init(root)
    result = DemoResult(vault)
    for sid, kwargs, message in EXAMPLES:
        _run_example(vault, result, sid, kwargs, message)
    _run_spectroscopy(vault, result)
    return result


def check_demo_target(path: Path) -> None:
    """Refuse a demo target that is not missing, not an empty directory and not a demo vault.

    Args:
        path: where the demo would write.

    Raises:
        InvalidInputError: saying what is there and what to do instead.
    """
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise InvalidInputError(
            f"{path} exists and is not a directory; run `vault demo --vault DIR` with a new or "
            "empty directory"
        )
    if (path / DEMO_MARKER).is_file() or not any(path.iterdir()):
        return
    is_vault = (path / "vault.msgpack").exists()
    what = ("is a vault that `vault demo` did not create" if is_vault
            else "is not empty and is not a demo vault")
    older = (" (a demo vault made by an older cas-vault, which wrote no marker, can be deleted "
             "and made again)" if is_vault else "")
    raise InvalidInputError(
        f"{path} {what} (it has no {DEMO_MARKER}); the demo would add four example specimens "
        "to it, and commits are never removed. Run `vault demo` for ./demo-vault, or "
        f"`vault demo --vault DIR` with a new or empty directory{older}"
    )


#: (specimen id, Vault.new arguments, commit message) of each shipped example, in order.
EXAMPLES: tuple[tuple[str, dict, str], ...] = (
    (DEMO_ID, {"domain": "training", "method": "fine_tuning", "tags": ["synthetic", "demo"],
               "model": "synthetic-mlp", "metadata": {"source": "cas-vault demo"}},
     "Synthetic training curves and activations (demo)"),
    (SAE_ACTS_ID, {"domain": "interpretability", "method": "sae_analysis",
                   "tags": ["synthetic", "demo", "activations", "layer_0"], "model": "synthetic-lm",
                   "metadata": {"source": "cas-vault demo", "layer": 0}},
     "Synthetic activations with a BOS outlier (spectroscopy example)"),
    (SAE_WEIGHTS_ID, {"domain": "interpretability", "method": "sae_analysis",
                      "tags": ["synthetic", "demo", "sae", "jumprelu"], "model": "synthetic-lm",
                      "metadata": {"source": "cas-vault demo", "layer": 0}},
     "Seeded JumpReLU SAE on the example dictionary (spectroscopy example)"),
)


def _run_example(vault: Vault, result: DemoResult, sid: str, kwargs: dict, message: str) -> None:
    if vault.refs.get(sid) is not None:
        result.existing.append(sid)
        return
    wd = vault.specimen_dir(sid)
    if not wd.exists():
        vault.new(sid, **kwargs)
        src = example_dir(sid)
        for name in ("protocol.py", "field_notes.md"):
            shutil.copyfile(src / name, wd / name)
    run_protocol(wd)
    commit = vault.commit(sid, message=message)
    result.committed[sid] = commit.digest


def _run_spectroscopy(vault: Vault, result: DemoResult) -> None:
    # The engine refuses an existing id, so a second demo run keeps the first result.
    if vault.refs.get(SPECTRO_ID) is not None:
        result.existing.append(SPECTRO_ID)
        return
    from .engines.spectroscopy.analysis import SpectroscopyOptions

    out = vault.spectroscopy(
        SAE_ACTS_ID, sae=SAE_WEIGHTS_ID, new_id=SPECTRO_ID,
        options=SpectroscopyOptions(random_pairs=16, seed=0),
    )
    result.committed[SPECTRO_ID] = out.commit
