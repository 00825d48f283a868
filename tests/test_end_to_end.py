"""End to end on synthetic data from a fixed seed: data -> train -> analyze, the paper's direction."""

import numpy as np
import pytest
import torch

from mmsae.eval.analysis import analyze, mms_reference
from mmsae.models import SAEConfig, build_model, gsae_config, mgsae_config
from mmsae.data.synthetic import make_synthetic
from mmsae.train import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results():
    # an easy, well-separated configuration (not the CLIP-calibrated default): strong class concepts, no dense
    # private subspaces, random concept directions, little noise, so the claims are checked on clear signal
    synth = make_synthetic(n_pairs=6000, d=64, n_shared=48, n_image_only=16, n_text_only=16, alpha=0.7, seed=0,
                           class_boost=1.0, private_rank=0, noise=0.2, atom_layout="random", mean_shared=3.0,
                           mean_image_only=1.5, mean_text_only=1.5, mean_cos=0.0, offset_scale=0.75)
    idx = np.random.default_rng(0).permutation(6000)
    tr, va = synth.pairs.subset(np.sort(idx[1000:])), synth.subset(np.sort(idx[:1000]))
    truth = {"atoms_x": va.atoms_x, "atoms_y": va.atoms_y, "concept_kind": va.concept_kind,
             "codes_x": va.codes_x, "codes_y": va.codes_y}
    rx, ry, _ = mms_reference(va.pairs, truth)
    out = {}
    for name, cfg in (("SAE", SAEConfig(d=64, m=256, k=6, dead_after=20_000)),
                      ("GSAE", gsae_config(64, 256, 6, dead_after=20_000)),
                      ("MGSAE", mgsae_config(64, 256, 6, dead_after=20_000))):
        torch.manual_seed(0)
        model = train(build_model(cfg), tr, steps=800, batch_size=128, lr=1e-3, seed=0, progress=False).model
        out[name] = analyze(model, va.pairs, rx, ry, {"cls": va.zero_shot_set()}, truth).summary
    return out


def test_group_sparsity_makes_latents_multimodal(results):
    sae, gsae, mgsae = results["SAE"], results["GSAE"], results["MGSAE"]
    assert gsae["both"] > sae["both"] and mgsae["both"] > sae["both"]
    assert mgsae["dead"] <= sae["dead"]
    assert mgsae["mms_img_txt_mean_all"] > sae["mms_img_txt_mean_all"]


def test_codes_become_cross_modal(results):
    sae, gsae, mgsae = results["SAE"], results["GSAE"], results["MGSAE"]
    for m in (gsae, mgsae):
        assert m["code_x2y_MRR"] > sae["code_x2y_MRR"] and m["code_y2x_MRR"] > sae["code_y2x_MRR"]
        assert m["zs_cls_code"] > sae["zs_cls_code"]
        assert m["gt_shared_concept_corr"] > sae["gt_shared_concept_corr"]


def test_reconstruction_stays_good(results):
    for m in results.values():
        assert m["explained_variance_x"] > 0.7 and m["explained_variance_y"] > 0.7
        assert m["gt_recovery_x_mean"] > 0.7
