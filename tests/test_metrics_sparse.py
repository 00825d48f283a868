"""The sparse / blocked metrics of mmsae.eval.metrics against the dense forms they replaced.

The dense forms below (``dense_*``) are the implementations that were in lib/ before the
ground-truth correlation, the atom recovery and the firing counts were rewritten to use the
sparsity of the codes (docs/performance.md, "Analysis cost"). They live only here, as the
reference.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmsae.eval import concepts
from mmsae.eval import metrics as M

_EPS = 1e-12


# --------------------------------------------------------------------------- dense references
def _norm_rows(a):
    return a / a.norm(dim=1, keepdim=True).clamp_min(_EPS)


def dense_correlation_best(true_codes, z, chunk=1024):
    """The former ``activation_correlation_best``: dense float64 Pearson, chunked over latents."""
    t = M.to_tensor(true_codes, torch.float64)
    zz = M.to_tensor(z)
    tc = t - t.mean(0, keepdim=True)
    tn = tc.norm(dim=0)
    tc = torch.where(tn > _EPS, tc / tn.clamp_min(_EPS), torch.zeros_like(tc))
    best_val = torch.full((t.shape[1],), -np.inf, dtype=torch.float64)
    best_idx = torch.full((t.shape[1],), -1, dtype=torch.int64)
    for s in range(0, zz.shape[1], chunk):
        zc = zz[:, s:s + chunk].double()
        zc = zc - zc.mean(0, keepdim=True)
        zn = zc.norm(dim=0)
        zc = torch.where(zn > _EPS, zc / zn.clamp_min(_EPS), torch.zeros_like(zc))
        v, i = (tc.T @ zc).max(1)
        upd = v > best_val
        best_val = torch.where(upd, v, best_val)
        best_idx = torch.where(upd, i + s, best_idx)
    best_idx = torch.where(best_val > 0, best_idx, torch.full_like(best_idx, -1))
    return best_idx.numpy(), best_val.numpy()


def dense_correlation_matrix(true_codes, z):
    """Every correlation ``(c, m)`` as the former code computed it (for the tie checks)."""
    t = M.to_tensor(true_codes, torch.float64)
    zz = M.to_tensor(z).double()
    out = []
    for a in (t, zz):
        a = a - a.mean(0, keepdim=True)
        n = a.norm(dim=0)
        out.append(torch.where(n > _EPS, a / n.clamp_min(_EPS), torch.zeros_like(a)))
    return (out[0].T @ out[1]).numpy()


def dense_categories(z_x, z_y, threshold=0.0, min_count=1, min_frac=0.2):
    zx, zy = M.to_tensor(z_x), M.to_tensor(z_y)
    if min_count == "scaled":
        n, m = zx.shape
        k_eff = 0.5 * ((zx > threshold).sum(1).double().mean()
                       + (zy > threshold).sum(1).double().mean()).item()
        mc = max(1, int(round(min_frac * n * k_eff / max(m, 1))))
    else:
        mc = int(min_count)
    cx = (zx > threshold).sum(0).numpy().astype(np.int64)
    cy = (zy > threshold).sum(0).numpy().astype(np.int64)
    return mc, cx, cy


def dense_modality_score(z_x, z_y):
    ex = M.to_tensor(z_x, torch.float64).mean(0).numpy()
    ey = M.to_tensor(z_y, torch.float64).mean(0).numpy()
    tot = ex + ey
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, ex / np.where(tot > 0, tot, 1.0), np.nan)


# --------------------------------------------------------------------------- data
def _ksparse(rng, n, m, k, dtype=np.float32):
    z = np.zeros((n, m), dtype)
    if m == 0 or k == 0:
        return z
    cols = np.argsort(rng.random((n, m)), axis=1)[:, :k]
    z[np.arange(n)[:, None], cols] = rng.exponential(1.0, size=(n, k))
    return z


def _assert_matches_dense(t, z, chunk=1024, tol=1e-9):
    """Values equal the dense form to 1e-6 (in fact ~1e-12); indices equal, except where the
    dense form resolved a tie up to rounding (correlations within 1e-9) otherwise: then the
    sparse index is the *lowest* latent tied with the best."""
    i0, v0 = dense_correlation_best(t, z, chunk=chunk)
    i1, v1 = M.activation_correlation_best(t, z, chunk=chunk)
    assert i1.dtype == np.int64 and v1.dtype == np.float64
    assert i1.shape == v1.shape == (np.asarray(t).shape[1],)
    np.testing.assert_allclose(v1, v0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(v1, v0, rtol=0, atol=1e-10)
    diff = np.nonzero(i0 != i1)[0]
    if len(diff):
        corr = dense_correlation_matrix(t, z)
        for r in diff:
            assert i1[r] >= 0 and v0[r] > 0
            tied = np.nonzero(corr[r] >= v0[r] - tol)[0]
            assert i1[r] == tied[0], (r, i0[r], i1[r], tied)
    return i1, v1


# --------------------------------------------------------------------------- correlation
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_correlation_matches_dense_on_random_sparse_codes(seed, chunk):
    rng = np.random.default_rng(seed)
    n, c, m = int(rng.integers(50, 400)), int(rng.integers(3, 40)), int(rng.integers(5, 70))
    t = _ksparse(rng, n, c, int(rng.integers(1, 4)), np.float64)
    z = _ksparse(rng, n, m, int(rng.integers(1, 6)))
    t[:, 0] = 0.0  # all-zero concept: correlation 0 with everything -> -1
    t[:, 1] = 1.5  # constant concept
    z[:, 0] = 0.0  # dead latent
    z[:, 2] = 2.0  # constant latent
    z[:, 4] = z[:, 3]  # duplicate latent: an exact tie, the lower index wins
    i, v = _assert_matches_dense(t, z, chunk=chunk)
    assert i[0] == -1 and v[0] == 0.0 and i[1] == -1 and v[1] == 0.0
    assert not np.any(i == 4) and not np.any(i == 0) and not np.any(i == 2)


def test_correlation_matches_dense_on_dense_and_signed_data():
    rng = np.random.default_rng(11)
    t = rng.normal(size=(300, 12))
    z = (rng.normal(size=(300, 30)) + 0.5).astype(np.float32)
    z[:, 7] = 0.25  # constant, not representable exactly by the float64 mean of its float32 copies
    _assert_matches_dense(t, z)
    _assert_matches_dense(t, z, chunk=4)
    _assert_matches_dense(-t, z)  # every concept anti-correlated with something


def test_correlation_negative_only_gives_minus_one():
    # every latent fires exactly where the concept does not: all correlations < 0
    t = np.array([[1.0], [0.0], [2.0], [0.0]])
    z = np.array([[0.0, 0.0], [1.0, 3.0], [0.0, 0.0], [2.0, 1.0]], np.float32)
    i0, v0 = dense_correlation_best(t, z)
    i1, v1 = M.activation_correlation_best(t, z)
    assert i1[0] == i0[0] == -1 and v1[0] < 0
    np.testing.assert_allclose(v1, v0, atol=1e-12)


def test_correlation_ties_go_to_the_lowest_latent():
    rng = np.random.default_rng(3)
    n = 40
    t = np.zeros((n, 2))
    t[5, 0] = 0.7  # a concept present on one sample
    t[:, 1] = rng.exponential(size=n) * (rng.random(n) < 0.5)
    z = np.zeros((n, 9), np.float32)
    # latents 2, 6 and 8 fire only on sample 5, with different values: mathematically the same
    # correlation with concept 0 (1.0), which rounding orders arbitrarily
    z[5, [2, 6, 8]] = [0.3, 1.7, 5.0]
    z[:, 4] = t[:, 1] * 2.0
    z[:, 7] = t[:, 1] * 3.0  # a scaled copy: tied with latent 4 for concept 1
    z[:, 1] = rng.random(n)
    for chunk in (1, 3, 1024):
        i, v = _assert_matches_dense(t, z, chunk=chunk)
        assert list(i) == [2, 4]
        np.testing.assert_allclose(v, 1.0, atol=1e-12)


def test_correlation_edge_shapes():
    rng = np.random.default_rng(0)
    z = _ksparse(rng, 30, 5, 2)
    t = _ksparse(rng, 30, 4, 1, np.float64)
    i, v = M.activation_correlation_best(t, np.zeros((30, 0), np.float32))  # no latents
    assert list(i) == [-1] * 4 and np.all(v == -np.inf)
    i0, v0 = dense_correlation_best(t, np.zeros((30, 0), np.float32))
    np.testing.assert_array_equal(v, v0)
    i, v = M.activation_correlation_best(np.zeros((30, 0)), z)  # no concepts
    assert i.shape == v.shape == (0,)
    i, v = M.activation_correlation_best(t[:1], z[:1])  # one sample: everything constant
    assert list(i) == [-1] * 4 and np.all(v == 0.0)
    with pytest.raises(ValueError, match="same number of rows"):
        M.activation_correlation_best(t, z[:10])


def test_correlation_input_kinds_agree():
    rng = np.random.default_rng(8)
    t = _ksparse(rng, 200, 10, 2, np.float64)
    z = _ksparse(rng, 200, 25, 3)
    ref = M.activation_correlation_best(t, z)
    z64 = z.astype(np.float64) * (1 + 1e-12)  # rounds back to the float32 values, as to_tensor does
    for tt, zz in ((torch.as_tensor(t), torch.as_tensor(z)), (sp.csr_matrix(t), sp.csc_matrix(z)),
                   (t.astype(np.float32).astype(np.float64), z64), (t.tolist(), z.tolist())):
        i, v = M.activation_correlation_best(tt, zz)
        np.testing.assert_array_equal(i, ref[0])
        np.testing.assert_allclose(v, ref[1], atol=1e-12)


def test_best_latent_by_activation_matches_dense_with_small_tiles(monkeypatch):
    # tiles of a few entries: many concept blocks and latent chunks, merged in order
    monkeypatch.setattr(M, "_TILE_ENTRIES", 16)
    rng = np.random.default_rng(2)
    t = _ksparse(rng, 120, 23, 2, np.float64)
    z = _ksparse(rng, 120, 31, 3)
    z[:, 9] = z[:, 5]
    i, _ = _assert_matches_dense(t, z, chunk=4)
    np.testing.assert_array_equal(M.best_latent_by_activation(t, z, chunk=4), i)


def test_latent_concepts_matches_dense():
    rng = np.random.default_rng(4)
    zx, zy = _ksparse(rng, 150, 40, 4), _ksparse(rng, 150, 40, 4)
    cx, cy = _ksparse(rng, 150, 12, 2), _ksparse(rng, 150, 12, 2)
    idx, corr = concepts.latent_concepts(zx, zy, cx, cy)
    i0, v0 = dense_correlation_best(np.concatenate([zx, zy]), np.concatenate([cx, cy]))
    np.testing.assert_allclose(corr, v0, atol=1e-10)
    np.testing.assert_array_equal(idx, i0)  # continuous values: no ties here


# --------------------------------------------------------------------------- ground truth report
def dense_ground_truth_report(true_atoms_x, true_atoms_y, concept_kind, codes_x, codes_y, z_x, z_y, dict_x,
                              dict_y, recovered_threshold=0.9):
    """The former ground_truth_report, on the dense helpers above."""
    kind = np.asarray(concept_kind)
    sel_x, sel_y, shared = (kind == 0) | (kind == 1), (kind == 0) | (kind == 2), kind == 0

    def cos(a, d):
        return _norm_rows(M.to_tensor(a, torch.float64)) @ _norm_rows(M.to_tensor(d, torch.float64)).T

    ax, ay = np.asarray(true_atoms_x, np.float64), np.asarray(true_atoms_y, np.float64)
    rec_x = cos(ax[sel_x], dict_x).max(1).values.numpy()
    rec_y = cos(ay[sel_y], dict_y).max(1).values.numpy()
    both = np.concatenate([rec_x, rec_y])
    dec_x = cos(ax, dict_x).argmax(1).numpy()
    dec_y = cos(ay, dict_y).argmax(1).numpy()
    act_x = dense_correlation_best(codes_x, z_x)[0]
    act_y = dense_correlation_best(codes_y, z_y)[0]
    sh = torch.as_tensor(shared)
    pooled = torch.cat([M.to_tensor(codes_x)[:, sh], M.to_tensor(codes_y)[:, sh]])
    _, pc = dense_correlation_best(pooled, torch.cat([M.to_tensor(z_x), M.to_tensor(z_y)]))
    slf = M.single_latent_fraction(act_x, act_y, shared)
    return {"recovery_x_mean": rec_x.mean(), "recovery_y_mean": rec_y.mean(),
            "recovered_frac_x": (rec_x > recovered_threshold).mean(),
            "recovered_frac_y": (rec_y > recovered_threshold).mean(),
            "recovered_frac": (both > recovered_threshold).mean(),
            "collapse_rate": M.collapse_rate(dec_x, dec_y, shared), "single_latent_fraction": slf,
            "alignment_error": 1.0 - slf, "shared_concept_corr": float(np.mean(pc)),
            "n_shared": int(shared.sum()), "n_image_only": int((kind == 1).sum()),
            "n_text_only": int((kind == 2).sum())}


def test_ground_truth_report_matches_dense():
    rng = np.random.default_rng(9)
    d, n, m = 16, 400, 48
    kind = np.array([0] * 8 + [1] * 3 + [2] * 3)
    c = len(kind)
    ax, ay = rng.normal(size=(c, d)), rng.normal(size=(c, d))
    ax[kind == 2] = 0.0
    ay[kind == 1] = 0.0
    dic_x = rng.normal(size=(m, d))
    dic_x[:c] = ax * 2.0 + 0.1 * rng.normal(size=(c, d))
    dic_y = dic_x.copy()
    dic_y[5:c] = ay[5:] + 0.05 * rng.normal(size=(c - 5, d))
    cx = _ksparse(rng, n, c, 3)
    cy = cx * rng.lognormal(0, 0.3, size=cx.shape).astype(np.float32)
    cx[:, kind == 2] = 0.0
    cy[:, kind == 1] = 0.0
    zx = np.zeros((n, m), np.float32)
    zy = np.zeros((n, m), np.float32)
    zx[:, :c] = cx + 0.05 * _ksparse(rng, n, c, 2)
    zy[:, :c] = cy
    zy[:, [2, c + 2]] = zy[:, [c + 2, 2]]  # the text side tracks shared concept 2 elsewhere
    zx[:, c:] += _ksparse(rng, n, m - c, 3)
    new = M.ground_truth_report(ax, ay, kind, cx, cy, zx, zy, dic_x, dic_y)
    old = dense_ground_truth_report(ax, ay, kind, cx, cy, zx, zy, dic_x, dic_y)
    assert set(new) == set(old)
    for k in old:
        assert new[k] == pytest.approx(old[k], abs=1e-9), k
    assert 0.0 < new["single_latent_fraction"] < 1.0


def test_atom_recovery_blocked_matches_dense(monkeypatch):
    rng = np.random.default_rng(1)
    t, d = rng.normal(size=(37, 8)), rng.normal(size=(50, 8))
    d[13] = d[40]  # a duplicate atom: argmax takes the lower index
    t[3] = 0.0  # a zero true atom: cosine 0 with everything, index 0
    ref = _norm_rows(torch.as_tensor(t)) @ _norm_rows(torch.as_tensor(d)).T
    monkeypatch.setattr(M, "_TILE_ENTRIES", 100)  # two true atoms per block
    np.testing.assert_allclose(M.atom_recovery(t, d), ref.max(1).values.numpy(), atol=1e-12)
    np.testing.assert_array_equal(M.best_latent_by_decoder(t, d), ref.argmax(1).numpy())


# --------------------------------------------------------------------------- firing counts
@pytest.mark.parametrize("threshold", [0.0, 0.5])
@pytest.mark.parametrize("min_count", [1, 3, "scaled"])
def test_categories_and_split_match_dense(threshold, min_count, monkeypatch):
    rng = np.random.default_rng(5)
    zx, zy = _ksparse(rng, 300, 40, 4), _ksparse(rng, 250, 40, 3)
    zx[:, 0] = zy[:, 0] = 0.0
    zx[:, 1] = 0.0
    zx[:7, 2] = -1.0  # negative entries never fire
    for scan in (M._SCAN_ENTRIES, 50):  # one block, and blocks of one row
        monkeypatch.setattr(M, "_SCAN_ENTRIES", scan)
        mc, cx, cy = dense_categories(zx, zy, threshold, min_count)
        cats = M.neuron_categories(zx, zy, threshold=threshold, min_count=min_count)
        assert cats["min_count"] == mc
        np.testing.assert_array_equal(cats["count_x"], cx)
        np.testing.assert_array_equal(cats["count_y"], cy)
        assert cats["count_x"].dtype == np.int64
        assert M.category_min_count(zx, zy, min_count, threshold=threshold) == mc
        sp_new = M.split_measures(zx, zy, threshold=threshold, min_count=min_count)
        score = dense_modality_score(zx, zy)
        np.testing.assert_allclose(M.modality_score(zx, zy), score, rtol=1e-13)
        keep = ((cx + cy) >= mc) & np.isfinite(score)
        assert sp_new["n_scored"] == int(keep.sum()) and sp_new["min_count"] == mc
        s = score[keep]
        assert sp_new["unimodal_share"] == pytest.approx(float(((s <= 0.1) | (s >= 0.9)).mean()), abs=1e-12)
        assert sp_new["score_q50"] == pytest.approx(float(np.quantile(s, 0.5)), abs=1e-12)


def test_firing_counts_take_torch_and_float64_input():
    rng = np.random.default_rng(6)
    zx, zy = _ksparse(rng, 60, 20, 3), _ksparse(rng, 60, 20, 3)
    ref = M.neuron_categories(zx, zy, min_count="scaled")
    for a, b in ((torch.as_tensor(zx), torch.as_tensor(zy)), (zx.astype(np.float64), zy.astype(np.float64))):
        got = M.neuron_categories(a, b, min_count="scaled")
        for k in ("image_only", "text_only", "both", "dead", "min_count"):
            assert got[k] == ref[k]
        np.testing.assert_array_equal(got["categories"], ref["categories"])
    # a float64 value that rounds to 0 in float32 does not fire (as with to_tensor's float32)
    z = np.zeros((3, 2))
    z[0, 0] = 1e-60
    assert list(M.neuron_categories(z, z)["count_x"]) == [0, 0]
    with pytest.raises(ValueError, match="2-D"):
        M.neuron_categories(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="same number of latents"):
        M.neuron_categories(zx, zy[:, :5])


# --------------------------------------------------------------------------- MMS
@pytest.mark.parametrize("threshold", [0.0, 0.7])
def test_mms_sparse_reference_matches_dense_and_naive(threshold, monkeypatch):
    rng = np.random.default_rng(12)
    n, m = 60, 14
    zx, zy = _ksparse(rng, n, m, 3), _ksparse(rng, n, m, 3)
    zx[:, 4] = zy[:, 4] = 0.0  # never fires
    zx[:, 2] = 0.0
    zx[5, 2] = 2.0  # fires on a single image
    rx, ry = _ksparse(rng, n, 200, 2, np.float64), _ksparse(rng, n, 200, 2, np.float64)
    rx[7] = 0.0  # a zero reference row: cosine 0 with everything
    assert M._density(rx) <= M._SPARSE_REF_DENSITY  # the sparse path is taken by default
    sparse = M.mms_scores(zx, zy, rx, ry, threshold=threshold)
    naive = M.mms_scores_naive(zx, zy, rx, ry, threshold=threshold)
    monkeypatch.setattr(M, "_SPARSE_REF_DENSITY", -1.0)  # force the dense torch path
    dense = M.mms_scores(zx, zy, rx, ry, threshold=threshold)
    for key in M.MMS_KEYS:
        np.testing.assert_allclose(sparse[key], dense[key], rtol=0, atol=1e-12)
        np.testing.assert_allclose(sparse[key], naive[key], rtol=0, atol=1e-9)
        assert sparse[key].dtype == np.float64 and sparse[key][4] == 0.0
    assert sparse["img_img"][2] == 0.0 and np.any(sparse["img_txt"] != 0)


def test_mms_accepts_scipy_sparse_reference_and_checks_shapes(monkeypatch):
    rng = np.random.default_rng(13)
    zx, zy = _ksparse(rng, 40, 9, 2), _ksparse(rng, 40, 9, 2)
    rx, ry = _ksparse(rng, 40, 30, 12, np.float64), _ksparse(rng, 40, 30, 12, np.float64)  # 40% dense
    ref = M.mms_scores(zx, zy, rx, ry)  # dense path
    got = M.mms_scores(zx, zy, sp.csr_matrix(rx), sp.csr_matrix(ry))  # dense path from sparse input
    monkeypatch.setattr(M, "_SPARSE_REF_DENSITY", 1.0)
    got_sparse = M.mms_scores(zx, zy, sp.csr_matrix(rx), ry)
    for key in M.MMS_KEYS:
        np.testing.assert_allclose(got[key], ref[key], atol=1e-12)
        np.testing.assert_allclose(got_sparse[key], ref[key], atol=1e-12)
    with pytest.raises(ValueError, match="same number of rows"):
        M.mms_scores(zx, zy, rx[:10], ry)
    with pytest.raises(ValueError, match="same dimension"):
        M.mms_scores(zx, zy, rx, ry[:, :5])
