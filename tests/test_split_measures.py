"""Split measures that do not depend on the number of held-out pairs (issue: real evidence)."""

import numpy as np
import pytest

from mmsae.eval import metrics as M
from mmsae.eval.analysis import split_vs_sample_size


def _codes(n: int, seed: int = 0):
    """Codes of 40 latents with known firing probabilities per modality:
    10 shared (0.2/0.2), 10 image-leaky (0.2 on images, 0.002 on captions),
    10 text-leaky (0.002/0.2), 10 never firing."""
    rng = np.random.default_rng(seed)
    p_x = np.r_[np.full(10, 0.2), np.full(10, 0.2), np.full(10, 0.002), np.zeros(10)]
    p_y = np.r_[np.full(10, 0.2), np.full(10, 0.002), np.full(10, 0.2), np.zeros(10)]
    zx = (rng.random((n, 40)) < p_x) * rng.exponential(1.0, (n, 40))
    zy = (rng.random((n, 40)) < p_y) * rng.exponential(1.0, (n, 40))
    return zx.astype(np.float32), zy.astype(np.float32)


def test_fixed_rule_counts_leakage_as_both_and_drifts_with_n():
    fracs = [M.neuron_categories(*_codes(n), min_count=1)["both"] / 40 for n in (100, 500, 4000)]
    # with min_count=1 the leaky latents turn into "both" as n grows (the defect)
    assert fracs[-1] - fracs[0] > 0.2
    assert fracs[-1] == pytest.approx(0.75, abs=0.03)


def test_scaled_rule_is_stable_in_n_and_sees_the_leaky_latents_as_unimodal():
    got = [M.neuron_categories(*_codes(n, seed=n), min_count="scaled", min_frac=0.2) for n in (100, 500, 4000)]
    fracs = [g["both"] / 40 for g in got]
    assert max(fracs) - min(fracs) <= 0.05
    big = got[-1]
    assert big["both"] == 10 and big["image_only"] == 10 and big["text_only"] == 10 and big["dead"] == 10
    assert list(big["categories"][10:20]) == ["image_only"] * 10
    # the applied count grows with n: N * K_eff / m * min_frac
    assert got[0]["min_count"] < got[1]["min_count"] < got[2]["min_count"]


def test_category_min_count_formula():
    zx = np.zeros((100, 10), np.float32)
    zy = np.zeros((100, 10), np.float32)
    zx[:, :2] = 1.0  # K_eff on images = 2
    zy[:, :4] = 1.0  # K_eff on text = 4 -> mean 3; expected firings = 100 * 3 / 10 = 30
    assert M.category_min_count(zx, zy, "scaled", min_frac=0.2) == 6
    assert M.category_min_count(zx, zy, 3) == 3
    with pytest.raises(ValueError):
        M.category_min_count(zx, zy, 0)
    with pytest.raises(ValueError):
        M.category_min_count(zx, zy, "auto")


def test_split_measures_unimodal_share_and_quantiles():
    n = 200
    zx = np.zeros((n, 4), np.float32)
    zy = np.zeros((n, 4), np.float32)
    zx[:, 0] = 1.0  # image-only: score 1
    zy[:, 1] = 1.0  # text-only: score 0
    zx[:, 2] = 1.0
    zy[:, 2] = 1.0  # balanced: score 0.5
    # latent 3 never fires: not scored
    s = M.split_measures(zx, zy, min_count=1)
    assert s["n_scored"] == 3
    assert s["unimodal_share"] == pytest.approx(2 / 3)
    assert s["image_share"] == pytest.approx(1 / 3) and s["text_share"] == pytest.approx(1 / 3)
    assert s["score_q50"] == pytest.approx(0.5)
    assert s["score_balance"] == pytest.approx(1 / 3)


def test_split_measure_stable_in_n():
    shares = [M.split_measures(*_codes(n, seed=n + 1), min_count="scaled")["unimodal_share"] for n in (200, 1000, 4000)]
    assert max(shares) - min(shares) <= 0.1
    assert shares[-1] == pytest.approx(2 / 3, abs=0.05)  # the 20 leaky latents of 30 scored


def test_split_vs_sample_size_table():
    zx, zy = _codes(600)
    df = split_vs_sample_size(zx, zy, [100, 300, 600, 5000], repeats=2)
    assert set(df["n_pairs"]) == {100, 300, 600}  # sizes above the data are dropped
    fixed = df[df.rule.str.startswith("fixed")].groupby("n_pairs")["frac_both"].mean()
    scaled = df[df.rule.str.startswith("scaled")].groupby("n_pairs")["frac_both"].mean()
    assert fixed.loc[600] > scaled.loc[600]
    assert (df[df.rule.str.startswith("fixed")]["min_count"] == 1).all()
    assert len(df[(df.n_pairs == 600)]) == 2  # the full set is drawn once per rule


def test_category_rule_names_the_rule():
    assert "scaled" in M.category_rule("scaled", 0.2) and "0.2" in M.category_rule("scaled", 0.2)
    assert ">= 1 sample" in M.category_rule(1)


def test_analyze_reports_the_paper_rule_beside_the_scaled_rule():
    import torch

    from mmsae.data.synthetic import make_synthetic
    from mmsae.eval.analysis import analyze
    from mmsae.models import SAEConfig, build_model

    val = make_synthetic(n_pairs=300, d=32, n_shared=16, n_image_only=8, n_text_only=8, seed=0).pairs
    model = build_model(SAEConfig(d=32, m=64, k=4), seed=0)
    with torch.no_grad():
        a = analyze(model, val, retrieval_pool=100)
    paper = M.neuron_categories(a.z_x, a.z_y, min_count=1)
    assert a.summary["both_min1"] == paper["both"] and a.summary["dead_min1"] == paper["dead"]
    scaled = M.neuron_categories(a.z_x, a.z_y, min_count="scaled")
    assert a.summary["both"] == scaled["both"] and a.summary["category_min_count"] == scaled["min_count"]
