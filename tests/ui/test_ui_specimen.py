"""The specimen page in a real browser: what `vault show` shows, lineage, runs, plots, safety.

Every page visited is saved as a screenshot; the plots are checked through plotly's own
``data`` on the plot elements, the tables and links through the DOM.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from starlette.testclient import TestClient

from cas_vault import SpecimenStorage, Vault
from cas_vault.retirement import retire
from cas_vault.ui.app import create_app
from cas_vault.units import human_bytes

from ui_browser import wait_for

XSS_SCRIPT = "<script>window.pwned=1</script>"
XSS_IMG = '<img src=x onerror="window.pwned=1">'
#: Tags plotly itself renders in titles and names.
PLOTLY_TAGS = '<b>bold</b> <a href="javascript:window.pwned=1">link</a>'


# -- helpers -----------------------------------------------------------------------------------
def css(browser: Any, selector: str) -> list[Any]:
    return browser.find_elements(By.CSS_SELECTOR, selector)


def text_of(browser: Any, selector: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, selector).text


def open_page(browser: Any, url: str) -> None:
    """Load a specimen page and wait until its header is there."""
    browser.get(url)
    wait_for(browser, lambda: css(browser, "#specimen-id"))


def plot_data(browser: Any, element_id: str) -> Any:
    """The traces plotly drew into ``element_id``, once its SVG is there (else None)."""
    return browser.execute_script(
        "const d = document.getElementById(arguments[0]);"
        "if (!d || !d.data || !d.querySelector('svg.main-svg')) return null;"
        "return d.data.map(t => ({type: t.type, x: Array.from(t.x || []),"
        " y: Array.from(t.y || []), z: t.z ? t.z.map(r => Array.from(r)) : null}));",
        element_id)


def drawn(browser: Any, selector: str) -> int:
    """How many elements matching ``selector`` hold a plot plotly has drawn."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".filter(d => d.data && d.querySelector('svg.main-svg')).length;", selector)


def wait_plot(browser: Any, element_id: str) -> list[dict[str, Any]]:
    return wait_for(browser, lambda: plot_data(browser, element_id))


def client(vault: Vault) -> TestClient:
    return TestClient(create_app(vault), base_url="http://127.0.0.1")


def scroll_to(browser: Any, selector: str) -> None:
    """Bring an element into view, so the screenshot shows it."""
    browser.execute_script("document.querySelector(arguments[0]).scrollIntoView()", selector)


def no_pwn(browser: Any) -> None:
    assert browser.execute_script("return window.pwned") is None


def committed(vault: Vault, sid: str, *, message: str = "m", parents=(), tags=("t",),
              metadata: dict | None = None, model: str | None = None,
              write=None) -> str:
    """Make, fill (``write(storage, workdir)``) and commit a specimen; returns its digest."""
    wd = vault.new(sid, domain="training", method="fine_tuning", tags=list(tags),
                   parents=list(parents), metadata=metadata or {}, model=model)
    if write is not None:
        write(SpecimenStorage(wd), wd)
    return vault.commit(sid, message=message).digest


