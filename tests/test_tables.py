"""mmsae.study.tables: every results table of notebook 04, on small inputs (hand-made rows where the numbers are
known, a few tiny trained models where the table needs codes)."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from mmsae.data.synthetic import make_synthetic
from mmsae.eval.analysis import mms_reference
from mmsae.models import SAEConfig, build_model, gsae_config
from mmsae.study import findings, tables
from mmsae.study import methods as M
from mmsae.train import train

RUN = tables.RunInfo("smoke", "synthetic", 200, "scaled (min_frac 0.2)", "ground-truth codes", (0, 1), (0,))


def _per_seed():
    rows = []
    for model, both in ((M.SAE, (10, 14)), (M.GSAE, (40, 44)), (M.MODALITY_SPECIFIC, (50, 50))):
        for seed, b in enumerate(both):
            rows.append({"model": model, "seed": seed, "m": 64, "both": b, "image_only": 20, "text_only": 64 - b - 25,
                         "dead": 5, "both_min1": b + 2, "image_only_min1": 19, "text_only_min1": 64 - b - 24,
                         "dead_min1": 3, "unimodal_share": 1 - b / 64, "image_share": 0.3, "text_share": 0.4,
                         "score_balance": 0.1, "score_q10": 0.0, "score_q50": 0.5, "score_q90": 1.0, "n_scored": 59,
                         "both_rule": "matched" if model == M.MODALITY_SPECIFIC else "fires on both",
                         "category_rule": RUN.rule, "category_min_count": 3, "retrieval_pool": 200,
                         "explained_variance_x": 0.8 + seed / 100, "explained_variance_y": 0.7, "nmse_x": 0.2,
                         "nmse_y": 0.3, "cosine_x": 0.9, "cosine_y": 0.85, "mms_img_txt_mean_alive": 0.5,
                         "zs_classes_code": b / 100, "zs_classes_recon": 0.5, "zs_classes_dense": 0.9,
                         "gt_recovery_mean": 0.6, "gt_alignment_error": 0.4, "gt_collapse_rate": 0.1,
                         "code_x2y_R@1": b / 200})
    return pd.DataFrame(rows)


def test_show_is_narrow_rounded_and_human():
    t = tables.neuron_categories(_per_seed(), RUN)
    shown = t.show()
    assert list(shown.columns) == ["model", "both", "image-only", "text-only", "dead", "both (any firing)",
                                   "never fires"]
    sae = shown.set_index("model").loc[M.SAE]
    assert sae["both"] == "12.0 ± 2.8"  # counts: one decimal, the sample std over two seeds
    assert sae["dead"] == "5.0 ± 0.0"
    r = tables.reconstruction(_per_seed()).show()
    assert r.set_index("model").loc[M.SAE, "explained variance, image"] == "0.805 ± 0.007"
    assert all("_" not in c for c in r.columns)


def test_categories_keep_both_rules_and_say_so():
    t = tables.neuron_categories(_per_seed(), RUN)
    f = t.frame.set_index("model")
    assert f.loc[M.GSAE, "both"] == 42 and f.loc[M.GSAE, "both_min1"] == 44
    assert f.loc[M.MODALITY_SPECIFIC, "both_rule"] == "matched"
    assert RUN.rule in t.caption and "never fires" in t.caption and t.name == "neuron_categories"


def test_tables_without_their_data_are_none():
    ps = _per_seed().drop(columns=[c for c in _per_seed().columns if c.startswith(("zs_", "gt_"))])
    assert tables.zero_shot(ps) is None and tables.ground_truth(ps) is None
    assert tables.name_agreement([], "none") is None and tables.probe_decomposition([]) is None


def test_comparison_markdown_and_paper_facing_columns():
    full, cmp, md = tables.comparison(_per_seed(), ["classes"], RUN)
    assert full.latex is False and cmp.name == "comparison" and "2 seeds" in cmp.caption
    assert "zs_classes_code" in cmp.frame and "zs_classes_code_std" in cmp.frame
    assert md.splitlines()[0].startswith("| model | img-only | txt-only | both | dead")
    assert "| SAE | 20 ± 0.0 | 27 ± 2.8 | 12 ± 2.8 | 5 ± 0.0" in md


def test_ablation_and_alpha_tables_keep_timings_out_of_results():
    raw = pd.DataFrame([{"model": M.GSAE, "group_lambda": lam, "seed": s, "both": 10 * lam + s, "dead": 1,
                         "frac_both": 0.5, "wall_time_s": 3.2} for lam in (0.0, 0.1) for s in (0, 1)])
    per_seed, timed, tab, agg = tables.ablation(raw, "lambda", 100, [], RUN)
    assert "wall_time_s" not in per_seed.frame and "wall_time_s" in timed.frame
    assert list(tab.frame["group_lambda"]) == [0.0, 0.1] and tab.frame["both"].tolist() == [0.5, 1.5]
    assert "100 steps" in tab.caption
    alpha_raw = pd.DataFrame([{"model": m, "alpha": a, "seed": 0, "gt_recovery_mean": r, "gt_alignment_error": e,
                               "wall_time_s": 1.0}
                              for m, a, r, e in ((M.SAE, 0.5, 0.6, 0.5), (M.GSAE, 0.5, 0.7, 0.2),
                                                 (M.SAE, 1.0, 0.9, 0.1), (M.GSAE, 1.0, 0.8, 0.3))])
    _, _, tab, winners, _ = tables.alpha_sweep(alpha_raw, 1000, 50, RUN)
    w = winners.frame.set_index("alpha")
    assert w.loc[0.5, "best_recovery"] == M.GSAE and w.loc[1.0, "best_recovery"] == M.SAE
    assert w.loc[1.0, "lowest_alignment_error"] == M.SAE


def test_browser_summary_means_over_seeds():
    rows, cols = tables.browser_summary(_per_seed(), [M.SAE, M.GSAE], ["classes"])
    assert rows[0]["both"] == 12.0 and rows[1]["zs_classes_code"] == 0.42
    assert ("zs_classes_code", "zero-shot classes (codes)") in cols


def test_publish_writes_and_removes_stale(tmp_path):
    (tmp_path / "zero_shot.csv").write_text("old")
    tables.publish(tmp_path, tables.split_measures(_per_seed(), RUN), None, stale=["zero_shot"], show=False)
    assert (tmp_path / "split_measures.csv").exists() and (tmp_path / "split_measures.tex").exists()
    assert not (tmp_path / "zero_shot.csv").exists()


def test_findings_are_written_from_the_numbers():
    ps = _per_seed()
    text = findings.analysis(ps, RUN)
    assert "SAE 22%" in text and "GSAE 69%" in text  # both_min1 14/64 and 44/64 on average
    assert "zero-shot" in text.lower() and "classes" in text
    assert findings.describe_data("embeddings:data/clip_vitb16_coco500.npy").startswith("500 COCO")
    assert "your embeddings (mine.npy)" == findings.describe_data("embeddings:/x/mine.npy")
    gain = pd.DataFrame([{"model": m, "modality": mod, "mean": v, "std": 0.01}
                         for m, mod, v in ((M.SAE, "image", 0.2), (M.SAE, "text", 0.01), (M.GSAE, "image", 0.1),
                                           (M.GSAE, "text", 0.12))])
    sep = {"image": {"best": M.SAE, "not_separated_from_best": [M.SAE], "separates": True},
           "text": {"best": M.GSAE, "not_separated_from_best": [M.GSAE], "separates": True}}
    s = findings.steering(gain, sep, "concept 0", 8.0, "synthetic")
    assert "Moves both modalities** (gain above 0.05 on images and on captions): GSAE." in s


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny models (SAE, GSAE; two seeds) on 900 synthetic pairs, saved where notebook 04 finds them."""
    root = tmp_path_factory.mktemp("run")
    synth = make_synthetic(n_pairs=900, d=24, n_shared=20, n_image_only=6, n_text_only=6, seed=0, n_classes=4,
                           correlated=(0, 19, 0.8))
    tr, va = synth.pairs.subset(np.arange(700)), synth.subset(np.arange(700, 900))
    truth = {"atoms_x": va.atoms_x, "atoms_y": va.atoms_y, "concept_kind": va.concept_kind, "codes_x": va.codes_x,
             "codes_y": va.codes_y, "config": {"correlated": [0, 19, 0.8]}}
    paths = SimpleNamespace(root=root, profile="smoke", data="synthetic",
                            model_dir=lambda n, s: root / "models" / n / f"seed{s}")
    for name, cfg in ((M.SAE, SAEConfig(d=24, m=32, k=3)), (M.GSAE, gsae_config(24, 32, 3))):
        for s in (0, 1):
            torch.manual_seed(s)
            train(build_model(cfg), tr, steps=60, batch_size=64, lr=1e-3, seed=s, progress=False).model.save(
                paths.model_dir(name, s))
    rx, ry, kind = mms_reference(va.pairs, truth)
    analyses, per_seed = tables.evaluate_all(paths, [M.SAE, M.GSAE], (0, 1), va.pairs, rx, ry,
                                             {"classes": va.zero_shot_set()}, truth, kind, threshold=0.0,
                                             min_count="scaled", min_frac=0.2)
    return SimpleNamespace(paths=paths, analyses=analyses, per_seed=per_seed, val=va.pairs, truth=truth)


