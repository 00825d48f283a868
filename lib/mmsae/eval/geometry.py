"""Geometry of a paired (image, text) embedding set, and a comparison with real CLIP.

:func:`embedding_geometry` summarises any paired set ``x`` (image rows), ``y`` (text rows)
with the same number of rows ``N`` and any width ``d`` by a dict of scalars:

``mean_norm_x``, ``mean_norm_y``
    ``|mean(x)|`` and ``|mean(y)|``: how far each modality sits in a cone away from the
    origin (unit rows: 1 means every row is the same, 0 means centred).
``cos_means``
    cosine between ``mean(x)`` and ``mean(y)``.
``modality_gap``
    ``|mean(x) - mean(y)|`` (Liang et al. 2022).
``pair_cosine``, ``random_pair_cosine``
    mean cosine of matched pairs ``(x_i, y_i)``, and of all mismatched pairs
    ``(x_i, y_j), i != j`` (computed exactly, not by sampling).
``centred_pair_cosine``
    mean cosine of matched pairs after subtracting each modality's mean: how much of the
    per-sample variation the two modalities share.
``subspace_overlap``
    overlap of the top-``top`` principal subspaces of the centred image and text rows:
    with ``U_x``, ``U_y`` (d x top) orthonormal bases of the two subspaces,
    ``||U_x^T U_y||_F^2 / top``, the mean squared cosine of the principal angles between
    the subspaces. 1 for identical subspaces, 0 for orthogonal ones, ``top / d`` expected
    for random ones.
``variance_x``, ``variance_y``, ``variance``
    per-sample variance: mean squared distance of a row to its modality mean, per modality
    and the mean of the two (for unit rows ``variance_x = 1 - mean_norm_x**2``).
``effective_rank_x``, ``effective_rank_y``
    entropy effective rank (Roy & Vetterli 2007) of the centred covariance of each
    modality: ``exp(-sum_k p_k log p_k)`` with ``p_k = lambda_k / sum(lambda)`` over the
    covariance eigenvalues ``lambda_k``; between 1 and ``min(N - 1, d)``.
``i2t_R@1``, ``t2i_R@1``
    dense image-to-text and text-to-image recall@1 by cosine on the first
    ``retrieval_pool`` pairs (:func:`mmsae.eval.metrics.cross_modal_retrieval`).

plus the counts ``n``, ``d``, ``top`` and ``retrieval_pool``. :func:`compare_geometry`
sets two such dicts side by side (every scalar except the counts) with a tolerance; the
reference is usually :func:`real_clip_geometry`, the same dict on the 500 real
CLIP ViT-B/16 COCO pairs shipped in ``data/`` (:data:`REAL_CLIP_REFERENCE`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics

__all__ = ["REAL_CLIP_REFERENCE", "COUNT_KEYS", "GEOMETRY_LABELS", "embedding_geometry", "class_structure",
           "real_clip_geometry", "compare_geometry",
           "load_real_clip"]

#: Real CLIP ViT-B/16 embeddings of 500 MS-COCO pairs, ``(2, 500, 512)`` ``[img, txt]``.
REAL_CLIP_REFERENCE = Path(__file__).resolve().parents[3] / "data" / "clip_vitb16_coco500.npy"

#: Keys of :func:`embedding_geometry` that are sizes, not statistics (never compared).
COUNT_KEYS = ("n", "d", "top", "retrieval_pool")

#: Readable names of the statistics (plain text, safe in LaTeX tables).
GEOMETRY_LABELS = {
    "mean_norm_x": "norm of the image mean", "mean_norm_y": "norm of the text mean",
    "cos_means": "cosine between the means", "modality_gap": "modality gap",
    "pair_cosine": "matched-pair cosine", "random_pair_cosine": "random-pair cosine",
    "centred_pair_cosine": "centred matched-pair cosine", "subspace_overlap": "top principal subspace overlap",
    "variance_x": "per-sample variance (image)", "variance_y": "per-sample variance (text)",
    "variance": "per-sample variance (mean)", "effective_rank_x": "effective rank (image)",
    "effective_rank_y": "effective rank (text)", "i2t_R@1": "image-to-text R@1", "t2i_R@1": "text-to-image R@1",
}

_EPS = 1e-12


def _entropy_effective_rank(eigenvalues: np.ndarray) -> float:
    lam = np.clip(np.asarray(eigenvalues, np.float64), 0.0, None)
    total = lam.sum()
    if total <= 0:
        return 0.0
    p = lam[lam > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def _principal(centred: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Covariance eigenvalues (descending) and the top-``top`` principal directions (d, top)."""
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    return s ** 2 / len(centred), vt[:top].T