# -- a plain specimen ---------------------------------------------------------------------------
def test_plain_specimen_shows_header_manifest_config_files_and_curves(vault, serve, browser, shot):
    loss = np.linspace(2.0, 0.5, 25)

    def write(s: SpecimenStorage, wd: Path) -> None:
        s.write_metrics({"step": np.arange(25), "loss": loss, "acc": np.linspace(0, 1, 25)})
        s.write_config({"lr": 0.003, "optimizer": {"name": "adam", "betas": [0.9, 0.999]}})
        s.write_tensors("w", np.arange(12, dtype=np.float32).reshape(3, 4))
        (wd / "data.bin").write_bytes(b"x" * 3000)

    digest = committed(vault, "2024_01_01_plain", message="first try", tags=("gpt2", "layer_3"),
                       model="tiny-mlp", write=write,
                       metadata={"layer": 3, "dataset": {"name": "owt", "splits": ["a", "b"]}})
    vault.label("best", "2024_01_01_plain")
    url = serve(vault)
    open_page(browser, url + "/specimen/2024_01_01_plain")
    commit = vault.get("2024_01_01_plain")

    assert text_of(browser, "#specimen-id") == "2024_01_01_plain"
    assert text_of(browser, "#commit-digest") == digest
    assert text_of(browser, "#author") == "tester"
    assert text_of(browser, "#message") == "first try"
    assert text_of(browser, "#created").startswith(commit.created[:10])
    assert [e.text for e in css(browser, "#labels .label")] == ["@best"]
    assert text_of(browser, "#domain") == "training"
    assert text_of(browser, "#method") == "fine_tuning"
    assert text_of(browser, "#model") == "tiny-mlp"
    assert [e.text for e in css(browser, "#tags .tag")] == ["gpt2", "layer_3"]
    # The new bytes come from the catalog, and are the figure `vault show` computes.
    shown = vault.show("2024_01_01_plain")
    assert text_of(browser, "#sizes") == (
        f"{human_bytes(shown.logical_bytes)} in {len(commit.tree)} files; "
        f"{human_bytes(shown.unique_bytes)} new to the vault")
    metadata = text_of(browser, "#metadata")
    for word in ("layer", "3", "dataset", "name", "owt", "splits", "a, b"):
        assert word in metadata
    config = text_of(browser, "#config")
    for word in ("lr", "0.003", "optimizer", "adam", "0.9, 0.999"):
        assert word in config
    assert css(browser, "#no-annotations")
    assert text_of(browser, "#compare-link") and \
        css(browser, "#compare-link")[0].get_attribute("href").endswith(
            "/compare?ids=2024_01_01_plain")

    # Files: every one, with the commit's size, digest and kind.
    rows = css(browser, "#file-table tbody tr")
    assert len(rows) == len(commit.tree)
    for row in rows:
        path = row.find_element(By.CSS_SELECTOR, ".path").text
        entry = commit.tree[path]
        size = row.find_element(By.CSS_SELECTOR, ".size")
        assert size.get_attribute("data-size") == str(entry.size)
        assert size.text == human_bytes(entry.size)
        dig = row.find_element(By.CSS_SELECTOR, ".digest")
        assert dig.get_attribute("title") == entry.digest and entry.digest.startswith(dig.text)
        assert row.find_element(By.CSS_SELECTOR, ".kind").text == entry.kind
    assert "data.bin" in [r.find_element(By.CSS_SELECTOR, ".path").text for r in rows]

    # Tensors: the table row and the heatmap of the one 2-D tensor.
    assert "3 × 4" in text_of(browser, "#tensor-table")
    heat = wait_plot(browser, "tensor-plot")
    assert heat[0]["type"] == "heatmap"
    assert heat[0]["z"] == np.arange(12, dtype=np.float64).reshape(3, 4).tolist()

    # One small plot per numeric metric column, every point, against step.
    wait_for(browser, lambda: drawn(browser, ".metric-plot") == 2)
    plots = {e.get_attribute("data-column"): e.get_attribute("id") for e in css(browser, ".metric-plot")}
    assert set(plots) == {"loss", "acc"}
    data = wait_plot(browser, plots["loss"])
    assert data[0]["x"] == list(range(25))
    np.testing.assert_allclose(data[0]["y"], loss)
    shot("plain")


def test_many_files_are_cut_at_200_with_a_link_to_all(vault, serve, browser, shot):
    def write(s: SpecimenStorage, wd: Path) -> None:
        (wd / "many").mkdir()
        for i in range(230):
            (wd / "many" / f"f{i:03d}.txt").write_text(str(i))

    committed(vault, "many_files", write=write)
    total = len(vault.get("many_files").tree)
    url = serve(vault)
    open_page(browser, url + "/specimen/many_files")
    assert len(css(browser, "#file-table tbody tr")) == 200
    assert f"{total - 200} more files" in text_of(browser, "#files-more")
    scroll_to(browser, "#files-more")
    shot("cut")
    css(browser, "#files-all")[0].click()
    wait_for(browser, lambda: len(css(browser, "#file-table tbody tr")) == total)
    assert not css(browser, "#files-more")
    scroll_to(browser, "#files")
    shot("all")


