"""mmsae.study.experiments: method table, train/evaluate, seed aggregation, tables, sweeps."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmsae.study import methods as M

from mmsae.study import experiments as ex
from mmsae.models import load_model
from mmsae.study.profiles import get_profile
from mmsae.study.runs import write_table


@pytest.fixture(scope="module")
def tiny():
    P = get_profile("smoke", synthetic_d=32, n_shared=16, n_image_only=4, n_text_only=4, m=48, k=4,
                    steps=40, batch_size=32, alpha_n_pairs=500, dead_after=2000)
    tr, va, sv = ex.synthetic_split(P, 0.7, n_pairs=500)
    return P, tr, va, sv


def test_methods_table_names_and_archs(tiny):
    P = tiny[0]
    assert list(ex.METHODS) == M.METHOD_ORDER
    archs = {n: ex.method_config(n, P, d=32).arch for n in ex.METHODS}
    assert archs == {"SAE": "topk", "CentredSAE": "group_sparse", "BatchTopK": "batchtopk", "Matryoshka": "matryoshka",
                     "GSAE": "group_sparse", "MGSAE": "group_sparse", "MaskedSAE": "group_sparse",
                     "ModalitySpecific": "modality_specific", "SharedSupport": "shared_support", "USAE": "usae",
                     "Crosscoder": "crosscoder"}
    assert ex.method_config("CentredSAE", P, d=32).group_lambda == 0.0
    assert (ex.method_config("MaskedSAE", P, d=32).group_lambda, ex.method_config("MaskedSAE", P, d=32).mask_rate) == \
        (0.0, P["mask_rate"])
    assert ex.method_config("MGSAE", P, d=32).mask_rate == P["mask_rate"]
    assert ex.method_config("GSAE", P, d=32).mask_rate == 0.0
    assert ex.method_config("GSAE", P, d=32, group_lambda=0.3).group_lambda == 0.3
    assert ex.method_config("SAE", P, d=32, group_lambda=0.3).group_lambda == 0.0  # not an SAE setting
    assert ex.method_config("Matryoshka", P, d=32).extra["prefixes"][-1] == P["m"]
    with pytest.raises(ValueError):
        ex.method_config("nope", P)


def test_evaluate_model_returns_every_key(tiny, tmp_path):
    P, tr, va, sv = tiny
    zs = {"synthetic_classes": sv.zero_shot_set()}
    for name in ("ModalitySpecific", "BatchTopK"):
        model = ex.train_method(name, tr, P, seed=0, out_dir=tmp_path, steps=20, progress=False)
        assert (tmp_path / name / "seed0" / "train_log.csv").exists()
        summary = json.loads((tmp_path / name / "seed0" / "train_summary.json").read_text())
        assert summary["wall_time_s"] > 0
        r = ex.evaluate_model(model, va, zero_shot_sets=zs, truth=sv)
        want = set(ex.COMPARISON_COLUMNS) | {
            "frac_both", "zs_synthetic_classes_code", "zs_synthetic_classes_recon", "zs_synthetic_classes_dense",
            "gt_recovery_x_mean", "gt_recovery_y_mean", "gt_collapse_rate", "gt_alignment_error", "mms_reference",
            "code_x2y_R@5", "nmse_x", "cosine_y"}
        assert want <= set(r), sorted(want - set(r))
        assert r["image_only"] + r["text_only"] + r["both"] + r["dead"] == r["m"]  # ModalitySpecific: m/2 aligned pairs
        assert r["mms_reference"] == "ground_truth_codes"
        assert all(np.isscalar(v) for v in r.values())
    assert "n_matched" in ex.evaluate_model(load_model(tmp_path / "ModalitySpecific" / "seed0"), va)
    # an identical second call loads the saved model instead of training
    again = ex.train_method("BatchTopK", tr, P, seed=0, out_dir=tmp_path, steps=20, progress=False)
    assert again.train_info["wall_time_s"] == summary["wall_time_s"]
    changed = ex.train_method("BatchTopK", tr, P, seed=0, out_dir=tmp_path, steps=21, progress=False)
    assert changed.train_info["steps"] == 21


def test_aggregate_seeds_hand_example():
    df = pd.DataFrame({"model": ["A", "A", "A", "B", "B", "C"], "seed": [0, 1, 2, 0, 1, 0],
                       "x": [1.0, 2.0, 6.0, 10.0, 20.0, 5.0], "n": [1, 1, 1, 4, 2, 3], "note": list("abcdef")})
    out = ex.aggregate_seeds(df, "model")
    assert list(out["model"]) == ["A", "B", "C"]
    assert list(out.columns) == ["model", "x", "x_std", "n", "n_std", "n_seeds"]
    np.testing.assert_allclose(out["x"], [3.0, 15.0, 5.0])
    np.testing.assert_allclose(out["x_std"][:2], [np.std([1, 2, 6], ddof=1), np.std([10, 20], ddof=1)])
    assert np.isnan(out["x_std"][2])
    assert list(out["n_seeds"]) == [3, 2, 1]
    two = ex.aggregate_seeds(df.assign(p=[0.1, 0.1, 0.2, 0.1, 0.1, 0.1]), ["model", "p"])
    assert len(two) == 4 and two.loc[(two.model == "A") & (two.p == 0.1), "x"].item() == 1.5


def test_aggregated_table_through_write_table(tmp_path):
    df = ex.aggregate_seeds(pd.DataFrame({"model": ["A", "A"], "seed": [0, 1], "ev": [0.5, 0.7]}), "model")
    csv, tex = write_table(df, "t", tmp_path, caption="cap", label="tab:t")
    assert csv == tmp_path / "t.csv" and tex == tmp_path / "t.tex"
    body = tex.read_text()
    assert "\\toprule" in body and "\\label{tab:t}" in body and "$\\pm$" in body
    assert list(pd.read_csv(csv).columns) == ["model", "ev", "ev_std", "n_seeds"]
    assert not hasattr(ex, "to_latex")  # one table writer: mmsae.study.runs.write_table


def test_tiny_alpha_sweep(tiny, tmp_path):
    P = tiny[0]
    df = ex.sweep_alpha(P, alphas=[0.0, 1.0], methods=["GSAE", "ModalitySpecific"], seeds=[0], steps=15,
                        models_dir=tmp_path, progress=False, n_jobs=1)
    assert len(df) == 4 and set(df["alpha"]) == {0.0, 1.0}
    for c in ("gt_recovery_x_mean", "gt_alignment_error", "gt_collapse_rate", "explained_variance_x"):
        assert df[c].notna().all()
    assert (tmp_path / "sweeps" / "alpha0").is_dir()
    agg = ex.aggregate_seeds(df, ["model", "alpha"])
    assert len(agg) == 4


def test_tiny_mask_sweep_shares_identical_configs(tiny, tmp_path):
    P, tr, va, sv = tiny
    df = ex.run_sweep("mask_rate", tr, va, P, values=[0.0, 0.2], seeds=[0], steps=10, models_dir=tmp_path,
                      truth=sv, progress=False, n_jobs=1)
    assert list(df["mask_rate"]) == [0.0, 0.2] and "gt_recovery_x_mean" in df
    lam = ex.run_sweep("lambda", tr, va, P, methods=["GSAE"], values=[P["group_lambda"]], seeds=[0], steps=10,
                       models_dir=tmp_path, evaluate=False, progress=False, n_jobs=1)
    # GSAE at the default lambda is MGSAE at mask rate 0: trained once, reused
    assert lam["wall_time_s"].item() == df.loc[df.mask_rate == 0.0, "wall_time_s"].item()
    wk = ex.run_sweep("width_k", tr, va, P, methods=["SAE"], values=[(1, 2), (2, 4)], seeds=[0], steps=10,
                      progress=False, n_jobs=1)
    assert list(wk["m"]) == [32, 64] and list(wk["k"]) == [2, 4]


def test_sweep_figure_and_markdown(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    raw = pd.DataFrame({"model": ["GSAE"] * 4 + ["MGSAE"] * 4, "seed": [0, 1] * 4,
                        "group_lambda": [0.0, 0.0, 0.1, 0.1] * 2, "frac_both": np.linspace(0.1, 0.8, 8),
                        "explained_variance_x": 0.5, "explained_variance_y": 0.7, "both": [10, 12] * 4})
    agg = ex.aggregate_seeds(ex.add_derived(raw), ["model", "group_lambda"])
    assert np.allclose(agg["ev_mean"], 0.6)
    fig = ex.plot_sweep(agg, "group_lambda", {"frac_both": "both", "ev_mean": "EV"})
    assert len(fig.axes) == 2
    bars = ex.plot_sweep(agg.assign(mode=["pair", "batch"] * 2), "mode", {"frac_both": "both"})
    assert len(bars.axes) == 1
    md = ex.markdown_table(agg, ["both", "frac_both"])
    assert md.splitlines()[0] == "| model | both | frac_both |" and "11 ± 1.4" in md


def test_reuse_is_keyed_on_every_row_of_the_data(tiny, tmp_path):
    P = tiny[0]
    tr = ex.synthetic_split(P, 0.7, n_pairs=1000)[0]  # 800 pairs: 79% of them lie between the first and last 64
    first = ex.train_method("BatchTopK", tr, P, seed=0, out_dir=tmp_path, steps=5, progress=False)
    # same data (a fresh copy): reused
    same = ex.train_method("BatchTopK", tr.subset(np.arange(len(tr))), P, seed=0, out_dir=tmp_path, steps=5,
                           progress=False)
    assert same.train_info["wall_time_s"] == first.train_info["wall_time_s"]
    # the middle 79% of the rows replaced (first and last 64 rows kept): retrained
    n = len(tr)
    lo, hi = int(0.105 * n), n - int(0.105 * n)
    assert lo >= 64
    other = tr.subset(np.arange(n))
    other.x[lo:hi], other.y[lo:hi] = np.roll(tr.x[lo:hi], 1, axis=0), np.roll(tr.y[lo:hi], 1, axis=0)
    changed = ex.train_method("BatchTopK", other, P, seed=0, out_dir=tmp_path, steps=5, progress=False)
    assert changed.train_info["data_fingerprint"] != first.train_info["data_fingerprint"]
    assert changed.train_info["wall_time_s"] != first.train_info["wall_time_s"]
    # one value in the middle changed is another data set too
    tweak = tr.subset(np.arange(n))
    tweak.y[n // 2, 0] += 1e-3
    assert ex._fingerprint(tweak) != ex._fingerprint(tr)
    assert ex._fingerprint((tr.x, tr.y)) == ex._fingerprint(tr)


def test_reuse_is_keyed_on_the_training_code(tiny, tmp_path, monkeypatch):
    P = tiny[0]
    tr = ex.synthetic_split(P, 0.7, n_pairs=300)[0]
    first = ex.train_method("SAE", tr, P, seed=0, out_dir=tmp_path, steps=5, progress=False)
    again = ex.train_method("SAE", tr, P, seed=0, out_dir=tmp_path, steps=5, progress=False)
    assert again.train_info["wall_time_s"] == first.train_info["wall_time_s"]  # same code: reused
    assert first.train_info["train_key"]["code"] == ex.training_code_version("topk")
    # another method's model file, the command line or the method records do not enter the SAE's key
    assert ex.training_code_version("topk") != ex.training_code_version("batchtopk")
    # a model saved by other training code (another objective, another loop) is retrained, not reused
    monkeypatch.setattr(ex, "training_code_version", lambda arch="topk": "0" * 16)
    newer = ex.train_method("SAE", tr, P, seed=0, out_dir=tmp_path, steps=5, progress=False)
    assert newer.train_info["train_key"]["code"] == "0" * 16
    assert newer.train_info["wall_time_s"] != first.train_info["wall_time_s"]


def test_sweeps_load_only_what_notebook_03_trained(tiny, tmp_path, monkeypatch):
    """Notebook 04's sweeps never train: no manifest or no model is an error naming notebook
    03; with both on disk the rows come from the saved models, with 03's steps and grid."""
    P, tr, va, sv = tiny
    with pytest.raises(ex.CheckpointError, match="03_train_group_sparse.*profile='smoke'"):
        ex.run_sweep("mask_rate", tr, va, P, models_dir=tmp_path, train=False, hint="(profile='smoke')",
                     progress=False)
    with pytest.raises(ex.CheckpointError, match="03_train_group_sparse"):
        ex.sweep_alpha(P, models_dir=tmp_path, train=False, progress=False)
    trained = ex.run_sweep("mask_rate", tr, va, P, values=[0.0, 0.2], seeds=[0], steps=10, models_dir=tmp_path,
                           evaluate=False, progress=False, n_jobs=1)
    man = json.loads(ex.sweep_manifest_path(tmp_path, "mask_rate").read_text())
    assert man["steps"] == 10 and man["values"] == [0.0, 0.2] and man["seeds"] == [0]

    def no_training(*a, **k):
        raise AssertionError("notebook 04 trained a model")

    monkeypatch.setattr(ex, "train", no_training)
    loaded = ex.run_sweep("mask_rate", tr, va, P, models_dir=tmp_path, train=False, progress=False, n_jobs=1)
    assert list(loaded["mask_rate"]) == [0.0, 0.2] and "explained_variance_x" in loaded
    assert list(loaded["wall_time_s"]) == list(trained["wall_time_s"])  # the saved runs' summaries
    # a model deleted after 03 ran: an error naming 03, not a retrain
    victim = next(p for p in (tmp_path / "sweeps").rglob("model.safetensors"))
    victim.unlink()
    with pytest.raises(ex.CheckpointError, match="03_train_group_sparse"):
        ex.run_sweep("mask_rate", tr, va, P, models_dir=tmp_path, train=False, progress=False, n_jobs=1)


