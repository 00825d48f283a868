"""Execute every notebook at the smoke profile through run_all.sh; fail on any cell error."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mmsae.study.methods import CROSSCODER, METHOD_ORDER

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.notebooks]

SWEEPS = ["ablation_lambda", "ablation_mask_rate", "ablation_mask_mode", "ablation_width_k", "ablation_k", "alpha_sweep"]
TABLES = ["neuron_categories", "ladder", "ladder_steps", "split_measures", "firing_profile", "split_vs_sample_size", "concept_naming", "probe_decomposition", "geometry", "reconstruction", "retrieval", "mms_summary", "zero_shot", "ground_truth", "steering",
          "comparison", "seed_stability", "pareto_k"] + SWEEPS
FIGURES = ["data_overview", "ladder", "split_vs_sample_size", "training_SAE", "training_group_sparse", "training_all_methods", "neuron_categories",
           "mms_curves", "modality_score_hist", "umap_decoder_atoms", "steering", "pareto_k"] + SWEEPS
METHODS = set(METHOD_ORDER)


CI_PARAMS = ["--param", "n_pairs=6000", "--param", "steps=500", "--param", "ablation_steps=100",
             "--param", "sweep_seeds=[0]", "--param", "comparison_seeds=[0,1]"]


def _run_all(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MMSAE_PYTHON=sys.executable)  # the interpreter running the tests
    return subprocess.run(["bash", str(ROOT / "run_all.sh"), "--out", str(out), "--no-readme", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    assert not any(out.iterdir())  # a fresh folder: nothing left over from an earlier run
    started = time.time()
    # the synthetic chain of the default run at a smaller size, to keep CI well under 15 minutes;
    # the embedding-file chain (the real-CLIP run's path) is exercised by tests/test_byo_data.py
    proc = _run_all(out, "--no-real", *CI_PARAMS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout, started


def test_every_notebook_runs_and_reports_its_time(smoke_run):
    out, log, started = smoke_run
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        assert f"{nb.stem}: " in log, f"{nb.stem} did not report a wall time"
        executed = out / "runs" / "smoke-synthetic" / "notebooks" / "executed" / f"{nb.stem}.ipynb"
        assert executed.stat().st_mtime >= started - 1, f"{executed} was not written by this run"
        meta = json.loads(executed.read_text())["metadata"]["papermill"]
        assert meta.get("exception") in (None, False) and meta.get("end_time"), f"{nb.stem} did not finish"
    assert json.loads((out / "runs" / "smoke-synthetic" / "run_all.json").read_text())["profile"] == "smoke"


def test_tables_and_figures_written(smoke_run):
    out, _, _ = smoke_run
    for t in TABLES:
        assert (out / "results" / f"{t}.csv").stat().st_size > 0, t
        assert "\\toprule" in (out / "results" / f"{t}.tex").read_text(), t
    for f in FIGURES:
        assert (out / "figures" / f"{f}.pdf").read_bytes()[:4] == b"%PDF", f
        assert (out / "figures" / f"{f}.png").read_bytes()[:4] == b"\x89PNG", f
    cats = pd.read_csv(out / "results" / "neuron_categories.csv")
    assert {"model", "image_only", "text_only", "both", "dead"} <= set(cats.columns)
    assert set(cats["model"]) == METHODS
    # the four categories partition the dictionary of every model that encodes one modality; the crosscoder
    # (one code per pair) has none by firing (n/a), and its split by decoder norms partitions it instead
    per_seed = pd.read_csv(out / "results" / "per_seed_metrics.csv")
    pair = per_seed["model"] == CROSSCODER
    one = per_seed[~pair]
    assert (one[["image_only", "text_only", "both", "dead"]].sum(axis=1) == one["m"]).all()
    xc = per_seed[pair]
    assert len(xc) and xc[["image_only", "text_only", "both"]].isna().all().all()
    assert (xc[["decoder_image_only", "decoder_text_only", "decoder_both", "dead"]].sum(axis=1) == xc["m"]).all()
    assert per_seed.groupby("model")["seed"].nunique().min() == 2  # mean and spread over seeds (CI: 2 of them)
    comparison = pd.read_csv(out / "results" / "comparison.csv")
    assert set(comparison["model"]) == METHODS
    assert comparison.loc[comparison.model != CROSSCODER, "both_std"].notna().all()
    assert comparison.loc[comparison.model == CROSSCODER, "both"].isna().all()
    m = json.loads((out / "results" / "headline.json").read_text())
    assert m["profile"] == "smoke" and set(m["models"]) == METHODS


def test_failing_notebook_is_named_and_stops_the_run(tmp_path):
    proc = _run_all(tmp_path, "--only", "02")  # no 01 before it: no embeddings
    assert proc.returncode == 1
    assert "FAILED: notebook 02_train_baseline" in proc.stderr
    assert "run notebooks/01_extract first" in proc.stderr
