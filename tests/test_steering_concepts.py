import numpy as np
import torch

from mmsae.concepts import decompose_probe, name_latents
from mmsae.models import SAEConfig, build_model
from mmsae.steering import concept_target, latent_std, pick_latent_by_codes, pick_latent_by_direction, steering_curve


def _identity_sae(d=4):
    torch.manual_seed(0)
    m = build_model(SAEConfig(d=d, m=d, k=d, auxk_coef=0.0))
    with torch.no_grad():
        m.W_enc.copy_(torch.eye(d))
        m.W_dec.copy_(torch.eye(d))
        m.b_pre.zero_()
    return m.eval()


def test_steering_moves_toward_the_concept_by_hand():
    m = _identity_sae()
    u = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    target = np.array([0, 0, 1.0, 0])
    rows = steering_curve(m, u, 0, latent=2, alphas=[0.0, 1.0], sigma=1.0, target=target)
    assert rows[0]["toward"] == 0.0 and rows[0]["kept"] == 1.0
    # u + e_2, normalised: cosine to target = 1/sqrt(2), kept = 1/sqrt(2)
    assert abs(rows[1]["toward"] - 1 / np.sqrt(2)) < 1e-6
    assert abs(rows[1]["kept"] - 1 / np.sqrt(2)) < 1e-6


def test_latent_choice_helpers():
    z = np.zeros((6, 3))
    z[:3, 1] = [1, 2, 3]
    z[3:, 2] = 1
    c = np.array([1, 2, 3, 0, 0, 0.0])
    assert pick_latent_by_codes(z[:3], z[3:], c[:3], c[3:]) == 1
    assert pick_latent_by_direction(np.eye(3), np.array([0, 0.1, 1.0])) == 2
    assert latent_std(z, 0) == 1.0  # constant latent: std falls back to 1
    np.testing.assert_allclose(concept_target(np.eye(3), np.array([1, 1, 0])), [2 ** -0.5, 2 ** -0.5, 0])


def test_naming_and_probe_decomposition():
    atoms = np.eye(3)
    names, cos = name_latents(atoms, np.array([[0, 1.0, 0], [1.0, 0.1, 0], [0, 0, 1.0]]), ["dog", "cat", "car"])
    assert names == ["cat", "dog", "car"] and cos[1] == 1.0
    top = decompose_probe(np.array([2.0, 0.0, 1.0]), atoms, top=2, names=["a", "b", "c"])
    assert [t["name"] for t in top] == ["a", "c"]
    assert abs(top[0]["nnls_weight"] - 2.0) < 1e-9 and abs(top[1]["nnls_weight"] - 1.0) < 1e-9
