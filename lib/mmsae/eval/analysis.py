"""Everything notebook 04 measures for one trained model, in one call.

:func:`analyze` encodes the held-out pairs once and derives every metric of
:mod:`mmsae.eval.metrics` from those codes: neuron categories, modality score, MMS (per
latent), reconstruction per modality, cross-modal retrieval from codes and from
reconstructions (both directions), zero-shot accuracy through the SAE and, on
synthetic data, recovery against the ground truth. The per-latent arrays feed the
figures; ``summary`` is one flat dict (a row of the comparison tables).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from . import metrics
from ..data.store import PairedEmbeddings, ZeroShotSet
from ..models.base import Dictionary
from ..models.crosscoder import decoder_norm_split, needs_pair

__all__ = ["ModelAnalysis", "analyze", "analyze_pair", "PAIR_UNAVAILABLE", "mms_reference", "split_vs_sample_size", "headline_summary",
           "HEADLINE_COLUMNS"]


@dataclass
class ModelAnalysis:
    """One model's analysis. The held-out codes are kept sparse (``codes_x`` / ``codes_y``: K
    non-zeros a row, a few MB at the paper's shapes instead of 0.65 GB of dense float32 per
    model, so notebook 04 can hold every model of a paper-scale comparison); ``z_x`` / ``z_y``
    give them dense, on demand."""

    codes_x: sp.csr_matrix
    codes_y: sp.csr_matrix
    categories: np.ndarray
    modality_score: np.ndarray
    mms: dict[str, np.ndarray]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def z_x(self) -> np.ndarray:
        return self.codes_x.toarray()

    @property
    def z_y(self) -> np.ndarray:
        return self.codes_y.toarray()


def mms_reference(val: PairedEmbeddings, truth: Mapping[str, Any] | None,
                  reference: PairedEmbeddings | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Reference embeddings for MMS: ground-truth concept codes (synthetic), a second
    embedding of the same pairs (the paper's choice), or, failing both, the embeddings
    themselves (flagged as ``"self"``: a weaker check, since the SAE saw that space)."""
    if truth is not None:
        return np.asarray(truth["codes_x"]), np.asarray(truth["codes_y"]), "ground_truth_codes"
    if reference is not None:
        if len(reference) != len(val):
            raise ValueError(f"{reference.source}: {len(reference)} reference pairs for {len(val)} validation pairs")
        return np.asarray(reference.x), np.asarray(reference.y), f"reference:{reference.meta.get('encoder', '?')}"
    return np.asarray(val.x), np.asarray(val.y), "self"