def test_evaluate_all_names_an_untrained_model(trained):
    with pytest.raises(FileNotFoundError, match="MGSAE \\(seed 0\\)"):
        tables.evaluate_all(trained.paths, [M.MGSAE], (0,), trained.val, None, None, {}, None, "none")


def test_tables_from_trained_models(trained):
    t = trained
    assert len(t.per_seed) == 4 and set(t.per_seed["model"]) == {M.SAE, M.GSAE}
    run = tables.RunInfo("smoke", "synthetic", len(t.val), t.per_seed["category_rule"].iloc[0], "truth", (0, 1))
    fp = tables.firing_profile(t.analyses, [M.SAE, M.GSAE], (0, 1), run, truth=t.truth)
    assert fp.frame.shape[0] == 2 and "never" in fp.frame
    vs_n, tab = tables.split_vs_sample_size(t.analyses, [M.SAE], 0, [50, 200])
    assert set(tab.frame["n_pairs"]) == {50, 200} and tab.mean_std is False
    _, other = tables.split_vs_sample_size(t.analyses, [], 0, [50])  # none of the paper's: the models analysed
    assert list(dict.fromkeys(other.frame["model"])) == [M.SAE, M.GSAE]
    ret = tables.retrieval(t.per_seed, t.val)
    assert ret.frame["model"].iloc[-1] == "dense" and 0 <= ret.frame["code_x2y_R@1"].iloc[-1] <= 1
    records, agreement, source = tables.latents_in_words(t.analyses, [M.SAE, M.GSAE], (0, 1), t.val, t.truth)
    assert source == "ground-truth concepts" and len(records[M.SAE]) == 32 and agreement.frame.shape[0] == 2
    assert tables.latent_names(records).frame.shape[0] == 64

    def atoms(n, s, side):
        from mmsae.models import load_model
        with torch.no_grad():
            return load_model(t.paths.model_dir(n, s)).decoder_atoms(side).detach().float().numpy()

    naming, probe = tables.synthetic_naming(t.analyses, [M.SAE], (0, 1), t.truth, t.val, atoms)
    assert naming.frame.shape[0] == 1 and probe.frame.shape[0] == 2
    head = tables.headline_record(t.per_seed, [M.SAE, M.GSAE], run, {}, agreement, source)
    assert set(head["models"]) == {M.SAE, M.GSAE} and head["names_from"] == source