def test_train_summary_has_one_schema(tiny, tmp_path):
    """The loop (checkpoint_dir) and the study (a method's run folder) write the same keys."""
    from dataclasses import fields

    from mmsae.models import build_model
    from mmsae.train import TrainConfig, train
    from mmsae.train.loop import TRAIN_SUMMARY, TrainSummary

    P, tr, _, _ = tiny
    cfg = ex.method_config("ModalitySpecific", P)
    train(build_model(cfg, seed=0), tr, TrainConfig(steps=5, batch_size=32, progress=False,
                                                    checkpoint_dir=str(tmp_path / "loop")))
    ex.train_method("ModalitySpecific", tr, P, seed=0, out_dir=tmp_path / "study", steps=5, progress=False)
    by_loop = json.loads((tmp_path / "loop" / TRAIN_SUMMARY).read_text())
    by_study = json.loads((tmp_path / "study" / "ModalitySpecific" / "seed0" / TRAIN_SUMMARY).read_text())
    assert set(by_loop) == set(by_study) == {f.name for f in fields(TrainSummary)}
    for s in (by_loop, by_study):
        assert s["arch"] == "modality_specific" and s["seed"] == 0 and s["steps"] == 5 and s["n_train"] == len(tr)
        assert s["wall_time_s"] > 0 and s["train_config"]["steps"] == 5 and s["model_config"]["m"] == cfg.m
    assert by_loop["method"] is None and by_loop["train_key"] is None  # the study's fields
    assert by_study["method"] == "ModalitySpecific" and by_study["train_key"]["steps"] == 5
    assert by_study["data_fingerprint"] and by_study["alignment"]["wall_time_s"] >= 0


def test_the_training_code_of_an_arch_is_its_own_files(tmp_path, monkeypatch):
    """The key of a group-sparse model covers its module and the TopK SAE it extends, not BatchTopK's file."""
    import inspect

    from mmsae.models import BatchTopKSAE, GroupSparseSAE, TopKSAE

    ex.training_code_version.cache_clear()
    files = {Path(inspect.getfile(c)).name for c in GroupSparseSAE.__mro__ if c.__module__.startswith("mmsae.models")}
    assert {"group_sparse.py", "topk.py", "base.py"} <= files and "batchtopk.py" not in files
    assert Path(inspect.getfile(BatchTopKSAE)).name == "batchtopk.py" and TopKSAE in BatchTopKSAE.__mro__