def analyze(model: Dictionary, val: PairedEmbeddings, ref_x: np.ndarray | None = None,
            ref_y: np.ndarray | None = None, zero_shot_sets: Mapping[str, ZeroShotSet] | None = None,
            truth: Mapping[str, Any] | None = None, threshold: float = 0.0, min_count: int | str = "scaled",
            min_frac: float = 0.2, retrieval_pool: int | None = 5000) -> ModelAnalysis:
    """Encode ``val`` and compute every metric (see module docstring).

    Neuron categories use ``min_count`` (``"scaled"``: a share ``min_frac`` of the expected
    firings per latent, :func:`mmsae.eval.metrics.category_min_count`; ``1``: the paper's rule);
    the rule is recorded in the summary as ``category_rule`` and the applied count as
    ``category_min_count``. The split measure (:func:`mmsae.eval.metrics.split_measures`) uses
    the same rule to decide which latents have enough firings to be scored.
    """
    model.eval()
    if needs_pair(model):
        return analyze_pair(model, val, zero_shot_sets, truth, threshold, metrics.category_rule(
            min_count, min_frac, threshold))
    x, y = np.asarray(val.x, np.float32), np.asarray(val.y, np.float32)
    z_x, z_y = model.encode_numpy(x, 0), model.encode_numpy(y, 1)
    x_hat, y_hat = model.reconstruct_numpy(x, 0), model.reconstruct_numpy(y, 1)
    s: dict[str, Any] = {"m": int(z_x.shape[1])}

    cats = metrics.neuron_categories(z_x, z_y, threshold=threshold, min_count=min_count, min_frac=min_frac)
    s.update({k: int(cats[k]) for k in ("image_only", "text_only", "both", "dead")})
    s["frac_both"] = s["both"] / s["m"]
    s["category_rule"] = metrics.category_rule(min_count, min_frac, threshold)
    s["category_min_count"] = int(cats["min_count"])
    s["n_val"] = int(len(x))
    fires_x, fires_y = cats["count_x"] >= 1, cats["count_y"] >= 1  # the paper's rule: any firing counts
    s["both_min1"], s["dead_min1"] = int((fires_x & fires_y).sum()), int((~fires_x & ~fires_y).sum())
    s["image_only_min1"], s["text_only_min1"] = int((fires_x & ~fires_y).sum()), int((~fires_x & fires_y).sum())
    split = metrics.split_measures(z_x, z_y, threshold=threshold, min_count=min_count, min_frac=min_frac)
    s.update({k: v for k, v in split.items() if k != "min_count"})
    ms = metrics.modality_score(z_x, z_y)

    if ref_x is None or ref_y is None:
        ref_x, ref_y = x, y
    mms = metrics.mms_scores(z_x, z_y, ref_x, ref_y, threshold=threshold)
    s.update({f"mms_{k}": v for k, v in metrics.mms_summary(mms, alive=cats["categories"] == "both").items()})

    for name, u, uh in (("x", x, x_hat), ("y", y, y_hat)):
        s.update({f"{k}_{name}": v for k, v in metrics.reconstruction_metrics(u, uh).items()})
    s["dense_latents"] = metrics.dense_latent_share(z_x, z_y, threshold=threshold)
    s["l0"] = float(((np.asarray(z_x) > threshold).sum() + (np.asarray(z_y) > threshold).sum()) / (2 * len(x)))

    n = len(x) if retrieval_pool is None else min(len(x), retrieval_pool)
    for tag, a, b in (("code", z_x[:n], z_y[:n]), ("recon", x_hat[:n], y_hat[:n])):
        s.update({f"{tag}_{k}": v for k, v in metrics.cross_modal_retrieval(a, b).items()})
    s["retrieval_pool"] = n

    for name, zs in (zero_shot_sets or {}).items():
        emb = np.asarray(zs.emb, np.float32)
        ce = np.asarray(zs.class_emb, np.float32)
        s[f"zs_{name}_dense"] = metrics.zero_shot_accuracy(emb, zs.labels, ce)
        s[f"zs_{name}_code"] = metrics.zero_shot_accuracy(model.encode_numpy(emb, 0), zs.labels,
                                                          model.encode_numpy(ce, 1))
        s[f"zs_{name}_recon"] = metrics.zero_shot_accuracy(model.reconstruct_numpy(emb, 0), zs.labels,
                                                           model.reconstruct_numpy(ce, 1))

    if truth is not None:
        import torch

        with torch.no_grad():
            dx = model.decoder_atoms(0).detach().float().cpu().numpy()
            dy = model.decoder_atoms(1).detach().float().cpu().numpy()
        gt = metrics.ground_truth_report(truth["atoms_x"], truth["atoms_y"], truth["concept_kind"],
                                         truth["codes_x"], truth["codes_y"], z_x, z_y, dx, dy)
        s.update({f"gt_{k}": v for k, v in gt.items()})
    return ModelAnalysis(sp.csr_matrix(z_x), sp.csr_matrix(z_y), cats["categories"], ms, mms, s)


#: the summary entries a model that encodes only pairs cannot have: everything built on the code of one modality
#: (left NaN; the tables mark them "needs one modality")
PAIR_UNAVAILABLE = ("image_only", "text_only", "both", "frac_both", "image_only_min1", "text_only_min1", "both_min1",
                    "unimodal_share", "image_share", "text_share", "score_balance", "score_q10", "score_q50",
                    "score_q90", "n_scored")


