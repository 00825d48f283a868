"""Metrics on sparse codes and embeddings (spec: docs/paper.md, section "Metrics").

All functions are pure: they take numpy arrays or torch tensors (any device, any float
dtype), convert them to CPU tensors, and return numpy arrays / Python floats.  Work that
would need an ``N x N`` (or ``N x m``) similarity matrix is done in chunks.

Conventions
-----------
* ``z_x``, ``z_y``: nonnegative codes of shape ``(N, m)`` from a TopK SAE for modality
  ``x`` (image or audio) and ``y`` (text).  Row ``i`` of ``x`` and row ``i`` of ``y`` are
  one pair.
* A latent *fires* on a sample when its activation is strictly greater than ``threshold``
  (default ``0.0``).
* Cosine similarity of a zero vector with anything is defined as 0 (vectors are divided by
  ``max(||v||, eps)``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

__all__ = [
    "to_tensor",
    "neuron_categories",
    "category_min_count",
    "category_rule",
    "split_measures",
    "firing_profile",
    "modality_score",
    "mms_scores",
    "mms_scores_naive",
    "mms_summary",
    "reconstruction_metrics",
    "dense_latent_share",
    "pca_explained_variance",
    "dictionary_agreement",
    "retrieval_ranks",
    "retrieval_metrics",
    "cross_modal_retrieval",
    "zero_shot_predict",
    "zero_shot_accuracy",
    "zero_shot_report",
    "atom_recovery",
    "best_latent_by_decoder",
    "activation_correlation_best",
    "best_latent_by_activation",
    "collapse_rate",
    "single_latent_fraction",
    "ground_truth_report",
    "CATEGORY_NAMES",
    "MMS_KEYS",
]

CATEGORY_NAMES = ("image_only", "text_only", "both", "dead")
MMS_KEYS = ("img_img", "txt_txt", "img_txt")
_EPS = 1e-12


# --------------------------------------------------------------------------- helpers
def to_tensor(a, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Convert a numpy array / torch tensor / sequence to a CPU tensor of ``dtype``
    (float32 by default), detached from any autograd graph."""
    if isinstance(a, torch.Tensor):
        return a.detach().to(device="cpu", dtype=dtype)
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def _normalize_rows(a: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm; zero rows stay zero."""
    return a / a.norm(dim=1, keepdim=True).clamp_min(_EPS)


def _check_2d(name: str, a: torch.Tensor) -> None:
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(a.shape)}")


#: Entries of one row block in the dense scans over codes (:func:`_code_stats`): 4 Mi
#: entries (16 MiB of float32, a 4 MiB boolean mask), so a block stays in cache-sized
#: pieces and no ``(N, m)`` temporary (mask or float64 copy) is ever made.
_SCAN_ENTRIES = 1 << 22


def _as_numpy_2d(name: str, a) -> np.ndarray:
    """``a`` as a 2-D float32 or float64 numpy array without a copy where possible (numpy
    float arrays, CPU tensors); other dtypes become float64."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu")
        if a.dtype not in (torch.float32, torch.float64):
            a = a.to(torch.float64)
        a = a.numpy()
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(a.shape)}")
    return a


