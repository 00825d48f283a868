"""The paper path cannot rot: the paper profile's notebooks at the paper's shapes (d = 512,
m = 8192 latents, K = 32, batch 128, 10,000 held-out pairs), every method, training cut to a
few steps, through run_all.sh. What a GPU user runs at scale is executed on every CI run; the
ablations and the alpha sweep are left out (they run the same code on smaller models)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mmsae.study.methods import METHOD_ORDER

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.notebooks]

PARAMS = ["n_pairs=100000", "val_fraction=0.1", "steps=3", "comparison_seeds=[0]", "run_ablations=false",
          "run_alpha_sweep=false", "tensorboard=false", "n_samples=256"]


def test_paper_profile_notebooks_run_at_paper_shapes(tmp_path):
    env = dict(os.environ, MMSAE_PYTHON=sys.executable)
    args = ["bash", str(ROOT / "run_all.sh"), "--out", str(tmp_path), "--no-readme", "--profile", "paper"]
    for p in PARAMS:
        args += ["--param", p]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = tmp_path / "results" / "paper-synthetic"
    summary = json.loads((res / "data_summary.json").read_text())
    assert summary["d"] == 512 and summary["n_val"] == 10_000
    head = json.loads((res / "headline.json").read_text())
    assert set(head["models"]) == set(METHOD_ORDER)
    assert all(v["m"] == 8192 for v in head["models"].values())
    cats = pd.read_csv(res / "neuron_categories.csv")
    assert (cats[["image_only", "text_only", "both", "dead"]].sum(axis=1) == 8192).all()
    for t in ("ground_truth", "mms_summary", "retrieval", "zero_shot", "zero_shot_vs_paper", "name_agreement",
              "latent_names", "steering", "comparison"):
        assert (res / f"{t}.csv").stat().st_size > 0, t
    assert len(list((res / "browser").glob("*.html"))) == len(METHOD_ORDER)
    cfg = json.loads((tmp_path / "runs" / "paper-synthetic" / "models" / "MGSAE" / "seed0" / "config.json").read_text())
    assert (cfg["d"], cfg["m"], cfg["k"], cfg["group_lambda"], cfg["mask_rate"]) == (512, 8192, 32, 0.05, 0.2)