def analyze_pair(model: Dictionary, val: PairedEmbeddings, zero_shot_sets: Mapping[str, ZeroShotSet] | None = None,
                 truth: Mapping[str, Any] | None = None, threshold: float = 0.0, rule: str = "") -> ModelAnalysis:
    """:func:`analyze` for a model that encodes a pair only (:class:`mmsae.models.crosscoder.Crosscoder`).

    One code per held-out pair (kept as both ``codes_x`` and ``codes_y``, so that the browser lists the pairs a
    latent fires on). What applies is measured as for every model: reconstruction of each member from the
    pair's code, L0, dead (``dead``/``dead_min1``: never fires on the held-out pairs) and dense latents, the
    dense zero-shot ceiling, and on synthetic data the decoder-based ground-truth scores (recovery, collapse).
    Everything built on the code of one modality (:data:`PAIR_UNAVAILABLE`, MMS, retrieval, zero-shot through the
    SAE, the activation-based ground-truth scores) is NaN. The per-latent ``categories`` are the model's own split
    by decoder norms (:func:`~mmsae.models.crosscoder.decoder_norm_split`, also counted in ``decoder_image_only``,
    ``decoder_text_only`` and ``decoder_both`` over the latents that fire) and ``modality_score`` is the image
    share of the two decoder norms."""
    import torch

    x, y = np.asarray(val.x, np.float32), np.asarray(val.y, np.float32)
    z = model.encode_pair_numpy(x, y)
    x_hat, y_hat = model.decode_numpy(z, 0), model.decode_numpy(z, 1)
    m = int(z.shape[1])
    with torch.no_grad():
        nx, ny = (t.detach().float().cpu().numpy() for t in model.decoder_norms())
    fires = (z > threshold).sum(0)
    cats = decoder_norm_split(nx, ny)
    cats[fires == 0] = "dead"
    nan = float("nan")
    s: dict[str, Any] = {"m": m, "n_val": int(len(x)), "category_rule": rule, "category_min_count": nan,
                         **{k: nan for k in PAIR_UNAVAILABLE}}
    s["dead"] = s["dead_min1"] = int((fires == 0).sum())
    for c in ("image_only", "text_only", "both"):
        s[f"decoder_{c}"] = int((cats == c).sum())
    for name, u, uh in (("x", x, x_hat), ("y", y, y_hat)):
        s.update({f"{k}_{name}": v for k, v in metrics.reconstruction_metrics(u, uh).items()})
    s["dense_latents"] = metrics.dense_latent_share(z, threshold=threshold)
    s["l0"] = float((z > threshold).sum() / max(len(x), 1))
    for tag in ("code", "recon"):
        for d in ("x2y", "y2x"):
            s.update({f"{tag}_{d}_{k}": nan for k in ("R@1", "R@5", "R@10", "MRR")})
    s["retrieval_pool"] = int(len(x))
    for name, zs in (zero_shot_sets or {}).items():
        s[f"zs_{name}_dense"] = metrics.zero_shot_accuracy(np.asarray(zs.emb, np.float32), zs.labels,
                                                           np.asarray(zs.class_emb, np.float32))
        s[f"zs_{name}_code"] = s[f"zs_{name}_recon"] = nan
    nan_m = np.full(m, np.nan)
    mms = {k: nan_m.copy() for k in ("img_img", "txt_txt", "img_txt")}
    s.update({f"mms_{k}": v for k, v in metrics.mms_summary(mms, alive=np.ones(m, bool)).items()})
    if truth is not None:
        with torch.no_grad():
            dx, dy = (model.decoder_atoms(i).detach().float().cpu().numpy() for i in (0, 1))
        gt = metrics.ground_truth_report(truth["atoms_x"], truth["atoms_y"], truth["concept_kind"],
                                         truth["codes_x"], truth["codes_y"], z, z, dx, dy)
        s.update({f"gt_{k}": (nan if k in GT_NEEDS_ONE_MODALITY else v) for k, v in gt.items()})
    share = np.divide(nx, nx + ny, out=np.full(m, 0.5), where=(nx + ny) > 0)
    csr = sp.csr_matrix(z)
    return ModelAnalysis(csr, csr.copy(), cats, share, mms, s)


