"""Tests for mmsae.eval.metrics: hand-computed expectations and fast-vs-naive checks."""

import math

import numpy as np
import pytest
import torch

from mmsae.eval import metrics as M


# --------------------------------------------------------------------------- MMS
# Hand example: 3 samples per modality, 2 latents.
#   image codes z_x (rows = samples):  [1, 0], [2, 4], [3, 0]
#   image reference rows: r0=(1,0), r1=(0,1), r2=(0.6,0.8)
#     => S(0,1)=0, S(0,2)=0.6, S(1,2)=0.8
#   text codes z_y:  [0, 1], [0, 0], [0, 2]
#   text reference rows: t0=(1,0), t1=(0,1), t2=(0.8,0.6)  => S(t0,t2)=0.8
#
# img_img, latent 0: fires on samples 0,1,2 with a=(1,2,3); ordered pairs j != k:
#   num = 2*(1*2*0 + 1*3*0.6 + 2*3*0.8) = 2*(0+1.8+4.8) = 13.2
#   den = 2*(1*2 + 1*3 + 2*3)          = 22            -> MMS = 0.6
# img_img, latent 1: fires only on sample 1 -> no pair j != k -> 0
# txt_txt, latent 0: never fires -> 0
# txt_txt, latent 1: samples 0,2 with a=(1,2): num = 2*(2*0.8) = 3.2, den = 4 -> 0.8
# img_txt, latent 0: text never fires -> 0
# img_txt, latent 1: image sample 1 (a=4, r1=(0,1)); text samples 0 (a=1, t0) and 2 (a=2, t2)
#   S(r1,t0)=0, S(r1,t2)=0.6; num = 4*1*0 + 4*2*0.6 = 4.8, den = 4 + 8 = 12 -> 0.4
# With threshold 1.5: img_img latent 0 fires on samples 1,2 (a=2,3):
#   num = 2*(6*0.8), den = 2*6 -> 0.8; txt_txt latent 1 fires on sample 2 only -> 0;
#   img_txt latent 1: image sample 1 (4) vs text sample 2 (2): S=0.6 -> 0.6
ZX = np.array([[1, 0], [2, 4], [3, 0]], dtype=np.float32)
RX = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
ZY = np.array([[0, 1], [0, 0], [0, 2]], dtype=np.float32)
RY = np.array([[1, 0], [0, 1], [0.8, 0.6]], dtype=np.float32)


def test_mms_hand_example():
    s = M.mms_scores(ZX, ZY, RX, RY)
    np.testing.assert_allclose(s["img_img"], [0.6, 0.0], atol=1e-6)
    np.testing.assert_allclose(s["txt_txt"], [0.0, 0.8], atol=1e-6)
    np.testing.assert_allclose(s["img_txt"], [0.0, 0.4], atol=1e-6)
    n = M.mms_scores_naive(ZX, ZY, RX, RY)
    for k in M.MMS_KEYS:
        np.testing.assert_allclose(n[k], s[k], atol=1e-6)


