"""`vault diff`: manifest, config, files and per-metric summaries between two specimens."""

from __future__ import annotations

import json
import math

import numpy as np
from click.testing import CliRunner

from cas_vault import SpecimenStorage, Vault
from cas_vault.cli import cli


def _make(vault: Vault, sid: str, loss: list[float], config: dict, *, tags=("a",), extra=None,
          model=None):
    wd = vault.new(sid, domain="training", method="fine_tuning", tags=list(tags), model=model)
    s = SpecimenStorage(wd)
    s.write_metrics({"step": list(range(len(loss))), "loss": loss,
                     "acc": [float(i) for i in range(len(loss))], "name": ["x"] * len(loss)})
    s.write_config(config)
    if extra:
        (wd / "strata" / extra).write_text("extra")
    vault.commit(sid, extra_metadata={"provenance": {"packages": {"numpy": "1.26.0", "torch": "2.1"}}}
                 if sid == "a" else {"provenance": {"packages": {"numpy": "2.0.0", "torch": "2.1"}}})


def test_diff_reports_manifest_config_files_and_metrics(vault: Vault) -> None:
    _make(vault, "a", [1.0, 0.5, 0.7], {"lr": 0.1, "opt": {"name": "adam", "beta": 0.9}},
          extra="only_a.txt")
    _make(vault, "b", [2.0, 0.2, 0.4, 0.3], {"lr": 0.01, "opt": {"name": "adam"}, "wd": 0.0},
          tags=("a", "b"), extra="only_b.txt", model="gpt2")
    d = vault.diff("a", "b")
    m = {c.key: c for c in d.manifest}
    assert m["metadata.provenance.packages.numpy"].a == "1.26.0"
    assert m["metadata.provenance.packages.numpy"].b == "2.0.0"
    assert "metadata.provenance.packages.torch" not in m   # same on both sides
    assert m["tags"].a == ["a"] and m["tags"].b == ["a", "b"]
    assert m["model"].a is None and m["model"].b == "gpt2" and m["model"].only_in is None
    c = {x.key: x for x in d.config}
    assert (c["lr"].a, c["lr"].b) == (0.1, 0.01)
    assert c["opt.beta"].only_in == "a" and c["wd"].only_in == "b"
    assert "opt.name" not in c
    assert d.added == ["strata/only_b.txt"] and d.removed == ["strata/only_a.txt"]
    # protocol.py and field_notes.md templates name the specimen, so they differ too.
    assert set(d.changed) == {"manifest.msgpack", "strata/metrics.parquet", "strata/config.msgpack",
                              "field_notes.md", "protocol.py"}
    s = {x.metric: x for x in d.metrics}
    assert set(s) == {"loss", "acc"}   # numeric columns in both; not step, not strings
    assert s["loss"].a == {"final": 0.7, "min": 0.5, "max": 1.0}
    assert s["loss"].b == {"final": 0.3, "min": 0.2, "max": 2.0}
    assert s["loss"].changed and s["acc"].changed
    assert not d.identical


def test_diff_identical_and_cli(vault: Vault) -> None:
    _make(vault, "a", [1.0, 0.5], {"lr": 0.1})
    wd = vault.new("a2", domain="training", method="fine_tuning", tags=["a"])
    for rel, e in vault.get("a").tree.items():
        if rel.startswith("strata/"):
            (wd / rel).write_bytes(vault.specimen("a").read_bytes(rel))
    vault.commit("a2", extra_metadata={"provenance": {"packages": {"numpy": "1.26.0", "torch": "2.1"}}})
    d = vault.diff("a", "a2")
    assert [c.key for c in d.manifest] == []
    assert d.config == [] and d.added == d.removed == []
    assert all(not m.changed for m in d.metrics)
    _make(vault, "b", [3.0, float("nan")], {"lr": 0.2})
    runner = CliRunner()
    r = runner.invoke(cli, ["--vault", str(vault.root), "diff", "a", "b"])
    assert r.exit_code == 0, r.output
    assert "metadata.provenance.packages.numpy: 1.26.0 -> 2.0.0" in r.output
    assert "lr: 0.1 -> 0.2" in r.output
    assert "~ loss  final 0.5 -> nan  min 0.5 -> 3  max 1 -> 3" in r.output
    r = runner.invoke(cli, ["--vault", str(vault.root), "diff", "a", "b", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    loss = next(m for m in data["metrics"] if m["metric"] == "loss")
    # NaN is a value (a diverged run): it is the final one; min/max ignore it.
    assert math.isnan(loss["b"]["final"]) and loss["b"]["min"] == loss["b"]["max"] == 3.0
    assert data["files"]["changed"] and data["identical"] is False
    r = runner.invoke(cli, ["--vault", str(vault.root), "diff", "a", "missing"])
    assert r.exit_code == 2, r.output
    assert np.isfinite(loss["a"]["final"])
