import numpy as np
import pandas as pd
import pytest

from mmsae.study import methods as M
from mmsae.study.experiments import method_config
from mmsae.study.ladder import ladder_metrics, ladder_rungs, ladder_sentences, ladder_steps
from mmsae.study.profiles import get_profile


def _per_seed():
    # both_min1 (of m = 100): SAE 10/12, CentredSAE 60/58, GSAE 70/72, MGSAE 80/82, MaskedSAE 65/67
    both = {M.SAE: [10, 12], M.CENTRED_SAE: [60, 58], M.GSAE: [70, 72], M.MGSAE: [80, 82], M.MASKED_SAE: [65, 67]}
    rows = []
    for model, vals in both.items():
        for seed, b in enumerate(vals):
            rows.append({"model": model, "seed": seed, "m": 100, "both_min1": b, "dead_min1": 5, "both": b - 5,
                         "unimodal_share": 1 - b / 100, "code_x2y_R@1": b / 200, "zs_caption_classes_code": 0.5,
                         "other": 1.0})
    rows.append({"model": M.BATCHTOPK, "seed": 0, "m": 100, "both_min1": 1, "dead_min1": 0, "both": 0,
                 "unimodal_share": 1, "code_x2y_R@1": 0, "zs_caption_classes_code": 0.1, "other": 0})
    return pd.DataFrame(rows)


def test_metrics_include_zero_shot_sets():
    m = ladder_metrics(_per_seed())
    assert m["zs_caption_classes_code"] == "zero-shot (codes, caption classes)"
    assert "other" not in m and m["both_min1"] == "both, any firing"


def test_rungs_mean_std_as_shares_of_m():
    df, cap = ladder_rungs(_per_seed())
    assert list(df["model"]) == M.LADDER  # the ladder's order; other methods left out
    sae = df.set_index("model").loc[M.SAE]
    assert sae["both, any firing"] == pytest.approx(0.11) and sae["both, any firing_std"] == pytest.approx(0.01)
    assert sae["never fires"] == pytest.approx(0.05)
    assert "ingredient" in cap


def test_steps_per_seed_differences_and_shares():
    df, _ = ladder_steps(_per_seed())
    df = df.set_index("to")
    c = df.loc[M.CENTRED_SAE]  # SAE -> CentredSAE: +50 and +46, of a total change +70 (both seeds)
    assert c["both, any firing"] == pytest.approx(0.48) and c["both, any firing_std"] == pytest.approx(0.02)
    assert c["both, any firing_share"] == pytest.approx(0.48 / 0.70)
    g, mg = df.loc[M.GSAE], df.loc[M.MGSAE]
    # the three steps of the main ladder add up to the whole change
    assert c["both, any firing"] + g["both, any firing"] + mg["both, any firing"] == pytest.approx(0.70)
    assert c["both, any firing_share"] + g["both, any firing_share"] + mg["both, any firing_share"] == pytest.approx(1)
    assert np.isnan(c["zero-shot (codes, caption classes)_share"])  # no change from SAE to MGSAE: no share
    assert df.loc[M.MASKED_SAE, "from"] == M.CENTRED_SAE


def test_steps_skip_missing_rungs_and_sentences():
    ps = _per_seed()
    df, _ = ladder_steps(ps[ps.model != M.MASKED_SAE])
    assert M.MASKED_SAE not in set(df["to"])
    s = ladder_sentences(df)
    assert s[0].startswith("centring each modality: +0.48 ± 0.02 (69% of MGSAE's change over the SAE)")


def test_ladder_rungs_are_the_recipes_they_name():
    P = get_profile("smoke")
    sae, cen, g, mg, ms = (method_config(n, P) for n in M.LADDER)
    assert sae.n_modalities == 1 and sae.group_lambda == 0 and sae.mask_rate == 0
    assert (cen.arch, cen.n_modalities, cen.group_lambda, cen.mask_rate) == ("group_sparse", 2, 0.0, 0.0)
    assert g.group_lambda == P["group_lambda"] and g.mask_rate == 0
    assert mg.group_lambda == P["group_lambda"] and mg.mask_rate == P["mask_rate"]
    assert (ms.group_lambda, ms.mask_rate, ms.mask_mode) == (0.0, P["mask_rate"], P["mask_mode"])


def test_ladder_and_headline_figures(tmp_path):
    from mmsae.study import plots

    rungs, _ = ladder_rungs(_per_seed())
    fig = plots.plot_ladder(rungs, ["both, any firing", "never fires", "zero-shot (codes, caption classes)"])
    assert len([a for a in fig.axes if a.get_visible()]) == 3
    head = plots.plot_headline(rungs, {"both, any firing": {M.SAE: 0.56, M.GSAE: 0.71, M.MGSAE: 0.76}})
    ax = head.axes[0]
    assert len(ax.patches) == len(M.LADDER)  # one bar per rung
    from matplotlib.collections import PathCollection

    diamonds = next(c for c in ax.collections if isinstance(c, PathCollection)).get_offsets()
    assert [tuple(p) for p in diamonds] == [(0, 0.56), (2, 0.71), (3, 0.76)]  # SAE, GSAE, MGSAE positions
    w, h = head.get_size_inches()
    assert w / h <= 3
    paths = plots.save_figure(head, "headline", tmp_path)
    assert all(p.exists() for p in paths)