def embedding_geometry(x, y, top: int = 20, retrieval_pool: int | None = None) -> dict:
    """Geometry statistics of a paired set (see the module docstring for every key).

    ``x``, ``y``: ``(N, d)`` arrays, row ``i`` of each one pair (need not be unit norm; the
    cosines normalise rows, the means, gap and variances use the rows as given).
    ``top``: size of the principal subspaces compared by ``subspace_overlap``.
    ``retrieval_pool``: number of leading pairs used for the R@1 figures (default all).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must be paired 2-D arrays of one shape, got {x.shape} and {y.shape}")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 pairs, got {n}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite (found NaN or inf)")
    if not 1 <= top <= min(n - 1, d):
        raise ValueError(f"top must be between 1 and min(N - 1, d) = {min(n - 1, d)}, got {top}")
    pool = n if retrieval_pool is None else int(retrieval_pool)
    if not 2 <= pool <= n:
        raise ValueError(f"retrieval_pool must be between 2 and N = {n}, got {retrieval_pool}")

    mx, my = x.mean(0), y.mean(0)
    nx, ny = np.linalg.norm(mx), np.linalg.norm(my)
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
    yn = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), _EPS)
    matched = (xn * yn).sum(1)
    # sum over all (i, j) of cos(x_i, y_j) = (sum_i xn_i) . (sum_j yn_j); drop the diagonal
    all_pairs = float(xn.sum(0) @ yn.sum(0))
    xc, yc = x - mx, y - my
    xcn = xc / np.maximum(np.linalg.norm(xc, axis=1, keepdims=True), _EPS)
    ycn = yc / np.maximum(np.linalg.norm(yc, axis=1, keepdims=True), _EPS)
    lam_x, u_x = _principal(xc, top)
    lam_y, u_y = _principal(yc, top)
    var_x, var_y = float((xc ** 2).sum(1).mean()), float((yc ** 2).sum(1).mean())
    ret = metrics.cross_modal_retrieval(x[:pool], y[:pool], ks=(1,))
    return {
        "n": int(n), "d": int(d), "top": int(top), "retrieval_pool": int(pool),
        "mean_norm_x": float(nx),
        "mean_norm_y": float(ny),
        "cos_means": float(mx @ my / max(nx * ny, _EPS)),
        "modality_gap": float(np.linalg.norm(mx - my)),
        "pair_cosine": float(matched.mean()),
        "random_pair_cosine": float((all_pairs - matched.sum()) / (n * (n - 1))),
        "centred_pair_cosine": float((xcn * ycn).sum(1).mean()),
        "subspace_overlap": float(np.sum((u_x.T @ u_y) ** 2) / top),
        "variance_x": var_x,
        "variance_y": var_y,
        "variance": 0.5 * (var_x + var_y),
        "effective_rank_x": _entropy_effective_rank(lam_x),
        "effective_rank_y": _entropy_effective_rank(lam_y),
        "i2t_R@1": float(ret["x2y_R@1"]),
        "t2i_R@1": float(ret["y2x_R@1"]),
    }


def class_structure(x, y, labels) -> dict:
    """How strongly labelled classes shape a paired space (what zero-shot accuracy rests on).

    ``between_class_share_x`` / ``_y``: the share of the (centred) variance of each modality
    explained by the class means (1 = every item sits on its class mean); ``class_mean_cosine``:
    mean over classes of the cosine between the class's centred mean image and centred mean
    caption embedding (the cross-modal alignment of a class direction; ``alpha`` of the
    synthetic generator); ``n_items``, ``n_classes``."""
    x, y, labels = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(labels)
    classes = np.unique(labels)
    out = {"n_items": int(len(labels)), "n_classes": int(len(classes))}
    means = {}
    for name, e in (("x", x), ("y", y)):
        c = e - e.mean(0)
        means[name] = np.stack([c[labels == k].mean(0) for k in classes])
        between = sum(int((labels == k).sum()) * float(m @ m) for k, m in zip(classes, means[name]))
        out[f"between_class_share_{name}"] = between / float((c * c).sum())
    mx, my = means["x"], means["y"]
    cos = (mx * my).sum(1) / np.maximum(np.linalg.norm(mx, axis=1) * np.linalg.norm(my, axis=1), 1e-12)
    out["class_mean_cosine"] = float(cos.mean())
    return out


def load_real_clip(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The shipped real CLIP pairs as ``(img, txt)`` float arrays (default :data:`REAL_CLIP_REFERENCE`)."""
    path = Path(path) if path is not None else REAL_CLIP_REFERENCE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: real CLIP reference embeddings not found (expected a (2, N, d) .npy of "
            "[image, text] rows; see data/README.md)")
    arr = np.load(path)
    if arr.ndim != 3 or arr.shape[0] != 2:
        raise ValueError(f"{path}: expected shape (2, N, d) [image, text], got {arr.shape}")
    return arr[0].astype(np.float64), arr[1].astype(np.float64)