def test_mms_hand_example_threshold():
    s = M.mms_scores(ZX, ZY, RX, RY, threshold=1.5)
    np.testing.assert_allclose(s["img_img"], [0.8, 0.0], atol=1e-6)
    np.testing.assert_allclose(s["txt_txt"], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(s["img_txt"], [0.0, 0.6], atol=1e-6)


def test_mms_scale_of_reference_irrelevant_and_torch_input():
    s1 = M.mms_scores(ZX, ZY, RX, RY)
    s2 = M.mms_scores(torch.tensor(ZX), torch.tensor(ZY), torch.tensor(RX * 7.0),
                      torch.tensor(RY * 0.3, dtype=torch.float64))
    for k in M.MMS_KEYS:
        np.testing.assert_allclose(s1[k], s2[k], atol=1e-6)


def _random_codes(rng, n, m, k, dead=()):
    z = np.zeros((n, m), dtype=np.float32)
    for i in range(n):
        idx = rng.choice(m, size=k, replace=False)
        z[i, idx] = rng.exponential(1.0, size=k)
    for d in dead:
        z[:, d] = 0.0
    return z


@pytest.mark.parametrize("threshold", [0.0, 0.7])
def test_mms_fast_equals_naive_random(threshold):
    rng = np.random.default_rng(0)
    n, m, k = 17, 9, 3
    zx = _random_codes(rng, n, m, k, dead=(4,))
    zy = _random_codes(rng, n, m, k, dead=(4, 7))
    # a latent that fires on a single image sample only
    zx[:, 2] = 0.0
    zx[5, 2] = 2.0
    rx = rng.normal(size=(n, 5))  # reference dim 5 != embedding dim
    ry = rng.normal(size=(n, 5))
    fast = M.mms_scores(zx, zy, rx, ry, threshold=threshold)
    naive = M.mms_scores_naive(zx, zy, rx, ry, threshold=threshold)
    for key in M.MMS_KEYS:
        np.testing.assert_allclose(fast[key], naive[key], atol=1e-9)
        assert fast[key][4] == 0.0  # never fires
        assert np.all(np.abs(fast[key]) <= 1 + 1e-9)
    assert fast["img_img"][2] == 0.0
    assert fast["txt_txt"][7] == 0.0 and fast["img_txt"][7] == 0.0
    assert np.any(fast["img_txt"] != 0)


def test_mms_identical_reference_gives_one():
    # all samples share one reference direction -> every S = 1 -> MMS = 1 where defined
    rng = np.random.default_rng(1)
    zx = _random_codes(rng, 12, 6, 3)
    zy = _random_codes(rng, 12, 6, 3)
    r = np.tile(np.array([[0.0, 2.0, 0.0]]), (12, 1))
    s = M.mms_scores(zx, zy, r, r)
    fires = (zx > 0).sum(0) >= 2
    np.testing.assert_allclose(s["img_img"][fires], 1.0, atol=1e-9)


def test_mms_summary():
    sm = M.mms_summary({"img_img": np.array([0.2, 0.6, 0.9, np.nan]), "txt_txt": [0.0, 1.0]})
    assert sm["img_img_mean_all"] == pytest.approx(1.7 / 3)
    assert "img_img_mean" not in sm  # the two means are named apart, no ambiguous alias
    assert sm["img_img_median"] == pytest.approx(0.6)
    assert sm["img_img_frac_gt_0.5"] == pytest.approx(2 / 3)
    assert sm["txt_txt_frac_gt_0.5"] == pytest.approx(0.5)
    assert np.isnan(sm["img_img_mean_alive"])  # no alive mask given


def test_mms_summary_alive_mean_and_auc_by_hand():
    # latents: 0 and 2 alive in both modalities; 1 image-only, 3 dead (score 0 by definition)
    scores = {"img_txt": np.array([0.8, 0.0, 0.4, 0.0]), "img_img": np.array([0.6, 0.9, 0.2, 0.0])}
    alive = np.array([True, False, True, False])
    sm = M.mms_summary(scores, alive=alive)
    assert sm["img_txt_mean_alive"] == pytest.approx(0.6)  # (0.8 + 0.4) / 2: dead/unimodal excluded
    assert sm["img_txt_mean_all"] == pytest.approx(0.3)  # (0.8 + 0 + 0.4 + 0) / 4
    assert sm["img_img_mean_alive"] == pytest.approx(0.4)  # the same mask for every key
    # AUC: sorted curve [0.8, 0.4, 0, 0] at x = 0, 1/3, 2/3, 1; trapezoids (1/3) * (0.6 + 0.2 + 0)
    assert sm["img_txt_auc"] == pytest.approx(0.8 / 3)
    curve = np.sort(scores["img_img"])[::-1]
    assert sm["img_img_auc"] == pytest.approx(np.sum((curve[1:] + curve[:-1]) / 2) / 3)
    # a constant curve: the area is that constant (= its mean)
    assert M.mms_summary({"k": np.full(5, 0.7)})["k_auc"] == pytest.approx(0.7)
    assert M.mms_summary({"k": [0.3]})["k_auc"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="alive mask"):
        M.mms_summary(scores, alive=np.ones(3, bool))
    # no latent alive in both: NaN, not 0
    assert np.isnan(M.mms_summary(scores, alive=np.zeros(4, bool))["img_txt_mean_alive"])


# --------------------------------------------------------------------------- categories
# latents: 0 image only (x count 2); 1 text only (y 2); 2 x2 y1; 3 dead; 4 x1 (0.1) y2 (0.1)
CZX = np.array([[1, 0, 0, 0, 0.1], [1, 0, 2, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
CZY = np.array([[0, 3, 1, 0, 0.1], [0, 3, 0, 0, 0.1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])


def test_neuron_categories_default():
    r = M.neuron_categories(CZX, CZY)
    assert (r["image_only"], r["text_only"], r["both"], r["dead"]) == (1, 1, 2, 1)
    assert list(r["categories"]) == ["image_only", "text_only", "both", "dead", "both"]
    assert list(r["count_x"]) == [2, 0, 2, 0, 1]


def test_neuron_categories_min_count():
    r = M.neuron_categories(CZX, CZY, min_count=2)
    assert (r["image_only"], r["text_only"], r["both"], r["dead"]) == (2, 2, 0, 1)
    assert list(r["categories"]) == ["image_only", "text_only", "image_only", "dead",
                                     "text_only"]


def test_neuron_categories_threshold():
    r = M.neuron_categories(torch.tensor(CZX), torch.tensor(CZY), threshold=0.5)
    assert (r["image_only"], r["text_only"], r["both"], r["dead"]) == (1, 1, 1, 2)
    assert r["categories"][4] == "dead"


def test_modality_score():
    s = M.modality_score(CZX, CZY)
    assert s[0] == pytest.approx(1.0)
    assert s[1] == pytest.approx(0.0)
    assert s[2] == pytest.approx(0.75)  # E_x = 3/4, E_y = 1/4
    assert math.isnan(s[3])
    assert s[4] == pytest.approx(1 / 3)  # E_x = 0.025, E_y = 0.05


# --------------------------------------------------------------------------- reconstruction
U = np.array([[1, 0], [0, 1], [1, 1], [2, 0]], dtype=np.float64)


def test_reconstruction_perfect_and_mean():
    r = M.reconstruction_metrics(U, U.copy())
    assert r["explained_variance"] == pytest.approx(1.0)
    assert r["nmse"] == pytest.approx(0.0)
    assert r["cosine"] == pytest.approx(1.0)
    assert r["mse"] == pytest.approx(0.0)
    r = M.reconstruction_metrics(U, np.tile(U.mean(0), (4, 1)))
    assert r["explained_variance"] == pytest.approx(0.0, abs=1e-12)


def test_reconstruction_hand():
    # u_hat = 2u: errors = ||u_i||^2 = 1,1,2,4 -> sum 8, mean 2; mean ||u||^2 = 2 -> nmse 1
    # total variance: mean=(1,.5); sq deviations .25+1.25+.25+1.25 = 3 -> EV = 1 - 8/3
    r = M.reconstruction_metrics(torch.tensor(U), torch.tensor(2 * U))
    assert r["explained_variance"] == pytest.approx(1 - 8 / 3)
    assert r["nmse"] == pytest.approx(1.0)
    assert r["mse"] == pytest.approx(2.0)
    assert r["cosine"] == pytest.approx(1.0)
    r0 = M.reconstruction_metrics(U, np.zeros_like(U))
    assert r0["cosine"] == pytest.approx(0.0)
    assert r0["mse"] == pytest.approx(2.0)


# --------------------------------------------------------------------------- retrieval
def test_retrieval_hand():
    s = 1 / math.sqrt(2)
    keys = np.array([[1, 0], [0, 1], [s, s], [-1, 0]])
    queries = np.array([[1, 0], [1, 0.1], [0, 1], [-1, 0]])
    # q0: correct sim 1 -> rank 1; q1: k1 sim .0995 < k0 .995, k2 .77 -> rank 3
    # q2: correct k2 sim .707 < k1 sim 1 -> rank 2; q3: rank 1
    np.testing.assert_array_equal(M.retrieval_ranks(queries, keys), [1, 3, 2, 1])
    r = M.retrieval_metrics(queries, keys, ks=(1, 2, 5))
    assert r["R@1"] == pytest.approx(0.5)
    assert r["R@2"] == pytest.approx(0.75)
    assert r["R@5"] == pytest.approx(1.0)
    assert r["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 1) / 4)  # = 17/24


def test_retrieval_ties_are_pessimistic():
    keys = np.array([[1.0, 0], [2.0, 0], [0.0, 1.0]])  # k0, k1 tie for a query along x
    queries = np.array([[1.0, 0], [3.0, 0], [0.0, 1.0]])
    # q0, q1: the other key ties with the correct one -> rank 2; q2: unique best -> rank 1
    np.testing.assert_array_equal(M.retrieval_ranks(queries, keys), [2, 2, 1])


def test_retrieval_of_constant_codes_is_at_chance_floor():
    z = np.zeros((20, 5))
    z[:, 0] = 1.0  # every sample has the same code
    r = M.retrieval_metrics(z, z)
    assert r["R@1"] == 0.0 and r["MRR"] == pytest.approx(1 / 20)


def test_retrieval_chunking_invariant():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(53, 8))
    k = q + 0.8 * rng.normal(size=(53, 8))
    a = M.retrieval_metrics(q, k, chunk=7)
    b = M.retrieval_metrics(q, k, chunk=1024)
    assert a == b
    assert 0 < a["MRR"] <= 1
    c = M.cross_modal_retrieval(q, k)
    assert c["x2y_R@1"] == a["R@1"] and c["x2y_MRR"] == a["MRR"]
    assert c["y2x_MRR"] == M.retrieval_metrics(k, q)["MRR"]
    assert set(c) == {f"{d}_{n}" for d in ("x2y", "y2x") for n in ("R@1", "R@5", "R@10", "MRR")}


# --------------------------------------------------------------------------- zero-shot
def test_zero_shot():
    cls = np.array([[1.0, 0], [0, 1.0]])
    emb = np.array([[2, 0.1], [0.1, 3], [1, 2], [3, 1]])
    labels = np.array([0, 1, 0, 0])  # predictions 0, 1, 1, 0
    assert M.zero_shot_accuracy(emb, labels, cls) == pytest.approx(0.75)
    rep = M.zero_shot_report(emb, labels, cls, class_names=["a", "b"])
    np.testing.assert_allclose(rep["per_class"], [2 / 3, 1.0])
    np.testing.assert_array_equal(rep["predictions"], [0, 1, 1, 0])
    assert rep["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)


# --------------------------------------------------------------------------- ground truth
def test_atom_recovery_planted():
    rng = np.random.default_rng(4)
    true = rng.normal(size=(5, 16))
    perm = np.array([6, 2, 9, 0, 4])
    dic = rng.normal(size=(10, 16))
    dic[perm] = true * rng.uniform(0.5, 3.0, size=(5, 1))  # positive rescaling
    np.testing.assert_allclose(M.atom_recovery(true, dic), 1.0, atol=1e-9)
    np.testing.assert_array_equal(M.best_latent_by_decoder(true, dic), perm)
    # sign matters: negated atoms are not recovered
    assert np.all(M.atom_recovery(true, -dic[perm]) < 1.0 - 1e-6)


def test_best_latent_by_activation_planted():
    rng = np.random.default_rng(5)
    n, c, m = 400, 4, 12
    codes = rng.exponential(size=(n, c)) * (rng.random((n, c)) < 0.3)
    z = 0.05 * rng.random((n, m))
    perm = np.array([3, 11, 0, 7])
    z[:, perm] = codes + 0.01 * rng.random((n, c))
    z[:, 5] = 1.0  # constant column: correlation 0, never the best
    idx = M.best_latent_by_activation(codes, z, chunk=5)
    np.testing.assert_array_equal(idx, perm)
    codes2 = codes.copy()
    codes2[:, 1] = 2.0  # constant concept -> no positive correlation -> -1
    assert M.best_latent_by_activation(codes2, z)[1] == -1


def test_collapse_and_single_latent_fraction():
    bi = np.array([0, 1, 2, -1])
    bt = np.array([0, 3, 2, -1])
    shared = np.array([True, True, False, True])
    # shared concepts 0 (same), 1 (different), 3 (-1: never counts) -> 1/3
    assert M.collapse_rate(bi, bt, shared) == pytest.approx(1 / 3)
    assert M.single_latent_fraction(bi, bt, shared) == pytest.approx(1 / 3)
    assert math.isnan(M.collapse_rate(bi, bt, np.zeros(4, bool)))


def test_ground_truth_report():
    rng = np.random.default_rng(6)
    d, n = 8, 300
    a0, a1, a2 = rng.normal(size=(3, d))
    kind = np.array([0, 1, 2])
    tx = np.stack([a0, a1, rng.normal(size=d)])  # row 2 (text-only) ignored on image side
    ty = np.stack([a0, rng.normal(size=d), a2])
    dic = np.stack([a1, a0, a2, rng.normal(size=d)])  # shared dictionary, a0 shared
    codes_x = rng.exponential(size=(n, 3)) * (rng.random((n, 3)) < 0.4)
    codes_y = codes_x.copy()
    codes_x[:, 2] = 0.0  # text-only concept absent from images
    codes_y[:, 1] = 0.0
    z_x = np.zeros((n, 4))
    z_y = np.zeros((n, 4))
    z_x[:, 1], z_x[:, 0] = codes_x[:, 0], codes_x[:, 1]
    z_y[:, 1], z_y[:, 2] = codes_y[:, 0], codes_y[:, 2]
    r = M.ground_truth_report(tx, ty, kind, codes_x, codes_y, z_x, z_y, dic, dic)
    assert r["recovery_x_mean"] == pytest.approx(1.0)
    assert r["recovery_y_mean"] == pytest.approx(1.0)
    assert r["recovered_frac"] == pytest.approx(1.0)
    assert r["collapse_rate"] == pytest.approx(1.0)
    assert r["single_latent_fraction"] == pytest.approx(1.0)
    assert r["alignment_error"] == pytest.approx(0.0)
    assert (r["n_shared"], r["n_image_only"], r["n_text_only"]) == (1, 1, 1)
    # text side tracks the shared concept with another latent -> alignment error 1
    z_y2 = z_y.copy()
    z_y2[:, 3], z_y2[:, 1] = z_y[:, 1], 0.0
    r2 = M.ground_truth_report(tx, ty, kind, codes_x, codes_y, z_x, z_y2, dic, dic)
    assert r2["single_latent_fraction"] == pytest.approx(0.0)
    assert r2["alignment_error"] == pytest.approx(1.0)
    # split dictionary with the text direction in another column -> no collapse
    dic_y = dic.copy()
    dic_y[[1, 3]] = dic[[3, 1]]
    r3 = M.ground_truth_report(tx, ty, kind, codes_x, codes_y, z_x, z_y, dic, dic_y)
    assert r3["collapse_rate"] == pytest.approx(0.0)
    assert r3["recovery_y_mean"] == pytest.approx(1.0)


def test_shared_concept_corr_rewards_one_latent_for_both_modalities():
    rng = np.random.default_rng(0)
    n = 200
    c = rng.exponential(size=(n, 1)) * (rng.random((n, 1)) < 0.5)
    kind = np.array([0])
    atoms = np.array([[1.0, 0.0]])
    # shared model: latent 0 tracks the concept in both modalities
    z_shared = np.concatenate([c, rng.random((n, 1)) * 0.01], axis=1)
    # split model: latent 0 on images, latent 1 on captions
    zx_split = np.concatenate([c, np.zeros((n, 1))], axis=1)
    zy_split = np.concatenate([np.zeros((n, 1)), c], axis=1)
    dic = np.eye(2)
    shared = M.ground_truth_report(atoms, atoms, kind, c, c, z_shared, z_shared, dic, dic)
    split = M.ground_truth_report(atoms, atoms, kind, c, c, zx_split, zy_split, dic, dic)
    assert shared["shared_concept_corr"] == pytest.approx(1.0)
    assert split["shared_concept_corr"] < 0.7  # half the pooled samples are missed by either latent
    assert shared["single_latent_fraction"] == 1.0 and split["single_latent_fraction"] == 0.0


def test_shrinkage_dense_latents_and_dictionary_agreement():
    from mmsae.eval.metrics import dense_latent_share, dictionary_agreement, reconstruction_metrics

    rng = np.random.default_rng(0)
    u = rng.standard_normal((200, 8)) + 3.0  # a large mean: shrinkage is measured about it
    mu = u.mean(0)
    half = mu + 0.5 * (u - mu)  # reconstructions shrunk halfway toward the mean
    assert reconstruction_metrics(u, half)["shrinkage"] == pytest.approx(0.5)
    assert reconstruction_metrics(u, u)["shrinkage"] == pytest.approx(1.0)
    z = np.zeros((100, 4))
    z[:50, 0] = 1  # fires on half the inputs: dense
    z[:5, 1] = 1  # on 5 %: not
    assert dense_latent_share(z) == 0.25 and dense_latent_share(z, rate=0.01) == 0.5
    atoms = rng.standard_normal((16, 8))
    perm = rng.permutation(16)
    same = dictionary_agreement(atoms, atoms[perm] * 2.0)  # the same atoms in another order and scale
    assert same["mean_cos"] == pytest.approx(1.0) and same["share_above"] == 1.0
    other = dictionary_agreement(atoms, rng.standard_normal((16, 8)))
    assert other["mean_cos"] < 0.8 and other["share_above"] == 0.0
    assert np.isnan(dictionary_agreement(atoms, atoms, max_atoms=8)["mean_cos"])
