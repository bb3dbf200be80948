"""Shared fixtures: every test gets its own vault in a temp directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=50, deadline=None)
settings.register_profile(
    "ci", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("nightly", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Never let a test find a developer's vault through the environment or the cwd.
    monkeypatch.delenv("CAS_VAULT_DIR", raising=False)
    monkeypatch.setenv("CAS_VAULT_AUTHOR", "tester")


@pytest.fixture
def vault(tmp_path: Path):
    """A fresh, empty vault."""
    from cas_vault import Vault

    return Vault.init(tmp_path / "vault")


@pytest.fixture
def make_specimen(vault):
    """Create a specimen with small metrics and config; returns its working directory."""
    from cas_vault import SpecimenStorage

    def make(specimen_id: str, *, steps: int = 10, seed: int = 0, parents=(), tags=("t",),
             domain: str = "training", method: str = "fine_tuning"):
        import numpy as np

        path = vault.new(specimen_id, domain=domain, method=method, tags=list(tags),
                         parents=list(parents))
        s = SpecimenStorage(path)
        rng = np.random.default_rng(seed)
        s.write_metrics({"step": np.arange(steps), "loss": rng.random(steps)})
        s.write_config({"seed": seed})
        return path

    return make
