"""`vault plot`: a real PNG, one labelled line per specimen, chosen by id or by SQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from cas_vault import SpecimenStorage, Vault
from cas_vault.cli import cli
from cas_vault.errors import InvalidInputError, NotFoundError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _make(vault: Vault, sid: str, scale: float, *, domain="training", method="fine_tuning",
          metrics=True) -> None:
    wd = vault.new(sid, domain=domain, method=method)
    if metrics:
        steps = np.arange(200)
        SpecimenStorage(wd).write_metrics({"step": steps, "loss": scale * np.exp(-steps / 50.0),
                                           "acc": 1 - np.exp(-steps / 40.0)})
    vault.commit(sid)


def _is_real_png(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 400
    assert float(img[..., :3].std()) > 0.02   # not a blank canvas
    return img


def test_plot_draws_one_labelled_line_per_specimen(vault: Vault, tmp_path: Path) -> None:
    _make(vault, "run_a", 1.0)
    _make(vault, "run_b", 2.0)
    out = tmp_path / "loss.png"
    result = vault.plot("loss", ["run_a", "run_b"], output=out)
    assert result.path == out and result.plotted == ["run_a", "run_b"]
    one = vault.plot("loss", ["run_a"], output=tmp_path / "one.png")
    img2, img1 = _is_real_png(out), _is_real_png(one.path)
    # A second line changes the picture (more coloured pixels than with one line).
    colored = lambda im: int((np.ptp(im[..., :3], axis=2) > 0.2).sum())  # noqa: E731
    assert colored(img2) > colored(img1)


def test_plot_refuses_what_it_cannot_draw(vault: Vault, tmp_path: Path) -> None:
    _make(vault, "run_a", 1.0)
    _make(vault, "empty", 1.0, metrics=False)
    with pytest.raises(NotFoundError, match="no metric 'nope'.*loss"):
        vault.plot("nope", ["run_a"], output=tmp_path / "x.png")
    with pytest.raises(NotFoundError, match="metrics.parquet"):
        vault.plot("loss", ["empty"], output=tmp_path / "x.png")
    with pytest.raises(InvalidInputError, match=".png"):
        vault.plot("loss", ["run_a"], output=tmp_path / "x.jpg")
    with pytest.raises(InvalidInputError, match="ids or --where"):
        vault.plot("loss", [], output=tmp_path / "x.png")
    with pytest.raises(NotFoundError):
        vault.plot("loss", ["missing"], output=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_where_selects_from_catalog(vault: Vault, tmp_path: Path) -> None:
    _make(vault, "t1", 1.0)
    _make(vault, "t2", 3.0)
    _make(vault, "other", 2.0, domain="interpretability", method="sae_analysis")
    _make(vault, "t_nometrics", 1.0, metrics=False)
    result = vault.plot("loss", where="domain = 'training'", output=tmp_path / "w.png")
    assert result.plotted == ["t1", "t2"]
    assert set(result.skipped) == {"t_nometrics"}
    _is_real_png(result.path)
    with pytest.raises(InvalidInputError):
        vault.plot("loss", where="domain = ", output=tmp_path / "bad.png")
    with pytest.raises(InvalidInputError, match="nothing to plot"):
        vault.plot("loss", where="domain = 'alignment'", output=tmp_path / "none.png")


def test_cli_plot(vault: Vault, tmp_path: Path) -> None:
    _make(vault, "run_a", 1.0)
    _make(vault, "run_b", 2.0)
    out = tmp_path / "acc.png"
    r = CliRunner().invoke(cli, ["--vault", str(vault.root), "plot", "acc", "run_a", "run_b",
                                 "-o", str(out), "--log-y"])
    assert r.exit_code == 0, r.output
    assert "run_a, run_b" in r.output
    _is_real_png(out)
    r = CliRunner().invoke(cli, ["--vault", str(vault.root), "plot", "acc", "run_a",
                                 "--where", "domain = 'training'", "-o", str(tmp_path / "w.png")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["--vault", str(vault.root), "plot", "nope", "run_a",
                                 "-o", str(tmp_path / "n.png")])
    assert r.exit_code == 2, r.output