# -- provenance ------------------------------------------------------------------------------
PROTOCOL = '''
from pathlib import Path
from cas_vault import SpecimenStorage
SpecimenStorage(Path(__file__).parent).write_config({"lr": 0.1})
print("protocol done")
'''


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "-C", str(repo), *args],
                   check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_provenance_of_a_run_from_a_dirty_checkout(vault, serve, browser, shot, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    _git(code, "init", "-q")
    (code / "train.py").write_text("lr = 0.1\n")
    _git(code, "add", ".")
    _git(code, "commit", "-qm", "init")
    (code / "train.py").write_text("lr = 0.3\nwarmup = True\n")
    wd = vault.new("prov", domain="training", method="fine_tuning")
    (wd / "protocol.py").write_text(PROTOCOL)
    vault.run("prov", code_dir=code)
    prov = vault.get("prov").manifest.metadata["provenance"]

    url = serve(vault)
    open_page(browser, url + "/specimen/prov")
    summary = text_of(browser, "#provenance-summary")
    assert prov["python"]["version"] in summary
    assert prov["hostname"] in summary
    assert prov["git"]["commit"] in summary
    assert "git dirty true" in summary
    assert "exit status 0" in summary
    assert "wall time" in summary and "protocol.py" in summary
    diff = text_of(browser, "#git-diff")
    assert "+warmup = True" in diff and "-lr = 0.1" in diff
    assert css(browser, "#git-diff")[0].tag_name == "pre"
    # The provenance is its own section, not repeated in the manifest's metadata.
    assert "provenance" not in text_of(browser, "#metadata")
    css(browser, "#provenance-details summary")[0].click()
    everything = css(browser, "#provenance-all")[0].get_attribute("textContent")
    assert "packages" in everything and "numpy" in everything
    css(browser, "#run-log-details summary")[0].click()
    assert "protocol done" in text_of(browser, "#run-log")
    scroll_to(browser, "#provenance")
    shot("provenance")


# -- notes, annotations ------------------------------------------------------------------------
NOTE = ("**bold words** and `code`\n\n" + XSS_SCRIPT + "\n\n" + XSS_IMG +
        "\n\n[click me](javascript:window.pwned=1)\n")


def test_notes_and_annotations_are_markdown_that_cannot_run(vault, serve, browser, shot):
    def write(s: SpecimenStorage, wd: Path) -> None:
        (wd / "field_notes.md").write_text("# My notes\n\n" + NOTE)

    committed(vault, "noted", write=write)
    vault.annotate("noted", "after sealing: " + NOTE)
    url = serve(vault)
    open_page(browser, url + "/specimen/noted")
    for box in ("#field-notes", ".annotation-text"):
        root = css(browser, box)[0]
        assert root.find_element(By.CSS_SELECTOR, "strong").text == "bold words"
        assert root.find_element(By.CSS_SELECTOR, "code").text == "code"
        assert XSS_SCRIPT in root.text and XSS_IMG in root.text  # shown as text
        assert not root.find_elements(By.CSS_SELECTOR, "script, img")
        # The javascript: link is not a link.
        hrefs = [a.get_attribute("href") or "" for a in root.find_elements(By.CSS_SELECTOR, "a")]
        assert not any(h.startswith("javascript") for h in hrefs)
    assert text_of(browser, "#field-notes h1") == "My notes"
    assert text_of(browser, ".annotation-author") == "tester"
    no_pwn(browser)
    scroll_to(browser, "#notes")
    shot("notes")


# -- lineage -----------------------------------------------------------------------------------
def test_lineage_graph_links_parents_and_children(vault, serve, browser, shot):
    committed(vault, "grand")
    committed(vault, "parent", parents=["grand"])
    committed(vault, "other_parent")
    committed(vault, "me", parents=["parent", "other_parent"])
    committed(vault, "child", parents=["me"])
    committed(vault, "grandchild", parents=["child"])
    committed(vault, "unrelated")
    url = serve(vault)
    open_page(browser, url + "/specimen/me")

    nodes = {e.get_attribute("data-specimen") for e in css(browser, "#lineage-graph a.node-link")}
    assert nodes == {"grand", "parent", "other_parent", "child", "grandchild"}
    assert [e.text for e in css(browser, "#lineage-graph .node.self text")] == ["me"]
    assert len(css(browser, "#lineage-graph line.edge")) == 5
    assert [e.text for e in css(browser, "#parent-links a")] == ["parent", "other_parent"]
    assert [e.text for e in css(browser, "#child-links a")] == ["child"]
    scroll_to(browser, "#lineage")
    shot("me")

    # Click the parent's node in the graph, then its child's link back.
    css(browser, '#lineage-graph a.node-link[data-specimen="parent"]')[0].click()
    wait_for(browser, lambda: text_of(browser, "#specimen-id") == "parent")
    assert browser.current_url.endswith("/specimen/parent")
    assert [e.text for e in css(browser, "#child-links a")] == ["me"]
    scroll_to(browser, "#lineage")
    shot("parent")
    css(browser, "#child-links a")[0].click()
    wait_for(browser, lambda: text_of(browser, "#specimen-id") == "me")
    css(browser, '#lineage-graph a.node-link[data-specimen="grandchild"]')[0].click()
    wait_for(browser, lambda: text_of(browser, "#specimen-id") == "grandchild")
    scroll_to(browser, "#lineage")
    shot("grandchild")


def test_a_crowded_generation_is_summarised_in_the_graph_and_listed_in_full(vault):
    committed(vault, "hub")
    for i in range(12):
        committed(vault, f"kid_{i:02d}", parents=["hub"])
    html = client(vault).get("/specimen/hub").text
    graph = html[html.index('<svg id="lineage-graph"'):html.index("</svg>")]
    assert graph.count('class="node-link"') == 7 and "+5 more" in graph
    children = html[html.index('<ul id="child-links">'):]
    children = children[:children.index("</ul>")]
    assert all(f'href="/specimen/kid_{i:02d}"' in children for i in range(12))


def test_retired_specimen_page_still_works_and_says_so(vault, serve, browser, shot):
    committed(vault, "base", message="kept")
    committed(vault, "gone", parents=["base"], message="a mistake")
    retire(vault, "gone", "trained on the test set " + XSS_SCRIPT)
    url = serve(vault)
    open_page(browser, url + "/specimen/gone")
    assert "Retired" in text_of(browser, "#retired")
    assert text_of(browser, "#retired-reason") == "trained on the test set " + XSS_SCRIPT
    assert text_of(browser, "#message") == "a mistake"
    assert [e.text for e in css(browser, "#parent-links a")] == ["base"]
    no_pwn(browser)
    shot("retired")


# -- runs --------------------------------------------------------------------------------------
SID = "2025_01_02_sweep"
RUNS = ("20250102_090000", "20250102_100000", "20250103_080000")


def _sweep(vault: Vault) -> None:
    wd = vault.new(SID, domain="training", method="fine_tuning", tags=["sweep"])
    for i, run_id in enumerate(RUNS):
        lr = 0.1 * (i + 1)
        s = SpecimenStorage(wd, run_id=run_id)
        s.write_manifest({"config": {"lr": lr}})
        s.write_metrics({"step": np.arange(20), "loss": np.exp(-lr * np.arange(20))})
        s.write_tensors("weights", np.full((30, 8), lr, dtype=np.float32), chunks=(10, 8))
        vault.commit(SID, message=f"lr {lr:.1f}")


def test_runs_are_listed_and_each_run_can_be_shown(vault, serve, browser, shot):
    _sweep(vault)
    url = serve(vault)
    open_page(browser, url + f"/specimen/{SID}")
    # The newest run is shown, as `vault show` does.
    assert text_of(browser, "#shown-run") == RUNS[-1]
    assert text_of(browser, "#message") == "lr 0.3"
    links = [e.text for e in css(browser, "#run-links a")]
    assert links == [RUNS[1], RUNS[0]]
    assert text_of(browser, "#run-links .current-run") == RUNS[-1]
    heat = wait_plot(browser, "tensor-plot")
    assert heat[0]["z"][0][0] == pytest.approx(0.3)
    shot("newest")

    css(browser, "#run-links a")[1].click()  # the oldest run
    wait_for(browser, lambda: css(browser, "#shown-run") and text_of(browser, "#shown-run") == RUNS[0])
    assert browser.current_url.endswith(f"/specimen/{SID}?run={RUNS[0]}")
    assert text_of(browser, "#message") == "lr 0.1"
    heat = wait_plot(browser, "tensor-plot")
    assert heat[0]["z"][0][0] == pytest.approx(0.1)
    wait_for(browser, lambda: css(browser, ".metric-plot svg.main-svg"))
    loss_id = next(e.get_attribute("id") for e in css(browser, ".metric-plot")
                   if e.get_attribute("data-column") == "loss")
    np.testing.assert_allclose(wait_plot(browser, loss_id)[0]["y"], np.exp(-0.1 * np.arange(20)))
    # Its own config (the run's manifest) is shown too.
    assert "0.1" in text_of(browser, "#config")
    scroll_to(browser, "#runs")
    shot("oldest")

    # Each run is a specimen of its own, whose page says whose run it is.
    open_page(browser, url + f"/specimen/{SID}.run_{RUNS[1]}")
    assert RUNS[1] in text_of(browser, "#run-of")
    shot("run-specimen")


def test_unknown_run_is_404_and_bad_run_is_400(vault):
    _sweep(vault)
    c = client(vault)
    r = c.get(f"/specimen/{SID}?run=20990101_000000")
    assert r.status_code == 404 and RUNS[-1] in r.text
    r = c.get(f"/specimen/{SID}?run=../etc")
    assert r.status_code == 400 and "not a run id" in r.text
    r = c.get(f"/specimen/{SID}?files=some")
    assert r.status_code == 400 and "files=all" in r.text


# -- tensors -----------------------------------------------------------------------------------
def test_tensor_heatmap_of_2d_and_3d_tensors(vault, serve, browser, shot):
    big = np.arange(600 * 40, dtype=np.float64).reshape(600, 40)
    big[4, 3] = np.nan
    big[6, 5] = np.inf
    cube = np.random.default_rng(0).standard_normal((4, 5, 6)).astype(np.float32)
    line = np.arange(700, dtype=np.int32)

    def write(s: SpecimenStorage, wd: Path) -> None:
        s.write_tensors("a_big", big, chunks=(100, 40))
        s.write_tensors("cube", cube)
        s.write_tensors("line", line)
        s.write_tensors("scalar", np.array(2.5))
        s.write_tensors("wave", np.array([[3 + 4j, 1j]]))

    committed(vault, "tens", write=write)
    c = client(vault)

    # The JSON: every 3rd row (600 / 256 -> 3), every column, NaN and inf as null.
    d = c.get("/api/specimen/tens/tensor?name=a_big").json()
    assert (d["row_step"], d["col_step"], d["shape"]) == (3, 1, [600, 40])
    expected = big[::3, :]
    assert len(d["z"]) == expected.shape[0] == 200 and d["y"][:3] == [0, 3, 6]
    got = np.array([[np.nan if v is None else v for v in row] for row in d["z"]])
    np.testing.assert_array_equal(got[~np.isnan(got)], expected[np.isfinite(expected)])
    assert d["z"][2][5] is None  # row 6 (inf), column 5
    np.testing.assert_array_equal(np.array(c.get("/api/specimen/tens/tensor?name=cube&index=2")
                                           .json()["z"]), cube[2].astype(np.float64))
    d = c.get("/api/specimen/tens/tensor?name=line").json()
    assert d["col_step"] == 3 and d["z"] == [line[::3].astype(float).tolist()]
    assert c.get("/api/specimen/tens/tensor?name=scalar").json()["z"] == [[2.5]]
    d = c.get("/api/specimen/tens/tensor?name=wave").json()
    assert d["complex"] and d["z"] == [[5.0, 1.0]]  # magnitudes

    url = serve(vault)
    open_page(browser, url + "/specimen/tens")
    heat = wait_plot(browser, "tensor-plot")  # the first tensor, shown at once
    assert heat[0]["type"] == "heatmap" and len(heat[0]["z"]) == 200
    assert "preview of every 3rd row and every column" in text_of(browser, "#tensor-caption")
    scroll_to(browser, "#tensors")
    shot("big")

    Select(css(browser, "#tensor-name")[0]).select_by_value("cube")
    wait_for(browser, lambda: "cube" in text_of(browser, "#tensor-caption"))
    index = css(browser, "#tensor-index input")
    assert len(index) == 1 and index[0].get_attribute("max") == "3"
    index[0].clear()
    index[0].send_keys("3")
    css(browser, "#tensor-show")[0].click()
    wait_for(browser, lambda: "cube[3, :, :]" in text_of(browser, "#tensor-caption"))
    z = wait_plot(browser, "tensor-plot")[0]["z"]
    np.testing.assert_allclose(np.array(z), cube[3], rtol=1e-6)
    assert "every value" in text_of(browser, "#tensor-caption")
    scroll_to(browser, "#tensors")
    shot("cube")


@pytest.mark.parametrize(("query", "message"), [
    ("", "is not a tensor"),
    ("name=nope", "is not a tensor"),
    ("name=../../etc", "is not a tensor"),
    ("name=cube&index=x", "not an integer"),
    ("name=cube&index=4", "must be 0 to 3"),
    ("name=cube&index=-1", "must be 0 to 3"),
    ("name=cube&index=0,0", "needs 1"),
    ("name=flat&index=0", "at most 2 dimensions"),
    ("name=cube&run=../x", "not a run id"),
    ("name=hollow", "nothing to preview"),
])
def test_bad_tensor_parameters_are_400(vault, query, message):
    def write(s: SpecimenStorage, wd: Path) -> None:
        s.write_tensors("cube", np.zeros((4, 2, 2)))
        s.write_tensors("flat", np.zeros((2, 2)))
        s.write_tensors("hollow", np.zeros((0, 2, 2)))

    committed(vault, "tens", write=write)
    r = client(vault).get(f"/api/specimen/tens/tensor?{query}")
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_bad_metrics_and_spectrum_parameters(vault):
    committed(vault, "plain", write=lambda s, wd: s.write_metrics({"step": [0, 1], "loss": [1.0, 0.5]}))
    c = client(vault)
    assert c.get("/api/specimen/plain/metrics?file=metrics").json()["columns"]["loss"] == [1.0, 0.5]
    r = c.get("/api/specimen/plain/metrics?file=../../vault")
    assert r.status_code == 400 and "is not a Parquet file" in r.json()["error"]
    r = c.get("/api/specimen/plain/spectrum?input=0")
    assert r.status_code == 400 and "not a result of the SAE spectroscopy" in r.json()["error"]
    r = c.get("/api/specimen/nope/metrics")
    assert r.status_code == 404 and "no specimen nope" in r.json()["error"]


# -- spectroscopy ------------------------------------------------------------------------------
def _spectroscopy(vault: Vault) -> str:
    """Synthetic activations, a random JumpReLU SAE and their spectroscopy (a few seconds)."""
    n, t, d, d_sae = 5, 7, 12, 48
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    x[:, 0] *= 30
    wd = vault.new("acts", domain="interpretability", method="sae_analysis", model="toy",
                   metadata={"layer": 2})
    SpecimenStorage(wd).write_tensors("activations", x)
    vault.commit("acts", message="activations")
    w = rng.standard_normal((d_sae, d)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    wd = vault.new("sae", domain="interpretability", method="sae_analysis")
    s = SpecimenStorage(wd)
    for name, arr in {"W_enc": np.ascontiguousarray(w.T), "b_enc": np.zeros(d_sae, np.float32),
                      "W_dec": w, "b_dec": np.zeros(d, np.float32),
                      "threshold": np.full(d_sae, 0.5, np.float32)}.items():
        s.write_tensors(name, arr)
    vault.commit("sae", message="sae")
    return vault.spectroscopy("acts", sae="sae", pairs=np.array([[0, 1], [2, 3]])).specimen_id


def test_spectroscopy_results_are_plotted(vault, serve, browser, shot):
    sid = _spectroscopy(vault)
    spec = vault.specimen(sid)
    metrics = spec.read_metrics("metrics").sort("input")
    spectra = spec.read_metrics("spectra")
    url = serve(vault)
    open_page(browser, url + f"/specimen/{sid}")
    assert css(browser, "#spectroscopy")

    purity = wait_plot(browser, "spectro-score-purity")
    assert purity[0]["type"] == "bar"
    assert [int(v) for v in purity[0]["x"]] == metrics["input"].to_list()
    np.testing.assert_allclose(purity[0]["y"], metrics["purity"].to_numpy())
    for score in ("l0_mean", "fvu", "topk_10"):
        assert wait_plot(browser, f"spectro-score-{score}")

    def lines(i: int) -> pl.DataFrame:
        return spectra.filter(pl.col("input") == i).sort("rank")

    bars = wait_plot(browser, "spectrum-plot")
    want = lines(0).head(30)
    assert bars[0]["x"] == [f"f{f}" for f in want["feature"]]
    np.testing.assert_allclose(bars[0]["y"], want["intensity"].to_numpy(), rtol=1e-6)
    scroll_to(browser, "#spectroscopy")
    shot("input0")

    box = css(browser, "#spectrum-input")[0]
    box.clear()
    box.send_keys("3")
    top = css(browser, "#spectrum-top")[0]
    top.clear()
    top.send_keys("5")
    css(browser, "#spectrum-form button")[0].click()
    wait_for(browser, lambda: text_of(browser, "#spectrum-caption").startswith("input 3"))
    bars = wait_plot(browser, "spectrum-plot")
    assert bars[0]["x"] == [f"f{f}" for f in lines(3).head(5)["feature"]]

    # Drift and absorption tables, lineage to the two inputs.
    assert len(css(browser, "#spectro-drift tbody tr")) == 2
    assert css(browser, "#spectro-absorption")
    assert [e.text for e in css(browser, "#parent-links a")] == ["acts", "sae"]
    scroll_to(browser, "#spectrum-form")
    shot("input3")

    # An input out of range, or a bad top, is a clear 400 from the API.
    c = client(vault)
    r = c.get(f"/api/specimen/{sid}/spectrum?input=99")
    assert r.status_code == 400 and "no input 99" in r.json()["error"]
    assert c.get(f"/api/specimen/{sid}/spectrum?top=0").status_code == 400
    assert c.get(f"/api/specimen/{sid}/spectrum?input=a").status_code == 400


# -- lookup ------------------------------------------------------------------------------------
def test_label_and_digest_prefix_redirect_to_the_id(vault, serve, browser, shot):
    digest = committed(vault, "2024_05_05_target", message="target")
    committed(vault, "2024_05_06_other")
    vault.label("winner", "2024_05_05_target")
    c = client(vault)
    r = c.get("/specimen/@winner", follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == "/specimen/2024_05_05_target"
    r = c.get(f"/specimen/{digest[:10]}?files=all", follow_redirects=False)
    assert r.headers["location"] == "/specimen/2024_05_05_target?files=all"
    assert c.get("/specimen/2024_05_05_target", follow_redirects=False).status_code == 200

    url = serve(vault)
    for name in ("@winner", digest[:8]):
        open_page(browser, url + "/specimen/" + urllib.parse.quote(name))
        assert browser.current_url == url + "/specimen/2024_05_05_target"
        assert text_of(browser, "#message") == "target"
    shot("redirected")


def test_unknown_specimen_is_404_with_did_you_mean(vault, serve, browser, shot):
    committed(vault, "2024_05_05_target")
    c = client(vault)
    r = c.get("/specimen/2024_05_05_targte")
    assert r.status_code == 404
    assert "did you mean 2024_05_05_target?" in r.text
    r = c.get("/api/specimen/2024_05_05_targte/tensor?name=x")
    assert r.status_code == 404 and "did you mean" in r.json()["error"]
    assert c.get("/specimen/@nolabel").status_code == 404
    r = c.get("/specimen/bad%20id")
    assert r.status_code == 400

    url = serve(vault)
    browser.get(url + "/specimen/2024_05_05_targte")
    wait_for(browser, lambda: "did you mean" in text_of(browser, "#error-message"))
    shot("404")
    # The browser logs the 404 itself as an error: that one is expected, and the only one.
    logged = [e["message"] for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert len(logged) == 1 and "404" in logged[0]


# -- escaping ----------------------------------------------------------------------------------
def test_user_text_is_shown_literally_everywhere(vault, serve, browser, shot):
    def write(s: SpecimenStorage, wd: Path) -> None:
        s.write_metrics({"step": [0, 1, 2], XSS_IMG: [1.0, 2.0, 3.0], PLOTLY_TAGS: [3.0, 2.0, 1.0]})
        s.write_metrics({"who": [XSS_SCRIPT], "n": ["x"]}, "table")
        s.write_config({XSS_IMG: XSS_SCRIPT})
        (wd / f"{XSS_IMG}.txt").write_text("x")
        (wd / "field_notes.md").write_text(XSS_SCRIPT)

    committed(vault, "xss_parent", message=XSS_SCRIPT)
    committed(vault, "xss", message=XSS_SCRIPT + "\n" + XSS_IMG, tags=(XSS_SCRIPT, XSS_IMG),
              parents=["xss_parent"], model=XSS_IMG,
              metadata={XSS_IMG: XSS_SCRIPT, "nested": {XSS_SCRIPT: [XSS_IMG, "multi\n" + XSS_SCRIPT]}},
              write=write)
    vault.annotate("xss", XSS_IMG)
    url = serve(vault)
    open_page(browser, url + "/specimen/xss")
    assert text_of(browser, "#message") == XSS_SCRIPT + "\n" + XSS_IMG
    assert [e.text for e in css(browser, "#tags .tag")] == [XSS_SCRIPT, XSS_IMG]
    assert text_of(browser, "#model") == XSS_IMG
    meta = text_of(browser, "#metadata")
    assert XSS_IMG in meta and XSS_SCRIPT in meta
    assert XSS_IMG in text_of(browser, "#config") and XSS_SCRIPT in text_of(browser, "#config")
    assert f"{XSS_IMG}.txt" in text_of(browser, "#file-table")
    assert XSS_SCRIPT in text_of(browser, "#field-notes")
    assert XSS_IMG in text_of(browser, ".annotation-text")
    assert XSS_SCRIPT in text_of(browser, "#table-1")  # strata/table.parquet, as a table
    # A metric column's name is its plot's title, as text (plotly reads a few tags itself).
    wait_for(browser, lambda: drawn(browser, ".metric-plot") == 2)
    titles = {e.get_attribute("data-column"): e.find_element(By.CSS_SELECTOR, ".gtitle").text
              for e in css(browser, ".metric-plot")}
    assert titles == {XSS_IMG: XSS_IMG, PLOTLY_TAGS: PLOTLY_TAGS}
    assert not css(browser, ".metric-plot a")
    # No element came out of user text: the only images are none, the only scripts the page's.
    assert not css(browser, "main img")
    assert all(s.get_attribute("src") or s.get_attribute("type") == "application/json"
               for s in css(browser, "script"))
    no_pwn(browser)
    shot("xss")

    # The parent's message in the lineage graph and the child's page, too.
    css(browser, '#lineage-graph a.node-link[data-specimen="xss_parent"]')[0].click()
    wait_for(browser, lambda: text_of(browser, "#specimen-id") == "xss_parent")
    assert text_of(browser, "#message") == XSS_SCRIPT
    no_pwn(browser)
    shot("xss-parent")
