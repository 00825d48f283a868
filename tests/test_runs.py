import numpy as np
import pandas as pd
import pytest

from mmsae.data import EmbeddingError
from mmsae.profiles import PROFILES, get_profile
from mmsae.runs import RunPaths, data_slug, load_run_data, write_table


def test_profiles():
    p = get_profile("paper")
    assert (p["m"], p["k"], p["batch_size"], p["steps"], p["group_lambda"], p["mask_rate"]) == (
        8192, 32, 128, 25_000, 0.05, 0.2)
    assert get_profile("smoke", steps=7, k=None)["steps"] == 7
    assert get_profile("smoke")["k"] == PROFILES["smoke"]["k"]
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")
    with pytest.raises(ValueError, match="unknown profile setting"):
        get_profile("smoke", stepz=3)


def test_write_table_csv_and_booktabs(tmp_path):
    df = pd.DataFrame({"model": ["SAE", "GSAE"], "both": [10.0, 20.5], "both_std": [1.0, np.nan], "n": [1, 2]})
    csv, tex = write_table(df, "t", tmp_path, caption="A caption")
    assert pd.read_csv(csv).equals(df)
    t = tex.read_text()
    assert "\\toprule" in t and "\\bottomrule" in t and "A caption" in t
    assert "10.000 $\\pm$ 1.000" in t and "20.500" in t and "both\\_std" not in t


def test_run_paths_and_missing_data(tmp_path):
    assert data_slug("embeddings:/x/y/clip_coco.npy") == "emb-clip_coco"
    p = RunPaths(tmp_path, "smoke", "synthetic")
    assert p.model_dir("GSAE", 2) == tmp_path / "runs" / "smoke-synthetic" / "models" / "GSAE" / "seed2"
    with pytest.raises(EmbeddingError, match="run notebooks/01_extract first"):
        load_run_data(p)
