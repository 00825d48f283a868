import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmsae.data import EmbeddingError
from mmsae.study.profiles import PROFILES, get_profile
from mmsae.study.runs import (REAL_CLIP_RUN, RunPaths, RunSetupError, data_slug, load_run_data, notebook_parameters,
                        parse_param, prepare_runs, resolve_data, select_notebooks, write_table)

ROOT = Path(__file__).resolve().parents[1]


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


def test_write_table_csv_only(tmp_path):
    df = pd.DataFrame({"model": ["SAE"], "seed": [0], "both": [3.0]})
    csv, tex = write_table(df, "per_seed", tmp_path, latex=False)
    assert tex is None and pd.read_csv(csv).equals(df)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_seed.csv"]


def test_notebooks_write_tables_only_through_write_table():
    root = Path(__file__).resolve().parents[1]
    direct = [f"{nb.name}:{i}" for nb in sorted((root / "notebooks").glob("*.py"))
              for i, line in enumerate(nb.read_text().splitlines(), 1)
              if ".to_csv(" in line or ".to_latex(" in line]
    assert not direct, f"tables written around mmsae.study.runs.write_table: {direct}"


def test_run_paths_and_missing_data(tmp_path):
    p = RunPaths(tmp_path, "smoke", "synthetic")
    assert p.model_dir("GSAE", 2) == tmp_path / "runs" / "smoke-synthetic" / "models" / "GSAE" / "seed2"
    with pytest.raises(EmbeddingError, match="run notebooks/01_extract first"):
        load_run_data(p)


def test_data_slug_is_the_file_stem_wherever_the_file_lies():
    assert data_slug("embeddings:/x/y/clip_vitb16_coco500.npy") == "clip_vitb16_coco500"
    assert data_slug("embeddings:data/clip_vitb16_coco500.npy") == "clip_vitb16_coco500"
    assert data_slug("embeddings:/a/my cache/") == "my-cache"
    assert data_slug("embeddings:/a/clip.npy") == "emb-clip"  # not the name of the clip extraction
    assert data_slug("synthetic") == "synthetic" and data_slug("clap") == "clap"


def test_only_the_synthetic_default_writes_top_level_results(tmp_path):
    syn = RunPaths(tmp_path, "smoke", "synthetic")
    assert (syn.results, syn.figures) == (tmp_path / "results", tmp_path / "figures")
    real = RunPaths(tmp_path, "smoke", "embeddings:/d/clip_vitb16_coco500.npy")
    assert real.results == tmp_path / "results" / "clip_vitb16_coco500"
    assert real.figures == tmp_path / "figures" / "clip_vitb16_coco500"
    assert RunPaths(tmp_path, "paper", "clip").results == tmp_path / "results" / "clip"
    # the paper-scale synthetic run has its own folder: it never overwrites the default's tables
    assert RunPaths(tmp_path, "paper", "synthetic").results == tmp_path / "results" / "paper-synthetic"
    assert RunPaths(tmp_path, "paper", "synthetic").figures == tmp_path / "figures" / "paper-synthetic"
    assert real.notebooks == real.root / "notebooks" and real.run_log == real.root / "run_all.json"


def test_sources_are_stored_relative_to_out_dir_and_resolved_on_load(tmp_path):
    from mmsae.data import PairedEmbeddings

    rng = np.random.default_rng(0)
    pe = PairedEmbeddings(rng.normal(size=(20, 4)).astype(np.float32), rng.normal(size=(20, 4)).astype(np.float32))
    outside = pe.save(tmp_path / "elsewhere" / "val.safetensors")
    p = RunPaths(tmp_path / "out", "smoke", "embeddings:/x/pairs.npy")
    p.ensure()
    inside = pe.save(p.train_pairs)
    p.write_sources(inside, outside)
    rec = json.loads(p.sources.read_text())
    assert rec["train"] == "runs/smoke-pairs/embeddings/train.safetensors"  # no machine-specific folder
    assert rec["val"] == str(outside.resolve())  # outside out_dir: absolute
    moved = tmp_path / "moved"
    (tmp_path / "out").rename(moved)
    q = RunPaths(moved, "smoke", "embeddings:/x/pairs.npy")
    assert q.read_sources()["train"] == moved / "runs/smoke-pairs/embeddings/train.safetensors"
    train, val, truth, zs = load_run_data(q)
    np.testing.assert_array_equal(np.asarray(train.x), pe.x)
    assert truth is None and zs == {}


def test_parse_param_reads_yaml_and_json_literals():
    assert parse_param("steps=500") == ("steps", 500)
    assert parse_param("seeds=[0, 1]") == ("seeds", [0, 1])
    assert parse_param("run_ablations=false") == ("run_ablations", False)
    assert parse_param("mask_mode=batch") == ("mask_mode", "batch")
    assert parse_param("alpha=null") == ("alpha", None)
    assert parse_param("lr=1e-3") == ("lr", 0.001)
    for bad in ("steps", "=3", "two words=1", "x=[1, 2"):
        with pytest.raises(RunSetupError):
            parse_param(bad)