def real_clip_geometry(top: int = 20, retrieval_pool: int | None = None, path: str | Path | None = None,
                       n: int | None = None) -> dict:
    """:func:`embedding_geometry` of the real CLIP ViT-B/16 COCO pairs (all 500 by default;
    the first ``n`` with ``n``, to compare with a set of ``n`` pairs)."""
    img, txt = load_real_clip(path)
    if n is not None:
        if not 2 <= n <= len(img):
            raise ValueError(f"n must be between 2 and {len(img)} (the reference's size), got {n}")
        img, txt = img[:n], txt[:n]
    return embedding_geometry(img, txt, top=top, retrieval_pool=retrieval_pool)


def compare_geometry(ours: dict, ref: dict, rel: float = 0.15, abs_small: float = 0.05,
                     small: float = 0.3) -> pd.DataFrame:
    """Two :func:`embedding_geometry` dicts side by side, one row per statistic.

    Every scalar except the counts (:data:`COUNT_KEYS`) is compared. Columns: ``statistic``,
    ``ours``, ``reference``, ``rel_diff`` (``|ours - reference| / |reference|``),
    ``tolerance`` (a string) and ``within`` (bool): within ``rel`` relative difference, or
    within ``abs_small`` absolute difference where ``|reference| < small``.
    ``top`` and ``retrieval_pool`` must agree (the statistics depend on them); a differing
    ``n`` or ``d`` is allowed but shifts effective rank and overlap (see the module doc).
    """
    for k in ("top", "retrieval_pool"):
        if k in ours and k in ref and ours[k] != ref[k]:
            raise ValueError(f"geometry dicts computed with different {k}: {ours[k]} vs {ref[k]}; "
                             "recompute them on the same settings")
    rows = []
    for key, r in ref.items():
        if key in COUNT_KEYS or not np.isscalar(r) or key not in ours:
            continue
        o, r = float(ours[key]), float(r)
        diff = abs(o - r)
        rel_diff = diff / abs(r) if r != 0 else float("inf") if diff > 0 else 0.0
        if abs(r) < small:
            tol, ok = f"abs {abs_small:g}", diff <= abs_small
        else:
            tol, ok = f"rel {rel:g}", rel_diff <= rel
        rows.append({"statistic": key, "ours": o, "reference": r, "rel_diff": rel_diff, "tolerance": tol,
                     "within": bool(ok)})
    missing = [k for k in ref if k not in COUNT_KEYS and k not in ours]
    if missing:
        raise ValueError(f"statistics missing from `ours`: {missing}")
    return pd.DataFrame(rows)
