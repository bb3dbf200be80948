"""What features do at commit time, handed to the seal pipeline instead of imported by it.

The seal pipeline (:func:`cas_vault.seal.commit`) runs three stages of hooks:

- ``prepare(specimen_dir, specimen_id, partial, extra_metadata) -> extra_metadata``: before the
  working directory is read, under its lock (the step logger assembles a crashed run's logs and
  refuses an unfinished one here);
- ``sealed(vault, specimen_id, digest, commit)``: after the ref exists, outside a batch (the
  catalog indexes the commit); must never raise, and an error never undoes the commit;
- ``batch_done(vault)``: when the outermost ``Repository.batch()`` ends after commits (the catalog
  indexes them at once).

Hooks are registered as ``"module:function"`` names and imported when first needed, the way
entry points are, so neither this module nor the pipeline imports a feature, and ``vault --help``
pays for none of them. ``cas_vault/__init__.py`` registers the built-in ones.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["STAGES", "hooks", "register"]

#: The stages, in the order a commit runs them.
STAGES = ("prepare", "sealed", "batch_done")

_names: dict[str, list[str]] = {stage: [] for stage in STAGES}
_resolved: dict[str, Callable[..., Any]] = {}
_lock = threading.Lock()


def register(stage: str, target: str) -> None:
    """Run ``target`` (``"package.module:function"``) at ``stage`` of every commit.

    Registering the same target twice keeps one. Hooks run in registration order.

    Args:
        stage: one of :data:`STAGES`.
        target: where the function lives.

    Raises:
        ValueError: for an unknown stage or a target without ``:``.
    """
    if stage not in _names:
        raise ValueError(f"unknown commit stage {stage!r}; one of {', '.join(STAGES)}")
    if ":" not in target:
        raise ValueError(f"commit hook {target!r} must be 'module:function'")
    with _lock:
        if target not in _names[stage]:
            _names[stage].append(target)


def hooks(stage: str) -> list[Callable[..., Any]]:
    """The functions registered for ``stage``, imported on first use."""
    with _lock:
        targets = list(_names[stage])
    out = []
    for target in targets:
        fn = _resolved.get(target)
        if fn is None:
            module, _, name = target.partition(":")
            fn = getattr(importlib.import_module(module), name)
            _resolved[target] = fn
        out.append(fn)
    return out
