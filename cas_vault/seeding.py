"""``seed_everything``: seed every random number generator a protocol uses, and remember it.

    from cas_vault import seed_everything
    seed_everything(1234)

Seeds Python's :mod:`random`, numpy's global generator and, when torch is installed, torch
(CPU and every CUDA device). Each call is recorded so the run's provenance can say which seeds
were set: in this process (:func:`recorded_seeds`) and, when the protocol runs under
``vault run``, in the JSON-lines file named by ``$CAS_VAULT_SEEDS_FILE`` that the runner reads
back after the protocol exits.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from typing import Any

__all__ = ["SEEDS_FILE_ENV", "read_seeds_file", "recorded_seeds", "seed_everything"]

#: Set by ``vault run``: the file each :func:`seed_everything` call appends one JSON line to.
SEEDS_FILE_ENV = "CAS_VAULT_SEEDS_FILE"

_RECORDED: list[dict[str, Any]] = []


def seed_everything(seed: int) -> dict[str, Any]:
    """Seed random, numpy and (if installed) torch with ``seed``, and record it.

    ``PYTHONHASHSEED`` is also set in the environment, which fixes hashing only for child
    processes started afterwards (the current interpreter's hash seed is fixed at start-up).

    Args:
        seed: a non-negative integer below 2**32 (numpy's limit).

    Returns:
        The record: ``{"seed": seed, "libraries": [...]}`` naming what was seeded.

    Raises:
        InvalidInputError: if ``seed`` is not an integer in [0, 2**32).
    """
    from .errors import InvalidInputError

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise InvalidInputError(f"seed must be an integer in [0, 2**32), not {seed!r}")
    libraries = ["random"]
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if importlib.util.find_spec("numpy") is not None:
        import numpy as np

        np.random.seed(seed)
        libraries.append("numpy")
    # torch is seeded only if it is installed: importing it is slow, but a protocol that has
    # it installed almost always uses it, and an unseeded torch is the usual culprit.
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.manual_seed(seed)  # also seeds every CUDA device
        libraries.append("torch")
    record = {"seed": seed, "libraries": libraries}
    _RECORDED.append(record)
    seeds_file = os.environ.get(SEEDS_FILE_ENV)
    if seeds_file:
        with open(seeds_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    return record


def recorded_seeds() -> list[dict[str, Any]]:
    """The seeds set by :func:`seed_everything` in this process, oldest first."""
    return [dict(r) for r in _RECORDED]


def read_seeds_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the records a protocol appended to a seeds file; a missing file means none.

    Lines that are not valid records (a protocol killed mid-write) are skipped.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("seed"), int):
            out.append({"seed": rec["seed"], "libraries": [str(x) for x in rec.get("libraries", [])]})
    return out
