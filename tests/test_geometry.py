import numpy as np
import pytest

from mmsae.eval.geometry import COUNT_KEYS, compare_geometry, embedding_geometry, real_clip_geometry


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def cloud():
    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((300, 32)) + 2.0 * np.eye(32)[0])
    y = _unit(rng.standard_normal((300, 32)) + 2.0 * np.eye(32)[1])
    return x, y


def test_identical_modalities(cloud):
    x, _ = cloud
    g = embedding_geometry(x, x, top=10)
    assert g["pair_cosine"] == pytest.approx(1.0)
    assert g["centred_pair_cosine"] == pytest.approx(1.0)
    assert g["modality_gap"] == pytest.approx(0.0, abs=1e-12)
    assert g["cos_means"] == pytest.approx(1.0)
    assert g["subspace_overlap"] == pytest.approx(1.0)
    assert g["i2t_R@1"] == 1.0 and g["t2i_R@1"] == 1.0
    assert g["effective_rank_x"] == pytest.approx(g["effective_rank_y"])


def test_orthogonal_principal_subspaces_have_zero_overlap():
    rng = np.random.default_rng(1)
    d = 40
    x = np.zeros((200, d))
    y = np.zeros((200, d))
    x[:, :10] = rng.standard_normal((200, 10))  # image varies in dims 0-9
    y[:, 10:20] = rng.standard_normal((200, 10))  # text in dims 10-19
    x[:, 30] = y[:, 30] = 1.0  # both in a cone; no effect on the centred subspaces
    g = embedding_geometry(x, y, top=5)
    assert g["subspace_overlap"] == pytest.approx(0.0, abs=1e-12)
    assert g["centred_pair_cosine"] == pytest.approx(0.0, abs=1e-12)
    assert g["cos_means"] > 0.9  # means are both near e_30


def test_unit_rows_variance_identity_and_means(cloud):
    x, y = cloud
    g = embedding_geometry(x, y)
    # for unit rows, mean squared distance to the mean = 1 - |mean|^2
    assert g["variance_x"] == pytest.approx(1 - g["mean_norm_x"] ** 2)
    assert g["variance_y"] == pytest.approx(1 - g["mean_norm_y"] ** 2)
    assert g["variance"] == pytest.approx((g["variance_x"] + g["variance_y"]) / 2)
    mx, my = x.mean(0), y.mean(0)
    assert g["modality_gap"] == pytest.approx(np.linalg.norm(mx - my))
    # the means lie near e_0 and e_1: nearly orthogonal
    assert abs(g["cos_means"]) < 0.2


def test_random_pair_cosine_is_exact_mean_over_mismatched_pairs(cloud):
    x, y = cloud
    sims = x @ y.T
    off = sims[~np.eye(len(x), dtype=bool)]
    g = embedding_geometry(x, y)
    assert g["random_pair_cosine"] == pytest.approx(off.mean())
    assert g["pair_cosine"] == pytest.approx(np.diag(sims).mean())


def test_effective_rank_of_k_equal_directions():
    # rows +-e_i for i < k: the centred covariance has k equal eigenvalues -> effective rank k
    d, k = 20, 6
    e = np.eye(d)[:k]
    x = np.concatenate([e, -e, e, -e])
    y = np.concatenate([e[:, ::-1], -e[:, ::-1]] * 2)
    g = embedding_geometry(x, y, top=3)
    assert g["effective_rank_x"] == pytest.approx(k)
    assert g["effective_rank_y"] == pytest.approx(k)


def test_retrieval_pool_and_bad_input(cloud):
    x, y = cloud
    g = embedding_geometry(x, y, retrieval_pool=50)
    assert g["retrieval_pool"] == 50 and g["n"] == 300
    with pytest.raises(ValueError, match="top"):
        embedding_geometry(x, y, top=40)
    with pytest.raises(ValueError, match="retrieval_pool"):
        embedding_geometry(x, y, retrieval_pool=301)
    with pytest.raises(ValueError, match="shape"):
        embedding_geometry(x, y[:10])


def test_compare_geometry_tolerances():
    ref = {"n": 500, "d": 512, "top": 20, "retrieval_pool": 500, "big": 1.0, "small": 0.2, "rank": 100.0}
    ours = {"n": 500, "d": 128, "top": 20, "retrieval_pool": 500, "big": 1.2, "small": 0.24, "rank": 90.0}
    df = compare_geometry(ours, ref).set_index("statistic")
    assert set(df.index) == {"big", "small", "rank"}  # counts are not compared
    assert not set(COUNT_KEYS) & set(df.index)
    assert not df.loc["big", "within"]  # 20% > 15% relative
    assert df.loc["small", "within"]  # reference < 0.3: 0.04 <= 0.05 absolute
    assert df.loc["rank", "within"]  # 10% relative
    assert df.loc["big", "rel_diff"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="top"):
        compare_geometry({**ours, "top": 10}, ref)
    with pytest.raises(ValueError, match="missing"):
        compare_geometry({k: v for k, v in ours.items() if k != "rank"}, ref)


def test_real_clip_geometry_matches_paper_section_4(coco500_path):
    g = real_clip_geometry(path=coco500_path)
    assert g["n"] == 500 and g["d"] == 512
    # docs/paper.md section 4 (two decimals)
    expected = {"mean_norm_x": 0.73, "mean_norm_y": 0.72, "cos_means": 0.31, "modality_gap": 0.85,
                "pair_cosine": 0.31, "centred_pair_cosine": 0.315, "subspace_overlap": 0.17, "i2t_R@1": 0.55}
    for k, v in expected.items():
        assert g[k] == pytest.approx(v, abs=0.006), k
    assert g["variance"] == pytest.approx(0.47, abs=0.01)
    # the paper rounds the random-pair cosine to 0.17; the exact mean over all mismatched pairs is 0.162
    assert g["random_pair_cosine"] == pytest.approx(0.16, abs=0.01)
    assert 50 < g["effective_rank_y"] < g["effective_rank_x"] < 200


def test_real_clip_geometry_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        real_clip_geometry(path=tmp_path / "nope.npy")
