"""Steering through an SAE: push one concept latent and decode (paper, metric 7).

For a code ``z = encode(u)`` of a sample *without* the concept, add
``alpha * sigma_i`` to the concept latent ``i`` (``sigma_i`` = std of latent i's
activation over a reference set of codes) and decode:

    u'(alpha) = normalize(decode(z + alpha * sigma_i * e_i))

and measure, per alpha,

* ``toward``: mean cosine of ``u'`` to the concept target *of the same modality* (the
  mean embedding of the samples of that modality that carry the concept) minus the same
  cosine at ``alpha = 0`` (so the curve starts at 0);
* ``toward_captions``: the same gain toward the concept's *caption* embeddings (the
  paper's "move toward the concept's captions"). For image codes this target sits
  across the modality gap, so any latent carrying the text offset moves images toward
  it; ``toward`` is the cleaner measure of concept movement and both are reported;
* ``kept``: mean cosine of ``u'`` to the original embedding ``u`` (similarity kept).

Steering image codes and text codes with the same latent tells whether one latent
moves both modalities.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .data import l2_normalize
from .models.base import Dictionary

__all__ = ["latent_std", "steer", "steering_curve", "concept_target", "pick_latent_by_codes",
           "pick_latent_by_direction"]


def latent_std(z: np.ndarray, latent: int) -> float:
    """Std of latent ``latent``'s activation over the rows of ``z`` (all rows, zeros included)."""
    s = float(np.asarray(z)[:, latent].std())
    return s if s > 0 else 1.0


@torch.no_grad()
def steer(model: Dictionary, u: np.ndarray, modality: int, latent: int, amount: float) -> np.ndarray:
    """Normalised decodings of ``u`` with ``amount`` added to ``latent`` in every code."""
    dev = next(model.parameters()).device
    ut = torch.as_tensor(np.asarray(u, np.float32), device=dev)
    z = model.encode(ut, modality)
    z[:, latent] += amount
    return l2_normalize(model.decode(z, modality).float().cpu().numpy())


def concept_target(emb: np.ndarray, has_concept: np.ndarray) -> np.ndarray:
    """Unit mean of the embeddings of samples that have the concept."""
    has_concept = np.asarray(has_concept, bool)
    if not has_concept.any():
        raise ValueError("no sample carries the concept: cannot build a steering target")
    return l2_normalize(np.asarray(emb)[has_concept].mean(0, keepdims=True))[0]


def steering_curve(model: Dictionary, u: np.ndarray, modality: int, latent: int, alphas: Sequence[float],
                   sigma: float, target: np.ndarray, caption_target: np.ndarray | None = None) -> list[dict]:
    """One record per alpha: ``alpha``, ``toward`` (cosine gain toward ``target``),
    ``toward_captions`` (gain toward ``caption_target``, when given) and ``kept``."""
    u = l2_normalize(u)
    targets = {"toward": target}
    if caption_target is not None:
        targets["toward_captions"] = caption_target
    T = l2_normalize(np.stack([np.asarray(t, np.float32) for t in targets.values()]))
    base = (steer(model, u, modality, latent, 0.0) @ T.T).mean(0)
    rows = []
    for a in alphas:
        us = steer(model, u, modality, latent, float(a) * sigma)
        gain = (us @ T.T).mean(0) - base
        rec = {"alpha": float(a), **{k: float(g) for k, g in zip(targets, gain)}}
        rec["kept"] = float((us * u).sum(1).mean())
        rows.append(rec)
    return rows


def pick_latent_by_codes(z_x: np.ndarray, z_y: np.ndarray, c_x: np.ndarray, c_y: np.ndarray) -> int:
    """The latent whose activation correlates best with a known concept coefficient,
    images and captions pooled (the concept's latent for *both* modalities)."""
    from .metrics import best_latent_by_activation

    z = np.concatenate([z_x, z_y])
    c = np.concatenate([np.asarray(c_x), np.asarray(c_y)])[:, None]
    i = int(best_latent_by_activation(c, z)[0])
    if i < 0:
        raise ValueError("no latent correlates positively with the concept")
    return i


def pick_latent_by_direction(atoms: np.ndarray, target: np.ndarray) -> int:
    """The dictionary atom closest (cosine) to a target direction (e.g. a class prompt)."""
    a = l2_normalize(np.asarray(atoms))
    return int(np.argmax(a @ l2_normalize(np.asarray(target)[None])[0]))