#: ground-truth scores built on the codes of one modality (NaN for a model that encodes pairs)
GT_NEEDS_ONE_MODALITY = ("single_latent_fraction", "alignment_error", "shared_concept_corr")


def split_vs_sample_size(z_x: np.ndarray, z_y: np.ndarray, sizes, seed: int = 0, threshold: float = 0.0,
                         min_frac: float = 0.2, repeats: int = 3) -> "pd.DataFrame":
    """"Both" and the unimodal share against the number of held-out pairs.

    For each ``n`` in ``sizes`` (at most ``len(z_x)``), ``repeats`` random subsets of ``n``
    pairs are drawn (seeded) and the categories are computed under the paper's fixed rule
    (``min_count=1``) and under the scaled rule, together with the unimodal share of
    :func:`mmsae.eval.metrics.split_measures`. Returns one row per ``(n, rule, repeat)`` with
    ``frac_both``, ``frac_dead``, ``unimodal_share`` and the applied ``min_count``: the
    figure of notebook 04 that shows how much the fixed rule depends on ``n``.
    """
    import pandas as pd

    z_x, z_y = np.asarray(z_x), np.asarray(z_y)
    n_all, m = z_x.shape
    rng = np.random.default_rng(seed)
    rows = []
    for n in sorted({int(v) for v in sizes if 0 < int(v) <= n_all}):
        for r in range(repeats if n < n_all else 1):
            idx = rng.choice(n_all, size=n, replace=False) if n < n_all else np.arange(n_all)
            zx, zy = z_x[idx], z_y[idx]
            for rule in (1, "scaled"):
                c = metrics.neuron_categories(zx, zy, threshold=threshold, min_count=rule, min_frac=min_frac)
                sp = metrics.split_measures(zx, zy, threshold=threshold, min_count=rule, min_frac=min_frac)
                rows.append({"n_pairs": n, "rule": "fixed (min_count=1)" if rule == 1 else f"scaled ({min_frac:g})",
                             "repeat": r, "min_count": int(c["min_count"]), "frac_both": c["both"] / m,
                             "frac_dead": c["dead"] / m, "unimodal_share": sp["unimodal_share"]})
    return pd.DataFrame(rows)


#: The per-model numbers of ``results/headline.json`` (notebook 04), read by
#: ``scripts/update_readme.py``; zero-shot columns ``zs_*`` are added when present.
HEADLINE_COLUMNS = ("m", "image_only", "text_only", "both", "dead", "frac_both", "both_min1", "dead_min1",
                    "image_only_min1", "text_only_min1",
                    "unimodal_share", "image_share",
                    "text_share", "mms_img_txt_mean_alive", "mms_img_txt_auc", "explained_variance_x", "explained_variance_y",
                    "code_x2y_R@1", "code_y2x_R@1", "code_x2y_MRR", "code_y2x_MRR", "recon_x2y_R@1",
                    "recon_y2x_R@1", "retrieval_pool")


def headline_summary(per_seed, names) -> dict:
    """Mean over seeds of :data:`HEADLINE_COLUMNS` (and ``zs_*``) per model, plus the
    text columns ``both_rule`` and ``category_rule``; one dict per model name."""
    cols = [c for c in HEADLINE_COLUMNS if c in per_seed.columns]
    cols += [c for c in per_seed.columns if c.startswith("zs_")]
    out = {}
    for n in names:
        g = per_seed[per_seed.model == n]
        rec = {c: float(g[c].mean()) for c in cols}
        rec = {c: (None if np.isnan(v) else v) for c, v in rec.items()}  # JSON null: a metric it cannot have
        for t in ("both_rule", "category_rule"):
            if t in g:
                rec[t] = str(g[t].iloc[0])
        out[n] = rec
    return out
