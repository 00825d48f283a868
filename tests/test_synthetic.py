import numpy as np
import pytest

from mmsae.synthetic import IMAGE_ONLY, SHARED, TEXT_ONLY, load_truth, make_synthetic


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_pairs=4000, d=128, n_shared=60, n_image_only=20, n_text_only=20, alpha=0.6, seed=3)


def test_shapes_and_normalisation(data):
    p = data.pairs
    assert p.x.shape == (4000, 128) and p.y.shape == (4000, 128)
    np.testing.assert_allclose(np.linalg.norm(p.x, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(p.y, axis=1), 1, atol=1e-5)
    assert data.codes_x.shape == (4000, 100) and data.atoms_x.shape == (100, 128)


def test_concept_directions_have_cosine_alpha(data):
    shared = data.concept_kind == SHARED
    cos = (data.atoms_x[shared] * data.atoms_y[shared]).sum(1)
    np.testing.assert_allclose(cos, 0.6, atol=1e-5)
    assert np.all(data.atoms_y[data.concept_kind == IMAGE_ONLY] == 0)
    assert np.all(data.atoms_x[data.concept_kind == TEXT_ONLY] == 0)


def test_supports(data):
    k = data.concept_kind
    # shared concepts: same support in both members of a pair
    np.testing.assert_array_equal(data.codes_x[:, k == SHARED] > 0, data.codes_y[:, k == SHARED] > 0)
    assert not (data.codes_y[:, k == IMAGE_ONLY] > 0).any()
    assert not (data.codes_x[:, k == TEXT_ONLY] > 0).any()
    assert (data.codes_x >= 0).all()
    # class concept always present
    rows = np.arange(4000)
    assert (data.codes_x[rows, data.pairs.labels] > 0).all()


def test_clip_like_modality_gap_and_alignment(data):
    x, y = data.pairs.x, data.pairs.y
    gap = np.linalg.norm(x.mean(0) - y.mean(0))
    assert 0.6 < gap < 1.0
    pair_cos = (x * y).sum(1).mean()
    rand_cos = (x * np.roll(y, 1, 0)).sum(1).mean()
    assert pair_cos > rand_cos + 0.1


def test_deterministic_and_truth_round_trip(tmp_path, data):
    again = make_synthetic(n_pairs=4000, d=128, n_shared=60, n_image_only=20, n_text_only=20, alpha=0.6, seed=3)
    np.testing.assert_array_equal(again.pairs.x, data.pairs.x)
    other = make_synthetic(n_pairs=4000, d=128, n_shared=60, n_image_only=20, n_text_only=20, alpha=0.6, seed=4)
    assert not np.allclose(other.pairs.x, data.pairs.x)
    t = load_truth(data.save_truth(tmp_path / "truth.npz"))
    np.testing.assert_array_equal(t["codes_y"], data.codes_y)
    assert t["config"]["alpha"] == 0.6


def test_zero_shot_set_is_solvable_dense(data):
    zs = data.zero_shot_set()
    pred = (zs.emb @ zs.class_emb.T).argmax(1)
    assert (pred == zs.labels).mean() > 0.5  # well above chance (0.1)


def test_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        make_synthetic(n_pairs=10, alpha=1.5)
