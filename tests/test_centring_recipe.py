"""scripts/centring_recipe.py changes one ingredient of the centred SAE at a time: each variant must be
the recipe its name says (a frozen pre-bias stays at the modality means, an untied encoder starts apart
from the decoder, ...), or the table explains nothing."""

import numpy as np
import pytest
import torch

from conftest import load_script
from mmsae.data.store import PairedEmbeddings
from mmsae.study.profiles import get_profile


@pytest.fixture(scope="module")
def cr():
    return load_script("centring_recipe")


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 300, 16)).astype(np.float32)
    x += 2.0
    y -= 1.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return PairedEmbeddings(x, y)


def test_variants_are_the_recipes_they_name(cr, pairs):
    P = get_profile("smoke", steps=20, m=32, k=4)
    shipped = cr.fit(*cr.VARIANTS["shipped"][:2], pairs, 0, P)
    frozen = cr.fit(*cr.VARIANTS["frozen"][:2], pairs, 0, P)
    means = np.stack([pairs.x.mean(0), pairs.y.mean(0)])
    np.testing.assert_allclose(frozen.b_pre.detach().numpy(), means, atol=1e-6)  # kept at the means
    assert not np.allclose(shipped.b_pre.detach().numpy(), means, atol=1e-4)  # learned: it moved
    assert shipped.b_pre.shape[0] == 2 and cr.fit(*cr.VARIANTS["pooled SAE"][:2], pairs, 0, P).b_pre.shape[0] == 1

    P0 = get_profile("smoke", steps=1, m=32, k=4, lr=0.0)  # lr 0: the weights stay as initialised
    for name in ("untied_unit", "linear_init", "small_encoder", "random_bias"):
        m = cr.fit(*cr.VARIANTS[name][:2], pairs, 0, P0)
        w_enc, w_dec, b_enc = m.W_enc.detach(), m.W_dec.detach(), m.b_enc.detach()
        if name in ("untied_unit", "linear_init"):
            assert not torch.allclose(w_enc, w_dec)
        if name == "untied_unit":
            torch.testing.assert_close(w_enc.norm(dim=1), torch.ones(32))
        if name == "small_encoder":
            torch.testing.assert_close(w_enc, w_dec * np.sqrt(1 / 3))
        if name in ("linear_init", "random_bias"):
            assert 0 < b_enc.abs().max() <= 1 / 4  # uniform in +-1/sqrt(d), d = 16
        else:
            assert b_enc.abs().max() == 0
