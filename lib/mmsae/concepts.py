"""Concept naming and probe decomposition (paper, metrics 5 and 6).

* :func:`name_latents`: latent ``i`` is named by the vocabulary entry maximising
  ``cos(W_dec[i], text_embedding(word))``.
* :func:`decompose_probe`: a linear probe's weight vector ``w`` (e.g. CelebA "blond
  hair") is expressed over the dictionary: atoms ranked by ``cos(W_dec[i], w)``, and a
  non-negative least-squares fit ``w ~ sum_i c_i W_dec[i]`` over the top candidates.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import nnls

from .data import l2_normalize

__all__ = ["name_latents", "decompose_probe"]


def name_latents(atoms: np.ndarray, vocab_emb: np.ndarray, vocab: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Name each atom by its most similar vocabulary embedding; returns names and cosines."""
    if len(vocab) != len(vocab_emb):
        raise ValueError(f"{len(vocab)} words but {len(vocab_emb)} vocabulary embeddings")
    sims = l2_normalize(np.asarray(atoms)) @ l2_normalize(np.asarray(vocab_emb)).T
    best = sims.argmax(1)
    return [vocab[j] for j in best], sims[np.arange(len(best)), best]


def decompose_probe(w: np.ndarray, atoms: np.ndarray, top: int = 10, candidates: int = 64,
                    names: Sequence[str] | None = None) -> list[dict]:
    """Top atoms of a probe direction: cosine ranking plus NNLS weights over the candidates."""
    w = np.asarray(w, np.float64).ravel()
    A = l2_normalize(np.asarray(atoms)).astype(np.float64)
    cos = A @ (w / max(np.linalg.norm(w), 1e-12))
    cand = np.argsort(-cos)[: min(candidates, len(cos))]
    coef, _ = nnls(A[cand].T, w)
    order = np.argsort(-coef)[:top]
    out = []
    for j in order:
        i = int(cand[j])
        out.append({"latent": i, "name": names[i] if names is not None else str(i),
                    "cosine": float(cos[i]), "nnls_weight": float(coef[j])})
    return out