def test_select_notebooks_accepts_short_numbers_and_rejects_empty_selections():
    nb = ROOT / "notebooks"
    assert [p.name[:2] for p in select_notebooks(nb, "2,04")] == ["02", "04"]
    assert [p.name[:2] for p in select_notebooks(nb, "")] == ["01", "02", "03", "04", "05"]
    for bad in ("9", "1,x", ",", "99"):
        with pytest.raises(RunSetupError, match="--only"):
            select_notebooks(nb, bad)


def test_notebook_parameters_reads_the_parameters_cell():
    names = notebook_parameters(ROOT / "notebooks" / "03_train_group_sparse.py")
    assert names[:3] == ["profile", "data", "out_dir"]
    # a comment with "==" in it defeats papermill's own parser, not this one
    assert {"steps", "seeds", "run_ablations", "run_alpha_sweep"} <= set(names)


def test_resolve_data_makes_project_paths_relative(tmp_path):
    f = tmp_path / "pairs.npy"
    np.save(f, np.zeros((2, 3, 4), np.float32))
    assert resolve_data("synthetic", tmp_path, ROOT) == "synthetic"
    assert resolve_data("pairs.npy", tmp_path, ROOT) == f"embeddings:{f.resolve()}"
    assert resolve_data("pairs.npy", tmp_path, tmp_path) == "embeddings:pairs.npy"
    assert resolve_data(f"embeddings:{f}", "/", tmp_path) == "embeddings:pairs.npy"
    with pytest.raises(RunSetupError, match="no such file"):
        resolve_data("missing.npy", tmp_path, ROOT)


def _prepare(tmp_path, **kw):
    args = dict(root=ROOT, cwd=tmp_path, out_dir=tmp_path / "out", profile="smoke", data="synthetic", only="",
                params=[], extract=[], real="off", work=tmp_path / "work")
    args.update(kw)
    return prepare_runs(**args)


def test_prepare_runs_checks_names_and_writes_typed_parameters(tmp_path):
    import yaml

    if not (ROOT / REAL_CLIP_RUN["data"][len("embeddings:"):]).exists():
        pytest.skip("the shipped CLIP embeddings data/clip_vitb16_coco500.npy are missing")
    chains = _prepare(tmp_path, params=["seeds=[1]", "steps=20"], only="2,3", real="auto")
    assert [c["data"] for c in chains] == ["synthetic", REAL_CLIP_RUN["data"]]
    syn, real = chains
    assert syn["notebooks"] == ["02_train_baseline", "03_train_group_sparse"]
    y2 = yaml.safe_load((syn["work"] / "02_train_baseline.yaml").read_text())
    assert y2 == {"profile": "smoke", "data": "synthetic", "out_dir": str((tmp_path / "out").resolve()),
                  "seeds": [1], "steps": 20}
    assert "run_ablations" not in y2  # given only to notebooks that declare it
    assert yaml.safe_load((real["work"] / "03_train_group_sparse.yaml").read_text())["run_ablations"] is False
    assert (syn["work"] / "02_train_baseline.ipynb").exists()
    assert real["paths"].results == (tmp_path / "out").resolve() / "results" / "clip_vitb16_coco500"
    with pytest.raises(RunSetupError, match="stepz"):
        _prepare(tmp_path, params=["stepz=50"])
    with pytest.raises(RunSetupError, match="'umap_seed'"):  # a parameter of 04 only
        _prepare(tmp_path, params=["umap_seed=1"], only="2")
    with pytest.raises(RunSetupError, match="--profile"):
        _prepare(tmp_path, params=["profile=paper"])
    with pytest.raises(RunSetupError, match="not to synthetic"):
        _prepare(tmp_path, extract=["val_source=/x.npy"])
    np.save(tmp_path / "pairs.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(RunSetupError, match="01_extract"):
        _prepare(tmp_path, extract=["val_source=/x.npy"], only="2", data="pairs.npy")


def test_prepare_runs_passes_extract_options_as_text_to_notebook_01(tmp_path):
    import yaml

    f = tmp_path / "pairs.npy"
    np.save(f, np.zeros((2, 3, 4), np.float32))
    (chain,) = _prepare(tmp_path, data="pairs.npy", only="1", extract=["val_source=/v.npy", "limit=10"])
    y = yaml.safe_load((chain["work"] / "01_extract.yaml").read_text())
    assert y["data"] == f"embeddings:{f.resolve()}"
    assert y["extract_options"] == {"val_source": "/v.npy", "limit": "10"}
