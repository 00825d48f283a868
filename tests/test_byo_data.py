"""A user's own embeddings through all five notebooks: any d, N >= 50, no labels (issue: real evidence).

A file made from the shipped real CLIP pairs, without labels or a zero-shot set: 100 pairs
(80 training pairs: the batch size of 128 must clamp) projected to d = 64, an encoder width
the project has no profile for. It must complete 01-05 and write every table it can; a file
of 40 pairs must fail in notebook 01, naming the file. (The d = 512 file path is the real-CLIP
run's: tests/test_real_data.py and the default run; one chain here keeps CI under 20 minutes.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmsae.study.methods import METHOD_ORDER

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.notebooks]
ENV = dict(os.environ, MMSAE_PYTHON=sys.executable, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
# a short chain: every method, one seed, few steps, no ablations
SHORT = ["--param", "steps=60", "--param", "comparison_seeds=[0]", "--param", "seeds=[0]",
         "--param", "run_ablations=false"]


def _run(out: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "run_all.sh"), "--no-readme", "--out", str(out), "--data", str(data),
                           *extra], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)


def _save(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    a = np.stack([x, y]).astype(np.float32)
    np.save(path, a / np.linalg.norm(a, axis=-1, keepdims=True))
    return path


@pytest.fixture(scope="module")
def real(coco500_path):
    return np.load(coco500_path)


@pytest.mark.parametrize("n,d", [(100, 64)])
def test_unlabelled_user_embeddings_complete_every_notebook(real, tmp_path, n, d):
    x, y = real[0][:n], real[1][:n]
    if d != x.shape[1]:  # another encoder width: a fixed random projection of the real pairs
        proj = np.random.default_rng(0).standard_normal((x.shape[1], d))
        x, y = x @ proj, y @ proj
    f = _save(tmp_path / f"pairs{n}.npy", x, y)
    out = tmp_path / "out"
    proc = _run(out, f, *SHORT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res, run = out / "results" / f"pairs{n}", out / "runs" / f"smoke-pairs{n}"
    log = (run / "notebooks" / "logs").glob("*.log")
    text = "\n".join(p.read_text() for p in log)
    if n == 100:
        assert "batch_size 128 exceeds the 80 training pairs" in text  # clamped, with a note
    executed = "\n".join(p.read_text() for p in (run / "notebooks" / "executed").glob("*.ipynb"))
    assert "Zero-shot is skipped: this run's data have no labels or class prompts" in executed  # said, in a line
    for t in ("neuron_categories", "split_measures", "firing_profile", "mms_summary", "reconstruction", "retrieval", "comparison",
              "steering", "geometry"):
        assert (res / f"{t}.csv").stat().st_size > 0, t
    assert not (res / "zero_shot.csv").exists()
    steer = json.loads((res / "steering_summary.json").read_text())
    assert steer["concept_source"] == "text_cluster" and steer["concept"].startswith("caption cluster")
    cats = pd.read_csv(res / "neuron_categories.csv")
    assert len(cats) == len(METHOD_ORDER) and cats["category_rule"].str.startswith("scaled").all()
    head = json.loads((res / "headline.json").read_text())
    assert head["n_val"] == n // 5 and set(head["models"]) == set(cats["model"])


def test_too_few_pairs_fail_in_notebook_01(real, tmp_path):
    f = _save(tmp_path / "tiny.npy", real[0][:40], real[1][:40])
    proc = _run(tmp_path / "out", f, "--only", "1")
    assert proc.returncode != 0
    assert "FAILED: notebook 01_extract" in proc.stderr
    assert "tiny.npy" in proc.stderr and "at least 50 pairs" in proc.stderr


def test_shipped_real_clip_with_captions_completes_every_notebook(coco500_path, tmp_path):
    """The real-CLIP chain of the default run (the shipped 500 COCO pairs at d = 512 and their
    captions), short: caption zero-shot beside the paper, latents named from captions, a browser
    per model, a named steering concept."""
    out = tmp_path / "out"
    proc = _run(out, coco500_path, *SHORT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = out / "results" / coco500_path.stem
    head = json.loads((res / "headline.json").read_text())
    assert head["names_from"] == "captions" and head["n_val"] == 100
    zs = pd.read_csv(res / "zero_shot_vs_paper.csv")
    assert set(zs["set"]) == {"caption_classes"} and (zs["n_classes"] >= 2).all() and (zs["n_test"] > 0).all()
    assert {"dense", *head["models"]} <= set(zs["model"])
    names = pd.read_csv(res / "latent_names.csv")
    assert names["name"].notna().any()  # some latents named in words from their captions
    assert len(list((res / "browser").glob("*.html"))) == len(head["models"])
    steer = json.loads((res / "steering_summary.json").read_text())
    assert steer["concept_source"] == "captions"
    for t in ("firing_profile", "name_agreement", "retrieval", "comparison"):
        assert (res / f"{t}.csv").stat().st_size > 0, t