def _code_stats(name: str, z, threshold: float, sums: bool = False):
    """One blocked pass over ``z`` ``(N, m)``: firing counts per row (int64 ``(N,)``) and per
    column (int64 ``(m,)``), and, if ``sums``, float64 column sums (``(m,)``, else ``None``).
    A firing is an entry ``> threshold`` after rounding to float32 (what :func:`to_tensor`
    does); the sums use the values as given, in float64. With ``threshold >= 0`` only the
    non-zero entries of each block are visited after one scan for them (K-sparse codes:
    K per row), then counted and summed with ``bincount``. Memory: one row block
    (:data:`_SCAN_ENTRIES` entries) at a time, never an ``(N, m)`` mask or float64 copy."""
    a = _as_numpy_2d(name, z)
    n, m = a.shape
    rows_fire = np.zeros(n, np.int64)
    cols_fire = np.zeros(m, np.int64)
    col_sum = np.zeros(m) if sums else None
    step = max(1, _SCAN_ENTRIES // max(m, 1))
    for s in range(0, n, step):
        b = a[s:s + step]
        if threshold >= 0:  # only non-zero entries can fire: count from the (sparse) non-zeros
            idx = np.flatnonzero(b != 0)  # a boolean scan: much faster than np.nonzero of the floats
            r, c = np.divmod(idx, m)
            v = b.ravel()[idx]
            f = v.astype(np.float32, copy=False) > threshold
            rows_fire[s:s + step] = np.bincount(r[f], minlength=len(b))
            cols_fire += np.bincount(c[f], minlength=m)
            if sums:
                col_sum += np.bincount(c, weights=v, minlength=m)
        else:  # zeros fire too
            f = b.astype(np.float32, copy=False) > threshold
            rows_fire[s:s + step] = np.count_nonzero(f, axis=1)
            cols_fire += np.count_nonzero(f, axis=0)
            if sums:
                col_sum += b.sum(0, dtype=np.float64)
    return rows_fire, cols_fire, col_sum


def _scaled_min_count(rows_x: np.ndarray, rows_y: np.ndarray, m: int, min_count, min_frac: float) -> int:
    """:func:`category_min_count` from per-row firing counts of each modality."""
    if isinstance(min_count, (int, np.integer)) and not isinstance(min_count, bool):
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        return int(min_count)
    if min_count != "scaled":
        raise ValueError(f"min_count must be a positive int or 'scaled', got {min_count!r}")
    if not 0.0 < min_frac <= 1.0:
        raise ValueError(f"min_frac must be in (0, 1], got {min_frac}")
    n = len(rows_x)
    with np.errstate(invalid="ignore", divide="ignore"):
        k_eff = 0.5 * (float(np.mean(rows_x)) + float(np.mean(rows_y)))
    expected = n * k_eff / max(m, 1)
    return max(1, int(round(min_frac * expected)))


def _modality_score_from_sums(sx: np.ndarray, sy: np.ndarray, nx: int, ny: int) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        ex, ey = sx / nx, sy / ny
        tot = ex + ey
        return np.where(tot > 0, ex / np.where(tot > 0, tot, 1.0), np.nan)


# --------------------------------------------------------------------------- neurons
def category_min_count(z_x, z_y, min_count: int | str = "scaled", min_frac: float = 0.2,
                       threshold: float = 0.0) -> int:
    """The firing count a latent needs on a modality to "fire" on it.

    ``min_count`` an int: used as is (the paper's rule is ``1``: any firing counts).
    ``min_count="scaled"``: ``max(1, round(min_frac * E))`` where ``E = N * K_eff / m`` is
    the expected number of firing samples per latent and modality (``N`` held-out samples
    per modality, ``K_eff`` the mean number of active latents per sample over both
    modalities, ``m`` latents). A fixed count turns leakage into "both" as ``N`` grows
    (a latent firing on 136 images and 9 captions is "both" at ``min_count=1``); a
    count proportional to ``E`` asks for the same *share* of a latent's expected firings
    whatever ``N``, so the categories do not drift with the number of held-out pairs.
    """
    if isinstance(min_count, (int, np.integer)) and not isinstance(min_count, bool):
        return _scaled_min_count(np.zeros(0), np.zeros(0), 1, min_count, min_frac)
    _scaled_min_count(np.zeros(1), np.zeros(1), 1, min_count, min_frac)  # argument checks first
    rx, cx, _ = _code_stats("z_x", z_x, threshold)
    ry, _, _ = _code_stats("z_y", z_y, threshold)
    return _scaled_min_count(rx, ry, len(cx), min_count, min_frac)


def category_rule(min_count: int | str = "scaled", min_frac: float = 0.2, threshold: float = 0.0) -> str:
    """A short human-readable name of a category rule, written beside every category table."""
    fire = f"activation > {threshold:g}"
    if min_count == "scaled":
        return f"scaled: fires on a modality on >= {min_frac:g} x N*K_eff/m samples ({fire})"
    return f"fixed: fires on a modality on >= {int(min_count)} sample(s) ({fire})"


def neuron_categories(z_x, z_y, threshold: float = 0.0, min_count: int | str = 1, min_frac: float = 0.2) -> dict:
    """Classify every latent by the modalities it fires on.

    Latent ``i`` *fires on modality x* when at least ``min_count`` rows ``j`` of ``z_x``
    have ``z_x[j, i] > threshold`` (same for ``y``).  Then

    * ``image_only``: fires on x, not on y;
    * ``text_only``: fires on y, not on x;
    * ``both``: fires on x and on y;
    * ``dead``: fires on neither.

    ``min_count=1`` is the paper's rule. ``min_count="scaled"`` sets it from the expected
    firings per latent (:func:`category_min_count`), so the result does not depend on the
    number of held-out pairs. Returns a dict with integer counts ``image_only, text_only,
    both, dead`` (they sum to ``m``), ``categories``: numpy array of ``m`` strings from
    :data:`CATEGORY_NAMES`, ``count_x`` / ``count_y``: per-latent numbers of firing samples
    (int64 arrays), and ``min_count``: the count that was applied.
    """
    _scaled_min_count(np.zeros(1), np.zeros(1), 1, min_count, min_frac)  # argument checks first
    rx, cx, _ = _code_stats("z_x", z_x, threshold)
    ry, cy, _ = _code_stats("z_y", z_y, threshold)
    if len(cx) != len(cy):
        raise ValueError("z_x and z_y must have the same number of latents")
    mc = _scaled_min_count(rx, ry, len(cx), min_count, min_frac)
    fx, fy = cx >= mc, cy >= mc
    cats = np.full(len(cx), "dead", dtype=object)
    cats[fx & ~fy] = "image_only"
    cats[~fx & fy] = "text_only"
    cats[fx & fy] = "both"
    cats = cats.astype(str)
    out = {name: int((cats == name).sum()) for name in CATEGORY_NAMES}
    out["categories"] = cats
    out["count_x"] = cx
    out["count_y"] = cy
    out["min_count"] = mc
    return out


def split_measures(z_x, z_y, threshold: float = 0.0, min_count: int | str = "scaled", min_frac: float = 0.2,
                   unimodal_cut: float = 0.1) -> dict:
    """The primary, sample-size-stable measure of a split dictionary.

    Among latents with *enough firings* (at least ``min_count`` firing samples over both
    modalities together; ``"scaled"`` as in :func:`category_min_count`), the modality
    score (:func:`modality_score`, a ratio of mean activations whose estimate converges
    as ``N`` grows) is summarised as

    * ``unimodal_share``: fraction with score ``<= unimodal_cut`` or ``>= 1 - unimodal_cut``
      (the split; Papadimitriou et al. call these modality-specific latents);
    * ``image_share`` / ``text_share``: the two ends separately;
    * ``score_q10/q25/q50/q75/q90``: quantiles of the score distribution, and
      ``score_balance``: mean of ``1 - |2 s - 1|`` (1 = every latent fires equally on
      both modalities, 0 = every latent is unimodal);
    * ``n_scored``: how many latents were scored, ``min_count`` the count applied.
    """
    if not 0.0 <= unimodal_cut < 0.5:
        raise ValueError(f"unimodal_cut must be in [0, 0.5), got {unimodal_cut}")
    _scaled_min_count(np.zeros(1), np.zeros(1), 1, min_count, min_frac)  # argument checks first
    # one pass per modality: firing counts and the column sums of the modality score
    rx, cx, sx = _code_stats("z_x", z_x, threshold, sums=True)
    ry, cy, sy = _code_stats("z_y", z_y, threshold, sums=True)
    if len(cx) != len(cy):
        raise ValueError("z_x and z_y must have the same number of latents")
    mc = _scaled_min_count(rx, ry, len(cx), min_count, min_frac)
    tot = cx + cy
    score = _modality_score_from_sums(sx, sy, len(rx), len(ry))
    keep = (tot >= mc) & np.isfinite(score)
    s = score[keep]
    out: dict = {"n_scored": int(keep.sum()), "min_count": int(mc)}
    if len(s) == 0:
        nan = float("nan")
        out.update({"unimodal_share": nan, "image_share": nan, "text_share": nan, "score_balance": nan,
                    **{f"score_q{q}": nan for q in (10, 25, 50, 75, 90)}})
        return out
    img, txt = s >= 1.0 - unimodal_cut, s <= unimodal_cut
    out.update({"unimodal_share": float((img | txt).mean()), "image_share": float(img.mean()),
                "text_share": float(txt.mean()), "score_balance": float((1.0 - np.abs(2.0 * s - 1.0)).mean())})
    for q in (10, 25, 50, 75, 90):
        out[f"score_q{q}"] = float(np.quantile(s, q / 100.0))
    return out


def _column_firings(name: str, z, threshold: float) -> tuple[np.ndarray, int]:
    """Firings per latent (column) and the number of rows; scipy sparse codes stay sparse."""
    if sp.issparse(z):
        z = sp.csr_matrix(z)
        f = z.data.astype(np.float32, copy=False) > threshold
        return np.bincount(z.indices[f], minlength=z.shape[1]).astype(np.int64), z.shape[0]
    rows, cols, _ = _code_stats(name, z, threshold)
    return cols, len(rows)


def firing_profile(z_x, z_y, threshold: float = 0.0, side_share: float = 0.2, true_codes_x=None,
                   true_codes_y=None) -> dict:
    """How a dictionary spends its firings on held-out pairs: the numbers behind the neuron
    categories when most latents are rare.

    ``z_x``, ``z_y``: ``(N, m)`` codes (dense or scipy sparse). A latent is *frequent* when it
    fires at least as often as the average latent (``(F_x + F_y) / m``, ``F``: all firings of a
    modality), *rare* when it fires at all but less, and *unimodal* when its smaller modality
    has under ``side_share`` of its firings. Returns fractions of the ``m`` latents
    (``never``, ``rare``, ``frequent``, ``frequent_unimodal``), ``median_firings`` (per latent,
    both modalities), ``top10_share`` (share of all firings on the 10% most-firing latents),
    ``firings_frequent_unimodal`` (share of all firings on frequent unimodal latents),
    ``firings_per_sample`` (mean active latents per embedding) and, with the true codes of
    synthetic data, ``true_per_sample`` (mean true concepts per embedding) and
    ``n_true_concepts``."""
    fx, nx = _column_firings("z_x", z_x, threshold)
    fy, ny = _column_firings("z_y", z_y, threshold)
    if fx.shape != fy.shape:
        raise ValueError(f"z_x and z_y have different widths: {fx.shape[0]} vs {fy.shape[0]}")
    tot = fx + fy
    m, all_f = len(tot), max(int(tot.sum()), 1)
    frequent = tot >= tot.sum() / max(m, 1)
    side = np.minimum(fx, fy) / np.maximum(tot, 1)
    uni_freq = frequent & (side < side_share) & (tot > 0)
    top = np.sort(tot)[::-1][:max(1, m // 10)]
    out = {"m": m, "never": float(np.mean(tot == 0)), "rare": float(np.mean((tot > 0) & ~frequent)),
           "frequent": float(np.mean(frequent & (tot > 0))), "frequent_unimodal": float(np.mean(uni_freq)),
           "median_firings": float(np.median(tot)), "top10_share": float(top.sum() / all_f),
           "firings_frequent_unimodal": float(tot[uni_freq].sum() / all_f),
           "firings_per_sample": float(tot.sum() / max(nx + ny, 1))}
    if true_codes_x is not None and true_codes_y is not None:
        tx, ty = _column_firings("true_codes_x", true_codes_x, 0.0), _column_firings("true_codes_y", true_codes_y, 0.0)
        out["true_per_sample"] = float((tx[0].sum() + ty[0].sum()) / max(tx[1] + ty[1], 1))
        out["n_true_concepts"] = int(len(tx[0]))
    return out


def modality_score(z_x, z_y) -> np.ndarray:
    """Modality score of each latent (Papadimitriou et al. 2025).

    ``score_i = E_x[z_i] / (E_x[z_i] + E_y[z_i])`` where ``E_x`` is the mean over the rows of
    ``z_x`` (image samples) and ``E_y`` the mean over the rows of ``z_y`` (text samples).
    1 means image-only, 0 text-only, 0.5 balanced.  NaN where both means are 0 (the latent
    never fires).  Returns a float64 array of shape ``(m,)``.
    """
    rx, _, sx = _code_stats("z_x", z_x, 0.0, sums=True)
    ry, _, sy = _code_stats("z_y", z_y, 0.0, sums=True)
    return _modality_score_from_sums(sx, sy, len(rx), len(ry))


# --------------------------------------------------------------------------- MMS
#: mms_scores keeps a reference sparse (scipy) when at most this share of its entries is
#: non-zero (the paper profile's ground-truth concept codes: about 0.3%).
_SPARSE_REF_DENSITY = 0.05


def _firing_sums(z: torch.Tensor, r, threshold: float):
    """For the entries ``z[j, i] > threshold`` (activations ``a = |z[j, i]|``) return per
    latent ``i``: ``U_i = sum_j a_j r_j`` (m, D), ``s_i = sum_j a_j``,
    ``q_i = sum_j a_j^2 ||r_j||^2`` and ``p_i = sum_j a_j^2`` (float64).  Only the firing
    entries are used, through a sparse ``(m, N)`` matrix (TopK codes are very sparse).
    ``r``: a dense float64 tensor (torch sparse product; ``U``, ``s``, ... tensors) or a
    float64 scipy CSR matrix (scipy sparse product; ``U`` CSR, the rest numpy)."""
    m, n = z.shape[1], z.shape[0]
    rows, cols = (z > threshold).nonzero(as_tuple=True)
    vals = z[rows, cols].double().abs()
    if sp.issparse(r):
        v, ij = vals.numpy(), (cols.numpy(), rows.numpy())
        A = sp.csr_matrix((v, ij), shape=(m, n))
        A2 = sp.csr_matrix((v * v, ij), shape=(m, n))
        sqr = np.asarray(r.multiply(r).sum(1)).ravel()
        return ((A @ r).tocsr(), np.asarray(A.sum(1)).ravel(), A2 @ sqr, np.asarray(A2.sum(1)).ravel())
    A = torch.sparse_coo_tensor(torch.stack([cols, rows]), vals, (m, n),
                                check_invariants=False).coalesce()
    A2 = torch.sparse_coo_tensor(torch.stack([cols, rows]), vals * vals, (m, n),
                                 check_invariants=False).coalesce()
    sqr = (r * r).sum(1, keepdim=True)
    ones = torch.ones(n, 1, dtype=torch.float64)
    U = torch.sparse.mm(A, r)
    s = torch.sparse.mm(A, ones)[:, 0]
    q = torch.sparse.mm(A2, sqr)[:, 0]
    p = torch.sparse.mm(A2, ones)[:, 0]
    return U, s, q, p


def _np(a) -> np.ndarray:
    return a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _row_dots(u, v) -> np.ndarray:
    """``(u * v).sum(1)`` for two dense tensors or two scipy sparse matrices."""
    if sp.issparse(u):
        return np.asarray(u.multiply(v).sum(1)).ravel()
    return (u * v).sum(1).numpy()


def _mms_from_sums(fa, fb, same: bool) -> np.ndarray:
    """MMS of one modality pair from the :func:`_firing_sums` of each side (``fb`` unused
    when ``same``); see :func:`mms_scores`."""
    ua, sa, qa, pa = fa
    sa = _np(sa)
    if same:
        num = _row_dots(ua, ua) - _np(qa)
        den = sa * sa - _np(pa)
        scale = sa * sa
    else:
        sb = _np(fb[1])
        num = _row_dots(ua, fb[0])
        den = sa * sb
        scale = den
    ok = den > 1e-9 * np.maximum(scale, _EPS)
    return np.where(ok, num / np.where(ok, den, 1.0), 0.0)


def _density(a) -> float:
    if sp.issparse(a):
        return a.nnz / max(1, a.shape[0] * a.shape[1])
    if isinstance(a, torch.Tensor):
        return int(torch.count_nonzero(a)) / max(1, a.numel())
    a = np.asarray(a)
    return np.count_nonzero(a) / max(1, a.size)


def _mms_reference(name: str, ref, sparse: bool):
    """Unit-normalised reference rows in float64: a scipy CSR matrix (``sparse``) or a
    dense tensor (zero rows stay zero, as :func:`_normalize_rows`)."""
    if not sparse:
        r = to_tensor(ref.toarray() if sp.issparse(ref) else ref, torch.float64)
        _check_2d(name, r)
        return _normalize_rows(r)
    r = _as_csr(ref, round_float32=False)
    norms = np.sqrt(np.asarray(r.multiply(r).sum(1)).ravel())
    r.data /= np.repeat(np.maximum(norms, _EPS), np.diff(r.indptr))
    return r


def mms_scores(z_x, z_y, ref_x, ref_y, threshold: float = 0.0) -> dict:
    """Multimodal monosemanticity score (MMS) of every latent, vectorised.

    Definition (paper.md, Metrics 2).  For latent ``i`` and modality pair ``(m, n)``:
    let ``J`` be the samples of modality ``m`` on which the latent fires
    (activation ``> threshold``) with activations ``a^m_j`` and ``K`` the firing samples of
    modality ``n`` with activations ``a^n_k``.  ``S_jk`` is the cosine similarity of samples
    ``j`` and ``k`` under the *reference* embeddings (``ref_x`` rows for image samples,
    ``ref_y`` rows for text samples; the reference dimension may differ from the codes'
    embedding dimension, but ``ref_x`` and ``ref_y`` must share one dimension).
    ``A_jk = |a^m_j a^n_k|``, with the pairs ``j == k``
    (the same sample) excluded when ``m == n``.  Then

        ``MMS_i = sum_jk A_jk S_jk / sum_jk A_jk``, and ``MMS_i = 0`` if the denominator is 0
        (the latent never fires, or for ``m == n`` fires on a single sample).

    The sum is computed as ``<Z_m^T R_m, Z_n^T R_n>`` per latent, where ``Z`` holds the
    thresholded absolute activations (non-firing entries set to 0) and ``R`` the
    unit-normalised reference rows, minus the diagonal ``sum_j a_j^2 ||r_j||^2`` when
    ``m == n``; the denominator is ``(sum_j a_j)(sum_k a_k)`` minus ``sum_j a_j^2`` when
    ``m == n``.  Computed in float64 with a sparse ``(m, N)`` matrix of the firing entries
    (memory ``O(nnz + m * D_ref)``; no ``N x N`` matrix is ever formed), once per modality
    (``img_txt`` reuses the sums of ``img_img`` and ``txt_txt``). A sparse reference (at
    most 5% non-zero entries, e.g. the synthetic ground-truth concept codes, or a scipy
    sparse matrix) stays sparse: ``Z^T R`` is then a sparse product, ``O(nnz(Z) *
    nnz/row(R))`` instead of ``O(nnz(Z) * D_ref)``.

    Returns ``{"img_img": (m,), "txt_txt": (m,), "img_txt": (m,)}`` float64 arrays
    (``img_img`` uses ``(z_x, ref_x)`` twice, ``txt_txt`` uses ``(z_y, ref_y)``, and
    ``img_txt`` uses image samples against text samples).
    """
    zx, zy = to_tensor(z_x), to_tensor(z_y)
    for n, t in (("z_x", zx), ("z_y", zy)):
        _check_2d(n, t)
    sparse = all(_density(r) <= _SPARSE_REF_DENSITY for r in (ref_x, ref_y))
    rx, ry = _mms_reference("ref_x", ref_x, sparse), _mms_reference("ref_y", ref_y, sparse)
    if zx.shape[0] != rx.shape[0] or zy.shape[0] != ry.shape[0]:
        raise ValueError("codes and reference embeddings must have the same number of rows")
    if zx.shape[1] != zy.shape[1]:
        raise ValueError("z_x and z_y must have the same number of latents")
    if rx.shape[1] != ry.shape[1]:
        raise ValueError("ref_x and ref_y must have the same dimension for img_txt")
    fx, fy = _firing_sums(zx, rx, threshold), _firing_sums(zy, ry, threshold)
    return {
        "img_img": _mms_from_sums(fx, None, True),
        "txt_txt": _mms_from_sums(fy, None, True),
        "img_txt": _mms_from_sums(fx, fy, False),
    }


def mms_scores_naive(z_x, z_y, ref_x, ref_y, threshold: float = 0.0) -> dict:
    """Literal, loop-based MMS (same definition as :func:`mms_scores`).  Slow: for tests."""
    zx, zy = np.asarray(to_tensor(z_x, torch.float64)), np.asarray(to_tensor(z_y, torch.float64))
    rx, ry = np.asarray(to_tensor(ref_x, torch.float64)), np.asarray(to_tensor(ref_y, torch.float64))

    def cos(u, v):
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        if nu < _EPS or nv < _EPS:
            return 0.0
        return float(u @ v / (nu * nv))

    def one(za, ra, zb, rb, same):
        m = za.shape[1]
        res = np.zeros(m)
        for i in range(m):
            J = [j for j in range(za.shape[0]) if za[j, i] > threshold]
            K = [k for k in range(zb.shape[0]) if zb[k, i] > threshold]
            num = den = 0.0
            for j in J:
                for k in K:
                    if same and j == k:
                        continue
                    a = abs(za[j, i] * zb[k, i])
                    num += a * cos(ra[j], rb[k])
                    den += a
            res[i] = num / den if den > 0 else 0.0
        return res

    return {
        "img_img": one(zx, rx, zx, rx, True),
        "txt_txt": one(zy, ry, zy, ry, True),
        "img_txt": one(zx, rx, zy, ry, False),
    }


def mms_summary(scores: dict, alive=None) -> dict:
    """Summary of per-latent MMS arrays (:func:`mms_scores`). For each key ``k`` of
    ``scores`` (an ``(m,)`` array; NaN entries are ignored everywhere):

    * ``k_mean_alive``: mean over the latents alive in both modalities, ``alive`` (a bool
      ``(m,)`` mask, e.g. ``neuron_categories(...)["categories"] == "both"``): the peer
      convention. NaN when ``alive`` is not given or selects no latent.
    * ``k_mean_all``: mean over *all* latents, dead and single-modality ones counting as
      their score 0 (so it mixes monosemanticity with the share of latents alive in both).
    * ``k_auc``: area under the curve the figures plot, the scores of all latents sorted in
      decreasing order against the latent rank scaled to [0, 1] (rank ``i`` of ``n`` at
      ``i / (n - 1)``), by the trapezoid rule; for one latent its score.
    * ``k_median``, ``k_frac_gt_0.5``: median and fraction of scores > 0.5 over all latents.
    """
    keep = None if alive is None else np.asarray(alive, dtype=bool).ravel()
    out = {}
    for k, v in scores.items():
        raw = np.asarray(to_tensor(v, torch.float64)).ravel()
        if keep is not None and keep.shape != raw.shape:
            raise ValueError(f"mms_summary: alive mask has {keep.size} latents, scores[{k!r}] has {raw.size}")
        ok = ~np.isnan(raw)
        a = raw[ok]
        sel = raw[ok & keep] if keep is not None else np.zeros(0)
        out[f"{k}_mean_alive"] = float(sel.mean()) if sel.size else float("nan")
        if a.size == 0:
            for stat in ("mean_all", "auc", "median", "frac_gt_0.5"):
                out[f"{k}_{stat}"] = float("nan")
            continue
        out[f"{k}_mean_all"] = float(a.mean())
        curve = np.sort(a)[::-1]
        trapezoids = (curve[:-1] + curve[1:]).sum() / 2 / (curve.size - 1) if curve.size > 1 else curve[0]
        out[f"{k}_auc"] = float(trapezoids)
        out[f"{k}_median"] = float(np.median(a))
        out[f"{k}_frac_gt_0.5"] = float((a > 0.5).mean())
    return out


# --------------------------------------------------------------------------- reconstruction
def reconstruction_metrics(u, u_hat) -> dict:
    """Reconstruction quality of ``u_hat`` for ``u`` (both ``(N, d)``), in float64.

    * ``explained_variance = 1 - sum_i ||u_i - û_i||^2 / sum_i ||u_i - mean(u)||^2``
      (``mean(u)`` is the per-dimension mean over samples);
    * ``nmse = mean_i ||u_i - û_i||^2 / mean_i ||u_i||^2``;
    * ``cosine = mean_i cos(u_i, û_i)`` (0 for a zero vector);
    * ``mse = mean_i ||u_i - û_i||^2`` (squared error summed over dims, averaged over
      samples);
    * ``shrinkage``: the relative reconstruction bias (Wright & Sharkey 2024, SAEBench), about the
      mean: ``gamma = sum_i ||c_i||^2 / sum_i <c_i, v_i>`` with ``c = û - mean(u)``, ``v = u - mean(u)``,
      the ``gamma`` for which ``c / gamma`` best fits ``v``. Below 1: reconstructions shrunk toward the
      mean (what a sparsity penalty does); 1: no bias.
    """
    a, b = to_tensor(u, torch.float64), to_tensor(u_hat, torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim == 1:
        a, b = a[None], b[None]
    err = ((a - b) ** 2).sum(1)
    mu = a.mean(0, keepdim=True)
    tot = ((a - mu) ** 2).sum()
    cos = (_normalize_rows(a) * _normalize_rows(b)).sum(1)
    inner = ((b - mu) * (a - mu)).sum()
    return {
        "explained_variance": float(1.0 - err.sum() / tot) if tot > 0 else float("nan"),
        "nmse": float(err.mean() / (a ** 2).sum(1).mean()),
        "cosine": float(cos.mean()),
        "mse": float(err.mean()),
        "shrinkage": float(((b - mu) ** 2).sum() / inner) if inner > 0 else float("nan"),
    }


def pca_explained_variance(train_u, val_u, ks) -> dict[int, float]:
    """The PCA baseline of the sparsity-fidelity trade-off: for each ``k`` in ``ks``, the explained variance
    (about the mean, as :func:`reconstruction_metrics`) of ``val_u`` projected on the top ``k`` principal
    directions of ``train_u`` (a dense code of ``k`` numbers per input)."""
    a = to_tensor(train_u, torch.float64)
    v = to_tensor(val_u, torch.float64)
    mu = a.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(a - mu, full_matrices=False)
    vc = v - mu
    tot = ((v - v.mean(0, keepdim=True)) ** 2).sum()
    out = {}
    for k in ks:
        basis = vh[: int(k)]
        rec = (vc @ basis.T) @ basis + mu
        out[int(k)] = float(1.0 - ((v - rec) ** 2).sum() / tot)
    return out


def dense_latent_share(z_x, z_y=None, threshold: float = 0.0, rate: float = 0.1) -> float:
    """Share of the dictionary's latents that fire on more than ``rate`` of the inputs (SAEBench's dense
    latents; images and captions pooled when both are given): a latent active on a tenth of everything
    describes little."""
    z = to_tensor(z_x, torch.float32)
    if z_y is not None:
        z = torch.cat([z, to_tensor(z_y, torch.float32)])
    if z.numel() == 0:
        return float("nan")
    return float(((z > threshold).float().mean(0) > rate).float().mean())


def dictionary_agreement(atoms_a, atoms_b, threshold: float = 0.9, max_atoms: int = 4096) -> dict:
    """Seed stability: how well two dictionaries match, by the Hungarian matching of their decoder atoms
    (rows, ``(m, d)`` each) on cosine similarity. ``mean_cos``: the mean cosine of matched pairs;
    ``share_above``: the share of atoms whose match has cosine above ``threshold``. Dictionaries wider than
    ``max_atoms`` are not matched (the assignment is cubic in ``m``): NaN."""
    a = _normalize_rows(to_tensor(atoms_a, torch.float64))
    b = _normalize_rows(to_tensor(atoms_b, torch.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"atoms of different widths: {tuple(a.shape)} vs {tuple(b.shape)}")
    if max(len(a), len(b)) > max_atoms:
        return {"mean_cos": float("nan"), "share_above": float("nan")}
    from scipy.optimize import linear_sum_assignment

    sim = (a @ b.T).numpy()
    r, c = linear_sum_assignment(-sim)
    matched = sim[r, c]
    n = max(len(a), len(b))  # unmatched atoms (different widths) count as not agreeing
    return {"mean_cos": float(matched.sum() / n), "share_above": float((matched > threshold).sum() / n)}


# --------------------------------------------------------------------------- retrieval
def retrieval_ranks(queries, keys, chunk: int = 1024) -> np.ndarray:
    """Rank of the correct key for each query (query ``i``'s correct key is key ``i``).

    Similarity is cosine.  ``rank_i = 1 + #{j != i : sim(q_i, k_j) >= sim(q_i, k_i)}``:
    keys *tied* with the correct key rank above it (pessimistic tie handling), so a
    degenerate representation (all-zero or constant codes, common with sparse codes)
    scores at the bottom, not at the top.  Computed in chunks of ``chunk`` queries.
    Returns int64 ``(N,)``.
    """
    q, k = _normalize_rows(to_tensor(queries)), _normalize_rows(to_tensor(keys))
    _check_2d("queries", q)
    _check_2d("keys", k)
    if q.shape[0] != k.shape[0]:
        raise ValueError("queries and keys must have the same number of rows (paired)")
    ranks = np.empty(q.shape[0], dtype=np.int64)
    for s in range(0, q.shape[0], chunk):
        sims = q[s:s + chunk] @ k.T  # (c, N)
        idx = torch.arange(s, min(s + chunk, q.shape[0]))
        correct = sims[torch.arange(len(idx)), idx]
        # ">=" counts the correct key itself once; it is the "1 +" of the rank
        ranks[s:s + len(idx)] = (sims >= correct[:, None]).sum(1).numpy()
    return ranks


def retrieval_metrics(queries, keys, ks: Sequence[int] = (1, 5, 10), chunk: int = 1024) -> dict:
    """Paired retrieval: ``R@k`` = fraction of queries whose correct key has rank <= k,
    ``MRR`` = mean of ``1 / rank``; ranks as in :func:`retrieval_ranks` (cosine; ties
    count against the correct key)."""
    r = retrieval_ranks(queries, keys, chunk=chunk)
    out = {f"R@{k}": float((r <= k).mean()) for k in ks}
    out["MRR"] = float((1.0 / r).mean())
    return out


def cross_modal_retrieval(x_repr, y_repr, ks: Sequence[int] = (1, 5, 10), chunk: int = 1024) -> dict:
    """Retrieval in both directions: ``x2y_*`` (x rows are queries, y rows keys) and
    ``y2x_*``; keys as in :func:`retrieval_metrics`, e.g. ``x2y_R@1``, ``y2x_MRR``."""
    out = {}
    for pre, q, k in (("x2y_", x_repr, y_repr), ("y2x_", y_repr, x_repr)):
        for name, v in retrieval_metrics(q, k, ks=ks, chunk=chunk).items():
            out[pre + name] = v
    return out


# --------------------------------------------------------------------------- zero-shot
def zero_shot_predict(emb, class_emb, chunk: int = 4096) -> np.ndarray:
    """Predicted class of each row of ``emb``: argmax over rows of ``class_emb`` of cosine
    similarity (ties -> lowest class index).  Returns int64 ``(N,)``."""
    e, c = _normalize_rows(to_tensor(emb)), _normalize_rows(to_tensor(class_emb))
    preds = [(e[s:s + chunk] @ c.T).argmax(1) for s in range(0, e.shape[0], chunk)]
    return torch.cat(preds).numpy().astype(np.int64) if preds else np.zeros(0, np.int64)


def zero_shot_accuracy(emb, labels, class_emb) -> float:
    """Fraction of samples whose cosine-argmax class (:func:`zero_shot_predict`) equals
    ``labels`` (int class indices into the rows of ``class_emb``)."""
    pred = zero_shot_predict(emb, class_emb)
    lab = np.asarray(to_tensor(labels, torch.int64))
    return float((pred == lab).mean())


def zero_shot_report(emb, labels, class_emb, class_names: Sequence[str] | None = None) -> dict:
    """Zero-shot accuracy plus ``per_class`` accuracy (array over classes, NaN for classes
    with no samples), ``balanced_accuracy`` (mean of the non-NaN per-class values),
    ``predictions`` and, if given, ``class_names``."""
    pred = zero_shot_predict(emb, class_emb)
    lab = np.asarray(to_tensor(labels, torch.int64))
    n_cls = to_tensor(class_emb).shape[0]
    per = np.full(n_cls, np.nan)
    for c in range(n_cls):
        sel = lab == c
        if sel.any():
            per[c] = float((pred[sel] == c).mean())
    out = {
        "accuracy": float((pred == lab).mean()),
        "per_class": per,
        "balanced_accuracy": float(np.nanmean(per)) if np.any(~np.isnan(per)) else float("nan"),
        "predictions": pred,
    }
    if class_names is not None:
        out["class_names"] = list(class_names)
    return out


# --------------------------------------------------------------------------- ground truth
#: Entries (float64) of one dense tile of the ``(concepts, latents)`` correlation or cosine
#: matrix: 2**22 entries = 32 MiB, so a tile and its temporaries stay near 100 MB whatever
#: the shapes.
_TILE_ENTRIES = 1 << 22
#: Correlations closer than this count as tied (the lowest latent index wins). Latents that
#: fire on the same few samples often have *mathematically* equal correlations with a concept,
#: which rounding then orders arbitrarily; the tolerance makes the choice deterministic (and
#: independent of tiling). It is far above float64 rounding of a correlation and far below
#: any difference that means something.
_TIE_TOL = 1e-9


def _atom_best(true_atoms, dictionary) -> tuple[torch.Tensor, torch.Tensor]:
    """Per true atom (row of ``true_atoms``), the best signed cosine to a dictionary atom and
    its index (ties -> lowest index), float64, in blocks of true atoms: the full ``(c, m)``
    cosine matrix is never held (3072 x 8192 float64 would be 200 MB)."""
    t = _normalize_rows(to_tensor(true_atoms, torch.float64))
    d = _normalize_rows(to_tensor(dictionary, torch.float64))
    if t.shape[1] != d.shape[1]:
        raise ValueError("true atoms and dictionary atoms must have the same dimension")
    c, m = t.shape[0], d.shape[0]
    if m == 0:
        raise ValueError("the dictionary has no atoms")
    vals = torch.empty(c, dtype=torch.float64)
    idx = torch.empty(c, dtype=torch.int64)
    rows = max(1, _TILE_ENTRIES // max(m, 1))
    dt = d.T.contiguous()
    for s in range(0, c, rows):
        v, i = (t[s:s + rows] @ dt).max(1)
        vals[s:s + rows], idx[s:s + rows] = v, i
    return vals, idx


def atom_recovery(true_atoms, dictionary) -> np.ndarray:
    """For each true atom (row of ``true_atoms`` ``(c, d)``), the best *signed* cosine
    similarity to any dictionary atom (row of ``dictionary`` ``(m, d)``).  Returns ``(c,)``."""
    return _atom_best(true_atoms, dictionary)[0].numpy()


def best_latent_by_decoder(true_atoms, dictionary) -> np.ndarray:
    """Index of the dictionary atom with the highest signed cosine to each true atom
    (``(c,)`` int64)."""
    return _atom_best(true_atoms, dictionary)[1].numpy().astype(np.int64)


def _as_csr(a, round_float32: bool):
    """``a`` ``(N, k)`` (numpy, torch on any device, scipy sparse, nested sequence) as a
    float64 :class:`scipy.sparse.csr_matrix` without explicit zeros. ``round_float32``
    rounds the values to float32 first (what ``to_tensor(a)`` does). Dense input is
    converted in row blocks of :data:`_SCAN_ENTRIES` entries, so no dense float64 copy of
    ``a`` is made."""
    if sp.issparse(a):
        out = sp.csr_matrix(a, copy=True)
        out.data = out.data.astype(np.float32 if round_float32 else np.float64).astype(np.float64)
        out.eliminate_zeros()
        return out
    a = _as_numpy_2d("the codes", a)
    dtype = np.float32 if round_float32 else np.float64
    n, k = a.shape
    counts = np.zeros(n, np.int64)
    cols, vals = [], []
    block_rows = max(1, _SCAN_ENTRIES // max(k, 1))
    for s in range(0, n, block_rows):
        b = a[s:s + block_rows].astype(dtype, copy=False)
        idx = np.flatnonzero(b != 0)  # a boolean scan: much faster than np.nonzero of the floats
        r, c = np.divmod(idx, k)
        counts[s:s + len(b)] = np.bincount(r, minlength=len(b))
        cols.append(c)
        vals.append(b.ravel()[idx].astype(np.float64))
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    col = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    val = np.concatenate(vals) if vals else np.zeros(0)
    return sp.csr_matrix((val, col, indptr), shape=(n, k))


def _round_float32(a):
    """A CSR matrix with its values rounded to float32 (kept as float64), zeros dropped."""
    out = a.copy()
    out.data = out.data.astype(np.float32).astype(np.float64)
    out.eliminate_zeros()
    return out


def _column_moments(a) -> tuple[np.ndarray, np.ndarray]:
    """Column sums and reciprocal centred norms ``1 / ||a_j - mean(a_j)||`` of a CSR matrix
    (0 where the centred norm is ``<= eps``: a constant column correlates 0 with anything).
    The centred sum of squares is summed over the stored entries plus ``(N - nnz_j)
    mean_j^2`` for the zeros, so there is no cancellation."""
    n, k = a.shape
    col = a.indices
    sums = np.bincount(col, weights=a.data, minlength=k).astype(np.float64)
    nnz = np.bincount(col, minlength=k)
    mu = sums / max(n, 1)
    css = np.bincount(col, weights=(a.data - mu[col]) ** 2, minlength=k) + (n - nnz) * mu * mu
    norm = np.sqrt(css)
    inv = np.zeros(k)
    ok = norm > _EPS
    inv[ok] = 1.0 / norm[ok]
    return sums, inv


def _corr_best_csr(t, z, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """:func:`activation_correlation_best` on float64 CSR matrices ``t`` ``(N, c)`` and
    ``z`` ``(N, m)``.

    Pearson correlation ``corr(t_c, z_j) = (S_cj - mean(t_c) sum(z_j)) / (||t_c - mean|| ||z_j -
    mean||)`` with ``S = t^T z``, a sparse product (``N * nnz/row(t) * nnz/row(z)`` multiply-adds,
    not ``N * c * m``). ``S`` is formed in tiles of ``rows`` concepts x ``chunk`` latents
    (about :data:`_TILE_ENTRIES` entries); each tile is made dense, corrected for the means and
    scaled, and its row maxima merged into the running best in latent order: a later tile
    wins only by more than :data:`_TIE_TOL`, and within a tile the lowest latent within
    :data:`_TIE_TOL` of the maximum is taken, so ties go to the lowest latent index whatever
    the tiling."""
    n, c = t.shape
    m = z.shape[1]
    best_val = np.full(c, -np.inf)
    best_idx = np.full(c, -1, dtype=np.int64)
    if c == 0 or m == 0:
        return best_idx, best_val
    if n == 0:  # no samples: every correlation is 0 (no positive one)
        return best_idx, np.zeros(c)
    t_sum, t_inv = _column_moments(t)
    z_sum, z_inv = _column_moments(z)
    t_g = (t_sum / n) * t_inv  # mean(t_c) / ||t_c - mean||
    z_h = z_sum * z_inv  # sum(z_j) / ||z_j - mean||
    chunk = max(1, int(chunk))
    rows = max(1, _TILE_ENTRIES // min(chunk, m))
    tt = t.T.tocsr()  # (c, N)
    zc = z.tocsc()
    z_chunks = [(s, zc[:, s:s + chunk].tocsr()) for s in range(0, m, chunk)]
    for r0 in range(0, c, rows):
        tr = tt[r0:r0 + rows]
        r1 = r0 + tr.shape[0]
        g, ti = t_g[r0:r1, None], t_inv[r0:r1, None]
        bv, bi = best_val[r0:r1], best_idx[r0:r1]
        for s, zb in z_chunks:
            tile = (tr @ zb).toarray()  # (rows, chunk) float64: the cross term S
            tile *= ti
            tile *= z_inv[None, s:s + zb.shape[1]]
            tile -= g * z_h[None, s:s + zb.shape[1]]
            v = tile.max(1)
            # the lowest latent within _TIE_TOL of the tile's best (a tie up to rounding)
            i = (tile >= (v - _TIE_TOL)[:, None]).argmax(1)
            new = v > bv + _TIE_TOL  # a clearly better latent: take it
            tie = ~new & (v > bv)  # a tie with an earlier (lower) latent: keep it, raise the value
            bi[new] = i[new] + s
            bv[new | tie] = v[new | tie]
    best_idx[~(best_val > 0)] = -1
    return best_idx, best_val


def activation_correlation_best(true_codes, z, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each true concept ``c`` (column of ``true_codes`` ``(N, c)``), the latent (column of
    ``z`` ``(N, m)``) with the largest Pearson correlation between the concept coefficient and
    the latent activation across the ``N`` samples, and that correlation.

    A constant column (on either side; centred norm ``<= 1e-12``) has correlation 0 with
    everything.  If the best correlation is <= 0 (no latent co-varies positively) the index
    is ``-1``.  Ties go to the lowest latent index; correlations within ``1e-9`` of each
    other count as tied (latents firing on the same few samples are often mathematically
    tied, and rounding would otherwise pick one at random).  ``true_codes`` is used in float64,
    ``z`` rounded to float32 (as :func:`to_tensor` does) and then used in float64; either
    may also be a scipy sparse matrix.

    Sparse: both sides are taken as CSR matrices (only their non-zeros), the numerator's
    cross term ``sum_n t_nc z_nm`` is a sparse product and the means enter as a rank-one
    correction, so the cost is ``O(N * nnz/row(t) * nnz/row(z))`` for the product plus
    ``O(c * m)`` cheap element-wise work (no ``N x c x m`` matmul, no dense float64 copy
    of the inputs). The ``(c, m)`` correlation matrix is formed only in tiles of ``chunk``
    latents (about 32 MiB each). Returns ``(indices int64 (c,), correlations float64 (c,))``;
    with no latent (``m = 0``) every index is ``-1`` and every correlation ``-inf``.
    """
    t = _as_csr(true_codes, round_float32=False)
    zz = _as_csr(z, round_float32=True)
    if t.shape[0] != zz.shape[0]:
        raise ValueError("true_codes and z must have the same number of rows")
    return _corr_best_csr(t, zz, chunk=chunk)


def best_latent_by_activation(true_codes, z, chunk: int = 1024) -> np.ndarray:
    """Per concept, argmax over latents of the Pearson correlation between the true concept
    coefficient and the latent activation; ``-1`` when no latent correlates positively.
    See :func:`activation_correlation_best`."""
    return activation_correlation_best(true_codes, z, chunk=chunk)[0]


def _same_latent_fraction(best_img, best_txt, shared_mask) -> float:
    bi, bt = np.asarray(best_img), np.asarray(best_txt)
    mask = np.asarray(shared_mask, dtype=bool)
    if mask.sum() == 0:
        return float("nan")
    same = (bi == bt) & (bi >= 0)
    return float(same[mask].mean())


def collapse_rate(best_img, best_txt, shared_mask) -> float:
    """Fraction of shared concepts (``shared_mask`` True) whose best image latent and best
    text latent are the same index (an index of -1, "none found", never matches).  With
    decoder-based indices (:func:`best_latent_by_decoder`) this is the *collapse* of
    Lee et al.: one column stands for both modality directions of a concept.  NaN when
    there is no shared concept."""
    return _same_latent_fraction(best_img, best_txt, shared_mask)


def single_latent_fraction(best_img, best_txt, shared_mask) -> float:
    """Same computation as :func:`collapse_rate`, read positively with activation-based
    indices (:func:`best_latent_by_activation`): the fraction of shared concepts captured
    by a single latent in both modalities (the latent that tracks the concept in images is
    the one that tracks it in captions)."""
    return _same_latent_fraction(best_img, best_txt, shared_mask)


def ground_truth_report(true_atoms_x, true_atoms_y, concept_kind, codes_x, codes_y,
                        z_x, z_y, dict_x, dict_y, recovered_threshold: float = 0.9) -> dict:
    """Ground-truth scores on synthetic data.

    Inputs: ``true_atoms_x``/``true_atoms_y`` ``(c, d)``: each concept's image / text
    direction (rows aligned with ``concept_kind``; rows of concepts absent from a modality
    are ignored); ``concept_kind`` ``(c,)`` ints: 0 shared, 1 image-only, 2 text-only;
    ``codes_x``/``codes_y`` ``(N, c)``: true concept coefficients of each modality;
    ``z_x``/``z_y`` ``(N, m)``: model codes; ``dict_x``/``dict_y`` ``(m, d)``: decoder atoms
    used for each modality (the same array for a shared dictionary).

    Returns
    * ``recovery_x_mean``: mean :func:`atom_recovery` of the image atoms (kinds 0, 1,
      ``true_atoms_x`` vs ``dict_x``); ``recovery_y_mean`` likewise for text (kinds 0, 2);
    * ``recovered_frac_x``, ``recovered_frac_y``, ``recovered_frac``: fraction of those atoms
      (and of all of them pooled) with recovery > ``recovered_threshold`` (0.9);
    * ``collapse_rate``: :func:`collapse_rate` with decoder-based indices over shared
      concepts;
    * ``single_latent_fraction``: :func:`single_latent_fraction` with activation-based
      indices over shared concepts; ``alignment_error = 1 - single_latent_fraction``;
    * ``shared_concept_corr``: mean over shared concepts of the best Pearson correlation
      between ONE latent and the concept's coefficient with images and captions pooled
      (``[z_x; z_y]`` vs ``[codes_x; codes_y]``): how well a single latent tracks the
      concept in both modalities at once. Unlike the argmax-based fraction above it does
      not flip when two latents are almost equally good;
    * ``n_shared``, ``n_image_only``, ``n_text_only``.
    """
    kind = np.asarray(to_tensor(concept_kind, torch.int64))
    sel_x = (kind == 0) | (kind == 1)
    sel_y = (kind == 0) | (kind == 2)
    shared = kind == 0
    ax, ay = to_tensor(true_atoms_x, torch.float64), to_tensor(true_atoms_y, torch.float64)
    # one blocked pass per modality gives both the recovery (max) and the decoder index (argmax)
    cos_x, dec_x = (v.numpy() for v in _atom_best(ax, dict_x))
    cos_y, dec_y = (v.numpy() for v in _atom_best(ay, dict_y))
    rec_x, rec_y = cos_x[sel_x], cos_y[sel_y]
    dec_x, dec_y = dec_x.astype(np.int64), dec_y.astype(np.int64)
    both = np.concatenate([rec_x, rec_y])

    def _mean(a):
        return float(a.mean()) if a.size else float("nan")

    # codes and model codes as sparse matrices once; the three correlations below share them
    tx, ty = _as_csr(codes_x, round_float32=False), _as_csr(codes_y, round_float32=False)
    zx, zy = _as_csr(z_x, round_float32=True), _as_csr(z_y, round_float32=True)
    for name, t, z in (("x", tx, zx), ("y", ty, zy)):
        if t.shape[0] != z.shape[0]:
            raise ValueError(f"codes_{name} and z_{name} must have the same number of rows")
    act_x = _corr_best_csr(tx, zx)[0]
    act_y = _corr_best_csr(ty, zy)[0]
    slf = single_latent_fraction(act_x, act_y, shared)
    if shared.any():
        # images and captions pooled; the codes enter as float32 (as they always have here)
        pooled_codes = sp.vstack([_round_float32(tx)[:, shared], _round_float32(ty)[:, shared]], format="csr")
        _, pooled_corr = _corr_best_csr(pooled_codes, sp.vstack([zx, zy], format="csr"))
        shared_corr = float(np.mean(pooled_corr))
    else:
        shared_corr = float("nan")
    return {
        "recovery_x_mean": _mean(rec_x),
        "recovery_y_mean": _mean(rec_y),
        "recovered_frac_x": _mean(rec_x > recovered_threshold),
        "recovered_frac_y": _mean(rec_y > recovered_threshold),
        "recovered_frac": _mean(both > recovered_threshold),
        "collapse_rate": collapse_rate(dec_x, dec_y, shared),
        "single_latent_fraction": slf,
        "alignment_error": 1.0 - slf,
        "shared_concept_corr": shared_corr,
        "n_shared": int(shared.sum()),
        "n_image_only": int((kind == 1).sum()),
        "n_text_only": int((kind == 2).sum()),
    }
