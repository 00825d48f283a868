"""scripts/analysis_cost.py at tiny shapes: every analysis step is measured and tabulated."""

import math
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ac():
    return load_script("analysis_cost")


@pytest.fixture
def cheap_umap(monkeypatch):
    """UMAP's first call compiles numba code for ~15 s; the script's machinery, not UMAP, is
    under test here, so the embedding is a stand-in (the step still runs plot_umap_grid)."""
    from mmsae.study import plots

    monkeypatch.setattr(plots, "_umap_embed", lambda atoms, seed, n_neighbors: np.asarray(atoms)[:, :2])


def test_quick_core_measures_every_step(ac, cheap_umap, tmp_path):
    shapes, meta = ac.plan(quick=True, shapes=[], growth=True)
    assert set(shapes) == {"quick", "N=150", "N=300", "m=32", "m=64"}
    records = ac.collect(shapes, list(ac.STEPS), tmp_path, isolate=False, log=lambda *a: None)
    for label in shapes:
        got = {r["step"]: r for r in records if r["shape"] == label}
        assert list(got) == ac.step_names(), label  # every step, the UMAP first call apart
        for r in got.values():
            assert r["time_s"] > 0 and not r.get("error"), r
            assert r["rss_increase_mb"] >= 0 and r["process_peak_mb"] > 0
    meta.update(machine=ac.machine_info(), load_before=0.5, load_after=0.7, train_s=420.0, train_source="quoted",
                date="2000-01-01", command="python scripts/analysis_cost.py --quick")
    md = ac.render(records, meta)
    for step in ac.step_names():
        assert f"| {step} |" in md
    assert "42 s per step per model" in md and "torch" in md and "0.50 before" in md
    assert "Growth in held-out pairs N" in md and "Growth in latents m" in md
    assert "**NO**" not in md and "failed" not in md
    # identical shapes are measured once: the quick shape is also N=300 and m=64
    quick = [r["time_s"] for r in records if r["shape"] == "quick"]
    assert quick == [r["time_s"] for r in records if r["shape"] == "N=300"]


def test_markdown_goes_between_the_markers(ac, tmp_path):
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nintro\n")
    ac.write_markdown(doc, "first\n")
    text = doc.read_text()
    assert text.startswith("# Performance\n\nintro\n\n## Analysis cost")
    assert f"{ac.BEGIN}\nfirst\n{ac.END}" in text
    ac.write_markdown(doc, "second\n")
    text2 = doc.read_text()
    assert "first" not in text2 and f"{ac.BEGIN}\nsecond\n{ac.END}" in text2
    assert text2.count(ac.BEGIN) == 1 and text2.count("## Analysis cost") == 1


def test_cli_in_process_writes_markdown_and_json(ac, tmp_path, capsys):
    doc, js = tmp_path / "perf.md", tmp_path / "cost.json"
    rc = ac.main(["--quick", "--no-growth", "--in-process", "--steps", "categories,ground_truth",
                  "--markdown", str(doc), "--json", str(js), "--workdir", str(tmp_path / "w")])
    assert rc == 0
    text = doc.read_text()
    assert "| categories |" in text and "| ground_truth |" in text and "| mms |" not in text
    import json

    recs = json.loads(js.read_text())["records"]
    assert [r["step"] for r in recs] == ["categories", "ground_truth"]
    assert all(r["time_s"] > 0 for r in recs)
    with pytest.raises(SystemExit):
        ac.main(["--quick", "--steps", "nope"])


@pytest.mark.slow
def test_cli_fresh_process_per_step(ac, tmp_path):
    """The real measurement path: a --prepare process, then a --worker process per step."""
    shapes, _ = ac.plan(quick=True, shapes=[], growth=False)
    records = ac.collect(shapes, ["categories"], tmp_path, isolate=True, timeout=300, log=lambda *a: None)
    assert [r["step"] for r in records] == ["categories"]
    r = records[0]
    assert not r.get("error") and r["time_s"] > 0 and not math.isnan(r["process_peak_mb"])


def test_bound_comes_from_the_measured_paper_scale_training(ac, tmp_path):
    f = tmp_path / "paper_scale.json"
    assert ac.measured_train_seconds(f) is None  # not measured yet: the script falls back to the quote
    f.write_text('{"notebooks": [], "training": {"SAE/seed0": {"steps": 25000, "wall_s": 900.0, "device": "cpu"}, '
                 '"MGSAE/seed0": {"steps": 25000, "wall_s": 1234.5, "device": "cpu"}, '
                 '"MGSAE/seed1": {"steps": 300, "wall_s": 10.0, "device": "cpu"}}}')
    assert ac.measured_train_seconds(f) == 1234.5  # MGSAE's own 25k-step run, not SAE's, not a short one
