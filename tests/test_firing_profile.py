"""metrics.firing_profile: where a dictionary's firings go (rare, frequent, unimodal)."""

import numpy as np
import pytest
import scipy.sparse as sp

from mmsae.eval.metrics import firing_profile


def _codes():
    # 8 latents, 10 pairs: latent 0 fires on every image and caption (frequent, shared), latent 1 on
    # every image only (frequent, unimodal), latent 2 on one caption (rare), latents 3-7 never
    zx, zy = np.zeros((10, 8)), np.zeros((10, 8))
    zx[:, 0] = zy[:, 0] = 1.0
    zx[:, 1] = 0.5
    zy[3, 2] = 0.2
    return zx, zy


def test_counts_by_hand():
    zx, zy = _codes()
    p = firing_profile(zx, zy)
    # firings: latent 0: 20, latent 1: 10, latent 2: 1; mean per latent 31 / 8 = 3.9
    assert p["never"] == 5 / 8 and p["rare"] == 1 / 8 and p["frequent"] == 2 / 8
    assert p["frequent_unimodal"] == 1 / 8
    assert p["firings_frequent_unimodal"] == pytest.approx(10 / 31)
    assert p["top10_share"] == pytest.approx(20 / 31)  # the top 10% of 8 latents: one latent
    assert p["median_firings"] == 0.0 and p["firings_per_sample"] == pytest.approx(31 / 20)
    assert "true_per_sample" not in p


def test_sparse_codes_and_truth_give_the_same_numbers():
    zx, zy = _codes()
    tx = np.zeros((10, 4)); tx[:, :3] = 1.0  # 3 true concepts per image
    ty = np.zeros((10, 4)); ty[:, 0] = 1.0  # 1 per caption
    dense = firing_profile(zx, zy, true_codes_x=tx, true_codes_y=ty)
    sparse = firing_profile(sp.csr_matrix(zx), sp.csr_matrix(zy), true_codes_x=sp.csr_matrix(tx),
                            true_codes_y=ty)
    assert dense == sparse
    assert dense["true_per_sample"] == 2.0 and dense["n_true_concepts"] == 4


def test_threshold_and_width_checks():
    zx, zy = _codes()
    assert firing_profile(zx, zy, threshold=0.6)["frequent_unimodal"] == 0.0  # latent 1 (0.5) no longer fires
    with pytest.raises(ValueError, match="different widths"):
        firing_profile(zx, zy[:, :7])
