"""Everything notebook 04 measures for one trained model, in one call.

:func:`analyze` encodes the held-out pairs once and derives every metric of
:mod:`mmsae.metrics` from those codes: neuron categories, modality score, MMS (per
latent), reconstruction per modality, cross-modal retrieval from codes and from
reconstructions (both directions), zero-shot accuracy through the SAE and, on
synthetic data, recovery against the ground truth. The per-latent arrays feed the
figures; ``summary`` is one flat dict (a row of the comparison tables).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from . import metrics
from .data import PairedEmbeddings, ZeroShotSet
from .models.base import Dictionary

__all__ = ["ModelAnalysis", "analyze", "mms_reference"]


@dataclass
class ModelAnalysis:
    z_x: np.ndarray
    z_y: np.ndarray
    categories: np.ndarray
    modality_score: np.ndarray
    mms: dict[str, np.ndarray]
    summary: dict[str, Any] = field(default_factory=dict)


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
            truth: Mapping[str, Any] | None = None, threshold: float = 0.0, min_count: int = 1,
            retrieval_pool: int | None = 5000) -> ModelAnalysis:
    """Encode ``val`` and compute every metric (see module docstring)."""
    model.eval()
    x, y = np.asarray(val.x, np.float32), np.asarray(val.y, np.float32)
    z_x, z_y = model.encode_numpy(x, 0), model.encode_numpy(y, 1)
    x_hat, y_hat = model.reconstruct_numpy(x, 0), model.reconstruct_numpy(y, 1)
    s: dict[str, Any] = {"m": int(z_x.shape[1])}

    cats = metrics.neuron_categories(z_x, z_y, threshold=threshold, min_count=min_count)
    s.update({k: int(cats[k]) for k in ("image_only", "text_only", "both", "dead")})
    s["frac_both"] = s["both"] / s["m"]
    ms = metrics.modality_score(z_x, z_y)

    if ref_x is None or ref_y is None:
        ref_x, ref_y = x, y
    mms = metrics.mms_scores(z_x, z_y, ref_x, ref_y, threshold=threshold)
    s.update({f"mms_{k}": v for k, v in metrics.mms_summary(mms).items()})

    for name, u, uh in (("x", x, x_hat), ("y", y, y_hat)):
        s.update({f"{k}_{name}": v for k, v in metrics.reconstruction_metrics(u, uh).items()})

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
    return ModelAnalysis(z_x, z_y, cats["categories"], ms, mms, s)
